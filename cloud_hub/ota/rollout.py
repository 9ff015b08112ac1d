"""Staged rollouts, pure: cohorts, gates, and the decision to advance, wait or roll back.

No I/O and no clock: :func:`step` takes the rollout, what each device reports
and the time, and returns the new rollout and the :class:`Action` values the
caller carries out (set desired state, record the decision). The hub's
:mod:`cloud_hub.ota.rollouts` gathers the observations and applies the actions.

Rules:

1. A rollout moves one model's devices to ``version`` in cohorts: the devices
   are shuffled by a seed (the rollout id), and cohort *i* takes them up to
   ``percents[i]`` % of the fleet (at least one device per cohort; the first
   is the canary). Each cohort is told at once (desired state); the next
   starts only when this one has passed its gates.
2. A device of the cohort in flight is ``waiting`` until it reports the new
   version running (``committed``), reports a rejected or reverted update
   (``failed``), or its ``device_timeout_s`` passes (``timed_out``; a timeout
   counts as a failure).
3. A cohort passes when every device is settled, the committed fraction is at
   least ``min_commit_fraction`` and the failed fraction at most
   ``max_failure_fraction``, and then, after ``soak_s`` more seconds, the
   behaviour gates hold: the cohort's latency p99, edge/heavy disagreement
   and urgent-event rate since it switched, against the devices still on the
   old version over the same time (``control``). A gate without enough readings
   (``min_readings``) on either side is not judged yet: it waits, at most
   ``device_timeout_s`` beyond the soak, and then fails closed (rule 4). The
   last cohort, with no device left on the old version to compare with
   (``control`` None), is judged on its counts alone.
4. A failed gate aborts the rollout: every device already moved gets its
   previous model back as desired state (``allow_downgrade``: a signed
   rollback), and the decision records which gate, its value and threshold.
   Devices not yet moved are never touched. A soak that cannot be judged for
   lack of readings by its deadline fails closed (``no_evidence``).
5. ``pause`` stops advancing (devices in flight go on converging); ``resume``
   goes on; ``abort`` rolls back as in rule 4 with the reason given.
   A finished rollout (completed or aborted) takes no more commands.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "Action",
    "CohortFigures",
    "DeviceReport",
    "DeviceState",
    "Gates",
    "Rollback",
    "Rollout",
    "RolloutError",
    "RolloutState",
    "SetDesired",
    "assign_cohorts",
    "command",
    "new_rollout",
    "step",
]

DEFAULT_COHORTS: Final = (1.0, 10.0, 50.0, 100.0)


class RolloutError(ValueError):
    """A rollout request or command the rules refuse; ``str(exc)`` says why."""


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"


class DeviceState(StrEnum):
    PENDING = "pending"
    """In a later cohort: not told yet."""
    WAITING = "waiting"
    COMMITTED = "committed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"


_SETTLED: Final = frozenset({DeviceState.COMMITTED, DeviceState.FAILED, DeviceState.TIMED_OUT})


@dataclass(frozen=True, slots=True)
class Gates:
    """When a cohort passes (rule 3). A ratio or delta of None is not checked."""

    min_commit_fraction: float = 1.0
    max_failure_fraction: float = 0.0
    device_timeout_s: float = 600.0
    soak_s: float = 0.0
    max_latency_ratio: float | None = None
    """Cohort p99 / control p99 at most this."""
    max_disagreement_delta: float | None = None
    """Cohort edge/heavy disagreement rate minus control's at most this."""
    max_urgent_ratio: float | None = None
    """Cohort urgent-event rate at most this times control's (plus ``urgent_floor``)."""
    urgent_floor: float = 0.001
    """Urgent events per reading always allowed above ``ratio x control``: a control of 0
    events must not make one canary event a failure."""
    min_readings: int = 100
    """Readings each side needs before a behaviour gate is judged."""

    def __post_init__(self) -> None:
        for name in ("min_commit_fraction", "max_failure_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise RolloutError(f"gate {name} must be in [0, 1], got {value}")
        for name in ("device_timeout_s", "soak_s", "urgent_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise RolloutError(f"gate {name} must be >= 0, got {value}")
        if self.device_timeout_s <= 0:
            raise RolloutError("gate device_timeout_s must be > 0")
        for name in ("max_latency_ratio", "max_urgent_ratio", "max_disagreement_delta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise RolloutError(f"gate {name} must be >= 0, got {value}")
        if self.min_readings < 1:
            raise RolloutError("gate min_readings must be >= 1")


@dataclass(frozen=True, slots=True)
class CohortFigures:
    """What a set of devices did since a time: summed counts and the worst p99."""

    readings: int = 0
    urgent_events: int = 0
    compared: int = 0
    disagreements: int = 0
    latency_p99_us: float | None = None

    @property
    def urgent_rate(self) -> float:
        return self.urgent_events / self.readings if self.readings else 0.0

    @property
    def disagreement_rate(self) -> float:
        return self.disagreements / self.compared if self.compared else 0.0


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """What the hub knows of one device of the rollout."""

    model: str | None
    version: str | None
    failed: str | None = None
    """The reason of a rejected or reverted update to this rollout's version, if one came."""
    figures: CohortFigures = CohortFigures()
    """Since its cohort started (for the behaviour gates)."""


@dataclass(frozen=True, slots=True)
class Decision:
    at: float
    what: str
    """``started``, ``cohort_started``, ``cohort_passed``, ``paused``, ``resumed``,
    ``completed``, ``aborted``."""
    why: str
    gates: Mapping[str, Any] = field(default_factory=dict)
    """Gate values against thresholds, when gates were judged."""


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    model: str
    version: str
    previous: Mapping[str, tuple[str, str]]
    """Per device, the (model, version) it ran when the rollout began: its rollback."""
    cohorts: tuple[tuple[str, ...], ...]
    gates: Gates
    state: RolloutState
    cohort: int
    """Index of the cohort in flight (``len(cohorts)`` once all passed)."""
    cohort_started_at: float
    settled_at: float | None
    """When the cohort in flight had every device settled and passed rule 3's counts."""
    devices: Mapping[str, DeviceState]
    decisions: tuple[Decision, ...]
    created_at: float

    @property
    def finished(self) -> bool:
        return self.state in (RolloutState.COMPLETED, RolloutState.ABORTED)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in DeviceState}
        for s in self.devices.values():
            out[s.value] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "previous": {d: list(mv) for d, mv in sorted(self.previous.items())},
            "cohorts": [list(c) for c in self.cohorts],
            "gates": dataclasses.asdict(self.gates),
            "state": self.state.value,
            "cohort": self.cohort,
            "cohort_started_at": self.cohort_started_at,
            "settled_at": self.settled_at,
            "devices": {d: s.value for d, s in sorted(self.devices.items())},
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, o: Mapping[str, Any]) -> Rollout:
        return cls(
            id=o["id"],
            model=o["model"],
            version=o["version"],
            previous={d: (mv[0], mv[1]) for d, mv in o["previous"].items()},
            cohorts=tuple(tuple(c) for c in o["cohorts"]),
            gates=Gates(**o["gates"]),
            state=RolloutState(o["state"]),
            cohort=int(o["cohort"]),
            cohort_started_at=float(o["cohort_started_at"]),
            settled_at=None if o["settled_at"] is None else float(o["settled_at"]),
            devices={d: DeviceState(s) for d, s in o["devices"].items()},
            decisions=tuple(Decision(**d) for d in o["decisions"]),
            created_at=float(o["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class SetDesired:
    """Tell ``devices`` to run the rollout's version."""

    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rollback:
    """Give each device its previous model back (a signed rollback: allow_downgrade)."""

    devices: Mapping[str, tuple[str, str]]


Action = SetDesired | Rollback


def assign_cohorts(
    devices: Sequence[str], percents: Sequence[float], seed: str
) -> tuple[tuple[str, ...], ...]:
    """Rule 1: ``devices`` in cohorts up to each cumulative percentage, shuffled by ``seed``.

    >>> assign_cohorts(["a", "b", "c", "d"], [25, 100], "r1")
    (('a',), ('b', 'c', 'd'))
    """
    if not devices:
        raise RolloutError("a rollout needs at least one device")
    if (
        not percents
        or any(not 0 < p <= 100 for p in percents)
        or list(percents) != sorted(set(percents))
    ):
        raise RolloutError(
            f"cohorts {list(percents)} must rise strictly within (0, 100], e.g. 1,10,50,100"
        )
    if percents[-1] != 100:
        raise RolloutError(f"the last cohort must be 100 (the whole fleet), got {percents[-1]}")
    order = sorted(set(devices), key=lambda d: hashlib.sha256(f"{seed}/{d}".encode()).digest())
    cohorts: list[tuple[str, ...]] = []
    taken = 0
    for p in percents:
        upto = max(taken + 1, math.ceil(len(order) * p / 100.0))
        upto = min(upto, len(order))
        if upto > taken:
            cohorts.append(tuple(sorted(order[taken:upto])))
            taken = upto
    return tuple(cohorts)


def new_rollout(
    rollout_id: str,
    target: tuple[str, str],
    previous: Mapping[str, tuple[str, str]],
    *,
    percents: Sequence[float],
    gates: Gates,
    now: float,
) -> tuple[Rollout, list[Action]]:
    """A started rollout to ``target`` (model, version) over the devices of ``previous``
    (each with what it runs now); its first cohort is told at once."""
    model, version = target
    moving = {d: mv for d, mv in previous.items() if mv != (model, version)}
    if not moving:
        raise RolloutError(f"every device already runs {model} {version}: nothing to roll out")
    cohorts = assign_cohorts(sorted(moving), percents, rollout_id)
    devices = {d: DeviceState.PENDING for d in moving}
    for d in cohorts[0]:
        devices[d] = DeviceState.WAITING
    r = Rollout(
        rollout_id,
        model,
        version,
        dict(moving),
        cohorts,
        gates,
        RolloutState.RUNNING,
        0,
        now,
        None,
        devices,
        (
            Decision(now, "started", f"{len(moving)} device(s) in {len(cohorts)} cohort(s)"),
            Decision(
                now, "cohort_started", f"cohort 1 of {len(cohorts)}: {len(cohorts[0])} device(s)"
            ),
        ),
        now,
    )
    return r, [SetDesired(cohorts[0])]


def _judge(
    r: Rollout, cohort: CohortFigures, control: CohortFigures | None
) -> tuple[str | None, dict[str, Any], bool]:
    """The behaviour gates: (the failed gate or None, values, judged). ``judged`` is False
    when there are too few readings on a side to judge a gate that is set."""
    g = r.gates
    values: dict[str, Any] = {
        "cohort_readings": cohort.readings,
        "control_readings": None if control is None else control.readings,
    }
    wanted = any(
        x is not None for x in (g.max_latency_ratio, g.max_disagreement_delta, g.max_urgent_ratio)
    )
    if not wanted or control is None:
        return None, values, True
    if cohort.readings < g.min_readings or control.readings < g.min_readings:
        return None, values, False
    failed = None
    if g.max_latency_ratio is not None and cohort.latency_p99_us and control.latency_p99_us:
        ratio = cohort.latency_p99_us / control.latency_p99_us
        values["latency_ratio"] = {"value": ratio, "max": g.max_latency_ratio}
        if ratio > g.max_latency_ratio:
            failed = failed or "latency_p99"
    if g.max_disagreement_delta is not None:
        delta = cohort.disagreement_rate - control.disagreement_rate
        values["disagreement_delta"] = {"value": delta, "max": g.max_disagreement_delta}
        if delta > g.max_disagreement_delta:
            failed = failed or "disagreement"
    if g.max_urgent_ratio is not None:
        limit = g.max_urgent_ratio * control.urgent_rate + g.urgent_floor
        values["urgent_rate"] = {
            "value": cohort.urgent_rate,
            "control": control.urgent_rate,
            "max": limit,
        }
        if cohort.urgent_rate > limit:
            failed = failed or "urgent_rate"
    return failed, values, True


def _abort(
    r: Rollout, now: float, why: str, gates: Mapping[str, Any]
) -> tuple[Rollout, list[Action]]:
    moved = {
        d: r.previous[d]
        for d, s in r.devices.items()
        if s not in (DeviceState.PENDING, DeviceState.ROLLED_BACK)
    }
    devices = {d: (DeviceState.ROLLED_BACK if d in moved else s) for d, s in r.devices.items()}
    r = dataclasses.replace(
        r,
        state=RolloutState.ABORTED,
        devices=devices,
        decisions=(*r.decisions, Decision(now, "aborted", why, dict(gates))),
    )
    return r, ([Rollback(moved)] if moved else [])


def _sum(figures: Sequence[CohortFigures]) -> CohortFigures:
    p99s = [f.latency_p99_us for f in figures if f.latency_p99_us is not None]
    return CohortFigures(
        sum(f.readings for f in figures),
        sum(f.urgent_events for f in figures),
        sum(f.compared for f in figures),
        sum(f.disagreements for f in figures),
        max(p99s) if p99s else None,
    )


def step(
    r: Rollout, reports: Mapping[str, DeviceReport], control: CohortFigures | None, now: float
) -> tuple[Rollout, list[Action]]:
    """Rules 2-4 for the cohort in flight. ``reports`` holds the rollout's devices (a
    device missing is one the hub has not heard from); ``control`` the devices still on
    the old version, over the time since the cohort in flight started (None: none left)."""
    if r.finished:
        return r, []
    devices = dict(r.devices)
    in_flight = r.cohorts[r.cohort] if r.cohort < len(r.cohorts) else ()
    for d in in_flight:
        if devices[d] is not DeviceState.WAITING:
            continue
        rep = reports.get(d)
        if rep is not None and (rep.model, rep.version) == (r.model, r.version):
            devices[d] = DeviceState.COMMITTED
        elif rep is not None and rep.failed is not None:
            devices[d] = DeviceState.FAILED
        elif now - r.cohort_started_at >= r.gates.device_timeout_s:
            devices[d] = DeviceState.TIMED_OUT
    r = dataclasses.replace(r, devices=devices)
    if r.state is not RolloutState.RUNNING or not in_flight:
        return r, []
    states = [devices[d] for d in in_flight]
    if not all(s in _SETTLED for s in states):
        return r, []
    n = len(in_flight)
    committed = sum(s is DeviceState.COMMITTED for s in states) / n
    failed = 1.0 - committed
    counts: dict[str, Any] = {
        "committed_fraction": {"value": committed, "min": r.gates.min_commit_fraction},
        "failed_fraction": {"value": failed, "max": r.gates.max_failure_fraction},
    }
    failures = {
        d: (reports[d].failed or "failed")
        if devices[d] is DeviceState.FAILED and d in reports
        else devices[d].value
        for d in in_flight
        if devices[d] is not DeviceState.COMMITTED
    }
    if failures:
        counts["failures"] = failures
    if committed < r.gates.min_commit_fraction or failed > r.gates.max_failure_fraction:
        why = (
            f"cohort {r.cohort + 1}: {sum(s is DeviceState.FAILED for s in states)} failed, "
            f"{sum(s is DeviceState.TIMED_OUT for s in states)} timed out of {n}"
        )
        return _abort(r, now, why, counts)
    if r.settled_at is None:
        r = dataclasses.replace(r, settled_at=now)
    assert r.settled_at is not None
    if now - r.settled_at < r.gates.soak_s:
        return r, []
    cohort = _sum(
        [
            reports[d].figures
            for d in in_flight
            if d in reports and devices[d] is DeviceState.COMMITTED
        ]
    )
    gate, values, judged = _judge(r, cohort, control)
    values.update(counts)
    if gate is not None:
        return _abort(r, now, f"cohort {r.cohort + 1}: gate {gate} failed", values)
    if not judged:
        if now - r.settled_at < r.gates.soak_s + r.gates.device_timeout_s:
            return r, []
        return _abort(
            r,
            now,
            f"cohort {r.cohort + 1}: no_evidence: too few readings to judge its gates",
            values,
        )
    passed = Decision(now, "cohort_passed", f"cohort {r.cohort + 1} of {len(r.cohorts)}", values)
    nxt = r.cohort + 1
    if nxt == len(r.cohorts):
        r = dataclasses.replace(
            r,
            cohort=nxt,
            state=RolloutState.COMPLETED,
            decisions=(*r.decisions, passed, Decision(now, "completed", "every cohort passed")),
        )
        return r, []
    devices = dict(r.devices)
    for d in r.cohorts[nxt]:
        devices[d] = DeviceState.WAITING
    started = Decision(
        now,
        "cohort_started",
        f"cohort {nxt + 1} of {len(r.cohorts)}: {len(r.cohorts[nxt])} device(s)",
    )
    r = dataclasses.replace(
        r,
        cohort=nxt,
        cohort_started_at=now,
        settled_at=None,
        devices=devices,
        decisions=(*r.decisions, passed, started),
    )
    return r, [SetDesired(r.cohorts[nxt])]


def command(r: Rollout, what: str, now: float, reason: str = "") -> tuple[Rollout, list[Action]]:
    """Rule 5: ``pause``, ``resume`` or ``abort`` by hand."""
    if r.finished:
        raise RolloutError(f"rollout {r.id} is {r.state.value}: it takes no more commands")
    if what == "pause":
        if r.state is RolloutState.PAUSED:
            raise RolloutError(f"rollout {r.id} is paused already")
        return dataclasses.replace(
            r,
            state=RolloutState.PAUSED,
            decisions=(*r.decisions, Decision(now, "paused", reason or "by hand")),
        ), []
    if what == "resume":
        if r.state is not RolloutState.PAUSED:
            raise RolloutError(f"rollout {r.id} is {r.state.value}, not paused")
        return dataclasses.replace(
            r,
            state=RolloutState.RUNNING,
            decisions=(*r.decisions, Decision(now, "resumed", reason or "by hand")),
        ), []
    if what == "abort":
        return _abort(r, now, f"aborted by hand: {reason or 'no reason given'}", {})
    raise RolloutError(f"{what!r} is not a rollout command; give pause, resume or abort")
