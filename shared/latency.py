"""A fixed window of recent latencies and its percentiles. Pure: no I/O, no threads.

The agent reports its reading-to-decision latency in its heartbeat, the hub
its ingest latency in its stats; both keep the last figures in this ring.

>>> w = LatencyWindow(size=4)
>>> for micros in (10.0, 20.0, 30.0, 40.0, 50.0):
...     w.add(micros)
>>> [round(p, 2) for p in w.percentiles()]  # 10.0 has left the window
[35.0, 49.7]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """The last ``size`` latencies in microseconds, in a fixed ring (no growth)."""

    def __init__(self, size: int = 4096) -> None:
        self._ring = np.zeros(size, dtype=np.float64)
        self._n = 0

    def add(self, micros: float) -> None:
        self._ring[self._n % self._ring.shape[0]] = micros
        self._n += 1

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) over the window, (0, 0) before the first reading.

        The same figures as ``np.percentile``'s default (linear) method, computed
        here because ``np.percentile`` imports ``numpy.ma`` at its first call, which
        costs an agent 2 MB of resident memory for its first heartbeat.
        """
        filled = self._ring[: min(self._n, self._ring.shape[0])]
        if not filled.size:
            return 0.0, 0.0
        ordered = np.sort(filled)
        return _linear(ordered, 0.50), _linear(ordered, 0.99)


def _linear(ordered: npt.NDArray[np.float64], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated as ``np.percentile`` does by default."""
    at = (ordered.size - 1) * q
    lo = int(at)
    hi = min(lo + 1, ordered.size - 1)
    t = at - lo
    a, b = float(ordered[lo]), float(ordered[hi])
    # numpy's _lerp: from the nearer end, so the result stays between a and b
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
