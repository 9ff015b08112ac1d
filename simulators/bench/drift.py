"""``edgeloop-sim bench drift``: detection delay and false alarms of the drift detector.

On seeded simulator streams (regimes, dropouts and urgent events as the
simulator makes them; bearing wear off, since it is a real change of the
machine, not a stationary stream), :class:`shared.drift.detector.DriftDetector`
runs as the hub would run it, against sensor references computed from other
simulated devices by the pipeline's rule
(:func:`cloud_hub.pipeline.package.sensor_references`).

- **Stationary streams**: ``--readings`` readings after the detector's start
  (``fit_readings + scale_readings``), in streams of ``--stream-readings``. The
  false alarms on them, per 10^6 readings, with the 95 % upper bound (Poisson)
  that this many readings can show.
- **Drifts** (``--streams-per-kind`` streams each, the drifted sensor taken in
  turn, starting at a seeded reading ``--pre-drift`` + 0..999 readings after
  the start): ``mean_shift_0.5`` / ``_1`` / ``_2`` (the reading offset by 0.5,
  1, 2 x the sensor's ``scale`` in the reference, the "sigma" of the
  reference statistics; the simulator's own ``mean_shift`` kind uses the
  measurement noise instead, far smaller), ``variance_x2`` (measurement noise
  doubled), ``stuck``, ``recalibration`` (an offset of 2 % of the sensor's
  nominal value). Delay = readings from the drift's first reading to the end
  of the block that raised the alarm; a drift not found within ``--horizon``
  readings is missed; an alarm before the drift is a false alarm (counted
  apart). Percentiles count a missed drift as infinitely late (null in JSON
  when the percentile falls on one).
- **river** (a bench-only dependency: ``pip install 'edgeloop[bench]'``):
  ADWIN, PageHinkley and KSWIN, each run per channel on the *same* standardised
  channel values the CUSUM reads (one per sensor and block), an alarm when any
  channel's detector fires: this compares the sequential tests on one input.
  At their defaults, and tuned: the most sensitive setting of a grid whose
  false alarms on the stationary streams are no more than the CUSUM's there
  (matched; ADWIN tuned checks every value, ``clock=1``). KSWIN costs ~0.3 ms per update, so its stationary count covers the
  first ``--kswin-readings`` stationary readings only (said in the output).
- ``--calibrate``: fit the threshold line (:mod:`shared.drift.calibration`)
  on the stationary streams and use it for this run; print the line to put in
  :data:`shared.drift.detector.CALIBRATION`. The false-alarm count is then
  on the streams it was fitted to: use a fresh ``--seed`` to check it.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from simulators.bench.arguments import positive_float, positive_int

HELP = "drift detection: delay and false alarms of the calibrated detector against river's"
RIVER_MISSING = (
    "bench drift compares with river's drift detectors; install them with "
    "pip install 'edgeloop[bench]' (or pip install river), or pass --no-river"
)

F64 = npt.NDArray[np.float64]
KINDS: tuple[str, ...] = (
    "mean_shift_0.5",
    "mean_shift_1",
    "mean_shift_2",
    "variance_x2",
    "stuck",
    "recalibration",
)
_ONE_SIGMA = "mean_shift_1"
_RECALIBRATION_SHARE = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--readings",
        type=positive_int,
        default=4_000_000,
        help="stationary readings watched, after the detector's start (default: 4,000,000: "
        "with no false alarm, the 95 %% upper bound of the rate is 0.75 per 10^6)",
    )
    parser.add_argument(
        "--stream-readings",
        type=positive_int,
        default=100_000,
        help="watched readings per stationary stream (default: 100,000)",
    )
    parser.add_argument("--streams-per-kind", type=positive_int, default=16)
    parser.add_argument(
        "--pre-drift",
        type=positive_int,
        default=6000,
        help="readings watched before a drift starts, at least KSWIN's window of 100 "
        "blocks (default: 6000)",
    )
    parser.add_argument("--horizon", type=positive_int, default=2000)
    parser.add_argument("--arl0", type=positive_float, default=1e6)
    for name, kind in (
        ("batch", positive_int),
        ("fit-readings", positive_int),
        ("scale-readings", positive_int),
        ("k", float),
        ("clip", positive_float),
        ("resolution", positive_float),
    ):
        parser.add_argument(
            f"--{name}", type=kind, default=None, help="detector setting (default: its own)"
        )
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--no-river", action="store_true", help="skip river's detectors")
    parser.add_argument("--kswin-readings", type=positive_int, default=200_000)


@dataclass(frozen=True, slots=True)
class _Stream:
    values: F64  # standardised channel values per block, after the start
    ends: npt.NDArray[np.int64]  # stream position of each block's last reading
    alarms: tuple[int, ...]  # the detector's alarm positions
    start: int = -1  # first drifted reading (-1: stationary)
    sensor: str = ""


def _features(seed: int, device: int, n: int, drifts: tuple[Any, ...] = ()) -> F64:
    from shared.features import DEFAULT_WINDOW, BlockFeatureWindow  # noqa: PLC0415
    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415
    from simulators.sensors import SENSORS  # noqa: PLC0415

    machine = SimulatedMachine(
        MachineConfig(seed=seed, device_index=device, fault_rate=0.0, drifts=drifts)
    )
    values = np.array([r.values for r in machine.readings(n)])
    window = BlockFeatureWindow(DEFAULT_WINDOW, [s.fallback for s in SENSORS])
    return window.push_block(values).astype(np.float64)


def _drift(kind: str, sensor: str, start: int, scale: float, nominal: float) -> Any:
    from simulators.drift import DriftSpec  # noqa: PLC0415

    if kind.startswith("mean_shift_"):
        return DriftSpec("offset", sensor, start, float(kind.rsplit("_", maxsplit=1)[-1]) * scale)
    if kind == "variance_x2":
        return DriftSpec("variance", sensor, start, 2.0)
    if kind == "stuck":
        return DriftSpec("stuck", sensor, start)
    return DriftSpec("offset", sensor, start, _RECALIBRATION_SHARE * nominal)


def _percentile(delays: Sequence[float], q: float) -> float | None:
    if not delays:
        return None
    v = float(np.percentile(np.array(delays), q, method="higher"))
    return None if math.isinf(v) else v


def _delays(first_alarm: Sequence[int | None], starts: Sequence[int], horizon: int) -> list[float]:
    out: list[float] = []
    for alarm, start in zip(first_alarm, starts, strict=True):
        d = math.inf if alarm is None else float(alarm - start + 1)
        out.append(d if d <= horizon else math.inf)
    return out


def _summary(delays: list[float], false_alarms: int) -> dict[str, Any]:
    return {
        "streams": len(delays),
        "delay_p50_readings": _percentile(delays, 50),
        "delay_p95_readings": _percentile(delays, 95),
        "missed": sum(1 for d in delays if math.isinf(d)),
        "false_alarms_before_drift": false_alarms,
    }


def _first_after(alarms: Sequence[int], start: int) -> tuple[int | None, int]:
    """The first alarm at or after ``start`` and the number before it."""
    before = sum(1 for a in alarms if a < start)
    after = [a for a in alarms if a >= start]
    return (after[0] if after else None), before


def _upper95(count: int) -> float:
    """95 % upper bound of a Poisson mean after observing ``count`` events."""
    # Exact for 0 (-ln 0.05); a Wilson-Hilferty approximation otherwise.
    if count == 0:
        return -math.log(0.05)
    c = count + 1
    return c * (1.0 - 1.0 / (9.0 * c) + 1.645 / (3.0 * math.sqrt(c))) ** 3


def _rate(count: int, readings: int) -> dict[str, Any]:
    return {
        "false_alarms": count,
        "readings": readings,
        "false_alarms_per_million": count / readings * 1e6 if readings else None,
        "false_alarms_per_million_upper95": _upper95(count) / readings * 1e6 if readings else None,
    }


def _river_alarms(
    values: F64, ends: npt.NDArray[np.int64], make: Callable[..., Any], kwargs: dict[str, Any]
) -> list[int]:
    detectors = [make(**kwargs) for _ in range(values.shape[1])]
    alarms: list[int] = []
    for i, row in enumerate(values.tolist()):
        fired = False
        for det, v in zip(detectors, row, strict=True):
            det.update(v)
            fired = fired or bool(det.drift_detected)
        if fired:
            alarms.append(int(ends[i]))
    return alarms


def _river_grids(seed: int) -> dict[str, tuple[Callable[..., Any], list[dict[str, Any]]]]:
    """Per river detector: its class, and its settings from the most sensitive to
    the least; the first is the default. ADWIN's tuned settings check every value
    (``clock=1``): its default checks every 32 values, which are blocks here."""
    from river import drift  # noqa: PLC0415

    # river is untyped: its classes are handled as Any.
    adwin: Any = drift.ADWIN
    page_hinkley: Any = drift.PageHinkley
    kswin: Any = drift.KSWIN
    deltas = [0.002, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-15]
    return {
        "ADWIN": (adwin, [{}] + [{"delta": d, "clock": 1} for d in deltas]),
        "PageHinkley": (
            page_hinkley,
            [{}]
            + [
                {"threshold": t} for t in (10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0)
            ],
        ),
        "KSWIN": (
            kswin,
            [{"seed": seed}]
            + [{"alpha": a, "seed": seed} for a in (0.005, 1e-4, 1e-6, 1e-8, 1e-10)],
        ),
    }


def _river(
    stationary: list[_Stream],
    drifted: dict[str, list[_Stream]],
    ours_on: Callable[[list[_Stream]], int],
    args: argparse.Namespace,
    batch: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (make, settings) in _river_grids(args.seed).items():
        streams = stationary
        if name == "KSWIN":  # ~0.3 ms per update: watch a prefix of the stationary data
            keep = max(1, args.kswin_readings // batch)
            streams = []
            for s in stationary:
                if keep <= 0:
                    break
                streams.append(replace(s, values=s.values[:keep], ends=s.ends[:keep]))
                keep -= s.values.shape[0]
        watched = sum(s.values.shape[0] for s in streams) * batch
        ours = ours_on(streams)  # our false alarms on the same stretch

        def count(
            kwargs: dict[str, Any],
            streams: list[_Stream] = streams,
            make: Callable[..., Any] = make,
        ) -> int:
            return sum(len(_river_alarms(s.values, s.ends, make, kwargs)) for s in streams)

        default = {"setting": settings[0], **_rate(count(settings[0]), watched)}
        tried: list[dict[str, Any]] = []
        matched: dict[str, Any] | None = None
        for kwargs in settings[1:]:  # from the most sensitive: the first that matches
            tried.append({"setting": kwargs, **_rate(count(kwargs), watched)})
            print(f"river {name} {kwargs}: {tried[-1]['false_alarms']} false alarms", flush=True)
            if tried[-1]["false_alarms"] <= ours:
                matched = tried[-1]
                break
        result: dict[str, Any] = {
            "stationary_readings": watched,
            "our_false_alarms_there": ours,
            "tuning": tried,
        }
        for label, chosen in (("default", default), ("matched", matched)):
            if chosen is None:
                result[label] = None
                continue
            kinds: dict[str, Any] = {}
            for kind, streams_k in drifted.items():
                firsts: list[int | None] = []
                before_total = 0
                for s in streams_k:
                    first, before = _first_after(
                        _river_alarms(s.values, s.ends, make, chosen["setting"]), s.start
                    )
                    firsts.append(first)
                    before_total += before
                kinds[kind] = _summary(
                    _delays(firsts, [s.start for s in streams_k], args.horizon), before_total
                )
            one = kinds.get(_ONE_SIGMA, {})
            result[label] = {
                "setting": chosen["setting"],
                "false_alarms": chosen["false_alarms"],
                "false_alarms_per_million": chosen["false_alarms_per_million"],
                "delay_p95_readings_1sigma": one.get("delay_p95_readings"),
                "missed_1sigma": one.get("missed"),
                "kinds": kinds,
            }
        out[name] = result
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cloud_hub.pipeline.package import sensor_references  # noqa: PLC0415
    from shared.drift.calibration import (  # noqa: PLC0415
        alarm_counts,
        calibration_points,
        threshold_from_points,
    )
    from shared.drift.detector import (  # noqa: PLC0415
        DetectorSettings,
        DriftDetector,
        cusum,
    )
    from simulators.sensors import FEATURE_NAMES, SENSORS  # noqa: PLC0415

    if not args.no_river:
        try:
            import river  # noqa: F401, PLC0415
        except ImportError:
            raise ValueError(RIVER_MISSING) from None
    t_start = time.perf_counter()
    chosen = {
        name: getattr(args, name)
        for name in ("batch", "fit_readings", "scale_readings", "k", "clip", "resolution")
        if getattr(args, name) is not None
    }
    # Calibrating: the threshold comes from this run (the placeholder is not used).
    settings = DetectorSettings(arl0=args.arl0, threshold=1.0 if args.calibrate else None, **chosen)
    batch = settings.batch
    warm = -(-(settings.fit_readings + settings.scale_readings) // batch) * batch
    # The reference: other devices (another seed), as a training set would be.
    train = np.vstack([_features(args.seed + 1000, d, 20_000) for d in range(4)])
    refs = sensor_references(train.astype(np.float32), SENSORS)

    def watch(x: F64, settings: DetectorSettings = settings) -> _Stream:
        det = DriftDetector(FEATURE_NAMES, refs, settings)
        up = det.update(x)
        return _Stream(up.values, up.readings, tuple(a.reading for a in up.alarms))

    n_stat = max(1, -(-args.readings // args.stream_readings))
    stationary: list[_Stream] = []
    for d in range(n_stat):
        n = min(args.stream_readings, args.readings - d * args.stream_readings)
        stationary.append(watch(_features(args.seed, d, warm + n)))
    watched = sum(s.values.shape[0] for s in stationary) * batch
    t_stationary = time.perf_counter() - t_start
    print(f"{n_stat} stationary streams, {watched} readings watched", flush=True)

    h = settings.h
    calibration: dict[str, Any] | None = None
    if args.calibrate:
        grid = np.arange(1.0, 25.0, 1.0)
        counts = alarm_counts([s.values for s in stationary], settings.k, grid)
        points = calibration_points(grid, counts, watched // batch)
        h = threshold_from_points(points, math.log(args.arl0 / batch))
        calibration = {
            "points": [list(p) for p in points],
            "alarms_by_threshold": dict(zip(grid.tolist(), counts.tolist(), strict=True)),
            "threshold_for_arl0": h,
        }
        print(f"calibration points (h, ln blocks per alarm): {points} -> h = {h:.3f}", flush=True)

    def alarms_at(s: _Stream) -> list[int]:
        rows = cusum(
            s.values, settings.k, h, np.zeros(s.values.shape[1]), np.zeros(s.values.shape[1])
        )
        return [int(s.ends[r]) for r, _ in rows]

    ours_false = sum(len(alarms_at(s)) for s in stationary)

    rng = np.random.default_rng(args.seed)
    drifted: dict[str, list[_Stream]] = {}
    kinds: dict[str, Any] = {}
    pre_drift_watched = 0
    for k_i, kind in enumerate(KINDS):
        streams: list[_Stream] = []
        firsts: list[int | None] = []
        before_total = 0
        for i in range(args.streams_per_kind):
            sensor = SENSORS[i % len(SENSORS)]
            start = warm + args.pre_drift + int(rng.integers(0, 1000))
            spec = _drift(kind, sensor.name, start, refs[sensor.name].scale, sensor.fallback)
            device = 10_000 + k_i * args.streams_per_kind + i
            s = watch(_features(args.seed, device, start + args.horizon, (spec,)))
            s = replace(s, start=start, sensor=sensor.name)
            streams.append(s)
            first, before = _first_after(alarms_at(s), start)
            firsts.append(first)
            before_total += before
            pre_drift_watched += start - warm
        delays = _delays(firsts, [s.start for s in streams], args.horizon)
        summary = _summary(delays, before_total)
        summary["by_sensor"] = {
            s.name: [
                None if math.isinf(d) else d
                for st, d in zip(streams, delays, strict=True)
                if st.sensor == s.name
            ]
            for s in SENSORS
        }
        kinds[kind] = summary
        drifted[kind] = streams
        print(kind, {k: v for k, v in summary.items() if k != "by_sensor"}, flush=True)

    one = kinds[_ONE_SIGMA]
    pre_false = sum(k["false_alarms_before_drift"] for k in kinds.values())
    out: dict[str, Any] = {
        "seed": args.seed,
        "arl0_readings": args.arl0,
        "threshold_h": round(h, 4),
        "settings": {k: v for k, v in asdict(settings).items() if k != "threshold"},
        "batch_readings": batch,
        "start_readings": warm,
        "delay_p50_readings_1sigma": one["delay_p50_readings"],
        "delay_p95_readings_1sigma": one["delay_p95_readings"],
        "missed_1sigma": one["missed"],
        **_rate(ours_false, watched),
        "pre_drift": _rate(pre_false, pre_drift_watched),
        "kinds": kinds,
        "calibration": calibration,
        "stationary_seconds": round(t_stationary, 1),
    }
    if not args.no_river:
        out["river"] = _river(
            stationary, drifted, lambda ss: sum(len(alarms_at(s)) for s in ss), args, batch
        )
    out["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return out
