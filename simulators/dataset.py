"""Labelled training sets from simulated machines.

:func:`build_training_set` runs a few simulated devices, turns each device's
stream into model input with :func:`shared.features.features_for_stream` (the
one feature function the edge and the hub run too) and keeps the ground-truth
labels. The default rates are far higher than a real plant's so that every
class has enough examples to learn from (about 8 % urgent and 40 % fault).

>>> ts = build_training_set(seed=1, devices=2, readings_per_device=300)
>>> ts.X.shape, ts.X.dtype.name, ts.y.dtype.name, ts.classes
((600, 32), 'float32', 'int64', ('normal', 'fault', 'urgent'))
>>> train, holdout = ts.split(0.5, seed=0)
>>> sorted(set(train.device.tolist()) | set(holdout.device.tolist()))
[0, 1]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from shared.features import DEFAULT_WINDOW, features_for_stream
from simulators.drift import SimConfigError
from simulators.machine import CLASSES, MachineConfig, SimulatedMachine
from simulators.sensors import FEATURE_NAMES, SENSORS

__all__ = [
    "TRAINING_FAULT_RATE",
    "TRAINING_URGENT_RATE",
    "TrainingSet",
    "build_training_set",
]

TRAINING_URGENT_RATE = 0.007
"""Urgent hazard per reading for training data: ~8 % of readings are urgent."""
TRAINING_FAULT_RATE = 1.0 / 3000.0
"""Fault hazard per reading for training data: with 4000 readings per device,
about 40 % of the readings come after a fault onset (never under 15 %
in 60 seeds tried)."""


def _readonly(a: npt.NDArray[np.generic]) -> None:
    a.flags.writeable = False


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Model input and ground truth, one row per reading, in time order per device.

    ``X`` is ``(n, len(feature_names))`` float32, ``y`` the int64 label (an index
    into ``classes``), ``device`` and ``sim_time`` say where each row came from.
    ``window`` is the feature window, needed to split by time without leakage.
    ``sha256`` (hex) hashes the shapes, dtypes and bytes of ``X`` and ``y``, for
    lineage. The arrays are read-only.
    """

    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    device: npt.NDArray[np.int64]
    sim_time: npt.NDArray[np.float64]
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    window: int
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.X.ndim != 2 or self.X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"TrainingSet.X must be (n, {len(self.feature_names)}); got {self.X.shape}"
            )
        for name in ("y", "device", "sim_time"):
            if getattr(self, name).shape != (n,):
                raise ValueError(
                    f"TrainingSet.{name} must have shape ({n},) like X; "
                    f"got {getattr(self, name).shape}"
                )
        for a in (self.X, self.y, self.device, self.sim_time):
            _readonly(a)
        h = hashlib.sha256()
        for a in (self.X, self.y):
            h.update(f"{a.dtype.str}{a.shape};".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        object.__setattr__(self, "sha256", h.hexdigest())

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self) -> dict[str, int]:
        """How many rows each class has."""
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(counts[k]) for k, c in enumerate(self.classes)}

    def subset(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> TrainingSet:
        """The rows selected by a boolean mask or an index array (order kept)."""
        return TrainingSet(
            X=self.X[rows],
            y=self.y[rows],
            device=self.device[rows],
            sim_time=self.sim_time[rows],
            feature_names=self.feature_names,
            classes=self.classes,
            window=self.window,
        )

    def split(
        self,
        holdout_fraction: float,
        seed: int,
        *,
        by: Literal["device", "time"] = "device",
        block: int = 500,
    ) -> tuple[TrainingSet, TrainingSet]:
        """Split into ``(train, holdout)`` without leakage; never by random rows.

        Rows are windows of ``window`` readings, so neighbouring rows overlap in
        all but one reading: a random row split would put near-copies of every
        holdout row in train and make any metric look better than it is.

        ``by="device"`` holds out whole devices (about ``holdout_fraction`` of
        them, at least one and never all). ``by="time"`` cuts each device's
        stream into blocks of ``block`` readings and holds out a seeded random
        ``holdout_fraction`` of the blocks; the first ``window - 1`` rows after a
        change of side are dropped, so no two rows on different sides share a
        reading.
        """
        if not (0.0 < holdout_fraction < 1.0):
            raise SimConfigError(
                f"split: holdout_fraction must be in (0, 1); got {holdout_fraction!r}",
                setting="holdout_fraction",
            )
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        if by == "device":
            devices = np.unique(self.device)
            if devices.size < 2:
                raise SimConfigError(
                    f"split by device needs >= 2 devices, this set has {devices.size}; "
                    f"use by='time'",
                    setting="by",
                )
            k = min(devices.size - 1, max(1, round(holdout_fraction * devices.size)))
            held = rng.choice(devices, size=k, replace=False)
            mask = np.isin(self.device, held)
            return self.subset(~mask), self.subset(mask)
        if by == "time":
            if block < self.window:
                raise SimConfigError(
                    f"split: block must be >= window ({self.window}); got {block}",
                    setting="block",
                )
            side = np.zeros(len(self), dtype=np.int8)  # 0 train, 1 holdout, -1 dropped
            for d in np.unique(self.device).tolist():
                rows = np.flatnonzero(self.device == d)
                n_blocks = -(-rows.size // block)
                k = min(n_blocks - 1, max(1, round(holdout_fraction * n_blocks)))
                held_blocks = np.zeros(n_blocks, dtype=np.bool_)
                held_blocks[rng.choice(n_blocks, size=k, replace=False)] = True
                s = np.repeat(held_blocks, block)[: rows.size].astype(np.int8)
                for b in range(1, n_blocks):
                    if held_blocks[b] != held_blocks[b - 1]:
                        s[b * block : b * block + self.window - 1] = -1
                side[rows] = s
            return self.subset(side == 0), self.subset(side == 1)
        raise SimConfigError(f"split: by must be 'device' or 'time'; got {by!r}", setting="by")


def build_training_set(
    seed: int,
    devices: int = 16,
    readings_per_device: int = 4000,
    window: int = DEFAULT_WINDOW,
    *,
    urgent_rate: float = TRAINING_URGENT_RATE,
    fault_rate: float = TRAINING_FAULT_RATE,
) -> TrainingSet:
    """Simulate ``devices`` machines (device indices 0..devices-1) and label them.

    Same arguments, same set (and same ``sha256``). Dropouts stay at the
    machines' default rate, so the features see the carried-forward values the
    edge will see. About 1 s for the default 64,000 rows.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise SimConfigError(f"devices must be an integer >= 1; got {devices!r}", setting="devices")
    if (
        isinstance(readings_per_device, bool)
        or not isinstance(readings_per_device, int)
        or readings_per_device < 1
    ):
        raise SimConfigError(
            f"readings_per_device must be an integer >= 1; got {readings_per_device!r}",
            setting="readings_per_device",
        )
    n = readings_per_device
    xs: list[npt.NDArray[np.float32]] = []
    ys = np.empty(devices * n, dtype=np.int64)
    times = np.empty(devices * n, dtype=np.float64)
    values = np.empty((n, len(SENSORS)), dtype=np.float64)
    for d in range(devices):
        machine = SimulatedMachine(
            MachineConfig(seed=seed, device_index=d, urgent_rate=urgent_rate, fault_rate=fault_rate)
        )
        base = d * n
        for k, reading in enumerate(machine.readings(n)):
            values[k] = reading.values
            ys[base + k] = reading.label
            times[base + k] = reading.sim_time
        xs.append(features_for_stream(values, window, [s.fallback for s in SENSORS]))
    return TrainingSet(
        X=np.concatenate(xs),
        y=ys,
        device=np.repeat(np.arange(devices, dtype=np.int64), n),
        sim_time=times,
        feature_names=FEATURE_NAMES,
        classes=CLASSES,
        window=window,
    )
