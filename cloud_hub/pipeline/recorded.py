"""Training data from recorded CSV: series, sensors, time splits, synthetic faults.

``edgeloop-hub models train`` reads recordings with :mod:`cloud_hub.recordings`
(strict: a bad cell, an unsorted timestamp or an empty file stops it with the
file, line and column), one series per file, or per value of the device column.
Then, in order:

- :func:`infer_sensors`: each sensor's :class:`~shared.features.SensorSpec`:
  the unit given (else ``""``), the valid range given or the data's range
  widened by :data:`RANGE_WIDENING` spans on each side (not below 0 when no value
  is negative), and the median as the fallback;
- :func:`features`: each series through
  :func:`shared.features.features_for_stream` (the agent's feature function);
- :func:`time_sides`: each series cut in time into train, validation and
  holdout (the last readings), dropping the ``window - 1`` rows after each cut
  whose window reaches back across it; never a random shuffle;
- :func:`inject_faults` (no labels): step faults on one sensor at a time in the
  holdout, to gate and measure the anomaly models on.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud_hub.pipeline.train import PipelineError
from cloud_hub.recordings import CsvOptions, Recording, RecordingError
from shared.features import SensorSpec, features_for_stream

__all__ = [
    "FAULT_SIGMAS",
    "MODEL_NAME_RE",
    "RANGE_WIDENING",
    "Series",
    "derive_name",
    "feature_rows",
    "features",
    "files_sha256",
    "infer_sensors",
    "inject_faults",
    "label_counts",
    "numeric_sensors",
    "read_series",
    "robust_scale",
    "startup_rows",
    "time_sides",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]

RANGE_WIDENING: Final = 2.0
"""The valid range taken from data: the data's [min, max] widened by this many spans
on each side. A value outside the valid range is a sensor error (treated as missing)."""
FAULT_SIGMAS: Final = 6.0
"""Size of a synthetic step fault, in robust standard deviations of the sensor."""
_NAME_BAD = re.compile(r"[^a-z0-9_.-]+")
MODEL_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,57}")
"""A model's base name: the manifest's name grammar, leaving room for ``-heavy``."""
_SENSOR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_PROBE_ROWS: Final = 1000
STARTUP_EVERY: Final = 200
"""Readings between the simulated agent restarts of :func:`startup_rows`."""


@dataclass(frozen=True, slots=True)
class Series:
    """One device's readings in time order: from a file, or one device of a file."""

    source: str
    path: Path
    ts: F64
    values: F64
    labels: list[str] | None

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def derive_name(path: Path) -> str:
    """A model name from a file name, in the manifest's grammar (lowercase
    ``[a-z0-9][a-z0-9_.-]*``), short enough for ``-heavy`` to follow.

    >>> derive_name(Path("/data/Test Rig #3.csv"))
    'test-rig-3'
    """
    name = _NAME_BAD.sub("-", path.stem.lower()).strip("-._")[:57].rstrip("-._")
    return name or "model"


def numeric_sensors(path: Path, options: CsvOptions) -> tuple[list[str], list[str]]:
    """Every column but ts/label/device whose first rows hold numbers, and those
    that do not (not numeric, or empty): ``(sensors, skipped)``."""
    rec = Recording.open(path, options)
    probe = next(iter(rec.chunks(_PROBE_ROWS, strict=False)), None)
    if probe is None:
        raise RecordingError(
            f"{str(path)!r} has a header but no data rows: give a recording with readings",
            path=str(path),
            line=2,
        )
    numeric = ~np.all(np.isnan(probe.values), axis=0)
    sensors = [s for s, ok in zip(rec.sensors, numeric.tolist(), strict=True) if ok]
    skipped = [s for s, ok in zip(rec.sensors, numeric.tolist(), strict=True) if not ok]
    if not sensors:
        raise RecordingError(
            f"{str(path)!r} has no numeric sensor column in its first {len(probe)} rows "
            f"(columns: {', '.join(rec.sensors)}); name the sensors with --sensors and check "
            "the separator (--csv-delimiter)",
            path=str(path),
            line=2,
        )
    return sensors, skipped


def read_series(
    paths: Sequence[Path],
    options: CsvOptions,
    sensors: Sequence[str],
    *,
    on_rows: Callable[[int], None] | None = None,
) -> list[Series]:
    """Every file's readings, strictly (see :mod:`cloud_hub.recordings`), split
    into series by the device column when there is one. ``on_rows`` is told how
    many rows each chunk held (a progress bar)."""
    out: list[Series] = []
    for path in paths:
        rec = Recording.open(path, options, sensors)
        ts_parts: list[F64] = []
        value_parts: list[F64] = []
        labels: list[str] = []
        devices: list[str] = []
        for chunk in rec.chunks(strict=True):
            ts_parts.append(chunk.ts)
            value_parts.append(chunk.values)
            labels.extend(chunk.labels or [])
            devices.extend(chunk.devices or [])
            if on_rows is not None:
                on_rows(len(chunk))
        if not ts_parts:
            raise RecordingError(
                f"{str(path)!r} has a header but no data rows: give a recording with readings "
                "or leave the file out",
                path=str(path),
                line=2,
            )
        ts, values = np.concatenate(ts_parts), np.concatenate(value_parts)
        with_labels = options.label_column is not None
        if options.device_column is None:
            out.append(Series(str(path), path, ts, values, labels if with_labels else None))
            continue
        dev = np.array(devices)
        for d in dict.fromkeys(devices):
            rows = np.flatnonzero(dev == d)
            out.append(
                Series(
                    f"{path} [{options.device_column}={d}]",
                    path,
                    ts[rows],
                    values[rows],
                    [labels[i] for i in rows.tolist()] if with_labels else None,
                )
            )
    return out


def files_sha256(paths: Iterable[Path]) -> dict[str, str]:
    """``{path: sha256}`` of each data file, for the lineage."""
    out: dict[str, str] = {}
    for path in paths:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[str(path)] = h.hexdigest()
    return out


def infer_sensors(
    names: Sequence[str],
    series: Sequence[Series],
    *,
    units: Mapping[str, str],
    valid_ranges: Mapping[str, tuple[float, float]],
) -> tuple[tuple[SensorSpec, ...], list[str]]:
    """Each sensor's spec (see the module docstring), and notes for the report."""
    for mapping, flag in ((units, "--units"), (valid_ranges, "--valid-range")):
        unknown = [k for k in mapping if k not in names]
        if unknown:
            raise PipelineError(
                f"{flag} names {unknown[0]!r}, which is not one of the sensors ({', '.join(names)})"
            )
    bad = [n for n in names if not _SENSOR_RE.fullmatch(n)]
    if bad:
        raise PipelineError(
            f"column {bad[0]!r} is not a usable sensor name (1-64 of letters, digits, _ . -, not "
            f"starting with a digit, . or -); rename it with --csv-map NEWNAME={bad[0]!r}"
        )
    values = np.concatenate([s.values for s in series])
    specs: list[SensorSpec] = []
    notes: list[str] = []
    for j, name in enumerate(names):
        col = values[:, j]
        col = col[np.isfinite(col)]
        if col.size == 0:
            raise PipelineError(
                f"sensor {name!r} has no value in any row of {series[0].path} and the other "
                "files; leave it out of --sensors or fill the column"
            )
        median = float(np.median(col))
        if name in valid_ranges:
            lo, hi = valid_ranges[name]
            how = "given"
        else:
            dmin, dmax = float(col.min()), float(col.max())
            span = max(dmax - dmin, 1e-3 * max(1.0, abs(dmin), abs(dmax)))
            lo, hi = dmin - RANGE_WIDENING * span, dmax + RANGE_WIDENING * span
            how = f"data [{dmin:.6g}, {dmax:.6g}] widened by {RANGE_WIDENING:g} spans"
            if dmin >= 0 > lo:
                # A pressure or a flow that is never negative in the data is not
                # valid below 0: widening it there would let sensor errors through.
                lo = 0.0
                how += ", not below 0 as no value is negative: give --valid-range if it can be"
            lo, hi = float(f"{lo:.6g}"), float(f"{hi:.6g}")
        fallback = min(max(median, lo), hi)
        spec = SensorSpec(name, units.get(name, ""), lo, hi, float(f"{fallback:.6g}"))
        problem = spec.problem()
        if problem is not None:
            raise PipelineError(f"sensor {name!r}: {problem}; fix --valid-range {name}=LO:HI")
        specs.append(spec)
        unit = f"unit {spec.unit!r}" if spec.unit else "no unit (give --units NAME=UNIT)"
        notes.append(
            f"sensor {name}: {unit}, valid range [{lo:.6g}, {hi:.6g}] ({how}), "
            f"fallback {spec.fallback:.6g} (median)"
        )
    return tuple(specs), notes


def features(series: Series, window: int, sensors: Sequence[SensorSpec]) -> F32:
    """The series' feature rows, through the agent's feature function."""
    return feature_rows(series.values, window, sensors)


def feature_rows(values: F64, window: int, sensors: Sequence[SensorSpec]) -> F32:
    """Feature rows of readings ``values`` (one column per sensor, in order)."""
    return features_for_stream(values, window, [s.fallback for s in sensors])


def startup_rows(
    values: F64, window: int, sensors: Sequence[SensorSpec], every: int = STARTUP_EVERY
) -> F32:
    """Feature rows an agent makes right after a (re)start, from restarts every
    ``every`` readings of ``values``: the first ``window - 1`` rows of each, whose
    window is still filled with the first reading (zero spread and change).

    Every start of an agent makes such rows, so the anomaly models must learn
    them as normal and their thresholds must allow for them.
    """
    parts = [
        feature_rows(values[k : k + window - 1], window, sensors)
        for k in range(0, values.shape[0] - window + 1, every)
    ]
    if not parts:
        return np.empty((0, len(sensors) * 4), dtype=np.float32)
    return np.concatenate(parts)


def time_sides(n: int, window: int, validation: float, holdout: float) -> I8:
    """Per row of a series of ``n`` rows: 0 train, 1 validation, 2 holdout (the
    latest rows), -1 dropped (the ``window - 1`` rows after each cut).

    >>> time_sides(10, 2, 0.2, 0.2).tolist()
    [0, 0, 0, 0, 0, 0, -1, 1, -1, 2]
    """
    n_hold = round(n * holdout)
    n_val = round(n * validation)
    c1, c2 = n - n_hold - n_val, n - n_hold
    side = np.zeros(n, dtype=np.int8)
    side[c1:c2] = 1
    side[c2:] = 2
    side[c1 : min(c1 + window - 1, c2)] = -1
    side[c2 : c2 + window - 1] = -1
    return side


def label_counts(series: Sequence[Series]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for s in series:
        counts.update(s.labels or [])
    return counts


def robust_scale(values: F64) -> F64:
    """Per column: the interquartile range / 1.349, floored (a constant sensor still has one)."""
    q25, q50, q75 = np.nanquantile(values, [0.25, 0.5, 0.75], axis=0)
    std = np.nanstd(values, axis=0)
    scale = np.where(q75 > q25, (q75 - q25) / 1.349, std)
    out: F64 = np.maximum(scale, 1e-3 * np.maximum(1.0, np.abs(q50)))
    return out


def inject_faults(
    values: F64, scale: F64, sensors: Sequence[SensorSpec], window: int
) -> tuple[F64, npt.NDArray[np.bool_]]:
    """A copy of one series' readings with step faults, and which rows are faulty.

    One sensor at a time, in turn, its value shifts by ``FAULT_SIGMAS`` robust
    standard deviations (up, then down for the next sensor), clipped into the
    valid range, for ``3 * window`` readings; ``window`` normal readings
    separate two faults. Rows are faulty from the fault's first reading on.
    """
    out = values.copy()
    faulty = np.zeros(values.shape[0], dtype=np.bool_)
    length, gap = 3 * window, window
    k = 0
    start = gap
    while start + length <= values.shape[0]:
        j = k % len(sensors)
        sign = 1.0 if (k // len(sensors)) % 2 == 0 else -1.0
        sign *= 1.0 if k % 2 == 0 else -1.0
        seg = slice(start, start + length)
        shifted = out[seg, j] + sign * FAULT_SIGMAS * scale[j]
        out[seg, j] = np.clip(shifted, sensors[j].min, sensors[j].max)
        faulty[seg] = True
        k += 1
        start += length + gap
    return out, faulty
