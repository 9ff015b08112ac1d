"""Collects scored readings into columnar telemetry micro-batches.

A batch is sealed when it holds ``max_batch`` readings (by the reading loop) or
when its first reading is ``max_delay_ms`` old (by the link thread), whichever
comes first; hence the lock.

With ``recorded_time`` (a replayed recording) "old" is measured in the
readings' own timestamps, not the wall clock: a reading at least
``max_delay_ms`` of recorded time after the open batch's first one seals that
batch before it joins the next, and the link thread never seals. The same rows
then always make the same batches, whatever the pace or the machine's load,
which is what lets a replay's messages keep their seqs from one run to the next.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt

__all__ = ["Batch", "Batcher"]


class Batch:
    """A sealed batch's columns (copies, safe to hand to another thread)."""

    __slots__ = ("features", "model_name", "model_version", "scores", "ts")

    def __init__(
        self,
        ts: npt.NDArray[np.float64],
        features: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        model_version: str,
        model_name: str = "",
    ) -> None:
        self.ts = ts
        self.features = features
        self.scores = scores
        self.model_version = model_version
        self.model_name = model_name


class Batcher:
    def __init__(
        self,
        max_batch: int,
        max_delay_s: float,
        n_features: int,
        n_classes: int,
        *,
        recorded_time: bool = False,
    ) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.recorded_time = recorded_time
        self._ts = np.empty(max_batch, dtype=np.float64)
        self._features = np.empty((max_batch, n_features), dtype=np.float32)
        self._scores = np.empty((max_batch, n_classes), dtype=np.float32)
        self._n = 0
        self._first_at = 0.0
        self._model_version = ""
        self._model_name = ""
        self._lock = threading.Lock()

    def add(
        self,
        ts: float,
        features: npt.NDArray[np.float32],
        scores: npt.NDArray[np.float32],
        model_version: str,
        model_name: str = "",
    ) -> tuple[Batch | None, bool]:
        """Add a row scored by model ``model_name`` ``model_version``. Returns (a sealed
        batch if this row filled one or the model changed, whether this row started a
        new batch): every batch names exactly one model."""
        with self._lock:
            sealed = None
            if self._n and (
                model_version != self._model_version  # one batch, one model
                or model_name != self._model_name
                or (self.recorded_time and ts - self._ts[0] >= self.max_delay_s)
            ):
                sealed = self._seal()
            if self._n == 0:
                self._first_at = time.monotonic()
                self._model_version = model_version
                self._model_name = model_name
            started = self._n == 0
            i = self._n
            self._ts[i] = ts
            self._features[i] = features
            self._scores[i] = scores
            self._n += 1
            if self._n == self.max_batch:
                sealed = self._seal()
            return sealed, started

    def deadline(self) -> float | None:
        """Monotonic time at which the open batch must be sealed (None if empty, or
        with ``recorded_time``: the readings themselves seal it)."""
        with self._lock:
            if self.recorded_time or not self._n:
                return None
            return self._first_at + self.max_delay_s

    def seal_if_due(self, now: float, force: bool = False) -> Batch | None:
        with self._lock:
            due = not self.recorded_time and now >= self._first_at + self.max_delay_s
            if self._n and (force or due):
                return self._seal()
            return None

    def discard(self) -> int:
        """Drop the open batch unsent; returns how many readings it held."""
        with self._lock:
            n, self._n = self._n, 0
            return n

    def _seal(self) -> Batch:
        n = self._n
        self._n = 0
        return Batch(
            self._ts[:n].copy(),
            self._features[:n].copy(),
            self._scores[:n].copy(),
            self._model_version,
            self._model_name,
        )
