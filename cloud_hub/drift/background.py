"""The drift monitor on a thread of its own, so that ingest never waits for it.

The ingest worker hands each batch's newly stored telemetry to its observer
right after the batch's ack. :class:`MonitorThread` puts the batch on a queue
and returns at once; one thread takes batches off it and runs
:meth:`DriftMonitor.observe <cloud_hub.drift.monitor.DriftMonitor.observe>`.
Counters the monitor returns are handed to the worker with its next call
(every batch, and every second when idle), so they land in the same counter
table as before.

Why a thread and not the ingest thread or a process (``bench hub --rate 50000
--messages 60000``, p99 publish -> ack; README "Measured" has the runs): on the
ingest thread its flushes delayed the next batches' acks (390 ms); in a child
process, pickling every batch across and a second interpreter's CPU cost more
on this 2-core machine than sharing the interpreter lock does (413-436 ms); on
its own thread, 283-354 ms, and 166-292 ms (median 231) since the monitor got
cheaper. Without drift tracking, 146-246 ms (median 180).

Bounds and faults: the queue is bounded in readings (``queue_max_readings``).
When the monitor falls that far behind, a new batch is not queued: its
readings are counted ``drift:shed_readings`` per device and the detectors do
not see them (ingest stored them; only drift tracking misses them). A monitor
call that raises is logged and counted ``drift:errors``; the next batch goes
on. After :meth:`MonitorThread.stop`, batches are shed (counted) too.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Final

from cloud_hub.drift.monitor import DriftMonitor, StoredTelemetry

__all__ = ["MonitorThread"]

log = logging.getLogger(__name__)

CounterKey = tuple[str | None, str]
_IDLE_S: Final = 1.0
"""With nothing queued for this long, the monitor gets an empty batch (its sweep of
silent devices' buffers, the fleet rule, the periodic save)."""
_TAKE_MAX: Final = 5_000
"""Readings merged into one monitor call at most, when batches queue up."""


class MonitorThread:
    """A :class:`~cloud_hub.ingest.worker.TelemetryObserver` that runs ``monitor`` on
    its own thread (see the module docstring). :meth:`start` before the worker
    starts; :meth:`stop` after it stopped: what is queued is counted, then the
    monitor's buffers are flushed and its detectors saved."""

    def __init__(self, monitor: DriftMonitor, *, queue_max_readings: int = 200_000) -> None:
        if queue_max_readings < 1:
            raise ValueError(f"queue_max_readings = {queue_max_readings} must be >= 1")
        self.monitor = monitor
        self.queue_max_readings = queue_max_readings
        self._queue: queue.SimpleQueue[list[StoredTelemetry] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0
        """Readings on the queue or being counted (under ``_lock``)."""
        self._counts: Counter[CounterKey] = Counter()
        """Counters not yet handed to the worker (under ``_lock``)."""
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the drift monitor thread is already started")
        self._thread = threading.Thread(target=self._run, name="hub-drift", daemon=True)
        self._thread.start()

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counter[CounterKey]:
        """Queue ``batch`` (or shed it, counted, when the queue is full or the monitor
        stopped) and return the counters the monitor produced since the last call.
        Never waits for the monitor."""
        readings = sum(len(m.features) for m in batch)
        with self._lock:
            counts, self._counts = self._counts, Counter()
            accept = (
                readings > 0
                and not self._stopped
                and self._queued + readings <= self.queue_max_readings
            )
            if accept:
                self._queued += readings
        if accept:
            self._queue.put(list(batch))
        elif readings:
            for m in batch:
                counts[(m.device, "drift:shed_readings")] += len(m.features)
        return counts

    def stop(self, timeout: float = 10.0) -> None:
        """Count what is queued, flush the monitor's buffers, save its detectors; give
        up waiting after ``timeout`` seconds (the thread is a daemon)."""
        with self._lock:
            self._stopped = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.error("drift: the monitor thread did not finish in %.0f s", timeout)

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                self._observe([])
                continue
            if first is None:
                break
            batch, stopping = self._take(first)
            self._observe(batch)
            if stopping:
                break
        try:
            self.monitor.flush()
        except Exception:
            log.exception("drift: flushing the monitor at stop failed")
        log.info("drift monitor stopped")

    def _take(self, first: list[StoredTelemetry]) -> tuple[list[StoredTelemetry], bool]:
        """``first`` and whatever else is queued, up to ``_TAKE_MAX`` readings: one
        monitor call for batches that queued up while it was busy."""
        batch = first
        n = sum(len(m.features) for m in first)
        while n < _TAKE_MAX:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.extend(more)
            n += sum(len(m.features) for m in more)
        return batch, False

    def _observe(self, batch: list[StoredTelemetry]) -> None:
        readings = sum(len(m.features) for m in batch)
        try:
            counts = self.monitor.observe(batch)
        except Exception:  # drift tracking must never stop: the next batch is tried
            log.exception("drift: the monitor failed on %d readings", readings)
            counts = Counter({(None, "drift:errors"): 1})
        with self._lock:
            self._queued -= readings
            self._counts.update(counts)
