"""Sensors and features: the one place where raw readings become model input.

Training (``cloud_hub.pipeline``), the edge agent and the hub all call
:class:`FeatureWindow`, so there is no train/serve skew: a model sees in
production exactly the numbers it was trained on.

A reading is one value per sensor, in :data:`SENSORS` order; a missing value
(a sensor dropout) is NaN; an infinite value, or one of absurd magnitude
(:data:`MAX_ABS_VALUE`), counts as missing too. The window carries the last valid value forward, so features are always finite. For
each sensor the features are, over the last ``window`` readings: the latest
value, the mean, the standard deviation and the change from the oldest to the
latest value.

>>> import numpy as np
>>> fw = FeatureWindow(window=4)
>>> x = fw.push(np.array([s.nominal for s in SENSORS]))
>>> x.shape == (len(FEATURE_NAMES),) and x.dtype == np.float32
True
>>> bool(np.all(x[len(SENSORS):2 * len(SENSORS)] == x[:len(SENSORS)]))  # mean == last at start
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_WINDOW",
    "FEATURE_NAMES",
    "MAX_ABS_VALUE",
    "SENSORS",
    "SENSOR_NAMES",
    "STATS",
    "FeatureWindow",
    "SensorSpec",
    "feature_names",
    "features_for_stream",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor of the industrial machine: its name, unit and normal value.

    ``nominal`` stands in for a sensor that has not yet reported a valid value.
    """

    name: str
    unit: str
    nominal: float


SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("temperature", "degC", 65.0),
    SensorSpec("vibration", "mm/s", 2.5),
    SensorSpec("pressure", "bar", 6.0),
    SensorSpec("current", "A", 18.0),
    SensorSpec("speed", "rpm", 1800.0),
    SensorSpec("oil_temp", "degC", 50.0),
    SensorSpec("flow", "l/min", 100.0),
    SensorSpec("acoustic", "dB", 75.0),
)
SENSOR_NAMES: tuple[str, ...] = tuple(s.name for s in SENSORS)
STATS: tuple[str, ...] = ("last", "mean", "std", "delta")
DEFAULT_WINDOW = 10
MAX_ABS_VALUE = 1e15
"""A reading whose magnitude reaches this is treated as missing (no sensor reads it)."""
_MAX_SQUARES = MAX_ABS_VALUE * MAX_ABS_VALUE


def feature_names(sensors: Iterable[str] = SENSOR_NAMES) -> tuple[str, ...]:
    """Names of the model inputs, in order: every stat for every sensor."""
    names = tuple(sensors)
    return tuple(f"{sensor}_{stat}" for stat in STATS for sensor in names)


FEATURE_NAMES: tuple[str, ...] = feature_names()


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

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        nominal: Iterable[float] | None = None,
    ) -> None:
        if window < 2:
            raise ValueError(f"feature window must hold at least 2 readings, got {window}")
        self.window = window
        if nominal is None:
            nominal = [s.nominal for s in SENSORS]
        self._nominal: F64 = np.array(list(nominal), dtype=np.float64)
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


def features_for_stream(
    values: F64, window: int = DEFAULT_WINDOW, nominal: Iterable[float] | None = None
) -> F32:
    """Features for every reading of one device's stream, shape ``(n, n_features)``.

    This runs the very :class:`FeatureWindow` the agent runs, reading by reading.
    """
    fw = FeatureWindow(window, nominal)
    out = np.empty((values.shape[0], fw.n_features), dtype=np.float32)
    for i, row in enumerate(values):
        out[i] = fw.push(row)
    return out
