"""Training data from recorded CSV: series, sensors, time splits, synthetic faults.

``edgeloop-hub models train`` reads recordings with :mod:`cloud_hub.recordings`
(strict: a bad cell, an unsorted timestamp or an empty file stops it with the
file, line and column), one series per file, or per value of the device column.
Then, in order:

- :func:`stream_sample`: every file chunk by chunk, never whole: each series'
  features through :class:`shared.features.BlockFeatureWindow` (the agent's
  features; the window carries from chunk to chunk), each sensor's exact
  minimum, maximum and count, the label counts, and a bounded, time-ordered
  sample of the feature rows (:class:`~cloud_hub.pipeline.sample.RowSample`:
  every k-th reading of each series, at most ``max_rows``);
- :func:`infer_sensors`: each sensor's :class:`~shared.features.SensorSpec`:
  the unit given (else ``""``), the valid range given or the data's range
  widened by :data:`RANGE_WIDENING` spans on each side (not below 0 when no value
  is negative), and the median of the kept rows as the fallback;
- :func:`split_sample`: each series' kept rows cut in time into train,
  validation and holdout (the last readings), dropping the rows after each cut
  whose window reaches back across it; never a random shuffle;
- :func:`inject_faults` (no labels): step faults on one sensor at a time in the
  holdout's stretches of consecutive readings, to gate and measure the anomaly
  models on.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud_hub.pipeline.sample import RowSample, Stretch
from cloud_hub.pipeline.train import PipelineError
from cloud_hub.recordings import CsvOptions, Recording, RecordingError, series_rows
from shared.features import MAX_ABS_VALUE, BlockFeatureWindow, SensorSpec, features_for_stream

__all__ = [
    "FAULT_SIGMAS",
    "MODEL_NAME_RE",
    "RANGE_WIDENING",
    "Streamed",
    "derive_name",
    "feature_rows",
    "files_sha256",
    "infer_sensors",
    "inject_faults",
    "numeric_sensors",
    "robust_scale",
    "split_sample",
    "startup_rows",
    "stream_sample",
    "stretch_side",
    "time_sides",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

RANGE_WIDENING: Final = 10.0
"""The valid range taken from data: the data's [min, max] widened by this many spans
on each side. A value outside the valid range is a sensor error (treated as missing),
so a real fault beyond it never raises an urgent event: the widening is wide, and
the report warns to give the sensor's physical range with ``--valid-range``."""
FAULT_SIGMAS: Final = 6.0
"""Size of a synthetic step fault, in robust standard deviations of the sensor."""
_NAME_BAD = re.compile(r"[^a-z0-9_.-]+")
MODEL_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,57}")
"""A model's base name: the manifest's name grammar, leaving room for ``-heavy``."""
_SENSOR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_PROBE_ROWS: Final = 1000
STARTUP_EVERY: Final = 200
"""Readings between the simulated agent restarts of :func:`startup_rows`."""


@dataclass(slots=True)
class Streamed:
    """What :func:`stream_sample` read: the kept rows, and figures over every row.

    Series ``i`` is ``sources[i]`` (a file, or one device of a file) in
    ``paths[i]``, with ``rows[i]`` readings (inside the time range, if one was
    given). ``data_min``, ``data_max`` and ``finite`` are per sensor over every
    reading read; ``label_counts`` over every row; ``label_names[c]`` is the
    label of code ``c`` in ``sample.labels``. ``fallback_used``: a series'
    first reading misses a value, so its first features depend on the fallback
    values given.
    """

    sample: RowSample
    sources: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    rows_read: int = 0
    data_min: F64 | None = None
    data_max: F64 | None = None
    finite: I64 | None = None
    label_counts: Counter[str] = field(default_factory=Counter)
    label_names: list[str] = field(default_factory=list)
    fallback_used: bool = False

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


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


def stream_sample(
    paths: Sequence[Path],
    options: CsvOptions,
    sensors: Sequence[str],
    *,
    window: int,
    fallback: Sequence[float],
    max_rows: int,
    stretch: int = 0,
    time_range: tuple[float | None, float | None] = (None, None),
    on_rows: Callable[[int], None] | None = None,
    on_thin: Callable[[int, Path], None] | None = None,
    chunk_rows: int = 65_536,
) -> Streamed:
    """Read every file in chunks, strictly (see :mod:`cloud_hub.recordings`), one
    series per file or per device; compute each series' features as the chunks
    come and keep every k-th row in a :class:`RowSample` of at most ``max_rows``
    (``stretch``: also stretches of that many consecutive raw readings). Only the
    readings with ``time_range[0] <= ts < time_range[1]`` count (None: open).
    ``on_rows`` is told each chunk's rows (a progress bar); ``on_thin`` each new
    ``k`` and the file being read. Memory: the sample plus a chunk or two of
    ``chunk_rows`` rows."""
    current: list[Path] = []

    def thinned(k: int) -> None:
        if on_thin is not None:
            on_thin(k, current[-1])

    n_features = 4 * len(sensors)
    out = Streamed(RowSample(max_rows, len(sensors), n_features, stretch=stretch, on_thin=thinned))
    lo, hi = time_range
    codes: dict[str, int] = {}
    data_min = np.full(len(sensors), np.inf)
    data_max = np.full(len(sensors), -np.inf)
    finite = np.zeros(len(sensors), dtype=np.int64)
    for path in paths:
        current.append(path)
        rec = Recording.open(path, options, sensors)
        ids: dict[str, int] = {}
        windows: dict[int, BlockFeatureWindow] = {}
        any_rows = False
        for chunk in rec.chunks(chunk_rows, strict=True):
            any_rows = True
            out.rows_read += len(chunk)
            if on_rows is not None:
                on_rows(len(chunk))
            ts, values, labels, devices = chunk.ts, chunk.values, chunk.labels, chunk.devices
            if lo is not None or hi is not None:
                inside = np.ones(ts.shape[0], dtype=bool)
                if lo is not None:
                    inside &= ts >= lo
                if hi is not None:
                    inside &= ts < hi
                if not inside.all():
                    rows = np.flatnonzero(inside).tolist()
                    ts, values = ts[inside], values[inside]
                    labels = None if labels is None else [labels[i] for i in rows]
                    devices = None if devices is None else [devices[i] for i in rows]
            n = int(ts.shape[0])
            if n == 0:
                continue
            with np.errstate(invalid="ignore"):
                present = np.abs(values) < MAX_ABS_VALUE
            finite += present.sum(axis=0)
            data_min = np.fmin(data_min, np.where(present, values, np.inf).min(axis=0))
            data_max = np.fmax(data_max, np.where(present, values, -np.inf).max(axis=0))
            label_codes: I32 | None = None
            if labels is not None:
                out.label_counts.update(labels)
                label_codes = np.fromiter(
                    (codes.setdefault(v, len(codes)) for v in labels), dtype=np.int32, count=n
                )
            for key, rows_of in series_rows("" if devices is None else devices, n):
                sid = ids.get(key)
                if sid is None:
                    sid = ids[key] = len(out.sources)
                    windows[sid] = BlockFeatureWindow(window, fallback)
                    out.sources.append(
                        str(path) if devices is None else f"{path} [{options.device_column}={key}]"
                    )
                    out.paths.append(path)
                    out.rows.append(0)
                block = values if rows_of is None else values[rows_of]
                if out.rows[sid] == 0 and not present[0 if rows_of is None else rows_of[0]].all():
                    out.fallback_used = True
                feats = windows[sid].push_block(block)
                out.sample.add(
                    sid,
                    out.rows[sid],
                    ts=ts if rows_of is None else ts[rows_of],
                    values=block,
                    features=feats,
                    labels=label_codes
                    if label_codes is None or rows_of is None
                    else label_codes[rows_of],
                )
                out.rows[sid] += int(block.shape[0])
        if not any_rows:
            raise RecordingError(
                f"{str(path)!r} has a header but no data rows: give a recording with readings "
                "or leave the file out",
                path=str(path),
                line=2,
            )
    out.data_min, out.data_max, out.finite = data_min, data_max, finite
    out.label_names = list(codes)
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
    streamed: Streamed,
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
    values = streamed.sample.values
    assert streamed.finite is not None and streamed.data_min is not None
    assert streamed.data_max is not None
    specs: list[SensorSpec] = []
    notes: list[str] = []
    derived: list[str] = []
    for j, name in enumerate(names):
        if streamed.finite[j] == 0:
            where = streamed.paths[0] if streamed.paths else "the data"
            raise PipelineError(
                f"sensor {name!r} has no value in any row of {where} and the other "
                "files; leave it out of --sensors or fill the column"
            )
        col = values[:, j]
        col = col[np.abs(col) < MAX_ABS_VALUE]
        dmin, dmax = float(streamed.data_min[j]), float(streamed.data_max[j])
        # The kept rows' median; the midpoint when every kept row misses the sensor.
        median = float(np.median(col)) if col.size else (dmin + dmax) / 2
        if name in valid_ranges:
            lo, hi = valid_ranges[name]
            how = "given"
        else:
            span = max(dmax - dmin, 1e-3 * max(1.0, abs(dmin), abs(dmax)))
            lo, hi = dmin - RANGE_WIDENING * span, dmax + RANGE_WIDENING * span
            how = f"data [{dmin:.6g}, {dmax:.6g}] widened by {RANGE_WIDENING:g} spans"
            if dmin >= 0 > lo:
                # A pressure or a flow that is never negative in the data is not
                # valid below 0: widening it there would let sensor errors through.
                lo = 0.0
                how += ", not below 0 as no value is negative: give --valid-range if it can be"
            lo, hi = float(f"{lo:.6g}"), float(f"{hi:.6g}")
            derived.append(f"{name}=LO:HI")
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
    if derived:
        notes.append(
            f"warning: the valid range of {len(derived)} sensor(s) comes from the data: the "
            "agent and batch scoring treat a value beyond it as a broken sensor (missing), so a "
            "real fault beyond it never raises an urgent event; give each sensor's physical "
            f"range: --valid-range {','.join(derived)}"
        )
    return tuple(specs), notes


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


def time_sides(index: I64, window: int, validation: float, holdout: float) -> I8:
    """Per kept row of one series (``index``: the rows' positions in the series,
    rising): 0 train, 1 validation, 2 holdout (the latest rows), -1 dropped (the
    rows after each cut whose window, ``window`` readings, reaches back across it).

    >>> time_sides(np.arange(10), 2, 0.2, 0.2).tolist()
    [0, 0, 0, 0, 0, 0, -1, 1, -1, 2]
    >>> time_sides(np.arange(0, 40, 4), 4, 0.2, 0.2).tolist()  # every 4th reading kept
    [0, 0, 0, 0, 0, 0, -1, 1, -1, 2]
    >>> time_sides(np.arange(0, 40, 4), 6, 0.2, 0.2).tolist()  # 28's window reaches 23
    [0, 0, 0, 0, 0, 0, -1, -1, -1, -1]
    """
    n = int(index.shape[0])
    c1, c2 = _cuts(n, validation, holdout)
    side = np.zeros(n, dtype=np.int8)
    side[c1:c2] = 1
    side[c2:] = 2
    for a, b in ((c1, c2), (c2, n)):
        if a < b:
            side[a:b][index[a:b] < index[a] + window - 1] = -1
    return side


def split_sample(
    streamed: Streamed, window: int, validation: float, holdout: float
) -> tuple[I8, list[tuple[int, int]]]:
    """Each kept row's side (see :func:`time_sides`, per series), and each series'
    cuts: the reading where its validation and its holdout begin."""
    sample = streamed.sample
    side = np.zeros(sample.size, dtype=np.int8)
    cuts: list[tuple[int, int]] = []
    order = np.argsort(sample.series, kind="stable")
    bounds = np.searchsorted(sample.series[order], np.arange(len(streamed.sources) + 1))
    for i in range(len(streamed.sources)):
        rows = order[bounds[i] : bounds[i + 1]]
        if rows.size == 0:
            cuts.append((0, 0))
            continue
        index = sample.index[rows]
        sides = time_sides(index, window, validation, holdout)
        side[rows] = sides
        n = int(index.shape[0])
        c1, c2 = _cuts(n, validation, holdout)
        end = int(index[-1]) + 1
        cuts.append((int(index[c1]) if c1 < n else end, int(index[c2]) if c2 < n else end))
    return side, cuts


def _cuts(n: int, validation: float, holdout: float) -> tuple[int, int]:
    """Where validation and holdout begin among ``n`` rows."""
    n_hold, n_val = round(n * holdout), round(n * validation)
    return n - n_hold - n_val, n - n_hold


def stretch_side(stretch: Stretch, cuts: Sequence[tuple[int, int]]) -> int:
    """The side a stretch lies in (0 train, 1 validation, 2 holdout), or -1 when it
    spans a cut."""
    val, hold = cuts[stretch.series]
    first, last = stretch.start, stretch.start + int(stretch.values.shape[0]) - 1
    if last < val:
        return 0
    if first >= val and last < hold:
        return 1
    return 2 if first >= hold else -1


def robust_scale(values: F64) -> F64:
    """Per column: the interquartile range / 1.349, floored (a constant sensor still has one)."""
    q25, q50, q75 = np.nanquantile(values, [0.25, 0.5, 0.75], axis=0)
    std = np.nanstd(values, axis=0)
    scale = np.where(q75 > q25, (q75 - q25) / 1.349, std)
    out: F64 = np.maximum(scale, 1e-3 * np.maximum(1.0, np.abs(q50)))
    return out


def inject_faults(
    values: F64, scale: F64, sensors: Sequence[SensorSpec], window: int, first: int = 0
) -> tuple[F64, npt.NDArray[np.bool_]]:
    """A copy of one series' readings with step faults, and which rows are faulty.

    One sensor at a time, in turn, its value shifts by ``FAULT_SIGMAS`` robust
    standard deviations (up, then down for the next sensor), clipped into the
    valid range, for ``3 * window`` readings; ``window`` normal readings
    separate two faults. Rows are faulty from the fault's first reading on.
    ``first`` numbers the first fault (which sensor, which sign), so stretches
    faulted one by one take the sensors in turn.
    """
    out = values.copy()
    faulty = np.zeros(values.shape[0], dtype=np.bool_)
    length, gap = 3 * window, window
    k = first
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
