"""The hub's rollout manager: runs :mod:`cloud_hub.ota.rollout`'s planner against the store.

One thread in ``serve`` (:meth:`RolloutManager.run`), every ``interval_s``:

1. takes the commands queued in the store (``edgeloop-hub rollout ...`` from a
   shell queues them there; the API calls :meth:`RolloutManager.submit`, which
   queues them too), so one writer changes rollout state;
2. for each rollout running or paused, gathers what each of its devices
   reports (the model its birth or heartbeat names; a rejected or reverted
   OTA report for the rollout's version, read incrementally by report id) and,
   once the cohort in flight has settled, the counters each device gained
   since its cohort started (readings, urgent events, edge/heavy comparisons),
   against the devices still on the old version (the control);
3. steps the planner and carries out its actions through the
   :class:`~cloud_hub.ota.publisher.DesiredPublisher` (a rollback names each
   device's previous version with ``allow_downgrade``), then saves the rollout.

Everything a rollout needs is in its stored row (state and marks), so a hub
restarted mid-rollout goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cloud_hub.ota.desired import check_desirable, desired_record
from cloud_hub.ota.publisher import DesiredPublisher
from cloud_hub.ota.rollout import (
    DEFAULT_COHORTS,
    Action,
    CohortFigures,
    DeviceReport,
    DeviceState,
    Gates,
    Rollback,
    Rollout,
    RolloutError,
    RolloutState,
    assign_cohorts,
    command,
    new_rollout,
    step,
)
from cloud_hub.store.base import DesiredRecord, RolloutRow

__all__ = [
    "COUNTERS",
    "RolloutManager",
    "StartRequest",
    "check_start",
    "devices_in_rollouts",
    "new_rollout_id",
]

log = logging.getLogger(__name__)

COUNTERS: Final = (
    "stored_readings",
    "stored_events",
    "compared_readings",
    "edge_heavy_disagreements",
)
"""The per-device counters the behaviour gates are computed from."""
_FAILED_STATES: Final = frozenset({"rejected", "reverted"})


@dataclass(frozen=True, slots=True)
class StartRequest:
    """What ``rollout start`` asks for."""

    model: str
    version: str
    cohorts: Sequence[float] = DEFAULT_COHORTS
    gates: Gates = field(default_factory=Gates)
    devices: Sequence[str] | None = None
    """Only these devices (None: every device that runs ``model``)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "version": self.version,
                "cohorts": list(self.cohorts),
                "gates": dataclasses.asdict(self.gates),
                "devices": None if self.devices is None else list(self.devices),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> StartRequest:
        o = json.loads(text)
        return cls(o["model"], o["version"], o["cohorts"], Gates(**o["gates"]), o["devices"])


class RolloutManager:
    def __init__(
        self,
        store: Any,
        desired: DesiredPublisher,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.desired = desired
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()

    # -- requests ------------------------------------------------------------------------

    def check_start(self, req: StartRequest) -> dict[str, tuple[str, str]]:
        return check_start(self.store, req)

    def run_command(self, rollout_id: str, what: str, args: str) -> Rollout:
        """Carry out a command now (the API): ``start`` (``args``: a
        :class:`StartRequest` as JSON), ``pause``, ``resume``, ``abort`` (``args``:
        ``{"reason": ...}``). RolloutError when refused; returns the rollout."""
        with self._lock:
            self._command(rollout_id, what, args)
            row = self.store.rollout(rollout_id)
        assert row is not None
        return Rollout.from_dict(json.loads(row.body))

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the manager must outlive any one bad rollout or store hiccup
                log.exception("rollouts: a tick failed; trying again in %.1f s", self.interval_s)

    def tick(self) -> None:
        with self._lock:
            for cmd in self.store.take_rollout_commands():
                error = None
                try:
                    self._command(cmd.rollout, cmd.command, cmd.args)
                except (RolloutError, ValueError, KeyError) as exc:
                    error = str(exc)
                    log.error("rollout %s: %s refused: %s", cmd.rollout, cmd.command, exc)
                self.store.finish_rollout_command(cmd.id, error, self.clock())
            for row in self.store.rollouts():
                if row.state in (RolloutState.RUNNING, RolloutState.PAUSED):
                    self._step(row)

    # -- internals -----------------------------------------------------------------------

    def _command(self, rollout_id: str, what: str, args: str) -> None:
        now = self.clock()
        if what == "start":
            req = StartRequest.from_json(args)
            previous = self.check_start(req)
            r, actions = new_rollout(
                rollout_id,
                (req.model, req.version),
                previous,
                percents=req.cohorts,
                gates=req.gates,
                now=now,
            )
            marks = self._cohort_marks(r, {"ota_after": self.store.last_ota_id(), "failed": {}})
            log.info(
                "rollout %s started: %s %s on %d device(s)",
                r.id,
                r.model,
                r.version,
                len(r.devices),
            )
        else:
            row = self.store.rollout(rollout_id)
            if row is None:
                raise RolloutError(f"there is no rollout {rollout_id!r}")
            reason = json.loads(args).get("reason", "") if args else ""
            r, actions = command(Rollout.from_dict(json.loads(row.body)), what, now, reason)
            marks = json.loads(row.marks)
            log.info("rollout %s: %s (%s)", r.id, what, reason or "by hand")
        self._apply(r, actions, now)
        self._save(r, marks, now)

    def _cohort_marks(self, r: Rollout, marks: dict[str, Any]) -> dict[str, Any]:
        """Snapshot the counters every device of ``r`` has now: the cohort in flight's start."""
        counters = self.store.device_counters(COUNTERS)
        marks["cohort"] = r.cohort
        marks["since"] = {d: counters.get(d, {}) for d in r.devices}
        return marks

    def _step(self, row: RolloutRow) -> None:
        r = Rollout.from_dict(json.loads(row.body))
        marks = json.loads(row.marks)
        target = self.store.model(r.model, r.version)
        refusal = None if target is None else check_desirable(target, allow_downgrade=False)
        if target is None or refusal is not None:
            why = "is no longer registered" if refusal is None else refusal.detail
            now = self.clock()
            r, actions = command(r, "abort", now, f"{r.model} {r.version}: {why}")
            log.warning("rollout %s: aborted: %s %s %s", r.id, r.model, r.version, why)
            self._apply(r, actions, now)
            self._save(r, marks, now)
            return
        failed: dict[str, str] = marks.setdefault("failed", {})
        # A device's own report of its commit (through its durable outbox) settles it
        # at once; its next heartbeat, which names the version too, may be seconds away.
        committed: list[str] = marks.setdefault("committed", [])
        for rec in self.store.ota_reports(marks.get("ota_after", 0)):
            marks["ota_after"] = rec.id
            o = rec.ota
            if o.device not in r.devices or o.to_version != r.version:
                continue
            if o.state in _FAILED_STATES:
                failed[o.device] = o.reason
            elif o.state == "committed" and o.device not in committed:
                committed.append(o.device)
        moved = set(committed)
        devices = {d.device: d for d in self.store.devices() if d.device in r.devices}
        in_flight = r.cohorts[r.cohort] if r.cohort < len(r.cohorts) else ()
        settled = all(r.devices[d] is not DeviceState.WAITING for d in in_flight)
        counters = self.store.device_counters(COUNTERS) if settled else {}
        since: Mapping[str, Mapping[str, int]] = marks.get("since", {})

        def figures(d: str) -> CohortFigures:
            now_c, then = counters.get(d, {}), since.get(d, {})
            readings, events, compared, disagreements = (
                now_c.get(n, 0) - then.get(n, 0) for n in COUNTERS
            )
            health = devices[d].last_health if d in devices else None
            p99 = health.get("latency_p99_us") if health else None
            return CohortFigures(
                readings,
                events,
                compared,
                disagreements,
                float(p99) if isinstance(p99, int | float) else None,
            )

        reports = {
            d: DeviceReport(
                r.model if d in moved else devices[d].model if d in devices else None,
                r.version if d in moved else devices[d].model_version if d in devices else None,
                failed.get(d),
                figures(d) if settled else CohortFigures(),
            )
            for d in r.devices
        }
        control_devices = [d for d, s in r.devices.items() if s is DeviceState.PENDING]
        control = None
        if control_devices:
            parts = [figures(d) for d in control_devices] if settled else []
            control = CohortFigures(
                sum(p.readings for p in parts),
                sum(p.urgent_events for p in parts),
                sum(p.compared for p in parts),
                sum(p.disagreements for p in parts),
                max((p.latency_p99_us for p in parts if p.latency_p99_us), default=None),
            )
        now = self.clock()
        new, actions = step(r, reports, control, now)
        if new == r and not actions:
            if marks != json.loads(row.marks):
                self._save(new, marks, now)
            return
        self._apply(new, actions, now)
        if new.cohort != r.cohort:
            marks = self._cohort_marks(new, marks)
        if new.state is not r.state:
            log.info("rollout %s: %s (%s)", new.id, new.state.value, new.decisions[-1].why)
        self._save(new, marks, now)

    def _apply(self, r: Rollout, actions: Sequence[Action], now: float) -> None:
        for action in actions:
            records: list[DesiredRecord] = []
            if isinstance(action, Rollback):
                for device, (model, version) in sorted(action.devices.items()):
                    prev = self.store.model(model, version)
                    if prev is None or prev.signature is None:
                        log.error(
                            "rollout %s: cannot roll %r back to %s %s: %s; the device keeps "
                            "its desired state",
                            r.id,
                            device,
                            model,
                            version,
                            "not registered" if prev is None else "unsigned",
                        )
                        continue
                    records.append(
                        desired_record(prev, device, rollout=r.id, allow_downgrade=True, at=now)
                    )
            else:
                target = self.store.model(r.model, r.version)
                if target is None:
                    log.error("rollout %s: %s %s is no longer registered", r.id, r.model, r.version)
                    continue
                records = [
                    desired_record(target, d, rollout=r.id, allow_downgrade=False, at=now)
                    for d in action.devices
                ]
            if records:
                self.desired.set(records)

    def _save(self, r: Rollout, marks: Mapping[str, Any], now: float) -> None:
        self.store.save_rollout(
            RolloutRow(r.id, r.state.value, json.dumps(r.to_dict()), json.dumps(marks), now)
        )


def check_start(store: Any, req: StartRequest) -> dict[str, tuple[str, str]]:
    """The devices the rollout would move, each with what it runs now; RolloutError
    when the request cannot start (unknown or undesirable version, no device)."""
    record = store.model(req.model, req.version)
    if record is None:
        raise RolloutError(
            f"model {req.model} {req.version} is not registered ('edgeloop-hub models list')"
        )
    refusal = check_desirable(record, allow_downgrade=False)
    if refusal is not None:
        raise RolloutError(f"{refusal.detail} ({refusal.reason})")
    busy = set(devices_in_rollouts(store))
    wanted = None if req.devices is None else set(req.devices)
    previous: dict[str, tuple[str, str]] = {}
    for dev in store.devices():
        if wanted is not None and dev.device not in wanted:
            continue
        if dev.model != req.model or dev.model_version is None:
            continue
        previous[dev.device] = (dev.model, dev.model_version)
    if wanted is not None and (missing := sorted(wanted - set(previous))):
        raise RolloutError(
            f"device(s) {', '.join(missing[:10])} do not run {req.model} (or the hub has not "
            "heard their model yet)"
        )
    if overlap := sorted(busy & set(previous)):
        raise RolloutError(
            f"device(s) {', '.join(overlap[:10])} are in a rollout that is still running; "
            "let it finish, or abort it ('edgeloop-hub rollout abort ID')"
        )
    if wanted is not None and not wanted:
        raise RolloutError("the device list is empty: name at least one device, or none for all")
    if not previous:
        raise RolloutError(
            f"no device runs {req.model}: a rollout moves the devices whose birth or "
            "heartbeat names that model"
        )
    moving = sorted(d for d, mv in previous.items() if mv != (req.model, req.version))
    if not moving:
        raise RolloutError(f"every device named already runs {req.model} {req.version}")
    assign_cohorts(moving, req.cohorts, "check")  # the cohorts' own rules

    def rollback_target(model: str, version: str) -> bool:
        rec = store.model(model, version)
        return rec is not None and rec.signature is not None

    stuck = sorted({v for m, v in previous.values() if not rollback_target(m, v)})
    if stuck:
        raise RolloutError(
            f"devices run {req.model} {', '.join(stuck)}, which the registry does not hold "
            "signed: a failed rollout could not send them back. Register and sign it first "
            f"('edgeloop-hub models register DIR' with the hub's key), or leave those devices out "
            "(--devices)"
        )
    return previous


def devices_in_rollouts(store: Any) -> dict[str, str]:
    """Each device in a rollout still running or paused, with the rollout's id."""
    return {
        d: row.id
        for row in store.rollouts()
        if row.state in (RolloutState.RUNNING, RolloutState.PAUSED)
        for d in json.loads(row.body)["devices"]
    }


def new_rollout_id(model: str, version: str, now: float) -> str:
    """``MODEL-VERSION-YYYYmmddTHHMMSS-xxxx``: readable, sortable, unique."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{model}-{version}-{stamp}-{uuid.uuid4().hex[:4]}"
