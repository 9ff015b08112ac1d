"""``edgeloop-sim bench baseline``: per-device baselines against miscalibrated sensors.

A fleet of simulated machines, each run three ways over the same machine
stream (same seed and device index, so the same regimes, faults, urgent
conditions and labels):

- ``identical``: every device reports the true values, no baseline (the
  fleet model's home ground);
- ``miscalibrated``: every sensor of every device reports ``gain * value +
  offset``, drawn per device (``MachineConfig.calibration``), no baseline;
- ``baselines``: the same miscalibrated devices, each commissioned as the hub
  does it: a baseline from the ``{sensor}_last`` features of its first
  ``--commission`` readings (:func:`shared.baseline.compute_baseline`, the
  function ``edgeloop-hub`` calls), then an agent restarted with it.

Each reading goes through :class:`edge_agent.reading.ReadingPath`, the very
path of the agent's reading loop (input checks, baseline, feature window, the
default int8 edge model, the manifest's urgent rule with its hard limits on
the raw values). All three are scored on the readings after the first
``--commission`` (the commissioning period), so they are compared on the
same readings:

- ``recall``: the share of urgent episodes (runs of readings labelled urgent)
  with at least one urgent decision during the episode;
- ``false_alarms_per_10k``: urgent decisions on readings labelled normal, per
  10,000 normal readings; decisions during a developing fault (label 1) are
  counted in ``fault_decisions``, and ``alarms_per_10k_non_urgent`` counts
  both per 10,000 readings not labelled urgent;
- ``false_alarms_by_rule``: which rule fired them (``score``, or
  ``hard_limit``: the manifest's limits, on the raw values).

``step_us``: :meth:`~edge_agent.reading.ReadingPath.step` timed per reading
(p50, p99), on the same miscalibrated readings ``without`` and ``with`` a
baseline: what the baseline costs the agent's hot path (two numpy calls).

The target (issue 9): ``baselines`` within ``--tolerance-recall`` of
``identical``'s recall and within ``--tolerance-alarms`` of both its alarm
rates (``meets_target``); how far ``miscalibrated`` falls is
``recall_drop_without``, ``false_alarm_increase_without`` and
``non_urgent_alarm_increase_without``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from simulators.bench.arguments import (
    add_models_dir_option,
    non_negative_float,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_agent.engine import EdgeModel
    from shared.baseline import Baseline

__all__ = ["HELP", "add_arguments", "run"]

HELP: Final = (
    "urgent recall and false alarms of the fleet model on miscalibrated devices, "
    "with and without per-device baselines, against identical devices"
)
SCENARIOS: Final = ("identical", "miscalibrated", "baselines")
_URGENT, _NORMAL, _FAULT = 2, 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``edgeloop-sim bench baseline``."""
    parser.add_argument(
        "--devices", type=positive_int, default=16, help="simulated devices (default: 16)"
    )
    parser.add_argument(
        "--readings",
        type=positive_int,
        default=30_000,
        help="readings per device, commissioning included (default: 30000)",
    )
    parser.add_argument(
        "--commission",
        type=positive_int,
        default=None,
        metavar="N",
        help="readings a baseline is commissioned from (default: the hub's "
        "--baseline-readings default)",
    )
    parser.add_argument("--seed", type=int, default=11, help="fleet seed (default: 11)")
    parser.add_argument(
        "--urgent-rate",
        type=positive_float,
        default=2e-3,
        help="hazard of an urgent condition per running reading (default: 0.002, "
        "for enough episodes in a short run)",
    )
    parser.add_argument(
        "--offset",
        type=non_negative_float,
        default=0.15,
        help="offset spread, as a share of each sensor's nominal value (default: 0.15)",
    )
    parser.add_argument(
        "--gain",
        type=non_negative_float,
        default=0.2,
        help="gain spread: gains lie in [1/(1+G), 1+G] (default: 0.2)",
    )
    parser.add_argument(
        "--tolerance-recall",
        type=non_negative_float,
        default=0.02,
        help="largest recall shortfall of 'baselines' against 'identical' that meets the "
        "target (default: 0.02, two percentage points)",
    )
    parser.add_argument(
        "--tolerance-alarms",
        type=non_negative_float,
        default=1.0,
        help="largest excess of alarms per 10,000 normal (and per 10,000 non-urgent) readings "
        "of 'baselines' against 'identical' that meets the target (default: 1.0)",
    )
    add_models_dir_option(parser)


@dataclasses.dataclass
class _Tally:
    episodes: int = 0
    detected: int = 0
    normal: int = 0
    false_alarms: int = 0
    false_by_rule: dict[str, int] = dataclasses.field(default_factory=dict)
    fault_decisions: int = 0
    fault_by_rule: dict[str, int] = dataclasses.field(default_factory=dict)
    non_urgent: int = 0
    out_of_distribution: int = 0
    readings: int = 0

    def add(self, labels: npt.NDArray[np.int64], fired: list[tuple[str, ...]]) -> None:
        """Score one device's readings (after commissioning) and the rules fired on each."""
        self.readings += len(fired)
        in_episode = False
        hit = False
        for label, rules in zip(labels.tolist(), fired, strict=True):
            if label == _URGENT:
                if not in_episode:
                    in_episode, hit = True, False
                    self.episodes += 1
                if rules and not hit:
                    hit = True
                    self.detected += 1
                continue
            in_episode = False
            self.non_urgent += 1
            if label == _NORMAL:
                self.normal += 1
                if rules:
                    self.false_alarms += 1
                    for rule in rules:
                        self.false_by_rule[rule] = self.false_by_rule.get(rule, 0) + 1
            elif rules:
                self.fault_decisions += 1
                for rule in rules:
                    self.fault_by_rule[rule] = self.fault_by_rule.get(rule, 0) + 1

    def figures(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "urgent_episodes": self.episodes,
            "detected": self.detected,
            "recall": round(self.detected / self.episodes, 4) if self.episodes else None,
            "normal_readings": self.normal,
            "false_alarms": self.false_alarms,
            "false_alarms_per_10k": round(1e4 * self.false_alarms / max(self.normal, 1), 3),
            "false_alarms_by_rule": dict(sorted(self.false_by_rule.items())),
            "fault_decisions": self.fault_decisions,
            "fault_decisions_by_rule": dict(sorted(self.fault_by_rule.items())),
            "alarms_per_10k_non_urgent": round(
                1e4 * (self.false_alarms + self.fault_decisions) / max(self.non_urgent, 1), 3
            ),
            "out_of_distribution_values": self.out_of_distribution,
        }


def _run_path(
    model: EdgeModel, values: npt.NDArray[np.float64], baseline: Baseline | None
) -> tuple[npt.NDArray[np.float32], list[tuple[str, ...]], int, list[int]]:
    """Every reading through a fresh agent's reading path: features, rules fired, the
    out-of-distribution count and each step's time (ns)."""
    from edge_agent.reading import ReadingPath  # noqa: PLC0415

    path = ReadingPath(model, baseline)
    feats = np.empty((values.shape[0], path.features.n_features), dtype=np.float32)
    fired: list[tuple[str, ...]] = []
    times: list[int] = []
    clock = time.perf_counter_ns
    for i, row in enumerate(values):
        t0 = clock()
        feats[i], _, decisions = path.step(row)
        times.append(clock() - t0)
        fired.append(tuple(d.rule for d in decisions))
    return feats, fired, int(path.inputs.out_of_distribution.sum()), times


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from cloud_hub.settings import OPTIONS  # noqa: PLC0415
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415
    from shared.baseline import compute_baseline, last_values  # noqa: PLC0415
    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415

    commission = args.commission or int(OPTIONS["baseline_readings"].default)
    if commission >= args.readings:
        raise ValueError(
            f"--commission {commission} leaves no readings to score of --readings "
            f"{args.readings}; give more readings"
        )
    started = time.monotonic()
    built = build_default_models(args.models_dir)
    model = load_edge_model(built.edge, __version__)
    manifest = model.manifest
    sensors = manifest.input.sensor_names
    tallies = {name: _Tally() for name in SCENARIOS}
    gains: list[float] = []
    step_ns: dict[str, list[int]] = {"without": [], "with": []}
    for device in range(args.devices):
        base = MachineConfig(seed=args.seed, device_index=device, urgent_rate=args.urgent_rate)
        skewed = dataclasses.replace(base, calibration=(args.offset, args.gain))
        streams = {}
        labels: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        for name, config in (("identical", base), ("miscalibrated", skewed)):
            readings = list(SimulatedMachine(config).readings(args.readings))
            streams[name] = np.array([r.values for r in readings])
            labels = np.array([r.label for r in readings], dtype=np.int64)
        gains += [g for g, _ in SimulatedMachine(skewed).calibration()]
        after = labels[commission:]
        _, fired, ood, _ = _run_path(model, streams["identical"], None)
        tallies["identical"].add(after, fired[commission:])
        tallies["identical"].out_of_distribution += ood
        feats, fired, ood, took = _run_path(model, streams["miscalibrated"], None)
        tallies["miscalibrated"].add(after, fired[commission:])
        tallies["miscalibrated"].out_of_distribution += ood
        step_ns["without"] += took[commission:]
        # Commissioning, as the hub does it: the stored `_last` features of the first N.
        baseline = compute_baseline(
            last_values(feats[:commission], sensors),
            sensors,
            device=f"sim-{device}",
            model=manifest.name,
            since=0.0,
            until=float(commission - 1),
            min_readings=commission,
        )
        _, fired, ood, took = _run_path(model, streams["miscalibrated"][commission:], baseline)
        tallies["baselines"].add(after, fired)
        tallies["baselines"].out_of_distribution += ood
        step_ns["with"] += took
    figures = {name: t.figures() for name, t in tallies.items()}
    ident, without, withb = (figures[n] for n in SCENARIOS)

    def diff(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
        if a[key] is None or b[key] is None:
            return None
        return round(float(a[key]) - float(b[key]), 4)

    recall_gap = diff(ident, withb, "recall")
    alarm_gap = diff(withb, ident, "false_alarms_per_10k")
    any_alarm_gap = diff(withb, ident, "alarms_per_10k_non_urgent")
    gaps = (recall_gap, alarm_gap, any_alarm_gap)
    limits = (args.tolerance_recall, args.tolerance_alarms, args.tolerance_alarms)
    return {
        "bench": "baseline",
        "model": f"{manifest.name} {manifest.version}",
        "devices": args.devices,
        "readings_per_device": args.readings,
        "commission_readings": commission,
        "seed": args.seed,
        "urgent_rate": args.urgent_rate,
        "calibration": {
            "offset_spread": args.offset,
            "gain_spread": args.gain,
            "gain_range_drawn": [round(min(gains), 3), round(max(gains), 3)],
        },
        **figures,
        "recall_drop_without": diff(ident, without, "recall"),
        "false_alarm_increase_without": diff(without, ident, "false_alarms_per_10k"),
        "non_urgent_alarm_increase_without": diff(without, ident, "alarms_per_10k_non_urgent"),
        "recall_drop_with": recall_gap,
        "false_alarm_increase_with": alarm_gap,
        "non_urgent_alarm_increase_with": any_alarm_gap,
        "tolerance": {
            "recall": args.tolerance_recall,
            "false_alarms_per_10k": args.tolerance_alarms,
        },
        "meets_target": all(g is not None and g <= t for g, t in zip(gaps, limits, strict=True)),
        "step_us": {
            k: {
                "p50": round(float(np.percentile(v, 50)) / 1000.0, 2),
                "p99": round(float(np.percentile(v, 99)) / 1000.0, 2),
            }
            for k, v in step_ns.items()
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
