"""The figures the heartbeat reports: named counters, the latency window, and
this process's CPU and memory use.

:class:`~shared.latency.LatencyWindow` lives in :mod:`shared` (the hub's ingest
keeps one too) and is offered here beside the counters the agent reports with it.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from shared.latency import LatencyWindow

__all__ = ["Counters", "LatencyWindow", "ProcessUsage"]


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


class ProcessUsage:
    """This process's CPU use and resident memory, from the standard library.

    The two figures of the heartbeat; psutil gave them before and cost a running
    agent about 1 MB of resident memory for them. One owner (the link thread).
    """

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._at = time.monotonic()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def cpu_percent(self) -> float:
        """CPU time of all threads since the previous call (or since this object was
        made), in percent of one core, to 0.1 (as psutil's ``cpu_percent(None)``)."""
        cpu, at = time.process_time(), time.monotonic()
        spent, elapsed = cpu - self._cpu, at - self._at
        self._cpu, self._at = cpu, at
        return round(100.0 * spent / elapsed, 1) if elapsed > 0 else 0.0

    def rss_bytes(self) -> int:
        """The resident set now (Linux: ``/proc/self/statm``). Elsewhere the peak,
        which is what the standard library offers."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            import resource  # noqa: PLC0415 - Unix only, and only off Linux

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB else
