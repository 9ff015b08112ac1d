"""The rules that give a device its state, and why (pure: no I/O, no clock).

States, by precedence (the first that holds wins):

1. ``offline``: the device's last status said so, a clean stop or its last
   will (the broker sends it when the connection drops). Both are the same
   message; an agent's clean stop says ``clean: true`` in it, and
   :func:`offline_reason` believes that flag first; without it (an agent from
   before the flag) it tells them apart by the status's age, as the will was
   composed when the agent connected and a clean stop's as it stopped.
2. ``stale``: its link is up as far as the hub knows, but nothing has arrived
   from it for more than ``stale_after_s``.
3. ``degraded``: its last heartbeat shows errors since the one before (dropped
   messages, unreadable input, bad messages), inputs out of their valid range
   since the one before, or a latency p99 over the budget: the
   ``latency_budget_ms`` of the manifest of the model version the heartbeat
   names, or the hub's ``--latency-budget-ms`` when that manifest declares none
   (:class:`LatencyBudget`; the caller looks the manifest up, the rule takes the
   budget as an input).
4. ``buffering``: its last heartbeat shows more than ``buffering_outbox_messages``
   messages in its outbox, or the hub received messages it already had from it
   since its previous heartbeat (it is resending).
5. ``online``: none of the above.

Hysteresis (:func:`settle`): a device that was ``degraded`` or ``buffering``
goes back to ``online`` only after ``degraded_clear_heartbeats`` clean
heartbeats in a row (3 by default), so one out-of-range input or one dropped
message does not make a pair of state changes. Until then it keeps its state,
its reason naming the cause and how many clean heartbeats it has had.
A heartbeat that is not clean shows at once.

``never_seen`` (provisioned, never heard from) stands apart.

Why this order: offline and stale say the hub does not hear the device, so
what its last heartbeat said no longer describes it. Degraded before
buffering: degraded is the device's own output going wrong, which needs a
person; buffering is delivery lagging, which usually drains by itself once the
link is back. A lower state that holds too is named in the reason ("also
buffering: ...").

:func:`shown` is the one place a device's state is read from its record: the
API's ``/v1/devices`` and anything else counting devices by state use it. The
ingest worker's :class:`~cloud_hub.devices.tracker.StateTracker` applies
:func:`judge_beat`, :func:`settle` and :func:`stale_verdict` as messages
arrive, and stores each change with its reason; while the state holds, it
keeps the stored reason current (written only when its text changes).

>>> rules = StateRules(stale_after_s=30.0, buffering_outbox_messages=1000)
>>> beat = Beat(epoch=1, latency_p99_us=41_000.0, outbox_depth=1200)
>>> judge_beat(beat, None, rules=rules)
Verdict(state='degraded', reason='latency p99 41 ms over the 20 ms budget (--latency-budget-ms); also buffering: outbox 1,200 messages > 1,000')
>>> slow = Beat(epoch=1, latency_p99_us=41_000.0)
>>> judge_beat(slow, None, rules=rules, budget=LatencyBudget(30.0, "model m 1.2.0's manifest"))
Verdict(state='degraded', reason="latency p99 41 ms over the 30 ms budget (model m 1.2.0's manifest)")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from cloud_hub.store.base import DeviceRecord

__all__ = [
    "OFFLINE_REASON",
    "STATES",
    "Beat",
    "Hold",
    "LatencyBudget",
    "Shown",
    "State",
    "StateRules",
    "Verdict",
    "count_states",
    "judge_beat",
    "offline_reason",
    "settle",
    "shown",
    "stale_verdict",
]

State = Literal["online", "degraded", "buffering", "offline", "stale", "never_seen"]
STATES: Final[tuple[State, ...]] = get_args(State)
"""Every state, in the order the fleet summary lists them."""

LIVE: Final = frozenset({"online", "degraded", "buffering"})
"""The states judged from heartbeats (the device is heard from)."""

OFFLINE_REASON: Final = (
    "its status said offline: a clean stop, or its last will (the connection dropped)"
)
CLEAN_STOP_S: Final = 5.0
"""An offline status that arrives within this of its own time is a clean stop's."""
NEVER_SEEN_REASON: Final = "provisioned, never heard from"
_CLEAN_STOP_REASON: Final = "its status said offline as it stopped: a clean stop"
_CLEARING: Final = "; clearing: "
"""Where a held state's reason says how far it is from clearing (:func:`settle`)."""

_INPUT_KINDS: Final = ("missing:", "out_of_range:", "out_of_distribution:")
"""Per-sensor input counters of a heartbeat's ``invalid`` (shared.features)."""


@dataclass(frozen=True, slots=True)
class StateRules:
    """The settings the rules read (the hub's ``--stale-after-s``,
    ``--buffering-outbox-messages`` and ``--latency-budget-ms``)."""

    stale_after_s: float = 30.0
    buffering_outbox_messages: int = 1000
    """More messages than this in a device's outbox: buffering."""
    latency_budget_ms: float = 20.0
    """A latency p99 (per reading, the agent's heartbeat) over this: degraded, when the
    manifest of the device's model declares no budget of its own."""
    degraded_clear_heartbeats: int = 3
    """Clean heartbeats in a row before a degraded or buffering device shows online
    again (1: the first clean one)."""

    def __post_init__(self) -> None:
        if not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0 seconds, got {self.stale_after_s}")
        if self.buffering_outbox_messages < 0:
            raise ValueError(
                f"buffering_outbox_messages must be >= 0, got {self.buffering_outbox_messages}"
            )
        if not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be > 0, got {self.latency_budget_ms}")
        if self.degraded_clear_heartbeats < 1:
            raise ValueError(
                f"degraded_clear_heartbeats must be >= 1, got {self.degraded_clear_heartbeats}"
            )


@dataclass(frozen=True, slots=True)
class LatencyBudget:
    """The latency p99 per reading a device must keep, and where that figure comes
    from (named in the reason: a model's manifest, or the hub's setting)."""

    ms: float
    source: str

    @classmethod
    def fallback(cls, rules: StateRules, why: str = "") -> LatencyBudget:
        """The hub's ``--latency-budget-ms``; ``why`` it stands in, if said."""
        return cls(rules.latency_budget_ms, "--latency-budget-ms" + (f"; {why}" if why else ""))

    def __post_init__(self) -> None:
        if not self.ms > 0:
            raise ValueError(f"a latency budget must be > 0 ms, got {self.ms}")


@dataclass(frozen=True, slots=True)
class Beat:
    """What the rules read of one heartbeat (:class:`shared.messages.Health`). Its
    ``dropped`` and ``invalid`` counters count since the agent's start (its epoch)."""

    epoch: int
    latency_p99_us: float = 0.0
    outbox_depth: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    invalid: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Beat | None:
        """From a heartbeat as stored (``Health.to_dict()``); None if it is not one."""
        try:
            return cls(
                epoch=int(d["epoch"]),  # type: ignore[call-overload]
                latency_p99_us=float(d.get("latency_p99_us", 0.0)),  # type: ignore[arg-type]
                outbox_depth=int(d.get("outbox_depth", 0)),  # type: ignore[call-overload]
                dropped=_counts(d.get("dropped")),
                invalid=_counts(d.get("invalid")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}


@dataclass(frozen=True, slots=True)
class Verdict:
    state: State
    reason: str


@dataclass(frozen=True, slots=True)
class Shown:
    """A device's state as shown: the state, why, and since when (None: not known)."""

    state: State
    reason: str
    since: float | None


def _new(now: Mapping[str, int], before: Mapping[str, int] | None) -> dict[str, int]:
    """Counter increases since ``before`` (a counter that went down was reset: all new)."""
    out: dict[str, int] = {}
    for key, n in now.items():
        prev = 0 if before is None else before.get(key, 0)
        grew = n - prev if n >= prev else n
        if grew > 0:
            out[key] = grew
    return out


def _listed(counts: Mapping[str, int], limit: int = 3) -> str:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown_ = ", ".join(f"{k} {n:,}" for k, n in top[:limit])
    return shown_ + (f", {len(top) - limit} more" if len(top) > limit else "")


def _many(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _ms(us: float) -> str:
    return f"{us / 1000.0:.3g} ms"


def judge_beat(
    beat: Beat,
    previous: Beat | None,
    *,
    rules: StateRules,
    resent: int = 0,
    budget: LatencyBudget | None = None,
) -> Verdict:
    """The state one heartbeat shows: ``degraded``, ``buffering`` or ``online``.

    ``previous`` is the device's heartbeat before it (None: none known); counters
    are compared with it when it is of the same epoch, else counted since the
    agent started. ``resent``: messages the hub received from the device since
    ``previous`` that it had already stored. ``budget``: the latency budget of the
    model the heartbeat names (None: the hub's, ``rules.latency_budget_ms``).

    >>> rules = StateRules()
    >>> before = Beat(epoch=7, invalid={"out_of_range:temperature": 2})
    >>> now = Beat(epoch=7, invalid={"out_of_range:temperature": 14}, dropped={"outbox_full": 3})
    >>> judge_beat(now, before, rules=rules).reason
    'heartbeat: 3 errors since the last one (dropped outbox_full 3); 12 inputs out of range (temperature 12)'
    >>> judge_beat(now, now, rules=rules)
    Verdict(state='online', reason='heartbeat: no new errors, latency p99 within the 20 ms budget (--latency-budget-ms), outbox at most 1,000 messages')

    The ``online`` reason names the limits, not the figures (those are in the
    device's last heartbeat), so it reads the same from one quiet heartbeat to the
    next and the hub stores it once, not at every heartbeat.
    """
    same = previous is not None and previous.epoch == beat.epoch
    dropped = _new(beat.dropped, previous.dropped if same and previous else None)
    invalid = _new(beat.invalid, previous.invalid if same and previous else None)
    errors = {f"dropped {k}": n for k, n in dropped.items()}
    errors.update({f"invalid {k}": n for k, n in invalid.items() if not k.startswith(_INPUT_KINDS)})
    out_of_range = {
        k.partition(":")[2]: n for k, n in invalid.items() if k.startswith("out_of_range:")
    }
    since = "since the last one" if same else "since the agent started"
    degraded: list[str] = []
    if errors:
        n = sum(errors.values())
        degraded.append(f"heartbeat: {_many(n, 'error')} {since} ({_listed(errors)})")
    if out_of_range:
        n = sum(out_of_range.values())
        what = f"{_many(n, 'input')} out of range ({_listed(out_of_range)})"
        degraded.append(what if errors else f"heartbeat: {what} {since}")
    limit = budget or LatencyBudget.fallback(rules)
    budget_us = limit.ms * 1000.0
    the_budget = f"the {_ms(budget_us)} budget ({limit.source})"
    if beat.latency_p99_us > budget_us:
        degraded.append(f"latency p99 {_ms(beat.latency_p99_us)} over {the_budget}")
    buffering: list[str] = []
    if beat.outbox_depth > rules.buffering_outbox_messages:
        buffering.append(
            f"outbox {_many(beat.outbox_depth, 'message')} > {rules.buffering_outbox_messages:,}"
        )
    if resent > 0:
        buffering.append(f"resending: {_many(resent, 'message')} the hub already had")
    if degraded:
        reason = "; ".join(degraded)
        if buffering:
            reason += "; also buffering: " + "; ".join(buffering)
        return Verdict("degraded", reason)
    if buffering:
        return Verdict("buffering", "; ".join(buffering))
    return Verdict(
        "online",
        f"heartbeat: no new errors, latency p99 within {the_budget}, "
        f"outbox at most {_many(rules.buffering_outbox_messages, 'message')}",
    )


@dataclass(frozen=True, slots=True)
class Hold:
    """What :func:`settle` remembers of a device: the verdict of its last heartbeat
    that was not clean (None: it is clear) and the clean heartbeats since."""

    cause: Verdict | None = None
    clean: int = 0

    @classmethod
    def of(cls, state: str | None, reason: str | None) -> Hold:
        """From a stored state and reason (a restarted hub): a held state stays held."""
        if state not in ("degraded", "buffering") or reason is None:
            return cls()
        return cls(Verdict(state, reason.partition(_CLEARING)[0]))  # type: ignore[arg-type]


def settle(judged: Verdict, hold: Hold, *, rules: StateRules) -> tuple[Verdict, Hold]:
    """The verdict to show for a heartbeat judged ``judged``, with hysteresis: a
    degraded or buffering device shows online only after
    ``rules.degraded_clear_heartbeats`` clean heartbeats in a row; a heartbeat that
    is not clean shows at once. Returns it and what to remember for the next one.

    >>> rules = StateRules(degraded_clear_heartbeats=2)
    >>> bad, ok = Verdict("degraded", "heartbeat: 1 error"), Verdict("online", "quiet")
    >>> shown_, hold = settle(bad, Hold(), rules=rules)
    >>> shown_, hold = settle(ok, hold, rules=rules)
    >>> shown_
    Verdict(state='degraded', reason='heartbeat: 1 error; clearing: 1 of 2 clean heartbeats in a row')
    >>> settle(ok, hold, rules=rules)
    (Verdict(state='online', reason='quiet'), Hold(cause=None, clean=0))
    """
    if judged.state != "online":
        return judged, Hold(judged)
    if hold.cause is None:
        return judged, hold
    clean = hold.clean + 1
    need = rules.degraded_clear_heartbeats
    if clean >= need:
        return judged, Hold()
    reason = f"{hold.cause.reason}{_CLEARING}{clean} of {need} clean heartbeats in a row"
    return Verdict(hold.cause.state, reason), Hold(hold.cause, clean)


def offline_reason(composed_at: float, received_at: float, *, clean: bool = False) -> str:
    """Why a device is offline. ``clean``: the status said ``clean: true`` (an agent's
    clean stop says so): a clean stop, however late it arrived. Without it (an agent
    from before the flag, or a will) the status's own time (``ts``) and when it
    arrived tell: the agent composes its will when it connects and a clean stop's
    status as it stops. That guess fails for a flagless clean stop delivered more
    than :data:`CLEAN_STOP_S` late (queued while the hub was down, or behind a
    backlog), and for a device clock off by more than that.

    >>> offline_reason(100.0, 900.0, clean=True)
    'its status said offline as it stopped: a clean stop'

    >>> offline_reason(100.0, 100.2)
    'its status said offline as it stopped: a clean stop'
    >>> offline_reason(100.0, 400.0)
    'its last will: the connection dropped (the broker sent the offline status the agent left when it connected, 300 s before)'
    """
    age = received_at - composed_at
    if clean:
        return _CLEAN_STOP_REASON
    if composed_at <= 0 or age < -CLEAN_STOP_S:
        return OFFLINE_REASON
    if age <= CLEAN_STOP_S:
        return _CLEAN_STOP_REASON
    return (
        "its last will: the connection dropped (the broker sent the offline status the "
        f"agent left when it connected, {age:.0f} s before)"
    )


def stale_verdict(last_seen: float | None, now: float, stale_after_s: float) -> Verdict | None:
    """``stale`` if nothing arrived for more than ``stale_after_s`` (None: not stale).

    >>> stale_verdict(100.0, 131.0, 30.0)
    Verdict(state='stale', reason='silent for 31 s, over the stale timeout of 30 s')
    >>> stale_verdict(100.0, 110.0, 30.0) is None
    True
    """
    if last_seen is not None and now - last_seen <= stale_after_s:
        return None
    if last_seen is None:
        return Verdict("stale", "no message on record")
    return Verdict(
        "stale",
        f"silent for {now - last_seen:.0f} s, over the stale timeout of {stale_after_s:g} s",
    )


def shown(record: DeviceRecord, now: float, stale_after_s: float) -> Shown:
    """The state a device shows, from its record (what the ingest worker last stored)
    and the stale rule applied now, so a silent device shows ``stale`` before the
    worker's next periodic check records it.

    >>> rec = DeviceRecord("pi-1", "online", 1, "0.1.0", "1.0.0", 0.0, 100.0, None)
    >>> shown(rec, now=110.0, stale_after_s=30.0).state, shown(rec, 131.0, 30.0)
    ('online', Shown(state='stale', reason='silent for 31 s, over the stale timeout of 30 s', since=130.0))
    """
    judged = record.judged_state
    if record.state == "never_seen":
        return Shown("never_seen", NEVER_SEEN_REASON, None)
    if record.state == "offline":
        if judged == "offline" and record.state_reason is not None:
            return Shown("offline", record.state_reason, record.state_since)
        return Shown("offline", OFFLINE_REASON, record.last_seen)
    stale = stale_verdict(record.last_seen, now, stale_after_s)
    if stale is not None:
        since = None if record.last_seen is None else record.last_seen + stale_after_s
        return Shown("stale", stale.reason, since)
    if judged in LIVE and record.state_reason is not None:
        return Shown(judged, record.state_reason, record.state_since)  # type: ignore[arg-type]
    return Shown("online", "heard from (no heartbeat judged yet)", record.last_seen)


def count_states(shown_states: Iterable[State]) -> dict[str, int]:
    """How many devices are in each state, every state listed (zeros too)."""
    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    for s in shown_states:
        counts[s] += 1
    return counts
