"""Bounded counters and latency figures the heartbeat reports."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["Counters", "LatencyWindow"]


class LatencyWindow:
    """The last ``size`` latencies in microseconds, in a fixed ring (no growth)."""

    def __init__(self, size: int = 4096) -> None:
        self._ring = np.zeros(size, dtype=np.float64)
        self._n = 0

    def add(self, micros: float) -> None:
        self._ring[self._n % self._ring.shape[0]] = micros
        self._n += 1

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) over the window, (0, 0) before the first reading."""
        filled = self._ring[: min(self._n, self._ring.shape[0])]
        if not filled.size:
            return 0.0, 0.0
        p50, p99 = np.percentile(filled, [50, 99])
        return float(p50), float(p99)


class Counters:
    """Named counters shared between threads (the paho thread counts too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
