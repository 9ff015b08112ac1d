"""The drift monitor in its own process, so that ingest never waits for it.

The ingest worker hands each batch's newly stored telemetry to its observer
right after the batch's ack. Run on the ingest thread, the monitor's flushes
(counting, detectors, window rows) delayed the next batches' acks; run on a
thread of its own it still shared the interpreter lock with ingest, and at an
offered 50,000 readings/s for 60 s p99 publish -> ack was 295 ms against 195
ms without drift tracking (README, "Measured"). :class:`MonitorProcess` runs
:class:`~cloud_hub.drift.monitor.DriftMonitor` in a child process
(``multiprocessing`` *spawn*, as the pipeline's runs);
:meth:`MonitorProcess.observe` puts the batch on a queue and returns at once.

The child reads the store through a connection of its own (models, saved
detectors, states at start), but never writes to it: its writes (states,
events, windows, saved detectors) come back to the hub's process, which makes
them under the store's one writer. Two processes writing one SQLite file wait
for each other by polling (SQLite's busy handler sleeps and retries): tried,
p99 publish -> ack went to 1.6-2.1 s.

What comes back on the child's queue, handled at the worker's next call
(every batch, and every second when idle), on the worker's thread: the store
writes, the counters each call produced (returned to the worker, so they land
in the same counter table as before), fleet alarms (handed to
``on_fleet_alarm``) and log records (handled by the hub's own logging, so
``--log-level`` and the format apply). A store write that fails is tried
again at the next call (up to 10,000 of them, then dropped and counted
``drift:dropped_records``).

Bounds and faults:

- the queue is bounded in readings (``queue_max_readings``): when the monitor
  falls that far behind, a new batch is not queued; its readings are counted
  ``drift:shed_readings`` per device and the detectors do not see them
  (ingest stored them; only drift tracking misses them);
- a monitor call that raises is logged and counted ``drift:errors``; the next
  batch goes on;
- a child that dies (killed, out of memory) is started again, at most once
  every ``restart_s`` (counted ``drift:monitor_restarts``); the new one takes
  the stored states and saved detectors back, as a restarted hub does. What
  was queued for the dead one is counted ``drift:shed_readings``.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.process
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from cloud_hub.drift.monitor import DriftMonitor, DriftSettings, StoredTelemetry
from cloud_hub.drift.states import FleetAlarm
from cloud_hub.store.base import Store

__all__ = ["MonitorFactory", "MonitorProcess"]

log = logging.getLogger(__name__)

CounterKey = tuple[str | None, str]
MonitorFactory = Callable[..., DriftMonitor]
"""Builds the child's monitor: ``factory(store, settings, on_fleet_alarm=...)``; the
class :class:`DriftMonitor` itself unless a test injects a fault. Must pickle."""

_IDLE_S: Final = 1.0
"""With nothing queued for this long, the child gives its monitor an empty batch (its
sweep of silent devices' buffers, the fleet rule, the periodic save)."""
_TAKE_MAX: Final = 5_000
"""Readings merged into one monitor call at most, when batches queue up."""
_KILL_WAIT_S: Final = 5.0
_UNWRITTEN_MAX: Final = 10_000
"""Store writes kept for another try after the store refused them, at most."""
_WRITES: Final = frozenset({"record_drift", "save_drift_detectors", "forget_drift"})
"""The store methods the monitor writes with: made by the hub's process."""


@dataclass(frozen=True, slots=True)
class _ChildSpec:
    """What the child needs to build its monitor (pickled to it)."""

    store_url: str
    settings: DriftSettings
    factory: MonitorFactory
    log_level: int


@dataclass(frozen=True, slots=True)
class _Write:
    """A store write the child asks the hub's process to make."""

    method: str
    args: tuple[Any, ...]


class _ForwardingStore:
    """The child's store: reads go to its own connection, writes to the hub's process."""

    def __init__(self, store: Store, outbox: Any) -> None:
        self._store = store
        self._outbox = outbox

    def __getattr__(self, name: str) -> Any:
        if name in _WRITES:
            return lambda *args: self._outbox.put(_Write(name, args))
        return getattr(self._store, name)


@dataclass(frozen=True, slots=True)
class _Done:
    """The child counted ``readings`` (queued ones: the parent's bound goes down)."""

    readings: int
    counts: Counter[CounterKey]


class MonitorProcess:
    """A :class:`~cloud_hub.ingest.worker.TelemetryObserver` that runs the drift monitor
    in a child process (see the module docstring). :meth:`start` before the worker
    starts; :meth:`stop` after it stopped: the child counts what is queued, flushes
    the monitor's buffers, saves its detectors and closes its store."""

    def __init__(
        self,
        store: Store,
        store_url: str,
        settings: DriftSettings,
        *,
        on_fleet_alarm: Callable[[FleetAlarm], None] | None = None,
        queue_max_readings: int = 200_000,
        restart_s: float = 10.0,
        factory: MonitorFactory = DriftMonitor,
    ) -> None:
        if queue_max_readings < 1:
            raise ValueError(f"queue_max_readings = {queue_max_readings} must be >= 1")
        self.store = store
        self.store_url = store_url
        self.settings = settings
        self.on_fleet_alarm = on_fleet_alarm
        self.queue_max_readings = queue_max_readings
        self.restart_s = restart_s
        self.factory = factory
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._in: Any = None
        self._out: Any = None
        self._queued = 0
        """Readings put on the child's queue and not yet reported counted."""
        self._counts: Counter[CounterKey] = Counter()
        self._unwritten: list[_Write] = []
        self._started_at = 0.0
        self._stopped = False
        self._lock = threading.Lock()
        """Held by :meth:`observe` and :meth:`stop` (a worker that did not stop in time
        may still call :meth:`observe` while the hub stops)."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the drift monitor process is already started")
        self._spawn()

    def _spawn(self) -> None:
        if self._in is not None:
            # A dead child's queue: never wait at exit for its unread batches.
            self._in.cancel_join_thread()
        self._in, self._out = self._ctx.Queue(), self._ctx.Queue()
        self._queued = 0
        spec = _ChildSpec(
            self.store_url, self.settings, self.factory, logging.getLogger().getEffectiveLevel()
        )
        self._proc = self._ctx.Process(
            target=_child,
            args=(spec, self._in, self._out),
            name="hub-drift",
            daemon=True,
        )
        self._started_at = time.monotonic()
        self._proc.start()

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counter[CounterKey]:
        """Queue ``batch`` for the child (or shed it, counted, when the queue is full or
        the child is down) and return the counters it produced since the last call.
        Never waits for the monitor."""
        with self._lock:
            return self._observe(batch)

    def _observe(self, batch: Sequence[StoredTelemetry]) -> Counter[CounterKey]:
        self._take_results()
        self._check_child()
        counts, self._counts = self._counts, Counter()
        readings = sum(len(m.features) for m in batch)
        if not readings:
            return counts
        if self.running and self._queued + readings <= self.queue_max_readings:
            self._queued += readings
            self._in.put(list(batch))
        else:
            for m in batch:
                counts[(m.device, "drift:shed_readings")] += len(m.features)
        return counts

    def stop(self, timeout: float = 10.0) -> None:
        """Let the child count what is queued, flush and save; kill it after ``timeout``."""
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        self._stopped = True
        proc = self._proc
        if proc is None:
            return
        if proc.is_alive():
            self._in.put(None)
        deadline = time.monotonic() + timeout
        # The child ends once its results are read off the pipe: read while waiting.
        while proc.is_alive() and time.monotonic() < deadline:
            self._take_results(wait=0.1)
        if proc.is_alive():
            log.error("drift: the monitor process did not finish in %.0f s; killed", timeout)
            proc.kill()
            self._in.cancel_join_thread()
        proc.join(_KILL_WAIT_S)
        self._take_results()
        log.info("drift monitor stopped")

    def _check_child(self) -> None:
        proc = self._proc
        if proc is None or proc.is_alive() or self._stopped:
            return
        if time.monotonic() - self._started_at < self.restart_s:
            return
        log.error(
            "drift: the monitor process ended (exit code %s); starting it again", proc.exitcode
        )
        self._counts[(None, "drift:monitor_restarts")] += 1
        # What the dead child had queued is not counted: say so, per hub, in readings.
        if self._queued:
            self._counts[(None, "drift:shed_readings")] += self._queued
        self._spawn()

    def _take_results(self, wait: float = 0.0) -> None:
        """Everything the child sent: store writes, counters, fleet alarms, log records."""
        if self._out is None:
            return
        writes, self._unwritten = self._unwritten, []
        for _ in range(100_000):  # bounded: far more than a second's messages
            try:
                item = self._out.get(timeout=wait) if wait else self._out.get_nowait()
            except queue.Empty:
                break
            except (EOFError, OSError):  # the child died mid-message
                break
            wait = 0.0
            if isinstance(item, _Write):
                writes.append(item)
            elif isinstance(item, _Done):
                self._queued = max(0, self._queued - item.readings)
                self._counts.update(item.counts)
            elif isinstance(item, FleetAlarm):
                if self.on_fleet_alarm is not None:
                    try:
                        self.on_fleet_alarm(item)
                    except Exception:
                        log.exception("drift: handling a fleet alarm failed")
            elif isinstance(item, logging.LogRecord):
                logging.getLogger(item.name).handle(item)
        self._write(writes)

    def _write(self, writes: list[_Write]) -> None:
        """Make the child's writes in order; keep the rest from the first that fails."""
        for i, w in enumerate(writes):
            try:
                getattr(self.store, w.method)(*w.args)
            except Exception:
                log.exception("drift: a store write (%s) failed; will retry", w.method)
                self._counts[(None, "drift:store_errors")] += 1
                rest = writes[i:]
                if len(rest) > _UNWRITTEN_MAX:
                    self._counts[(None, "drift:dropped_records")] += len(rest) - _UNWRITTEN_MAX
                    rest = rest[-_UNWRITTEN_MAX:]
                self._unwritten = rest
                return


def _child(spec: _ChildSpec, inbox: Any, outbox: Any) -> None:
    """The child process: open the store, run the monitor on what arrives, report back."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: PLC0415

    from cloud_hub.store import open_store  # noqa: PLC0415

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(outbox)]
    root.setLevel(spec.log_level)
    store = open_store(spec.store_url)
    try:
        with threadpool_limits(limits=1):
            forwarding = cast(Store, _ForwardingStore(store, outbox))
            monitor = spec.factory(forwarding, spec.settings, on_fleet_alarm=outbox.put)
            monitor.restore()
            _serve(monitor, inbox, outbox, os.getppid())
    finally:
        store.close()


def _serve(monitor: DriftMonitor, inbox: Any, outbox: Any, parent: int) -> None:
    stopping = False
    while not stopping:
        try:
            first = inbox.get(timeout=_IDLE_S)
        except queue.Empty:
            if os.getppid() != parent:  # the hub died without stopping us: save and go
                log.error("drift: the hub (pid %d) is gone; the monitor stops", parent)
                break
            _observe(monitor, [], outbox)
            continue
        if first is None:
            break
        batch: list[StoredTelemetry] = first
        n = sum(len(m.features) for m in batch)
        while n < _TAKE_MAX:
            try:
                more = inbox.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stopping = True
                break
            batch.extend(more)
            n += sum(len(m.features) for m in more)
        _observe(monitor, batch, outbox)
    try:
        monitor.flush()
    except Exception:
        log.exception("drift: flushing the monitor at stop failed")


def _observe(monitor: DriftMonitor, batch: list[StoredTelemetry], outbox: Any) -> None:
    readings = sum(len(m.features) for m in batch)
    try:
        counts = monitor.observe(batch)
    except Exception:  # drift tracking must never stop: the next batch is tried
        log.exception("drift: the monitor failed on %d readings", readings)
        counts = Counter({(None, "drift:errors"): 1})
    if readings or counts:
        outbox.put(_Done(readings, counts))
