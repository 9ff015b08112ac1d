"""The ingest worker's view of every device's state: it applies the rules of
:mod:`cloud_hub.devices.states` as births, wills, heartbeats and other messages
arrive, and hands back each change to store (with its reason) and count, and
the newer reason of a device whose state holds (a row whose ``previous`` is its
``state``: :attr:`~cloud_hub.store.base.DeviceStateRow.is_change` is false),
only when its text changed. Its memory of what is stored moves only when the
caller says the write worked (:meth:`StateTracker.commit`): after a failed
write, the next call judges the same devices again.

It keeps one small record per device in memory, loaded from the store on first
use, so judging a batch costs no read. It mirrors the store's rules for the
link state (:meth:`cloud_hub.store.sqlite.SQLiteStore.record_status`): a
status of an older epoch than the device's changes nothing, a replay's epoch
(:mod:`shared.epochs`) counts as 0, any message makes a ``never_seen`` device
``online``.

Used from the ingest worker's thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cloud_hub.devices.states import (
    LIVE,
    OFFLINE_REASON,
    Beat,
    Hold,
    LatencyBudget,
    State,
    StateRules,
    Verdict,
    judge_beat,
    offline_reason,
    settle,
    stale_verdict,
)
from cloud_hub.store.base import DeviceRecord, DeviceStateRow, Store
from shared.epochs import is_replay_epoch
from shared.messages import Health, Status

__all__ = ["StateTracker"]

log = logging.getLogger(__name__)

_CHECK_EVERY_MAX_S: Final = 5.0


def _live_epoch(epoch: int) -> int:
    return 0 if is_replay_epoch(epoch) else epoch


@dataclass(slots=True)
class _Device:
    link: str
    """``online``, ``offline`` or ``never_seen``: what its births and wills said."""
    epoch: int
    last_seen: float | None
    state: str
    """The state last recorded (``never_seen`` until one is)."""
    reason: str | None = None
    """The reason last recorded (None: none yet)."""
    beat: Beat | None = None
    verdict: Verdict | None = None
    """What its heartbeats of the current agent run show, after :func:`settle`
    (None: none yet)."""
    hold: Hold = field(default_factory=Hold)
    birth: str | None = None
    """The reason of its last birth, for an ``online`` before any heartbeat."""
    offline: str = OFFLINE_REASON
    """The reason of its last will or clean stop."""
    resent: int = 0
    """Messages received since its last heartbeat that the hub already had."""


class StateTracker:
    """Judge devices as their messages arrive; :meth:`changes` gives what changed.

    >>> tracker = StateTracker(store, StateRules(stale_after_s=30.0))  # doctest: +SKIP
    >>> tracker.heartbeat(health, at=now)  # doctest: +SKIP
    >>> rows = tracker.changes(now)  # doctest: +SKIP
    >>> store.record_device_states(rows)  # doctest: +SKIP
    >>> tracker.commit(rows)  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Store,
        rules: StateRules,
        budgets: Callable[[str, str], LatencyBudget] | None = None,
    ) -> None:
        """``budgets(model, version)``: the latency budget of a device running that
        model version (:class:`~cloud_hub.devices.budgets.ManifestBudgets`, from its
        manifest); None: every device is judged by ``rules.latency_budget_ms``."""
        self.store = store
        self.rules = rules
        self.budgets = budgets
        self._devices: dict[str, _Device] | None = None
        self._heard: set[str] = set()

    @property
    def check_every_s(self) -> float:
        """How often :meth:`check_stale` should run: a device goes stale at most this
        late after its timeout."""
        return min(self.rules.stale_after_s / 3.0, _CHECK_EVERY_MAX_S)

    def load(self) -> None:
        """Read every device's record from the store (again); the ingest worker calls it
        once as it starts, before it handles a message (else the first call does)."""
        self._devices = {r.device: self._from_record(r) for r in self.store.devices()}

    def _all(self) -> dict[str, _Device]:
        if self._devices is None:
            self.load()
        assert self._devices is not None
        return self._devices

    @staticmethod
    def _from_record(r: DeviceRecord) -> _Device:
        beat = Beat.from_dict(r.last_health) if r.last_health is not None else None
        state = r.judged_state or ("never_seen" if r.state == "never_seen" else r.state)
        verdict = None
        if r.judged_state in LIVE and r.state_reason is not None:
            verdict = Verdict(r.judged_state, r.state_reason)  # type: ignore[arg-type]
        return _Device(
            r.state,
            r.epoch,
            r.last_seen,
            state,
            reason=r.state_reason,
            beat=beat,
            verdict=verdict,
            hold=Hold.of(r.judged_state, r.state_reason),
        )

    def _get(self, device: str) -> _Device:
        devices = self._all()
        d = devices.get(device)
        if d is None:
            d = devices[device] = _Device("never_seen", 0, None, "never_seen")
        return d

    # -- what arrived --------------------------------------------------------------------------

    def seen(self, device: str, at: float) -> None:
        """Any message of ``device`` arrived at ``at``."""
        d = self._get(device)
        if d.last_seen is None or at > d.last_seen:
            d.last_seen = at
        if d.link == "never_seen":
            d.link = "online"
        self._heard.add(device)

    def status(self, status: Status, at: float) -> None:
        """A birth or a will."""
        self.seen(status.device, at)
        d = self._get(status.device)
        epoch = _live_epoch(status.epoch)
        if epoch < d.epoch:
            return  # a late will of an earlier run: the store ignores it too
        d.epoch = epoch
        d.link = status.state
        if status.state == "offline":
            d.offline = offline_reason(status.ts, at, clean=status.clean)
        else:
            d.verdict = None  # a new run of the agent: judged again by its heartbeats
            d.hold = Hold()
            d.resent = 0
            d.birth = (
                f"birth: agent {status.agent_version}, model {status.model} {status.model_version}"
            )

    def heartbeat(self, health: Health, at: float) -> None:
        """A heartbeat: judged against the device's previous one."""
        self.seen(health.device, at)
        d = self._get(health.device)
        epoch = _live_epoch(health.epoch)
        if epoch < d.epoch:
            return
        beat = Beat(
            epoch=health.epoch,
            latency_p99_us=health.latency_p99_us,
            outbox_depth=health.outbox_depth,
            dropped=dict(health.dropped),
            invalid=dict(health.invalid),
        )
        budget = None
        if self.budgets is not None:
            budget = self.budgets(health.model, health.model_version)
        judged = judge_beat(beat, d.beat, rules=self.rules, resent=d.resent, budget=budget)
        d.verdict, d.hold = settle(judged, d.hold, rules=self.rules)
        d.beat = beat
        d.resent = 0

    def resent(self, device: str, n: int = 1) -> None:
        """``n`` messages of ``device`` arrived that the hub had already stored."""
        self._get(device).resent += n

    # -- what changed --------------------------------------------------------------------------

    def changes(self, now: float) -> list[DeviceStateRow]:
        """The state changes (and newer reasons) of the devices heard from since the
        last :meth:`commit`; nothing moves until that commit."""
        out: list[DeviceStateRow] = []
        devices = self._all()
        for name in sorted(self._heard):
            self._judge(name, devices[name], now, out)
        return out

    def check_stale(self, now: float) -> list[DeviceStateRow]:
        """Every device judged now: those silent past the stale timeout go ``stale``."""
        out: list[DeviceStateRow] = []
        for name, d in self._all().items():
            self._judge(name, d, now, out)
        return out

    def commit(self, rows: Sequence[DeviceStateRow]) -> None:
        """The store holds ``rows`` now (from :meth:`changes` or :meth:`check_stale`):
        remember them and log each change. Not called (a failed write): the next
        call judges those devices again."""
        devices = self._all()
        for r in rows:
            d = devices[r.device]
            if r.is_change:
                log.info("device %r: %s -> %s (%s)", r.device, r.previous, r.state, r.reason)
            d.state, d.reason = r.state, r.reason
        self._heard.clear()

    def _judge(self, name: str, d: _Device, now: float, out: list[DeviceStateRow]) -> None:
        verdict = self._verdict(d, now)
        if verdict is None:
            return
        if verdict.state != d.state:
            out.append(DeviceStateRow(0, now, name, verdict.state, d.state, verdict.reason))
        elif verdict.state in LIVE and verdict.reason != d.reason:
            # The same state for a newer reason: the stored reason follows, no event.
            out.append(DeviceStateRow(0, now, name, d.state, d.state, verdict.reason))

    def _verdict(self, d: _Device, now: float) -> Verdict | None:
        if d.link == "never_seen":
            return None
        if d.link == "offline":
            return Verdict("offline", d.offline)
        stale = stale_verdict(d.last_seen, now, self.rules.stale_after_s)
        if stale is not None:
            return stale
        if d.verdict is not None:
            return d.verdict
        state: State = "online"
        return Verdict(state, d.birth or "heard from again (no heartbeat judged yet)")
