"""The simulated machine's sensor set: one sensor set among others.

Models trained on the simulator declare these sensors in their manifest, as a
model trained on a user's recording declares that recording's sensors.
"""

from __future__ import annotations

from shared.features import SensorSpec, feature_names

__all__ = ["FEATURE_NAMES", "SENSORS", "SENSOR_NAMES"]

SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("temperature", "degC", -50.0, 300.0, 65.0),
    SensorSpec("vibration", "mm/s", 0.0, 100.0, 2.5),
    SensorSpec("pressure", "bar", 0.0, 50.0, 6.0),
    SensorSpec("current", "A", 0.0, 200.0, 18.0),
    SensorSpec("speed", "rpm", 0.0, 6000.0, 1800.0),
    SensorSpec("oil_temp", "degC", -50.0, 300.0, 50.0),
    SensorSpec("flow", "l/min", 0.0, 1000.0, 100.0),
    SensorSpec("acoustic", "dB", 0.0, 200.0, 75.0),
)
"""The machine's sensors, in the order its readings hold them: name, unit,
valid range (wide: what the sensor can report, not what is normal) and the
fallback value (the nominal operating point)."""
SENSOR_NAMES: tuple[str, ...] = tuple(s.name for s in SENSORS)
FEATURE_NAMES: tuple[str, ...] = feature_names(SENSOR_NAMES)
"""The features of a model trained on this machine."""
