"""The figures the heartbeat reports: named counters, and the latency window.

:class:`~shared.latency.LatencyWindow` lives in :mod:`shared` (the hub's ingest
keeps one too) and is offered here beside the counters the agent reports with it.
"""

from __future__ import annotations

import threading

from shared.latency import LatencyWindow

__all__ = ["Counters", "LatencyWindow"]


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
