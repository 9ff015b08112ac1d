"""Stored telemetry -> a labelled training set with a held-out slice. Pure: no I/O.

Each reading the hub stored carries the features the device computed and the
heavy model's class probabilities. Its label is:

1. the class of a ground-truth label an operator posted (``POST /v1/labels``)
   whose range ``[since, until)`` holds the reading's timestamp (the latest
   posted label wins where two overlap); else
2. the heavy model's arg-max class: the teacher's label for the edge student.

Each device's readings, in time order, are cut by time
(:func:`cloud_hub.pipeline.recorded.time_sides`, the rule ``models train``
uses): the first part trains, the next ``validation_fraction`` chooses the
urgent threshold, the last ``holdout_fraction`` is the held-out slice that
only the gates see. The ``window - 1`` readings after each cut, whose feature
window reaches back across it, are dropped, so no held-out reading shares raw
data with a training one.

>>> d = DeviceData("pi-1", np.arange(10.0), np.zeros((10, 2), np.float32),
...                np.tile(np.float32([[0.9, 0.1]]), (10, 1)))
>>> ds = assemble([d], {"pi-1": [LabelSpan(5.0, 7.0, 1)]}, n_classes=2, window=1,
...               validation_fraction=0.0, holdout_fraction=0.2)
>>> ds.y.tolist(), ds.from_label.sum().item(), ds.side.tolist()
([0, 0, 0, 0, 0, 1, 1, 0, 0, 0], 2, [0, 0, 0, 0, 0, 0, 0, 0, 2, 2])
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_hub.pipeline.recorded import time_sides

__all__ = [
    "HOLDOUT",
    "TRAIN",
    "VALIDATION",
    "Dataset",
    "DeviceData",
    "LabelSpan",
    "assemble",
    "sabotage",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]

TRAIN, VALIDATION, HOLDOUT = 0, 1, 2


@dataclass(frozen=True, slots=True, eq=False)
class DeviceData:
    """One device's stored readings in the window (any order; sorted here)."""

    device: str
    ts: F64
    features: F32
    heavy_scores: F32


@dataclass(frozen=True, slots=True)
class LabelSpan:
    """Readings with ``since <= ts < until`` are of class index ``label``."""

    since: float
    until: float
    label: int


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Rows of every device, device by device in time order.

    ``side`` is :data:`TRAIN`, :data:`VALIDATION`, :data:`HOLDOUT` or -1
    (dropped at a cut); ``teacher`` is the heavy model's class, ``y`` the label
    used (``from_label`` marks rows a posted label decided)."""

    x: F32
    y: I64
    teacher: I64
    from_label: npt.NDArray[np.bool_]
    device: I64
    side: I8
    devices: tuple[str, ...]
    sha256: str

    def part(self, side: int) -> tuple[F32, I64]:
        rows = self.side == side
        return self.x[rows], self.y[rows]

    def counts(self) -> dict[str, int]:
        return {
            "rows": int(self.y.size),
            "train_rows": int(np.sum(self.side == TRAIN)),
            "validation_rows": int(np.sum(self.side == VALIDATION)),
            "holdout_rows": int(np.sum(self.side == HOLDOUT)),
            "label_rows": int(self.from_label.sum()),
            "teacher_rows": int((~self.from_label).sum()),
        }


def assemble(
    devices: Sequence[DeviceData],
    labels: Mapping[str, Sequence[LabelSpan]],
    *,
    n_classes: int,
    window: int,
    validation_fraction: float,
    holdout_fraction: float,
) -> Dataset:
    """Label and split the readings (see the module docstring). ``labels`` by device,
    oldest posted first. ValueError when there is nothing to assemble or the shapes
    disagree."""
    xs: list[F32] = []
    ys: list[I64] = []
    teachers: list[I64] = []
    marks: list[npt.NDArray[np.bool_]] = []
    sides: list[I8] = []
    owner: list[I64] = []
    names: list[str] = []
    width: int | None = None
    for d in devices:
        n = int(d.ts.shape[0])
        if n == 0:
            continue
        if d.features.shape[0] != n or d.heavy_scores.shape != (n, n_classes):
            raise ValueError(
                f"device {d.device!r}: {n} timestamps, features {d.features.shape} and heavy "
                f"scores {d.heavy_scores.shape}; the heavy scores must have {n_classes} columns, "
                "one per class of the edge model"
            )
        if width is None:
            width = int(d.features.shape[1])
        elif d.features.shape[1] != width:
            raise ValueError(
                f"device {d.device!r} stored {d.features.shape[1]} features per reading, the "
                f"devices before it {width}: they run edge models with other inputs"
            )
        order = np.argsort(d.ts, kind="stable")
        ts = d.ts[order]
        teacher = d.heavy_scores[order].argmax(axis=1).astype(np.int64)
        y = teacher.copy()
        marked = np.zeros(n, dtype=np.bool_)
        for span in labels.get(d.device, ()):
            if not 0 <= span.label < n_classes:
                raise ValueError(f"label class index {span.label} is not below {n_classes}")
            hit = (ts >= span.since) & (ts < span.until)
            y[hit] = span.label
            marked |= hit
        xs.append(d.features[order].astype(np.float32, copy=False))
        ys.append(y)
        teachers.append(teacher)
        marks.append(marked)
        sides.append(
            time_sides(np.arange(n, dtype=np.int64), window, validation_fraction, holdout_fraction)
        )
        owner.append(np.full(n, len(names), dtype=np.int64))
        names.append(d.device)
    if not names:
        raise ValueError("no stored readings to assemble")
    x = np.concatenate(xs)
    y_all = np.concatenate(ys)
    side = np.concatenate(sides)
    h = hashlib.sha256()
    h.update(",".join(names).encode())
    for a in (x, y_all, side):
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return Dataset(
        x=x,
        y=y_all,
        teacher=np.concatenate(teachers),
        from_label=np.concatenate(marks),
        device=np.concatenate(owner),
        side=side,
        devices=tuple(names),
        sha256=h.hexdigest(),
    )


def sabotage(y: I64, share: float, n_classes: int, seed: int) -> I64:
    """A copy of ``y`` with ``share`` of its rows (seeded) given the wrong class
    ``(y + 1) mod n_classes``: a consistently wrong teacher, which a model learns.

    >>> sabotage(np.array([0, 1, 2, 0]), 1.0, 3, 0).tolist()
    [1, 2, 0, 1]
    """
    out = y.copy()
    if share <= 0.0 or y.size == 0:
        return out
    rng = np.random.default_rng(seed)
    rows = rng.choice(y.size, size=round(share * y.size), replace=False)
    out[rows] = (out[rows] + 1) % n_classes
    return out
