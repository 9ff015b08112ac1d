"""``edgeloop-sim bench loop``: the closed loop on a seeded fleet of real agents.

drift on some devices -> fleet drift alarm -> retraining pipeline run -> canary
rollout -> promotion to production, and a second pipeline run made worse on
purpose that the gate must stop.

It brings up what ``bench ota`` does (see :mod:`simulators.bench.ota`): a broker
(the hub's embedded one by default, Mosquitto with ``--broker mosquitto``), the
hub with a signing key, one account per device, agent hosts running real
agents with ``--ota`` (no separate agent processes here). Besides:

1. the hub runs the drift monitor with a short detector start and an explicit
   threshold (``--fit-readings``, ``--scale-readings``, ``--threshold``: the
   calibrated threshold holds for the default 30,000-reading start only, see
   ``edgeloop-sim bench drift``), ``--pipeline-on-drift true``,
   ``--pipeline-canary true``, a short ``--pipeline-drift-wait-s`` and a short
   rollout tick (``tests/simulators/test_bench_loop.py`` runs it on 4 agents);
2. ``--drifted-share`` of the devices (picked with the fleet's seed) get a
   recalibration offset of ``--drift-scales`` times the sensor's reference
   ``scale`` (from the edge model's manifest) at reading ``--drift-at``, after
   the detector's start, and the simulator's bearing-wear hazard
   ``--fault-rate`` (the retraining data needs every class);
3. stages, each with its own timeout, timed from the drift's start (the wall
   time the drifted devices produced reading ``--drift-at``, median over them):
   the fleet alarm (``alarm_s``, the alarm event's time), the end of the
   pipeline run it started (``retrain_s``, the run's ``finished_at``), the
   canary rollout completed (``rollout_s``, when the bench saw it completed);
   then the candidate is promoted to production through the API
   (``POST /v1/models/NAME/VERSION/stage``, admin token) as an operator would;
4. ``--after-s`` seconds on the new model, then (unless ``--no-worse``) a second
   run, started through the API (``POST /v1/pipeline/runs``, trigger
   ``admin``) over the same telemetry with the test/bench-only option
   ``sabotage_labels`` (``--sabotage``): the gate must reject it, and the
   production version and the registry's versions must be untouched;
5. after the agents stop and ingest settles, from the store (read-only), on the
   drifted devices: the edge/heavy disagreement (argmax of the two models'
   stored scores differ) and the heavy model's agreement with the simulator's
   ground truth, over the readings after the drift scored by the old model
   (before) and by the new one (after).

Ground truth: the agent's simulated source stamps a reading with the wall
clock (``time.time()``), not its index, so readings cannot be matched by
timestamp. Each agent's machine is rebuilt from its seed, rate, drift and
fault rate (the agent takes no local action on the machine: ``--actions`` is
``log``), which replays the same readings: a device's k-th stored reading
(by timestamp) is taken as reading k, and kept only where the sensor values
the agent scored (the ``*_last`` features) equal the rebuilt machine's; the
share kept is ``ground_truth_matched``. A lost reading would shift the rest of
that device's readings, which then fail the check and are left out.

The heavy model is not retrained by the pipeline (only the edge student is;
see README), so the heavy model's agreement with the ground truth measures the
teacher on drifted data before and after, not an improvement.

The last line on stdout is one JSON object (see :func:`run`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from simulators.bench.fleet import FleetBenchError, _FleetBench, config_fields
from simulators.bench.fleet import add_arguments as add_fleet_arguments
from simulators.bench.ota import OtaBenchConfig, _OtaBench
from simulators.harness import HarnessError

if TYPE_CHECKING:
    from cloud_hub.store.base import Store
    from simulators.drift import DriftSpec

__all__ = [
    "HELP",
    "LoopBenchConfig",
    "add_arguments",
    "agreement",
    "disagreement",
    "match_readings",
    "replay_machine",
    "run",
    "run_loop_bench",
]

HELP: Final = (
    "the closed loop on N real agents: drift on some -> fleet alarm -> retraining run -> canary "
    "-> production, edge/heavy disagreement and ground-truth agreement before and after, and a "
    "worse candidate stopped by the gate (JSON)"
)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

_POLL_S: Final = 0.5
_SAY_EVERY_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class LoopBenchConfig(OtaBenchConfig):
    """``bench ota``'s settings (no separate agents) and the loop's."""

    drifted_share: float = 0.3
    drift_at: int = 2200
    """Reading index of the drift's start: after the detector's start (fit + scale)."""
    drift_sensor: str = "pressure"
    drift_scales: float = 3.0
    """The offset, in units of the sensor's reference ``scale`` in the edge model's manifest."""
    fault_rate: float = 0.002
    fit_readings: int = 1000
    scale_readings: int = 1000
    threshold: float = 60.0
    fleet_share: float = 0.2
    drift_wait_s: float = 20.0
    cohorts: str = "10,100"
    rollout_tick_s: float = 0.5
    f1_tolerance: float = 0.01
    worse: bool = True
    sabotage: float = 0.6
    alarm_timeout_s: float = 300.0
    retrain_timeout_s: float = 600.0
    rollout_timeout_s: float = 300.0
    worse_timeout_s: float = 600.0

    @property
    def bench_name(self) -> str:
        return "bench loop"

    @property
    def drifted(self) -> int:
        """How many devices drift (at least 1 when the share is above 0)."""
        return min(self.devices, max(1, round(self.drifted_share * self.devices)))

    def __post_init__(self) -> None:
        OtaBenchConfig.__post_init__(self)
        problems = []
        if not 0 < self.drifted_share <= 1:
            problems.append(f"--drifted-share must be in (0, 1], got {self.drifted_share:g}")
        if self.drift_at <= self.fit_readings + self.scale_readings:
            problems.append(
                f"--drift-at ({self.drift_at}) must come after the detector's start "
                f"(--fit-readings + --scale-readings = {self.fit_readings + self.scale_readings})"
            )
        if not 0 < self.sabotage <= 1:
            problems.append(f"--sabotage must be in (0, 1], got {self.sabotage:g}")
        for name in ("alarm_timeout_s", "retrain_timeout_s", "rollout_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                problems.append(f"--{name.replace('_', '-')} must be in (0, 3600]")
        if problems:
            raise ValueError("bench loop: " + "; ".join(problems))


# -- pure parts --------------------------------------------------------------------------------


def disagreement(edge_scores: F32, heavy_scores: F32) -> float | None:
    """Share of readings whose edge and heavy argmax differ (None: no readings).

    >>> e = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    >>> disagreement(e, np.array([[0.6, 0.4], [0.7, 0.3]], np.float32))
    0.5
    """
    if len(edge_scores) == 0:
        return None
    return float(np.mean(edge_scores.argmax(axis=1) != heavy_scores.argmax(axis=1)))


def agreement(scores: F32, labels: I64) -> float | None:
    """Share of readings whose argmax is the ground-truth label (None: no readings).

    >>> agreement(np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), np.array([0, 0]))
    0.5
    """
    if len(scores) == 0:
        return None
    return float(np.mean(scores.argmax(axis=1) == labels))


def replay_machine(
    seed: int,
    *,
    rate_hz: float,
    drifts: tuple[DriftSpec, ...],
    fault_rate: float | None,
    n: int,
    sensors: Sequence[str],
) -> tuple[F32, I64]:
    """The first ``n`` readings (values in ``sensors`` order, as the agent's
    simulated source hands them over) and ground-truth labels of the machine an
    agent with these ``--sim-*`` settings runs."""
    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415
    from simulators.sensors import SENSOR_NAMES  # noqa: PLC0415

    config = MachineConfig(seed=seed, rate_hz=rate_hz, drifts=drifts)
    if fault_rate is not None:
        config = replace(config, fault_rate=fault_rate)
    machine = SimulatedMachine(config)
    order = [SENSOR_NAMES.index(s) for s in sensors]
    values = np.empty((n, len(order)), np.float32)
    labels = np.empty(n, np.int64)
    for k in range(n):
        r = machine.step()
        values[k] = r.values[order]
        labels[k] = r.label
    return values, labels


def match_readings(stored_last: F32, replayed: F32) -> B:
    """Which stored readings (in timestamp order; their per-sensor latest values)
    are the replayed machine's reading of the same index: every sensor the machine
    reported (not NaN) has the same float32 value. A reading with no reported
    value, or beyond the replayed ones, does not match.

    >>> s = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    >>> r = np.array([[1.0, np.nan], [3.0, 4.5]], np.float32)
    >>> match_readings(s, r).tolist()
    [True, False, False]
    """
    n = min(len(stored_last), len(replayed))
    out = np.zeros(len(stored_last), bool)
    if n == 0:
        return out
    s, r = stored_last[:n], replayed[:n]
    reported = ~np.isnan(r)
    same = np.isclose(s, r, rtol=1e-6, atol=1e-6) | ~reported
    out[:n] = same.all(axis=1) & reported.any(axis=1)
    return out


@dataclass
class _Side:
    """The drifted devices' readings after the drift under one model version."""

    edge: list[F32]
    heavy: list[F32]
    labels: list[I64]
    labelled: int = 0
    readings: int = 0

    def figures(self) -> tuple[float | None, float | None, float | None]:
        """(edge/heavy disagreement, heavy and edge agreement with the ground truth)."""
        if not self.edge:
            return None, None, None
        edge, heavy = np.concatenate(self.edge), np.concatenate(self.heavy)
        labels = np.concatenate(self.labels)
        known = labels >= 0
        return (
            disagreement(edge, heavy),
            agreement(heavy[known], labels[known]),
            agreement(edge[known], labels[known]),
        )


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench fleet``'s options and the loop's."""
    d = LoopBenchConfig(devices=50, rate_hz=20.0, duration_s=1.0, broker="embedded")
    add_fleet_arguments(
        parser,
        d,
        duration_help="unused here (the stages set the length)",
        work_dir_help="; the agent hosts' own state directories are on /dev/shm and removed",
    )
    # (flag, type, what; the default is the config field's), table-driven: one shape.
    options: tuple[tuple[str, type, str], ...] = (
        ("--drifted-share", float, "share of the devices that drift"),
        ("--drift-at", int, "reading index the drift starts at, after the detector's start"),
        ("--drift-sensor", str, "the sensor that drifts"),
        ("--drift-scales", float, "the recalibration offset, in units of the sensor's "
         "reference scale (the edge model's manifest)"),
        ("--fault-rate", float, "the drifted machines' bearing-wear hazard per reading, so the "
         "retraining data holds every class"),
        ("--fit-readings", int, "the hub's --drift-fit-readings"),
        ("--scale-readings", int, "the hub's --drift-scale-readings"),
        ("--threshold", float, "the hub's --drift-threshold"),
        ("--fleet-share", float, "the hub's --fleet-drift-share"),
        ("--drift-wait-s", float, "the hub's --pipeline-drift-wait-s"),
        ("--cohorts", str, "the hub's --pipeline-cohorts"),
        ("--f1-tolerance", float, "the hub's --pipeline-f1-tolerance"),
        ("--sabotage", float, "the worse run's sabotage_labels option"),
        ("--alarm-timeout-s", float, "how long to wait for the fleet alarm after the drift"),
        ("--retrain-timeout-s", float, "how long to wait for the pipeline run (after the "
         "drift wait)"),
        ("--rollout-timeout-s", float, "how long to wait for the canary rollout to complete"),
        ("--worse-timeout-s", float, "how long to wait for the worse run"),
    )  # fmt: skip
    for flag, kind, what in options:
        default = getattr(d, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{what} (default: {default})")
    parser.add_argument(
        "--after-s",
        type=float,
        default=20.0,
        help="seconds on the new model before the worse run and the stop (default: 20)",
    )
    parser.add_argument(
        "--no-worse",
        action="store_true",
        help="skip the second run, made worse on purpose, that the gate must reject",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed arguments and return its JSON-able result: at least
    ``disagreement_before``, ``disagreement_after``, ``ground_truth_agreement_before``,
    ``ground_truth_agreement_after``, ``alarm_s``, ``retrain_s``, ``rollout_s``,
    ``worse_candidate_rejected``, ``devices``, ``drifted``, ``broker``, ``targets_met``."""
    config = LoopBenchConfig(
        **config_fields(args),
        rss_agents=0,
        after_s=args.after_s,
        drifted_share=args.drifted_share,
        drift_at=args.drift_at,
        drift_sensor=args.drift_sensor,
        drift_scales=args.drift_scales,
        fault_rate=args.fault_rate,
        fit_readings=args.fit_readings,
        scale_readings=args.scale_readings,
        threshold=args.threshold,
        fleet_share=args.fleet_share,
        drift_wait_s=args.drift_wait_s,
        cohorts=args.cohorts,
        f1_tolerance=args.f1_tolerance,
        worse=not args.no_worse,
        sabotage=args.sabotage,
        alarm_timeout_s=args.alarm_timeout_s,
        retrain_timeout_s=args.retrain_timeout_s,
        rollout_timeout_s=args.rollout_timeout_s,
        worse_timeout_s=args.worse_timeout_s,
    )
    return run_loop_bench(config)


def run_loop_bench(config: LoopBenchConfig) -> dict[str, Any]:
    """Run the loop benchmark; returns its result (the JSON object the CLI prints)."""
    return _LoopBench(config).run()


# -- the run -----------------------------------------------------------------------------------


class _StageError(FleetBenchError):
    """A stage did not happen in time, or ended badly; the message says which."""


class _LoopBench(_OtaBench):
    name = "bench loop"
    config: LoopBenchConfig

    def __init__(self, config: LoopBenchConfig) -> None:
        super().__init__(config)
        self.seeds: dict[str, int] = {}
        self.drifts: dict[str, tuple[DriftSpec, ...]] = {}
        self.candidate: str | None = None
        self.online_at = 0.0
        self.stage_at: dict[str, float] = {}
        self.offset = 0.0
        self.drifted_devices: frozenset[str] = frozenset()

    # -- bring-up ------------------------------------------------------------------------------

    def _start_hub(self) -> None:
        # bench ota's registers a second version to roll out; here the pipeline makes it.
        from shared.manifest import load_package  # noqa: PLC0415

        _FleetBench._start_hub(self)
        manifest = load_package(self._edge).manifest
        self.model_name, self.old_version = manifest.name, manifest.version
        if self.config.drift_sensor not in manifest.reference_sensors:
            raise FleetBenchError(
                f"bench loop: --drift-sensor {self.config.drift_sensor!r} is not one of the edge "
                f"model's sensors: {', '.join(manifest.reference_sensors)}"
            )
        scale = manifest.reference_sensors[self.config.drift_sensor].scale
        self.offset = self.config.drift_scales * scale
        self.result.update(
            {
                "model": self.model_name,
                "from_version": self.old_version,
                "drift": f"offset:{self.config.drift_sensor}:{self.config.drift_at}:"
                f"{self.offset:.4f} ({self.config.drift_scales:g} x scale {scale:.4g})",
            }
        )

    def _hub_args(self) -> tuple[str, ...]:
        c = self.config
        return (
            "--drift-fit-readings", str(c.fit_readings),
            "--drift-scale-readings", str(c.scale_readings),
            "--drift-threshold", f"{c.threshold:g}",
            "--fleet-drift-share", f"{c.fleet_share:g}",
            "--pipeline-on-drift", "true",
            "--pipeline-canary", "true",
            "--pipeline-drift-wait-s", f"{c.drift_wait_s:g}",
            "--pipeline-cohorts", c.cohorts,
            "--pipeline-f1-tolerance", f"{c.f1_tolerance:g}",
            "--rollout-tick-s", f"{c.rollout_tick_s:g}",
        )  # fmt: skip

    def _start_hosts(self, edge: Path, provisioned: list[Any]) -> None:
        import random  # noqa: PLC0415

        c = self.config
        names = sorted(p.device for p in provisioned)
        self.drifted_devices = frozenset(random.Random(c.seed).sample(names, c.drifted))
        self.result["drifted"] = len(self.drifted_devices)
        self.result["drifted_devices"] = sorted(self.drifted_devices)
        super()._start_hosts(edge, provisioned)

    def _agent_args(self, device: str, seed: int) -> tuple[str, ...]:
        from simulators.drift import parse_drift  # noqa: PLC0415

        self.seeds[device] = seed
        if device not in self.drifted_devices:
            return ()
        spec = f"offset:{self.config.drift_sensor}:{self.config.drift_at}:{self.offset:.4f}"
        self.drifts[device] = (parse_drift(spec),)
        return ("--sim-drift", spec, "--sim-fault-rate", f"{self.config.fault_rate:g}")

    # -- the loop ------------------------------------------------------------------------------

    def _steady(self) -> None:
        import psutil  # noqa: PLC0415

        c = self.config
        self.online_at = time.time()
        self.result["expected_drift_start_after_online_s"] = round(c.drift_at / c.rate_hz, 1)
        usages = self._procs()
        for usage in usages:
            usage.begin()
        psutil.cpu_percent(None)
        t0 = time.monotonic()
        try:
            self._loop()
        except _StageError as exc:
            self.errors.append(str(exc))
            self.say(str(exc))
        finally:
            for usage in usages:
                usage.end()
            hub, broker, hosts = usages
            self.result.update(
                {
                    "loop_s": round(time.monotonic() - t0, 1),
                    "hub_cpu_pct": hub.cpu_pct,
                    "broker_cpu_pct": broker.cpu_pct,
                    "host_cpu_pct": hosts.cpu_pct,
                    "machine_cpu_pct": psutil.cpu_percent(None),
                    "machine_cores": psutil.cpu_count(),
                }
            )

    def _loop(self) -> None:
        assert self.hub is not None
        c = self.config
        # 1. the fleet alarm
        drift_eta = self.online_at + c.drift_at / c.rate_hz
        self.say(
            f"{len(self.drifted_devices)} of {c.devices} devices drift at reading {c.drift_at} "
            f"(in about {drift_eta - time.time():.0f} s); waiting for the fleet alarm"
        )
        alarm = self._wait(
            "a fleet drift alarm",
            self._fleet_alarm,
            drift_eta + c.alarm_timeout_s - time.time(),
        )
        self.stage_at["alarm"] = float(alarm["at"])
        named = set(alarm.get("detail", {}).get("devices", []))
        self.result["alarm_devices"] = len(named)
        self.result["alarm_devices_drifted"] = len(named & self.drifted_devices)
        self.result["alarm_streams"] = alarm.get("streams")
        self.say(f"fleet alarm on {alarm.get('streams')}: {len(named)} devices named")
        # 2. the pipeline run it started
        run = self._wait(
            "the end of the drift-triggered pipeline run",
            self._drift_run,
            c.drift_wait_s + c.retrain_timeout_s,
        )
        self._drift_seen()
        self.result["retrain_run"] = run["id"]
        self.result["retrain_run_state"] = run["state"]
        self.result["retrain_gates"] = [g.get("detail") for g in run.get("gates", [])]
        self.result["retrain_metrics"] = run.get("metrics")
        if run["state"] != "succeeded" or not run.get("candidate"):
            raise _StageError(
                f"bench loop: the drift-triggered pipeline run {run['id']} ended {run['state']}: "
                f"{run.get('why')}"
            )
        self.stage_at["retrain"] = float(run["finished_at"])
        self.candidate = str(run["candidate"])
        self.result["to_version"] = self.candidate
        assert self.api is not None
        record = self.api.get_json(f"/v1/models/{self.model_name}/{self.candidate}/record")
        lineage = record.get("lineage") or {}
        self.result["candidate_lineage"] = {
            k: lineage.get(k) for k in ("parent", "pipeline_run", "data_window", "data_hash")
        }
        self.say(f"pipeline run {run['id']} succeeded: candidate {self.candidate}")
        # 3. its canary rollout, to completion
        rollout = self._wait(
            "the candidate's canary rollout to complete", self._rollout_done, c.rollout_timeout_s
        )
        self.stage_at["rollout"] = time.time()
        self.result["rollout_id"] = rollout["id"]
        self.result["rollout_devices"] = rollout.get("devices")
        self.say(f"rollout {rollout['id']} completed")
        # 4. promotion, as an operator would
        self._promote()
        if c.after_s:
            self.say(f"running {c.after_s:g} s more on {self.candidate}")
            time.sleep(c.after_s)
        # 5. the worse run
        if c.worse:
            self._worse()

    def _wait(self, what: str, probe: Any, timeout: float) -> dict[str, Any]:
        """Poll ``probe`` (None until the stage happened; it may raise _StageError)."""
        deadline = time.monotonic() + max(0.0, timeout)
        last_say = time.monotonic()
        while True:
            self._check_hosts(fatal=True)
            found: dict[str, Any] | None = None
            with contextlib.suppress(HarnessError, OSError, ValueError):
                found = probe()
            if found is not None:
                return found
            now = time.monotonic()
            if now >= deadline:
                raise _StageError(
                    f"bench loop: no {what} within {timeout:.0f} s; the hub's log: "
                    f"{self.work / 'hub.log'}"
                )
            if now - last_say >= _SAY_EVERY_S:
                self.say(f"waiting for {what} ({deadline - now:.0f} s left)")
                last_say = now
            time.sleep(_POLL_S)

    def _fleet_alarm(self) -> dict[str, Any] | None:
        assert self.api is not None
        events = self.api.get_json("/v1/events?kind=drift&limit=1000", timeout=10.0)["events"]
        fleet = [
            e
            for e in events
            if e["scope"] == "fleet" and e["state"] == "drifting" and e["model"] == self.model_name
        ]
        return min(fleet, key=lambda e: float(e["at"])) if fleet else None

    def _drift_seen(self) -> None:
        """What the API shows once the drift-triggered run ended (the devices are still on
        the old version): the devices with a drift event, and the devices
        ``GET /v1/drift`` lists as drifting on the old version."""
        assert self.api is not None
        events = self.api.get_json("/v1/events?kind=drift&limit=1000", timeout=10.0)["events"]
        self.result["drift_event_devices"] = sorted(
            {e["device"] for e in events if e["scope"] == "device" and e["state"] == "drifting"}
        )
        versions = self.api.get_json("/v1/drift", timeout=10.0)["versions"]
        self.result["drifting_in_api"] = sorted(
            d
            for v in versions
            if v["model"] == self.model_name and v["version"] == self.old_version
            for d in v["drifting"]
        )

    def _drift_run(self) -> dict[str, Any] | None:
        assert self.api is not None
        runs = self.api.get_json("/v1/pipeline/runs", timeout=10.0)["runs"]
        ended = [r for r in runs if r["trigger"] == "drift" and r["state"] != "running"]
        if not ended:
            return None
        first = min(ended, key=lambda r: float(r["created_at"]))
        detail: dict[str, Any] = self.api.get_json(f"/v1/pipeline/runs/{first['id']}")
        return detail

    def _rollout_done(self) -> dict[str, Any] | None:
        assert self.api is not None
        rollouts = self.api.get_json("/v1/rollouts", timeout=10.0)["rollouts"]
        mine = [r for r in rollouts if r["version"] == self.candidate]
        if not mine:
            return None
        r: dict[str, Any] = mine[0]
        self.result["rollout_state"] = r["state"]
        if r["state"] == "aborted":
            last = (r.get("decisions") or [{}])[-1]
            raise _StageError(
                f"bench loop: the canary rollout {r['id']} aborted: {last.get('why')} "
                f"({last.get('gates')}); devices {r.get('devices')}"
            )
        return r if r["state"] == "completed" else None

    def _production(self) -> list[str]:
        assert self.api is not None
        models = self.api.get_json("/v1/models", timeout=10.0)["models"]
        return [
            m["version"]
            for m in models
            if m["name"] == self.model_name and m["stage"] == "production"
        ]

    def _promote(self) -> None:
        assert self.hub is not None and self.candidate is not None
        reply = self.hub.admin_api.request(
            "POST",
            f"/v1/models/{self.model_name}/{self.candidate}/stage",
            json_body={
                "stage": "production",
                "reason": "bench loop: the drift-triggered candidate rolled out to every device",
            },
            timeout=30.0,
        )
        if reply.status != 200:
            raise _StageError(
                f"bench loop: promoting {self.model_name} {self.candidate} to production: HTTP "
                f"{reply.status} {reply.body[:300]!r}"
            )
        self.result["promoted"] = (
            f"{self.model_name} {self.candidate} -> production through "
            f"POST /v1/models/{self.model_name}/{self.candidate}/stage (admin token)"
        )
        self.result["production_after_promotion"] = self._production()
        self.say(f"promoted {self.candidate} to production (POST .../stage, admin)")

    def _worse(self) -> None:
        assert self.hub is not None and self.api is not None
        c = self.config
        before = self._production()
        versions = {m["version"] for m in self.api.get_json("/v1/models")["models"]}
        rollouts = len(self.api.get_json("/v1/rollouts")["rollouts"])
        body = {
            "model": self.model_name,
            "window": {"from": self.online_at - 60.0, "to": time.time() + 1.0},
            "options": {"sabotage_labels": c.sabotage},
            "reason": "bench loop: a candidate made worse on purpose; the gate must stop it",
        }
        deadline = time.monotonic() + c.worse_timeout_s
        while True:  # a run of the model may still be running (another drift alarm): retry
            reply = self.hub.admin_api.request(
                "POST", "/v1/pipeline/runs", json_body=body, timeout=30.0
            )
            if reply.status == 202:
                break
            if reply.status != 409 or time.monotonic() >= deadline:
                raise _StageError(
                    f"bench loop: POST /v1/pipeline/runs (the worse run): HTTP {reply.status} "
                    f"{reply.body[:300]!r}"
                )
            time.sleep(2.0)
        run_id = str(reply.json()["id"])
        self.say(f"worse run {run_id} started (sabotage_labels={c.sabotage:g})")

        def ended() -> dict[str, Any] | None:
            assert self.api is not None
            r: dict[str, Any] = self.api.get_json(f"/v1/pipeline/runs/{run_id}")
            return None if r["state"] == "running" else r

        run = self._wait("the end of the worse run", ended, deadline - time.monotonic())
        after = self._production()
        versions_after = {m["version"] for m in self.api.get_json("/v1/models")["models"]}
        rollouts_after = len(self.api.get_json("/v1/rollouts")["rollouts"])
        untouched = after == before and versions_after == versions and rollouts_after == rollouts
        self.result.update(
            {
                "worse_run": run_id,
                "worse_run_state": run["state"],
                "worse_run_why": run.get("why"),
                "worse_gates": [g.get("detail") for g in run.get("gates", [])],
                "worse_production_untouched": untouched,
                "worse_candidate_rejected": run["state"] == "rejected" and untouched,
            }
        )
        self.say(f"worse run {run_id}: {run['state']}; production untouched: {untouched}")

    # -- measuring -----------------------------------------------------------------------------

    def _settle(self) -> None:
        _FleetBench._settle(self)
        self._measure()

    def _drift_start(self, store: Store) -> float | None:
        """Median wall time at which the drifted devices produced reading ``--drift-at``."""
        at = []
        for device in self.drifted_devices:
            ts = self._timestamps(store, device)
            if len(ts) > self.config.drift_at:
                at.append(float(ts[self.config.drift_at]))
        if not at:
            return None
        self.result["drift_start_spread_s"] = round(max(at) - min(at), 2)
        return statistics.median(at)

    @staticmethod
    def _timestamps(store: Store, device: str) -> npt.NDArray[np.float64]:
        rows = store.telemetry(device, 0.0, math.inf, 10_000_000).items
        if not rows:
            return np.empty(0)
        return np.sort(np.concatenate([r.ts for r in rows]))

    def _measure(self) -> None:
        from cloud_hub.store import open_store  # noqa: PLC0415
        from shared.manifest import load_package  # noqa: PLC0415

        assert self.hub is not None
        c = self.config
        sensors = load_package(self._edge).manifest.input.sensor_names
        before = _Side([], [], [])
        after = _Side([], [], [])
        matched = total = 0
        store = open_store(f"sqlite:///{self.hub.db_path}")
        try:
            t_drift = self._drift_start(store)
            for device in sorted(self.drifted_devices):
                rows = store.telemetry(device, 0.0, math.inf, 10_000_000).items
                if not rows:
                    continue
                ts = np.concatenate([r.ts for r in rows])
                order = np.argsort(ts, kind="stable")
                feats = np.concatenate([r.features for r in rows])[order]
                edge = np.concatenate([r.edge_scores for r in rows])[order]
                heavy = np.concatenate([r.heavy_scores for r in rows])[order]
                version = np.concatenate(
                    [np.full(len(r.ts), r.edge_model_version, object) for r in rows]
                )[order]
                values, labels = replay_machine(
                    self.seeds[device],
                    rate_hz=c.rate_hz,
                    drifts=self.drifts[device],
                    fault_rate=c.fault_rate,
                    n=len(ts),
                    sensors=sensors,
                )
                ok = match_readings(feats[:, : len(sensors)], values)
                known = np.where(ok, labels[: len(ok)], -1)
                drifted = np.arange(len(ts)) >= c.drift_at
                matched += int(ok[drifted].sum())
                total += int(drifted.sum())
                for side, v in ((before, self.old_version), (after, self.candidate)):
                    pick = drifted & (version == v)
                    side.edge.append(edge[pick])
                    side.heavy.append(heavy[pick])
                    side.labels.append(known[pick])
                    side.readings += int(pick.sum())
                    side.labelled += int((known[pick] >= 0).sum())
        finally:
            store.close()
        d0, gt0, e0 = before.figures()
        d1, gt1, e1 = after.figures()
        r = self.result
        for stage in ("alarm", "retrain", "rollout"):
            at = self.stage_at.get(stage)
            r[f"{stage}_s"] = None if at is None or t_drift is None else round(at - t_drift, 1)
        r.update(
            {
                "disagreement_before": _rounded(d0),
                "disagreement_after": _rounded(d1),
                "ground_truth_agreement_before": _rounded(gt0),
                "ground_truth_agreement_after": _rounded(gt1),
                "edge_ground_truth_agreement_before": _rounded(e0),
                "edge_ground_truth_agreement_after": _rounded(e1),
                "readings_before": before.readings,
                "readings_after": after.readings,
                "ground_truth_matched": _rounded(matched / total) if total else None,
            }
        )
        r.setdefault("worse_candidate_rejected", None if c.worse else "not run (--no-worse)")
        r["targets_met"] = {
            "disagreement_after<disagreement_before": None if d0 is None or d1 is None else d1 < d0,
            "worse_candidate_rejected": r["worse_candidate_rejected"] is True if c.worse else None,
            "every_stage": all(
                r.get(f"{s}_s") is not None for s in ("alarm", "retrain", "rollout")
            ),
        }
        self.say(json.dumps(r["targets_met"]))
