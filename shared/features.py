"""Sensors and features: the one place where raw readings become model input.

A model declares the sensors it reads (:class:`SensorSpec`: name, unit, valid
range, fallback value) in its manifest; nothing here knows any particular
machine. Training (``cloud_hub.pipeline``), the edge agent and the hub all call
:class:`FeatureWindow`, so there is no train/serve skew: a model sees in
production exactly the numbers it was trained on.

A reading is one value per sensor, in the model's sensor order; a missing value
(a sensor dropout) is NaN; an infinite value, or one of absurd magnitude
(:data:`MAX_ABS_VALUE`), counts as missing too, and so does a value outside the
sensor's valid range (:class:`InputCheck`). The window carries the last valid
value forward (the sensor's fallback before the first), so features are always
finite. For each sensor the features are, over the last ``window`` readings:
the latest value, the mean, the standard deviation and the change from the
oldest to the latest value (:func:`feature_names`).

>>> import numpy as np
>>> fw = FeatureWindow(window=4, fallback=[65.0, 2.5])
>>> x = fw.push(np.array([64.0, np.nan]))
>>> x.shape == (len(feature_names(["temp", "vib"])),) and x.dtype == np.float32
True
>>> [float(v) for v in x[:2]]  # the missing vibration took its fallback
[64.0, 2.5]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_ABS_VALUE",
    "OUT_OF_DISTRIBUTION_MARGIN",
    "STATS",
    "BlockFeatureWindow",
    "FeatureWindow",
    "InputCheck",
    "SensorSpec",
    "expected_range",
    "feature_names",
    "features_for_stream",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor a model reads: its name, unit, valid range and fallback value.

    A value outside ``[min, max]`` is a sensor error, not a measurement: it is
    counted and treated as missing. ``fallback`` stands in for a sensor that has
    not yet reported a valid value.
    """

    name: str
    unit: str
    min: float
    max: float
    fallback: float

    def problem(self) -> str | None:
        """What is wrong with this spec, or None."""
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
            return f"valid range [{self.min}, {self.max}] must be finite with min < max"
        if not self.min <= self.fallback <= self.max:
            return f"fallback {self.fallback} must lie in the valid range [{self.min}, {self.max}]"
        return None


STATS: tuple[str, ...] = ("last", "mean", "std", "delta")
DEFAULT_WINDOW = 10
MAX_ABS_VALUE = 1e15
"""A reading whose magnitude reaches this is treated as missing (no sensor reads it)."""
_MAX_SQUARES = MAX_ABS_VALUE * MAX_ABS_VALUE
_PYTHON_CHECK_MAX = 24
"""Up to this many sensors :meth:`InputCheck.check` compares in Python (0.7 us for 8,
against 2 us for numpy's four calls); beyond it numpy's cost per call wins."""
OUT_OF_DISTRIBUTION_MARGIN = 0.5
"""How far beyond its training range (in spans of that range) a value is "far outside"."""


def feature_names(sensors: Iterable[str]) -> tuple[str, ...]:
    """Names of the model inputs, in order: every stat for every sensor.

    >>> feature_names(["temp", "vib"])
    ('temp_last', 'vib_last', 'temp_mean', 'vib_mean', 'temp_std', 'vib_std', 'temp_delta', 'vib_delta')
    """
    names = tuple(sensors)
    return tuple(f"{sensor}_{stat}" for stat in STATS for sensor in names)


def expected_range(low: float, high: float) -> tuple[float, float]:
    """The values a sensor whose training data spanned ``[low, high]`` may take
    before they count as far outside the training distribution.

    >>> expected_range(10.0, 20.0)
    (5.0, 25.0)
    """
    span = max(high - low, 1e-6 * max(1.0, abs(low), abs(high)))
    margin = OUT_OF_DISTRIBUTION_MARGIN * span
    return (low - margin, high + margin)


class InputCheck:
    """Counts, per sensor, values that are missing, outside the valid range, or
    far outside the training distribution; turns out-of-range values into
    missing ones. Pure: no I/O.

    ``expected`` gives each sensor's ``(low, high)`` training range (see
    :func:`expected_range`), or None to skip that check, in the units of the
    values checked: with a per-device baseline the agent passes the model's
    range mapped into the device's raw units (:mod:`shared.baseline`). :meth:`check` is on the
    agent's hot path: a reading inside every interval costs about 0.7 us for 8 sensors.

    >>> s = [SensorSpec("t", "degC", -40.0, 200.0, 20.0)]
    >>> ic = InputCheck(s, [(15.0, 25.0)])
    >>> ic.check(np.array([21.0])), ic.check(np.array([900.0])), ic.check(np.array([60.0]))
    (array([21.]), array([nan]), array([60.]))
    >>> ic.counts()
    {'out_of_range:t': 1, 'out_of_distribution:t': 1}
    """

    KINDS = ("missing", "out_of_range", "out_of_distribution")

    def __init__(
        self,
        sensors: Sequence[SensorSpec],
        expected: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        self.names = tuple(s.name for s in sensors)
        n = len(self.names)
        self._min: F64 = np.array([s.min for s in sensors], dtype=np.float64)
        self._max: F64 = np.array([s.max for s in sensors], dtype=np.float64)
        if expected is None:
            self._lo, self._hi = self._min.copy(), self._max.copy()
        else:
            if len(expected) != n:
                raise ValueError(f"InputCheck: {len(expected)} expected ranges for {n} sensors")
            ranges = [expected_range(lo, hi) for lo, hi in expected]
            self._lo = np.array([r[0] for r in ranges], dtype=np.float64)
            self._hi = np.array([r[1] for r in ranges], dtype=np.float64)
        # The fast path's interval: inside both the valid and the expected range.
        lo, hi = np.maximum(self._min, self._lo), np.minimum(self._max, self._hi)
        hi = np.maximum(hi, lo)  # disjoint ranges: every value takes the slow path
        self._center: F64 = (lo + hi) / 2.0
        self._half: F64 = (hi - lo) / 2.0
        self._dev: F64 = np.empty(n, dtype=np.float64)
        self._bounds = list(zip(lo.tolist(), hi.tolist(), strict=True))
        self._in_python = n <= _PYTHON_CHECK_MAX
        self._min_list, self._max_list = self._min.tolist(), self._max.tolist()
        self._lo_list, self._hi_list = self._lo.tolist(), self._hi.tolist()
        self.missing: I64 = np.zeros(n, dtype=np.int64)
        self.out_of_range: I64 = np.zeros(n, dtype=np.int64)
        self.out_of_distribution: I64 = np.zeros(n, dtype=np.int64)

    def check(self, values: F64) -> F64:
        """``values`` itself when every value is inside both ranges; else a copy
        with out-of-range values set to NaN, after counting."""
        if self._in_python:  # few sensors: plain float comparisons beat numpy's per-call cost
            vals = values.tolist()
            for x, (lo, hi) in zip(vals, self._bounds, strict=True):
                if not lo <= x <= hi:  # NaN fails the test
                    return self._slow_python(values, vals)
            return values
        dev = np.subtract(values, self._center, out=self._dev)
        np.abs(dev, out=dev)
        if (dev <= self._half).all():  # NaN fails the test
            return values
        return self._slow(values)

    def check_block(self, values: F64) -> F64:
        """:meth:`check` for a block of readings ``(n, n_sensors)`` at once (batch
        scoring): the same counts and the same result as checking row by row."""
        with np.errstate(invalid="ignore"):
            missing = ~(np.abs(values) < MAX_ABS_VALUE)
            present = ~missing
            bad = present & ((values < self._min) | (values > self._max))
            far = present & ~bad & ((values < self._lo) | (values > self._hi))
        self.missing += missing.sum(axis=0)
        self.out_of_range += bad.sum(axis=0)
        self.out_of_distribution += far.sum(axis=0)
        if bad.any():
            values = values.copy()
            values[bad] = math.nan
        return values

    def _slow_python(self, values: F64, vals: list[float]) -> F64:
        """:meth:`_slow` in plain Python, for few sensors. A dropout (NaN) lands here
        in about one reading in 60 of the simulator's stream: numpy's version took
        15 us, which set the agent's p99."""
        bad: list[int] = []
        for j, x in enumerate(vals):
            lo, hi = self._bounds[j]
            if lo <= x <= hi:
                continue
            if not abs(x) < MAX_ABS_VALUE:  # NaN, inf, absurd
                self.missing[j] += 1
            elif x < self._min_list[j] or x > self._max_list[j]:
                self.out_of_range[j] += 1
                bad.append(j)
            elif x < self._lo_list[j] or x > self._hi_list[j]:
                self.out_of_distribution[j] += 1
        if bad:
            values = values.copy()
            values[bad] = math.nan
        return values

    def _slow(self, values: F64) -> F64:
        with np.errstate(invalid="ignore"):
            missing = ~(np.abs(values) < MAX_ABS_VALUE)
            present = ~missing
            bad = present & ((values < self._min) | (values > self._max))
            far = present & ~bad & ((values < self._lo) | (values > self._hi))
        self.missing += missing
        self.out_of_range += bad
        self.out_of_distribution += far
        if bad.any():
            values = values.copy()
            values[bad] = math.nan
        return values

    def counts(self) -> dict[str, int]:
        """Non-zero counters as ``{"<kind>:<sensor>": n}``, for the heartbeat."""
        out: dict[str, int] = {}
        for kind in self.KINDS:
            arr: I64 = getattr(self, kind)
            for j in np.flatnonzero(arr).tolist():
                out[f"{kind}:{self.names[j]}"] = int(arr[j])
        return out


def _window_fallback(window: int, fallback: Iterable[float]) -> F64:
    """The fallback values of a feature window, checked with its length."""
    if window < 2:
        raise ValueError(f"feature window must hold at least 2 readings, got {window}")
    nominal: F64 = np.array(list(fallback), dtype=np.float64)
    if nominal.ndim != 1 or nominal.size == 0:
        raise ValueError("a feature window needs one fallback value per sensor")
    return nominal


class FeatureWindow:
    """A sliding window over one device's readings that yields model input.

    ``push`` is on the agent's hot path, where each numpy call costs about a
    third of a microsecond whatever its size, so it is written for few calls:

    - The window is stored twice over, in two ``window``-row halves of one
      buffer, and a reading is written to both halves with one assignment; the
      current window is then always one contiguous slice, oldest first.
    - Statistics are taken on deviations from the oldest reading: they stay
      small on a large offset, and are exact zeros for a constant signal, whose
      std is then exactly 0. The deviations come from one matrix product, whose
      coefficients (1, -1, 0) make each one exactly ``x - oldest``; means are
      dot products with ``1/window`` weights. No call broadcasts or casts.
    """

    def __init__(self, window: int, fallback: Iterable[float]) -> None:
        self.window = window
        self._nominal: F64 = _window_fallback(window, fallback)
        n = self.n_sensors = int(self._nominal.shape[0])
        halves: F64 = np.empty((2, window, n), dtype=np.float64)
        self._buf: F64 = halves.reshape(2 * window, n)  # a view: row i + window is row i's twin
        self._pos = -1
        # Views made once, by position of the newest reading: the pair of rows it
        # is written to, and the window it closes (rows pos+1 .. pos+window).
        self._pairs = [halves[:, pos] for pos in range(window)]
        self._windows = [self._buf[pos + 1 : pos + 1 + window] for pos in range(window)]
        deviation: F64 = np.eye(window)
        deviation[:, 0] -= 1.0  # row i of (deviation @ win) is win[i] - win[0]
        self._deviation = deviation
        self._weights: F64 = np.full(window, 1.0 / window)
        self._zeros: F64 = np.zeros(n)
        out: F64 = np.empty(len(STATS) * n, dtype=np.float64)
        self._out = out
        self._last, self._mean, self._std, self._delta = (
            out[i * n : (i + 1) * n] for i in range(4)
        )
        self.imputed = 0
        """How many sensor values were missing and carried forward."""

    @property
    def n_features(self) -> int:
        return len(STATS) * self.n_sensors

    def push(self, values: F64) -> F32:
        """Add one reading (NaN, or inf, for a missing value) and return its features.

        The first reading fills the whole window, so every reading, the first
        included, gets a decision. The result is a new array: a caller may keep it.
        """
        if values.shape != (self.n_sensors,):
            raise ValueError(
                f"a reading needs {self.n_sensors} values, one per sensor; got shape {values.shape}"
            )
        prev = self._pos
        pos = 0 if prev < 0 else (prev + 1) % self.window
        pair = self._pairs[pos]
        pair[...] = values  # a copy into both halves: a caller may reuse its array
        row = pair[0]
        # Every |x| < MAX_ABS_VALUE implies a sum of squares under its square; NaN
        # and inf fail the test. Only then is each value looked at. A value past
        # 1e154 overflows the square (inf, so it fails too), with a RuntimeWarning
        # that warning filters or np.seterr may turn into an exception: same answer.
        try:
            clean = prev >= 0 and row.dot(row) < _MAX_SQUARES
        except (RuntimeWarning, FloatingPointError):
            clean = False
        if not clean:
            self._impute(row, pair, prev)
        self._pos = pos
        win = self._windows[pos]
        first = win[0]
        dev = self._deviation.dot(win)
        mean_dev = self._weights.dot(dev)
        var = self._weights.dot(dev * dev)
        var -= mean_dev * mean_dev
        np.maximum(var, self._zeros, out=var)  # rounding may leave a tiny negative
        self._last[...] = row
        np.add(first, mean_dev, out=self._mean)
        np.sqrt(var, out=self._std)
        self._delta[...] = dev[-1]
        return self._out.astype(np.float32)

    def _impute(self, row: F64, pair: F64, prev: int) -> None:
        """Carry the last valid value forward into missing ones; the first reading fills all."""
        missing = ~(np.abs(row) < MAX_ABS_VALUE)  # NaN compares false
        if missing.any():
            self.imputed += int(missing.sum())
            np.copyto(row, self._nominal if prev < 0 else self._buf[prev], where=missing)
            pair[1] = row
        if prev < 0:
            self._buf[:] = row


def features_for_stream(values: F64, window: int, fallback: Iterable[float]) -> F32:
    """Features for every reading of one device's stream, shape ``(n, n_features)``.

    This runs the very :class:`FeatureWindow` the agent runs, reading by reading.
    """
    fw = FeatureWindow(window, fallback)
    out = np.empty((values.shape[0], fw.n_features), dtype=np.float32)
    for i, row in enumerate(values):
        out[i] = fw.push(row)
    return out


class BlockFeatureWindow:
    """:class:`FeatureWindow` for a block of consecutive readings of one series at once.

    Batch scoring reads a recording in chunks; pushing each reading through
    :class:`FeatureWindow` costs a few microseconds of Python per reading. This
    computes the same features for a whole block with a few numpy calls per
    position in the window, and carries the window (its last ``window - 1`` readings) and the
    last valid values from one block to the next, so a stream cut into blocks
    anywhere gives the features of the stream read reading by reading. The
    arithmetic is FeatureWindow's (deviations from the oldest reading of each
    window, means as products with ``1/window`` weights); only the order of
    the float64 sums may differ, so results agree within float32 rounding
    (``tests/shared/test_block_features.py`` checks it on random streams with
    missing values). Memory: a few arrays of the block's shape.

    >>> import numpy as np
    >>> block = BlockFeatureWindow(window=4, fallback=[65.0, 2.5])
    >>> x = block.push_block(np.array([[64.0, np.nan], [66.0, 3.0]]))
    >>> x.shape, [float(v) for v in x[0, :2]]
    ((2, 8), [64.0, 2.5])
    """

    def __init__(self, window: int, fallback: Iterable[float]) -> None:
        self.window = window
        self._nominal: F64 = _window_fallback(window, fallback)
        self.n_sensors = int(self._nominal.shape[0])
        self._tail: F64 | None = None  # the last window - 1 readings, imputed, oldest first
        self._weights: F64 = np.full(window, 1.0 / window)
        self.imputed = 0
        """How many sensor values were missing and carried forward."""

    @property
    def n_features(self) -> int:
        return len(STATS) * self.n_sensors

    def push_block(self, values: F64) -> F32:
        """Features of every reading of ``values`` ``(n, n_sensors)``, shape ``(n, n_features)``."""
        if values.ndim != 2 or values.shape[1] != self.n_sensors:
            raise ValueError(
                f"a block needs {self.n_sensors} values per reading; got shape {values.shape}"
            )
        n, w, s = int(values.shape[0]), self.window, self.n_sensors
        if n == 0:
            return np.empty((0, self.n_features), dtype=np.float32)
        x = np.array(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            missing = ~(np.abs(x) < MAX_ABS_VALUE)
        if missing.any():
            self.imputed += int(missing.sum())
            start = self._nominal if self._tail is None else self._tail[-1]
            # Carry forward: each missing value takes the last valid one above it in
            # its column, or the value before the block.
            rows = np.where(missing, -1, np.arange(n)[:, None])
            np.maximum.accumulate(rows, axis=0, out=rows)
            filled = x[np.maximum(rows, 0), np.arange(s)]
            x = np.where(rows >= 0, filled, start)
        before = np.repeat(x[:1], w - 1, axis=0) if self._tail is None else self._tail
        padded = np.concatenate([before, x])
        self._tail = padded[n:].copy()
        # Row i's window is padded[i : i + w]; its oldest reading is padded[i]. One
        # pass per position in the window, each over contiguous (n, s) arrays,
        # summing the weighted deviations in FeatureWindow's order.
        first = padded[:n]
        weight = float(self._weights[0])
        mean_dev = np.zeros((n, s))
        var = np.zeros((n, s))
        dev = np.empty((n, s))
        term = np.empty((n, s))
        for k in range(1, w):  # position 0 deviates by exactly 0
            np.subtract(padded[k : k + n], first, out=dev)
            np.multiply(dev, weight, out=term)
            mean_dev += term
            term *= dev
            var += term
        var -= mean_dev * mean_dev
        np.maximum(var, 0.0, out=var)
        out = np.empty((n, 4 * s), dtype=np.float32)
        out[:, :s] = x
        out[:, s : 2 * s] = first + mean_dev
        out[:, 2 * s : 3 * s] = np.sqrt(var)
        out[:, 3 * s :] = dev  # the last position: the newest reading
        return out
