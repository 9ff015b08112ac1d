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


def feature_names(sensors: Iterable[str] = SENSOR_NAMES) -> tuple[str, ...]:
    """Names of the model inputs, in order: every stat for every sensor."""
    names = tuple(sensors)
    return tuple(f"{sensor}_{stat}" for stat in STATS for sensor in names)


FEATURE_NAMES: tuple[str, ...] = feature_names()


class FeatureWindow:
    """A sliding window over one device's readings that yields model input.

    ``push`` costs a few microseconds: the window is stored twice over in a
    buffer of ``2 * window`` rows, so the current window is always one
    contiguous slice in time order and no data is moved per reading.
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
        self.n_sensors = int(self._nominal.shape[0])
        self._buf: F64 = np.empty((2 * window, self.n_sensors), dtype=np.float64)
        self._pos = -1
        self._out: F64 = np.empty((len(STATS), self.n_sensors), dtype=np.float64)
        self._weights: F64 = np.full(window, 1.0 / window)
        self.imputed = 0
        """How many sensor values were missing and carried forward."""

    @property
    def n_features(self) -> int:
        return len(STATS) * self.n_sensors

    def push(self, values: F64) -> F32:
        """Add one reading (NaN, or inf, for a missing value) and return its features.

        The first reading fills the whole window, so every reading, the first
        included, gets a decision.
        """
        if values.shape != (self.n_sensors,):
            raise ValueError(
                f"a reading needs {self.n_sensors} values, one per sensor; got shape {values.shape}"
            )
        w = self.window
        pos = 0 if self._pos < 0 else (self._pos + 1) % w
        row = self._buf[pos]
        row[:] = values  # a copy: a caller may reuse its array
        # NaN, inf and absurd magnitudes are not measurements: carry the last
        # valid value forward, so features are always finite.
        if not np.abs(row).max() < MAX_ABS_VALUE:  # NaN propagates through max
            missing = ~(np.abs(row) < MAX_ABS_VALUE)
            self.imputed += int(missing.sum())
            np.copyto(row, self._nominal if self._pos < 0 else self._buf[self._pos], where=missing)
        if self._pos < 0:
            self._buf[:] = row  # the first reading fills the window
        else:
            self._buf[pos + w] = row
        self._pos = pos
        # Rows pos+1 .. pos+w hold the window, oldest first. Work on deviations
        # from the oldest reading: they stay small on a large offset, and are
        # exact zeros for a constant signal, whose std is then exactly 0. Means
        # as matrix products cost a third of ndarray.mean on a window this small.
        win = self._buf[pos + 1 : pos + 1 + w]
        first = win[0]
        dev = win - first
        out = self._out
        mean_dev = np.matmul(self._weights, dev, out=out[1])
        var = np.matmul(self._weights, dev * dev, out=out[2])
        var -= mean_dev * mean_dev
        np.sqrt(np.maximum(var, 0.0, out=var), out=var)
        mean_dev += first
        out[0] = row
        out[3] = dev[-1]
        return out.astype(np.float32).reshape(-1)


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
