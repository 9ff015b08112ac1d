"""Sensor drift: what goes wrong with a sensor, not with the machine.

A :class:`DriftSpec` changes what one sensor *reports* from one reading on; the
machine underneath (its state, its regimes, its faults and its ground-truth
labels) is untouched. So a drifted device and its undrifted twin (same seed,
same device index) produce identical readings before ``start`` and differ only
in the drifted sensor after it: that is what drift detectors are tested on.

Kinds, applied from reading index ``start`` on:

- ``mean_shift``: adds ``magnitude`` times the sensor's measurement-noise sigma
  (:data:`simulators.machine.NOISE_SIGMA`), so a "1-sigma shift" is ``magnitude=1.0``;
- ``variance``: multiplies the sensor's measurement noise by ``magnitude``;
- ``stuck``: the sensor repeats the value it reported at ``start`` forever
  (``magnitude`` is ignored);
- ``offset``: a recalibration offset of ``magnitude`` in the sensor's own unit.

Errors (this module is the bottom of the package, so the package's one error
type lives here)::

    ValueError
     └── SimConfigError     (also a shared.errors.ConfigError) a simulator
                            setting or drift spec that is malformed

>>> parse_drift("mean_shift:temperature:500:1.0")
DriftSpec(kind='mean_shift', sensor='temperature', start=500, magnitude=1.0)
>>> str(DriftSpec("stuck", "flow", 300))
'stuck:flow:300:0.0'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast, get_args

from shared.errors import ConfigError
from simulators.sensors import SENSOR_NAMES

__all__ = ["DRIFT_KINDS", "DriftKind", "DriftSpec", "SimConfigError", "parse_drift"]

DriftKind = Literal["mean_shift", "variance", "stuck", "offset"]
DRIFT_KINDS: tuple[str, ...] = get_args(DriftKind)


class SimConfigError(ConfigError, ValueError):
    """A simulator setting or drift spec that is malformed or out of range.

    It is a :class:`ValueError` too, so command-line parsers (``argparse``
    ``type=``) and plain ``except ValueError`` treat it as bad input.
    ``setting`` names the offending field, e.g. ``"MachineConfig.dropout_prob"``.
    """


@dataclass(frozen=True, slots=True)
class DriftSpec:
    """One sensor drift on one device, from reading index ``start`` on.

    The spec is data only; :class:`simulators.machine.SimulatedMachine` applies
    the specs found in its :class:`~simulators.machine.MachineConfig`.
    ``str(spec)`` is the ``kind:sensor:start:magnitude`` form that
    :func:`parse_drift` reads back.
    """

    kind: DriftKind
    sensor: str
    start: int
    magnitude: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise SimConfigError(
                f"DriftSpec.kind must be one of {', '.join(DRIFT_KINDS)}; got {self.kind!r}",
                setting="DriftSpec.kind",
            )
        if self.sensor not in SENSOR_NAMES:
            raise SimConfigError(
                f"DriftSpec.sensor {self.sensor!r} is not a sensor; "
                f"valid sensors: {', '.join(SENSOR_NAMES)}",
                setting="DriftSpec.sensor",
            )
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise SimConfigError(
                f"DriftSpec.start must be a reading index >= 0; got {self.start!r}",
                setting="DriftSpec.start",
            )
        if (
            isinstance(self.magnitude, bool)
            or not isinstance(self.magnitude, int | float)
            or not math.isfinite(self.magnitude)
        ):
            raise SimConfigError(
                f"DriftSpec.magnitude must be a finite number; got {self.magnitude!r}",
                setting="DriftSpec.magnitude",
            )
        if self.kind == "variance" and self.magnitude < 0:
            raise SimConfigError(
                f"DriftSpec.magnitude of a variance drift multiplies the noise and must be "
                f">= 0; got {self.magnitude!r}",
                setting="DriftSpec.magnitude",
            )
        # Normalise ints so equal specs compare and print equal.
        object.__setattr__(self, "magnitude", float(self.magnitude))

    @property
    def sensor_index(self) -> int:
        """Position of the drifted sensor in :data:`simulators.sensors.SENSORS`."""
        return SENSOR_NAMES.index(self.sensor)

    def __str__(self) -> str:
        return f"{self.kind}:{self.sensor}:{self.start}:{self.magnitude!r}"


_FORMAT = "kind:sensor:start:magnitude, e.g. 'mean_shift:temperature:500:1.0'"


def parse_drift(text: str) -> DriftSpec:
    """Read a drift spec from ``kind:sensor:start:magnitude`` (for command lines).

    ``magnitude`` may be left out for ``stuck`` drifts, which ignore it. Any
    malformed text raises :class:`SimConfigError` (a :class:`ValueError`) that
    names the bad part and the valid choices.

    >>> parse_drift("offset:pressure:0:-0.25").magnitude
    -0.25
    >>> parse_drift("stuck:flow:300")
    DriftSpec(kind='stuck', sensor='flow', start=300, magnitude=0.0)
    >>> parse_drift("shift:temperature:5:1")
    Traceback (most recent call last):
    ...
    simulators.drift.SimConfigError: drift 'shift:temperature:5:1': kind 'shift' is not one of mean_shift, variance, stuck, offset
    """
    if not isinstance(text, str):
        raise SimConfigError(f"a drift spec must be a string {_FORMAT}; got {text!r}")
    parts = [p.strip() for p in text.split(":")]
    kind = parts[0]
    if kind not in DRIFT_KINDS:
        raise SimConfigError(
            f"drift {text!r}: kind {kind!r} is not one of {', '.join(DRIFT_KINDS)}",
            setting="kind",
        )
    if not (len(parts) == 4 or (len(parts) == 3 and kind == "stuck")):
        raise SimConfigError(
            f"drift {text!r}: expected {_FORMAT} (4 parts separated by ':'), got {len(parts)}",
        )
    sensor = parts[1]
    if sensor not in SENSOR_NAMES:
        raise SimConfigError(
            f"drift {text!r}: sensor {sensor!r} is not one of {', '.join(SENSOR_NAMES)}",
            setting="sensor",
        )
    try:
        start = int(parts[2])
    except ValueError:
        raise SimConfigError(
            f"drift {text!r}: start {parts[2]!r} is not a whole reading index", setting="start"
        ) from None
    magnitude = 0.0
    if len(parts) == 4:
        try:
            magnitude = float(parts[3])
        except ValueError:
            raise SimConfigError(
                f"drift {text!r}: magnitude {parts[3]!r} is not a number", setting="magnitude"
            ) from None
    try:
        return DriftSpec(cast(DriftKind, kind), sensor, start, magnitude)
    except SimConfigError as exc:
        raise SimConfigError(f"drift {text!r}: {exc}", setting=exc.setting) from None
