"""Per-device baselines: a device's own normal, mapped onto the model's. Pure: no I/O.

Two machines of one kind rarely report the same numbers: each sensor has its
own offset and gain. A fleet model is trained on its reference data, whose
per-sensor ``location`` and ``scale`` the manifest keeps
(:class:`shared.manifest.SensorReference`). A device's **baseline** is the same
two statistics of that device's own normal readings; :class:`BaselineMap` maps
each reading onto the reference before the model sees it::

    x' = ref.location + (x - dev.location) / dev.scale * ref.scale
       = gain * x + offset          (gain = ref.scale / dev.scale > 0)

so a device's centre becomes the reference's and its spread the reference's.

Statistics (:func:`robust_stats`, the one definition, which the model's
reference statistics use too): ``location`` is the midpoint of the 5 % and
95 % quantiles, ``scale`` their distance / 3.29 (a standard deviation for
normal data), floored at 1e-3 of the larger of the 0.1-99.9 % span, the
location's magnitude and 1, so that a sensor that did not move gives a finite
gain. Missing values (NaN, inf) are ignored. Up to 5 % of outliers on either
side leave them unmoved.

Why not the median and the interquartile range: a machine runs in regimes
(idle, part load, full load), so a sensor's normal is a mixture of modes, and
the median and quartiles jump from one mode to the next as the share of time
in each regime changes. On the simulator, per-sensor scales of identical
devices (5,000 readings each) came out 0.5x to 4.6x the fleet's with the
median and IQR (median error of the gain 30 %), against 3 % with the 5/95 %
quantiles, which sit in the lowest and highest regime whatever their shares.
The reference is computed from the *normal* training rows
(:func:`cloud_hub.pipeline.package.sensor_references`): a device's
commissioning period is its normal, and mapping it onto statistics that
include faults would move normal readings toward the faults.

Where the agent applies it (:mod:`edge_agent.reading`), in this order:

1. the valid range (``SensorSpec.min``/``max``), on the raw value: a value the
   sensor cannot report is a sensor error, whatever the device's calibration;
2. the baseline, mapping the raw values onto the model's reference;
3. the out-of-distribution count, on the mapped values: "far outside what the
   model was trained on" is a statement about what the model sees. The check
   is done once for steps 1 and 3, on the raw values, against the model's
   training range mapped back into the device's units
   (:meth:`BaselineMap.device_ranges`); for an affine map with a positive gain
   that is the same test, and the hot path pays for one check;
4. the features, from the mapped values; the model scores them;
5. the urgent rule's hard limits, on the raw values: they are physical limits
   on what the sensor reports, not statistics of a fleet.

The file form (:meth:`Baseline.to_dict`, format 1) is what the hub stores,
serves at ``GET /v1/devices/{device}/baseline`` and the agent reads with
``--baseline FILE``::

    {"format": 1, "device": "pi-07", "model": "machine-edge",
     "sensors": {"temperature": {"location": 64.9, "scale": 4.1}, ...},
     "since": 1764180000.0, "until": 1764180499.9, "readings": 5000,
     "created": "2026-11-26T20:00:00Z"}

``since``/``until`` are the timestamps (unix seconds) of the first and last
reading it was computed from, ``readings`` how many there were.

Errors::

    EdgeloopError
     └── ConfigError
          └── BaselineError      a baseline that is malformed, or not for this
               │                 device and model (``field`` names the field)
               └── TooFewReadingsError  not enough readings to compute one

>>> import numpy as np
>>> from shared.manifest import SensorReference
>>> rng = np.random.default_rng(0)
>>> own = rng.normal(70.0, 2.0, size=(4000, 1))            # this device reads ~70 +- 2
>>> b = compute_baseline(own, ("temp",), device="pi-07", model="m", since=0.0, until=1.0)
>>> m = b.mapping({"temp": SensorReference(60.0, 4.0, 45.0, 75.0)}, ("temp",))
>>> mapped = m.apply(np.array([70.0]))                      # its centre maps to the reference's
>>> round(float(mapped[0]), 1)
60.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.errors import ConfigError, TopicError
from shared.features import feature_names
from shared.manifest import SensorReference
from shared.topics import validate_device_id

__all__ = [
    "FORMAT",
    "Baseline",
    "BaselineError",
    "BaselineMap",
    "RobustStats",
    "SensorBaseline",
    "TooFewReadingsError",
    "compute_baseline",
    "last_values",
    "robust_stats",
]

F64 = npt.NDArray[np.float64]
FORMAT: Final = 1
SCALE_FLOOR: Final = 1e-3
"""The least scale, as a share of the sensor's span (see the module docstring)."""
_FIELDS: Final = ("format", "device", "model", "sensors", "since", "until", "readings", "created")


class BaselineError(ConfigError):
    """A baseline that is malformed, or is not for this device, model or sensors.

    ``field`` names the offending field of the baseline (``sensors.flow.scale``).
    """

    def __init__(self, message: str, *, field: str = "", setting: str = "baseline") -> None:
        super().__init__(message, setting=setting)
        self.field = field


class TooFewReadingsError(BaselineError):
    """Fewer readings than a baseline needs; ``count`` and ``needed`` say how many."""

    def __init__(self, message: str, *, count: int, needed: int, field: str = "readings") -> None:
        super().__init__(message, field=field)
        self.count = count
        self.needed = needed


@dataclass(frozen=True, slots=True)
class RobustStats:
    """One sensor's robust statistics (see the module docstring)."""

    location: float
    scale: float
    low: float
    """The 0.1 % quantile."""
    high: float
    """The 99.9 % quantile."""
    count: int
    """How many finite values they come from."""


TAIL: Final = 0.05
"""The quantiles ``location`` and ``scale`` come from: TAIL and 1 - TAIL."""
_TAIL_WIDTH: Final = 3.2897
"""The distance between the 5 % and 95 % quantiles of a normal distribution, in standard deviations."""


def robust_stats(values: npt.NDArray[np.floating]) -> RobustStats:
    """Location, floored scale and the 0.1/99.9 % quantiles of the finite ``values``.

    >>> s = robust_stats(np.arange(101.0))
    >>> s.location, round(s.scale, 3), s.low, s.high, s.count
    (50.0, 27.358, 0.1, 99.9, 101)
    >>> robust_stats(np.full(10, 5.0)).scale   # a constant sensor: the floor, 1e-3 x 5
    0.005
    """
    col = np.asarray(values, dtype=np.float64)
    col = col[np.isfinite(col)]
    if col.size == 0:
        raise ValueError("robust_stats needs at least one finite value")
    low, lo, hi, high = np.quantile(col, [0.001, TAIL, 1.0 - TAIL, 0.999]).tolist()
    location = (lo + hi) / 2.0
    span = max(abs(high - low), abs(location), 1.0)
    scale = max((hi - lo) / _TAIL_WIDTH, SCALE_FLOOR * span)
    return RobustStats(location, scale, low, high, int(col.size))


def last_values(features: npt.NDArray[np.floating], sensors: Sequence[str]) -> F64:
    """The readings behind feature rows: their ``{sensor}_last`` columns, in ``sensors``
    order (what a device sent, missing values carried forward), as float64.

    >>> last_values(np.array([[1.0, 2.0, 1.5, 2.5, 0.0, 0.0, 0.0, 0.0]]), ["a", "b"])
    array([[1., 2.]])
    """
    names = feature_names(sensors)
    if features.ndim != 2 or features.shape[1] != len(names):
        raise ValueError(
            f"last_values: feature rows of {len(sensors)} sensors have {len(names)} columns; "
            f"got shape {features.shape}"
        )
    cols = [names.index(f"{s}_last") for s in sensors]
    return np.asarray(features[:, cols], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SensorBaseline:
    """One sensor's normal on one device: location and robust standard deviation (> 0)."""

    location: float
    scale: float


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compute_baseline(
    values: F64,
    sensors: Sequence[str],
    *,
    device: str,
    model: str,
    since: float,
    until: float,
    min_readings: int = 1,
    created: str | None = None,
) -> Baseline:
    """The baseline of ``values`` (one row per reading, one column per sensor, in
    ``sensors`` order; NaN ignored), refusing fewer than ``min_readings``
    readings, or a sensor with fewer than ``min_readings`` finite values."""
    if values.ndim != 2 or values.shape[1] != len(sensors):
        raise ValueError(
            f"compute_baseline: values must be (n, {len(sensors)}), one column per sensor; "
            f"got shape {values.shape}"
        )
    n = int(values.shape[0])
    if n < max(min_readings, 1):
        raise TooFewReadingsError(
            f"device {device!r}: {n} readings; a baseline needs at least {max(min_readings, 1)}",
            count=n,
            needed=max(min_readings, 1),
        )
    out: dict[str, SensorBaseline] = {}
    for j, name in enumerate(sensors):
        finite = int(np.isfinite(values[:, j]).sum())
        if finite < max(min_readings, 1):
            raise TooFewReadingsError(
                f"device {device!r}: sensor {name!r} has {finite} valid values in {n} "
                f"readings; a baseline needs at least {max(min_readings, 1)}",
                count=finite,
                needed=max(min_readings, 1),
                field=f"sensors.{name}",
            )
        stats = robust_stats(values[:, j])
        out[name] = SensorBaseline(float(f"{stats.location:.6g}"), float(f"{stats.scale:.6g}"))
    return Baseline(device, model, out, since, until, n, created or _utc_now())


class _Reader:
    """Strict reader of the baseline's JSON object; every error names the field."""

    def __init__(self, obj: Any, where: str) -> None:
        self.where = where
        if not isinstance(obj, dict):
            raise self.fail("", "must be a JSON object")
        self.obj: dict[str, Any] = obj

    def fail(self, key: str, why: str) -> BaselineError:
        what = f"field {key!r}" if key else "the top level"
        return BaselineError(f"{self.where}: {what} {why}", field=key)

    def get(self, key: str, kind: type | tuple[type, ...], path: str | None = None) -> Any:
        path = path or key
        if key not in self.obj:
            return self._missing(path)
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(path, f"has the wrong type ({type(value).__name__})")
        return value

    def _missing(self, path: str) -> Any:
        raise self.fail(path, "is missing")

    def number(self, obj: dict[str, Any], key: str, path: str, *, positive: bool = False) -> float:
        if key not in obj:
            self._missing(path)
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"must be a number, got {type(value).__name__}")
        num = float(value)
        if not math.isfinite(num):
            raise self.fail(path, f"= {value} must be finite")
        if positive and not num > 0:
            raise self.fail(path, f"= {value} must be > 0")
        return num


@dataclass(frozen=True, slots=True)
class Baseline:
    """One device's baseline for one model's sensors (see the module docstring)."""

    device: str
    model: str
    sensors: dict[str, SensorBaseline]
    since: float
    until: float
    readings: int
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "device": self.device,
            "model": self.model,
            "sensors": {
                k: {"location": v.location, "scale": v.scale} for k, v in self.sensors.items()
            },
            "since": self.since,
            "until": self.until,
            "readings": self.readings,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, obj: Any, where: str = "baseline") -> Baseline:
        """Validate a decoded baseline; :class:`BaselineError` names the field.

        >>> Baseline.from_dict({"format": 1, "device": "pi-07"}, "b.json")
        Traceback (most recent call last):
        ...
        shared.baseline.BaselineError: b.json: field 'model' is missing
        """
        r = _Reader(obj, where)
        if "format" in r.obj and r.obj["format"] != FORMAT:
            raise r.fail(
                "format",
                f"is {r.obj['format']!r}; this build reads format {FORMAT}: make the baseline "
                "again with this edgeloop ('edgeloop-hub devices baseline')",
            )
        r.get("format", int)
        device = r.get("device", str)
        try:
            validate_device_id(device)
        except TopicError as exc:
            raise r.fail("device", f"= {device!r}: {exc}") from None
        model = r.get("model", str)
        if not model:
            raise r.fail("model", "must name the model")
        raw = r.get("sensors", dict)
        if not raw:
            raise r.fail("sensors", "must hold at least one sensor")
        sensors: dict[str, SensorBaseline] = {}
        for name, stats in raw.items():
            path = f"sensors.{name}"
            if not isinstance(stats, dict):
                raise r.fail(path, "must be an object with 'location' and 'scale'")
            sensors[name] = SensorBaseline(
                r.number(stats, "location", f"{path}.location"),
                r.number(stats, "scale", f"{path}.scale", positive=True),
            )
        since = r.number(r.obj, "since", "since")
        until = r.number(r.obj, "until", "until")
        if since > until:
            raise r.fail("since", f"= {since} is after until = {until}")
        readings = r.get("readings", int)
        if readings < 1:
            raise r.fail("readings", f"= {readings} must be >= 1")
        created = r.get("created", str)
        unknown = sorted(set(r.obj) - set(_FIELDS))
        if unknown:
            raise r.fail(unknown[0], f"is not a baseline field (fields: {', '.join(_FIELDS)})")
        return cls(device, model, sensors, since, until, readings, created)

    def check_for(self, device: str, model: str, sensors: Sequence[str], where: str) -> None:
        """Refuse a baseline of another device, another model, or other sensors."""
        if self.device != device:
            raise BaselineError(
                f"{where}: field 'device' is {self.device!r}, but this is device {device!r}; "
                f"use this device's own baseline (GET /v1/devices/{device}/baseline)",
                field="device",
            )
        if self.model != model:
            raise BaselineError(
                f"{where}: field 'model' is {self.model!r}, but the agent runs model {model!r}; "
                f"make a baseline for it ('edgeloop-hub devices baseline {device} --model "
                f"{model} ...')",
                field="model",
            )
        if set(self.sensors) != set(sensors):
            lacking = [s for s in sensors if s not in self.sensors]
            extra = [s for s in self.sensors if s not in sensors]
            first = f"sensors.{lacking[0]}" if lacking else f"sensors.{extra[0]}"
            raise BaselineError(
                f"{where}: field 'sensors' has {sorted(self.sensors)}, but model {model!r} reads "
                f"{list(sensors)} (missing: {lacking or 'none'}; not the model's: "
                f"{extra or 'none'})",
                field=first,
            )

    def mapping(
        self, reference: Mapping[str, SensorReference], sensors: Sequence[str]
    ) -> BaselineMap:
        """The map of this device's values onto ``reference``, in ``sensors`` order."""
        dev_loc = np.array([self.sensors[s].location for s in sensors], dtype=np.float64)
        dev_scale = np.array([self.sensors[s].scale for s in sensors], dtype=np.float64)
        ref_loc = np.array([reference[s].location for s in sensors], dtype=np.float64)
        ref_scale = np.array([reference[s].scale for s in sensors], dtype=np.float64)
        gain = ref_scale / dev_scale
        return BaselineMap(gain, ref_loc - dev_loc * gain)


class BaselineMap:
    """``x' = gain * x + offset`` per sensor; :meth:`apply` is on the agent's hot path.

    >>> m = BaselineMap(np.array([2.0]), np.array([-10.0]))
    >>> m.apply(np.array([7.0])), m.device_ranges([(0.0, 10.0)])
    (array([4.]), [(5.0, 10.0)])
    """

    def __init__(self, gain: F64, offset: F64) -> None:
        if gain.shape != offset.shape or gain.ndim != 1:
            raise ValueError("BaselineMap: gain and offset must be 1-d arrays of one shape")
        if not (np.isfinite(gain).all() and (gain > 0).all() and np.isfinite(offset).all()):
            raise ValueError("BaselineMap: every gain must be finite and > 0, every offset finite")
        self.gain = gain
        self.offset = offset
        self._out: F64 = np.empty_like(gain)

    def apply(self, values: F64) -> F64:
        """The mapped values: two numpy calls, into a buffer that the next call
        overwrites (the feature window copies what it keeps). NaN stays NaN."""
        out = np.multiply(values, self.gain, out=self._out)
        return np.add(out, self.offset, out=out)

    def device_ranges(self, ranges: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        """Ranges of mapped values, ``(low, high)`` per sensor, in the device's raw units."""
        return [
            ((lo - o) / g, (hi - o) / g)
            for (lo, hi), g, o in zip(ranges, self.gain.tolist(), self.offset.tolist(), strict=True)
        ]
