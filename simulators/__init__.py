"""Seeded signal generators for edgeloop: simulated machines, sensor drift and
labelled training sets.

- :mod:`simulators.machine` — one industrial machine with the eight sensors of
  :data:`simulators.sensors.SENSORS`: operating regimes, coupled physics, noise,
  dropouts, a slowly developing fault, urgent conditions (random or injected),
  and a local ``stop``/``start`` action. Every reading carries its ground-truth
  label (:data:`CLASSES`).
- :mod:`simulators.drift` — what goes wrong with a sensor (mean shift, variance,
  stuck, offset) from a given reading on; :func:`parse_drift` for command lines.
- :mod:`simulators.dataset` — labelled training sets built with the one feature
  function, split by device or time block.

Everything is a pure function of its seed; nothing runs at import. No threads:
a simulated machine is stepped by its one owner.

>>> m = SimulatedMachine(MachineConfig(seed=0, drifts=(parse_drift("offset:flow:100:5"),)))
>>> [r.label for r in m.readings(3)]
[0, 0, 0]
"""

from simulators.dataset import (
    TRAINING_FAULT_RATE,
    TRAINING_URGENT_RATE,
    TrainingSet,
    build_training_set,
)
from simulators.drift import DRIFT_KINDS, DriftKind, DriftSpec, SimConfigError, parse_drift
from simulators.machine import (
    CLASSES,
    NOISE_SIGMA,
    REGIMES,
    URGENT_KINDS,
    LogEntry,
    MachineConfig,
    SimReading,
    SimulatedMachine,
    UrgentKind,
)

__all__ = [
    "CLASSES",
    "DRIFT_KINDS",
    "NOISE_SIGMA",
    "REGIMES",
    "TRAINING_FAULT_RATE",
    "TRAINING_URGENT_RATE",
    "URGENT_KINDS",
    "DriftKind",
    "DriftSpec",
    "LogEntry",
    "MachineConfig",
    "SimConfigError",
    "SimReading",
    "SimulatedMachine",
    "TrainingSet",
    "UrgentKind",
    "build_training_set",
    "parse_drift",
]
