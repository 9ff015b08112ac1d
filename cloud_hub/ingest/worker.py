"""The ingest worker: one thread that turns queued MQTT messages into stored rows and acks.

It drains the link's queue in batches (it blocks for the first message, then
takes more until the batch holds ``batch_max_messages`` or
``batch_max_wait_ms`` have passed) and, for each batch:

1. parses each topic and decodes each payload; anything that does not parse or
   validate, or whose payload names another device than its topic, goes to the
   bounded dead-letter table and is counted per device as ``invalid:<reason>``;
2. touches every device heard from, records births, wills and heartbeats;
3. scores the features of *all* the batch's telemetry with the heavy model in
   one call, and pairs the heavy scores with the edge scores of each message;
4. writes every stream message (telemetry, events, ota) in ONE
   :meth:`~cloud_hub.store.base.Store.write_stream` transaction, which
   dedupes on ``(device, epoch, seq)`` and records gaps (a seq more than
   ``max_seq_ahead`` beyond the watermark is refused), then hands the newly
   stored telemetry (duplicates excluded) to its ``observer``, the hub's drift
   monitor (:mod:`cloud_hub.drift.background`, which queues it for the
   monitor's own thread), whose failure is logged and counted
   ``ingest_errors``, never more;
5. closes seqs without storing them: those of messages it refused (bad
   timestamps, wrong feature count: dead-lettered), and those a device
   declared dropped (a ``dropped`` message, counted ``lost_at_edge_*``); every
   ``gap_check_s`` it also closes gaps older than ``gap_retention_s``
   (``lost_unexplained_messages``);
6. only then, once the writes are durable, publishes an ``ack`` of each touched
   ``(device, epoch)``'s settled watermark (a duplicate is acked too: a
   device replaying needs to hear where the hub stands);
7. judges the state of every device heard from (:mod:`cloud_hub.devices`: online,
   degraded, buffering, offline; from births, wills, heartbeats and messages
   received again) and stores each change with its reason, counted
   ``device_state:<state>`` (and the newer reason of a state that holds, no event); every few seconds, even when idle, it also judges
   every device against the stale timeout;
8. adds the batch's counters in one call, and its dead letters in another.

Nothing a message can do stops the thread: every message is handled inside its
own guard, and a store failure is logged, counted as ``ingest_errors`` and the
write retried once before the batch is dead-lettered with reason
``store_error`` (never acked, so a device keeping unacked messages sends it
again).

Counters, per device (``None`` for the hub itself): ``received``,
``stored_messages``, ``stored_readings``, ``stored_events``, ``duplicates``,
``compared_readings`` and ``edge_heavy_disagreements`` (edge and heavy model
picking different classes), ``invalid:<reason>``,
``dropped:<reason>``, ``lost_at_edge_messages:<reason>`` and
``lost_at_edge_readings:<reason>`` (declared by the device), ``refused_messages:<reason>``
and ``refused_readings:<reason>`` (kept aside, seq closed),
``lost_unexplained_messages`` (gap retention passed); hub-wide ``ingest_errors`` and the link's
``backpressure_waits``, ``dropped:hub_closing`` and ``invalid:foreign_topic``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, ParamSpec, Protocol

import numpy as np
import numpy.typing as npt

from cloud_hub.devices.tracker import StateTracker
from cloud_hub.drift.monitor import StoredTelemetry
from cloud_hub.ingest.heavy import HeavyModels
from cloud_hub.ingest.transport import HEAD_BYTES, Incoming, OversizedPayload
from cloud_hub.store.base import (
    AckWatermark,
    DeadLetter,
    Store,
    StreamItem,
    TelemetryRows,
    WriteResult,
)
from shared.epochs import is_replay_epoch
from shared.errors import DecodeError, TopicError
from shared.latency import LatencyWindow
from shared.messages import (
    Ack,
    Dropped,
    Event,
    Health,
    Limits,
    Ota,
    Status,
    Telemetry,
    decode,
    encode,
)
from shared.topics import EDGE_TO_HUB, Kind, Topics

if TYPE_CHECKING:
    from cloud_hub.inference import OnnxScorer

__all__ = ["IngestConfig", "IngestLink", "IngestStats", "IngestWorker"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_ERROR_CHARS: Final = 500
_WARNED_MAX: Final = 10_000
# Put on the queue by stop() to wake a worker blocked on an empty queue.
_WAKE: Final[Incoming] = ("", b"", -1.0)
_IDLE_TICK_S: Final = 1.0
"""How often an idle worker gives its observer an empty batch."""

CounterKey = tuple[str | None, str]


def _about(device: str | None, model_version: str | None = None) -> dict[str, str | None]:
    """``extra`` of a log call about one device: ``--log-format json`` lines carry it."""
    return {"device": device, "model_version": model_version}


class TelemetryObserver(Protocol):
    """What is told of every batch's newly stored telemetry (the hub's drift monitor,
    :class:`cloud_hub.drift.monitor.DriftMonitor`); returns counters to add."""

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counter[CounterKey]: ...


class IngestLink(Protocol):
    """What the worker needs of its link (:class:`~cloud_hub.ingest.transport.HubLink`)."""

    @property
    def queue(self) -> queue.Queue[Incoming]: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool: ...

    def take_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """How the worker batches, bounds and acks. Built once by the hub's entry point."""

    batch_max_messages: int = 500
    """Messages per batch at most (one heavy-model call and one store write per batch)."""
    batch_max_wait_ms: int = 50
    """How long a batch stays open after its first message, at most."""
    dead_letter_keep: int = 10_000
    """Dead letters kept; the oldest go beyond it."""
    limits: Limits = field(default_factory=Limits)
    """Size limits every payload is decoded under."""
    ack: bool = True
    """Publish acks (off only for a hub that must not answer devices, e.g. a replay)."""
    latency_window: int = 4096
    """Batches in the window p50/p99 of received → committed are taken over."""
    max_seq_ahead: int = 1_000_000
    """A seq further than this beyond its device's watermark is refused, not a giant gap."""
    ts_floor: float = 1_577_836_800.0
    """Readings stamped before this (unix seconds; default 2020-01-01) are refused."""
    max_future_s: float = 300.0
    """Readings stamped more than this after the hub's clock are refused (``ts_in_future``)."""
    max_span_s: float = 86_400.0
    """One telemetry message may span this many seconds at most."""
    gap_retention_s: float = 8 * 86_400.0
    """A gap neither filled nor declared closes after this as lost, unexplained. Longer
    than an agent's default outbox age (7 days), so a gap a device could still fill
    is never given up on first."""
    gap_check_s: float = 60.0
    """How often gaps are checked against the retention."""

    def __post_init__(self) -> None:
        for name in ("batch_max_messages", "dead_letter_keep", "latency_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"ingest config: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_max_wait_ms < 0:
            raise ValueError(
                f"ingest config: batch_max_wait_ms must be >= 0, got {self.batch_max_wait_ms}"
            )


@dataclass(frozen=True, slots=True)
class IngestStats:
    """What the worker has done since it started (the API's ingest statistics)."""

    received: int
    stored_messages: int
    stored_readings: int
    duplicates: int
    invalid: dict[str, int]
    """Messages refused, by reason (``not_json``, ``device_mismatch``, ``foreign_topic``, ...)."""
    dropped: dict[str, int]
    """Valid messages lost at the hub, by reason (``store_error``, ``shutdown_unprocessed``, ...)."""
    ingest_errors: int
    acks_sent: int
    queue_depth: int
    queue_max: int
    batches: int
    last_batch_messages: int
    last_batch_ms: float
    """Time the last batch took, from its first message taken off the queue to committed."""
    last_latency_ms: float
    """The last batch's oldest message: received by the link → committed."""
    latency_p50_ms: float
    latency_p99_ms: float
    running: bool


@dataclass(slots=True)
class _Stream:
    """A decoded stream message waiting for the batch's write, with what it came as."""

    msg: Telemetry | Event | Ota
    raw: Incoming
    item: StreamItem | None = None


@dataclass(slots=True)
class _Batch:
    counts: Counter[CounterKey] = field(default_factory=Counter)
    dead: list[DeadLetter] = field(default_factory=list)
    touched: dict[str, float] = field(default_factory=dict)
    statuses: list[tuple[Status, float]] = field(default_factory=list)
    healths: dict[str, tuple[Health, float]] = field(default_factory=dict)
    stream: list[_Stream] = field(default_factory=list)
    declarations: list[Dropped] = field(default_factory=list)
    refused: list[tuple[Telemetry | Event | Ota, str]] = field(default_factory=list)
    """Stream messages kept aside (dead-lettered): their seqs close as refused."""
    marks: dict[tuple[str, int], int] = field(default_factory=dict)
    """Watermarks to ack besides the stream write's (from closed seqs)."""
    oldest: float = float("inf")


class IngestWorker:
    """The hub's one ingest thread. Build it, :meth:`start` it, :meth:`stop` it.

    ``heavy`` scores every reading on the hub (None stores the edge scores only,
    with an empty heavy-score matrix and ``heavy_version`` as given);
    ``heavy_models``, when given, picks the heavy model by the edge model a
    message names (:mod:`.heavy`), ``heavy`` being its default.

    >>> worker = IngestWorker(store, link, heavy, "1.0.0", Topics())  # doctest: +SKIP
    >>> worker.start()  # doctest: +SKIP
    >>> worker.stats().stored_readings  # doctest: +SKIP
    """

    def __init__(
        self,
        store: Store,
        link: IngestLink,
        heavy: OnnxScorer | None,
        heavy_version: str,
        topics: Topics,
        *,
        config: IngestConfig | None = None,
        heavy_models: HeavyModels | None = None,
        on_model_report: Callable[[str, str, str], object] | None = None,
        observer: TelemetryObserver | None = None,
        states: StateTracker | None = None,
        on_batch: Callable[[float], object] | None = None,
    ) -> None:
        self.store = store
        self.link = link
        self.heavy = heavy
        self.heavy_version = heavy_version
        self.heavy_models = heavy_models or HeavyModels(heavy, heavy_version)
        self.on_model_report = on_model_report
        self.observer = observer
        self.states = states
        self.on_batch = on_batch
        """Told each batch's duration in seconds (the hub's metrics histogram)."""
        self.topics = topics
        self.config = config or IngestConfig()
        self._queue = link.queue
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._drain_deadline = float("inf")
        self._lock = threading.Lock()  # guards the figures stats() reads
        self._totals: Counter[str] = Counter()
        self._batches = 0
        self._acks = 0
        self._last_batch = (0, 0.0, 0.0)
        self._latency = LatencyWindow(self.config.latency_window)
        self._unsaved: Counter[CounterKey] = Counter()  # counts a failed add_counters kept
        self._warned: set[CounterKey] = set()
        self._next_gap_check = time.monotonic() + self.config.gap_check_s
        self._next_idle_tick = time.monotonic() + _IDLE_TICK_S
        self._next_state_check = time.monotonic() + (
            states.check_every_s if states is not None else float("inf")
        )

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            raise RuntimeError("ingest worker: start() was already called")
        self._thread = threading.Thread(target=self._run, name="edgeloop-ingest", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> bool:
        """Store what is queued, then end the thread; True if it ended within ``timeout``.

        Call it while the link is still connected, so the last acks go out; what
        is still queued when ``timeout`` runs out is counted
        ``dropped:shutdown_unprocessed``, never acked, and so sent again by its
        devices.
        """
        if self._thread is None:
            return True
        self._drain_deadline = time.monotonic() + max(0.0, timeout - 0.5)
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # a full queue wakes the worker anyway
            self._queue.put_nowait(_WAKE)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> IngestStats:
        """A consistent snapshot of the worker's figures; safe from any thread."""
        with self._lock:
            totals = dict(self._totals)
            batches, acks = self._batches, self._acks
            last_n, last_ms, last_latency_ms = self._last_batch
            p50, p99 = self._latency.percentiles()
        return IngestStats(
            received=totals.get("received", 0),
            stored_messages=totals.get("stored_messages", 0),
            stored_readings=totals.get("stored_readings", 0),
            duplicates=totals.get("duplicates", 0),
            invalid=_group(totals, "invalid:"),
            dropped=_group(totals, "dropped:"),
            ingest_errors=totals.get("ingest_errors", 0),
            acks_sent=acks,
            queue_depth=self._queue.qsize(),
            queue_max=self._queue.maxsize,
            batches=batches,
            last_batch_messages=last_n,
            last_batch_ms=last_ms,
            last_latency_ms=last_latency_ms,
            latency_p50_ms=p50 / 1000.0,
            latency_p99_ms=p99 / 1000.0,
            running=self.running,
        )

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        log.info(
            "ingest worker started (batches of <= %d messages / %d ms, heavy model %s)",
            self.config.batch_max_messages,
            self.config.batch_max_wait_ms,
            self.heavy_version if self.heavy is not None else "none",
        )
        if self.states is not None:
            try:
                self.states.load()
            except Exception:  # the store is down: the first batch tries again
                log.exception("ingest: the device state tracker could not read the devices")
        while True:
            batch = self._collect()
            if batch is None:
                break
            try:
                self._handle(batch)
            except Exception:  # a bug here must not end ingest
                log.exception("ingest: a batch of %d messages failed unexpectedly", len(batch))
                self._unsaved[(None, "ingest_errors")] += 1
                self._tally(Counter({(None, "ingest_errors"): 1}))
            # Let the batch's payloads go now, not when the next batch arrives: after
            # a flood of large messages they would otherwise stay in RSS while idle.
            batch = None
        final: Counter[CounterKey] = Counter()
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                left += self._queue.get_nowait() is not _WAKE
        if left:
            log.warning(
                "ingest stopped with %d messages still queued (not stored, not acked)", left
            )
            final[(None, "dropped:shutdown_unprocessed")] += left
        final.update({(None, name): n for name, n in self.link.take_counts().items()})
        self._save_counters(final)
        self._tally(final)
        log.info("ingest worker stopped")

    def _collect(self) -> list[Incoming] | None:
        """The next batch; None once stopping and the queue is drained (or out of time)."""
        q = self._queue
        first: Incoming | None = None
        while first is None:
            if self._stopping.is_set():
                if time.monotonic() >= self._drain_deadline:
                    return None
                try:
                    first = q.get_nowait()
                except queue.Empty:
                    return None
            else:
                wake = self._next_gap_check
                if self.observer is not None:
                    wake = min(wake, self._next_idle_tick)
                wake = min(wake, self._next_state_check)
                try:
                    first = q.get(timeout=max(0.05, wake - time.monotonic()))
                except queue.Empty:
                    if time.monotonic() >= self._next_gap_check:
                        self._check_gaps()
                    self._idle_tick()
                    if time.monotonic() >= self._next_state_check:
                        self._check_states()
                    continue
            if first is _WAKE:
                first = None
        batch = [first]
        wait_until = time.monotonic() + self.config.batch_max_wait_ms / 1000.0
        while len(batch) < self.config.batch_max_messages:
            try:
                item = q.get_nowait()
            except queue.Empty:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                try:
                    item = q.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _WAKE:
                break
            batch.append(item)
        return batch

    # -- one batch -----------------------------------------------------------------------------

    def _handle(self, incoming: Sequence[Incoming]) -> None:
        started = time.monotonic()
        b = _Batch()
        for raw in incoming:
            b.oldest = min(b.oldest, raw[2])
            try:
                self._parse(b, raw)
            except Exception as exc:  # the codec raises only DecodeError; be sure anyway
                log.exception("ingest: unexpected error on a message on %s", raw[0])
                b.counts[(None, "ingest_errors")] += 1
                self._dead(b, None, "internal_error", raw, repr(exc))
        for device, at in b.touched.items():
            self._guard(b, device, self.store.touch, device, at)
        for status, at in b.statuses:
            self._record_status(b, status, at)
        for health, at in b.healths.values():
            self._guard(b, health.device, self.store.record_health, health, at)
        self._track(b)
        issued: dict[tuple[str, int], tuple[int, float]] = {}
        beats: list[tuple[Status | Health, float]] = [*b.statuses, *b.healths.values()]
        if self.on_model_report is not None:
            # Births and heartbeats name the model the device runs: the desired state
            # goes again where it differs (cloud_hub.ota.publisher). Wills do not count.
            for beat, _at in beats:
                if isinstance(beat, Health) or beat.state == "online":
                    self._guard(
                        b,
                        beat.device,
                        self.on_model_report,
                        beat.device,
                        beat.model,
                        beat.model_version,
                    )
        for msg, at in beats:
            key = (msg.device, msg.epoch)
            if msg.seq > issued.get(key, (0, 0.0))[0]:
                issued[key] = (msg.seq, at)
        for (device, epoch), (seq, at) in issued.items():
            self._guard(b, device, self.store.note_issued, device, epoch, seq, at)
        if b.stream:
            self._store_stream(b)
        self._close_refused(b)
        for d in b.declarations:
            self._declared(b, d)
        self._ack_marks(b)
        if time.monotonic() >= self._next_gap_check:
            self._check_gaps(b)
        self._record_states(b, every=time.monotonic() >= self._next_state_check)
        b.counts.update({(None, name): n for name, n in self.link.take_counts().items()})
        self._save_counters(b.counts)
        if b.dead:
            self._guard(b, None, self.store.add_dead_letters, b.dead, self.config.dead_letter_keep)
        self._tally(b.counts)
        done = time.monotonic()
        with self._lock:
            self._batches += 1
            self._last_batch = (
                len(incoming),
                (done - started) * 1000.0,
                self._last_batch[2],
            )
        if self.on_batch is not None:
            self.on_batch(done - started)

    def _parse(self, b: _Batch, raw: Incoming) -> None:
        topic, payload, received_at = raw
        try:
            addr = self.topics.parse(topic)
        except TopicError as exc:
            b.counts[(None, "received")] += 1
            self._dead(b, None, exc.reason, raw, str(exc))
            return
        device = addr.device
        b.counts[(device, "received")] += 1
        if addr.kind not in EDGE_TO_HUB:
            self._dead(
                b,
                device,
                "foreign_topic",
                raw,
                f"the hub does not take {addr.kind.value} messages",
            )
            return
        if isinstance(payload, OversizedPayload):
            self._dead(
                b,
                device,
                "too_large",
                raw,
                f"{addr.kind.value} payload of {payload.size} bytes is over the limit of "
                f"{payload.limit} a device may send (the hub's --max-payload-bytes); refused "
                "before decoding, only its first kilobyte kept",
            )
            return
        try:
            msg = decode(addr.kind, payload, self.config.limits)
        except DecodeError as exc:
            self._dead(b, device, exc.reason, raw, str(exc))
            return
        if msg.device != device:
            self._dead(
                b,
                device,
                "device_mismatch",
                raw,
                f"topic names device {device!r}, payload names {msg.device!r}",
            )
            return
        b.touched[device] = max(received_at, b.touched.get(device, received_at))
        if isinstance(msg, Status):
            b.statuses.append((msg, received_at))
        elif isinstance(msg, Health):
            # A heartbeat is a snapshot: a later one of the same batch supersedes it.
            b.healths[device] = (msg, received_at)
        elif isinstance(msg, Dropped):
            b.declarations.append(msg)
        elif isinstance(msg, Telemetry | Event | Ota):
            if not self._ts_ok(b, msg, raw, received_at):
                return
            if isinstance(msg, Telemetry) and not self._fits_heavy(b, msg, raw):
                return
            b.stream.append(_Stream(msg, raw))
        else:  # a hub-to-edge kind; EDGE_TO_HUB already kept these out
            self._dead(b, device, "foreign_topic", raw, "not an edge message")

    def _ts_ok(self, b: _Batch, msg: Telemetry | Event | Ota, raw: Incoming, now: float) -> bool:
        """Timestamps inside [ts_floor, now + max_future_s], a message's span bounded."""
        cfg = self.config
        if isinstance(msg, Telemetry):
            lo, hi = float(msg.ts.min()), float(msg.ts.max())
        else:
            lo = hi = msg.ts
        reason = "ts_out_of_range"
        if lo < cfg.ts_floor:
            problem = f"a timestamp {lo:.0f} before the floor {cfg.ts_floor:.0f}"
        elif hi > now + cfg.max_future_s:
            reason = "ts_in_future"
            problem = (
                f"a timestamp {hi - now:.0f} s ahead of the hub's clock (at most "
                f"{cfg.max_future_s:g} s, the hub's --max-future-s)"
            )
        elif hi - lo > cfg.max_span_s:
            problem = f"timestamps spanning {hi - lo:.3g} s (at most {cfg.max_span_s:.0f})"
        else:
            return True
        self._refuse(
            b,
            msg,
            raw,
            reason,
            f"{msg.kind.value} seq {msg.seq} has {problem}; is the device's clock set?",
        )
        return False

    def _refuse(
        self, b: _Batch, msg: Telemetry | Event | Ota, raw: Incoming, reason: str, error: str
    ) -> None:
        """Keep a valid-looking stream message aside: dead letter, and close its seq."""
        self._dead(b, msg.device, reason, raw, error)
        b.refused.append((msg, reason))

    def _close_refused(self, b: _Batch) -> None:
        for msg, reason in b.refused:
            closed = self._close(b, msg.device, msg.epoch, msg.seq, msg.seq)
            if closed:
                n = len(msg) if isinstance(msg, Telemetry) else 0
                b.counts[(msg.device, f"refused_messages:{reason}")] += 1
                b.counts[(msg.device, f"refused_readings:{reason}")] += n

    def _declared(self, b: _Batch, d: Dropped) -> None:
        """A device declared seqs dropped at its edge: close them, count what was lost."""
        closed = self._close(b, d.device, d.epoch, d.first, d.seq)
        if closed is None:
            return
        messages = readings = 0
        for first, last in closed:
            messages += last - first + 1
            readings += sum(d.readings[first - d.first : last - d.first + 1])
        b.counts[(d.device, f"lost_at_edge_messages:{d.reason}")] += messages
        b.counts[(d.device, f"lost_at_edge_readings:{d.reason}")] += readings
        if messages:
            log.warning(
                "device %r: epoch %d seqs %d..%d dropped at the edge (%s): %d messages, "
                "%d readings lost",
                d.device,
                d.epoch,
                d.first,
                d.seq,
                d.reason,
                messages,
                readings,
                extra=_about(d.device),
            )

    def _close(
        self, b: _Batch, device: str, epoch: int, first: int, last: int
    ) -> list[tuple[int, int]] | None:
        try:
            result = self.store.close_seqs(
                device, epoch, first, last, max_ahead=self.config.max_seq_ahead
            )
        except Exception:
            log.exception(
                "ingest: store.close_seqs failed (device %r)", device, extra=_about(device)
            )
            b.counts[(None, "ingest_errors")] += 1
            return None
        if result is None:
            b.counts[(device, "invalid:seq_too_far_ahead")] += 1
            log.warning(
                "device %r: epoch %d seqs %d..%d are more than %d beyond the watermark; not closed",
                device,
                epoch,
                first,
                last,
                self.config.max_seq_ahead,
                extra=_about(device),
            )
            return None
        b.marks[(device, epoch)] = result.watermark
        return result.ranges

    def _check_gaps(self, b: _Batch | None = None) -> None:
        """Close gaps older than the retention as lost, unexplained (must stay 0)."""
        self._next_gap_check = time.monotonic() + self.config.gap_check_s
        own = b is None
        b = _Batch() if b is None else b
        try:
            expired = self.store.expire_gaps(time.time() - self.config.gap_retention_s)
        except Exception:
            log.exception("ingest: store.expire_gaps failed")
            b.counts[(None, "ingest_errors")] += 1
            expired = []
        for c in expired:
            b.counts[(c.device, "lost_unexplained_messages")] += c.count
            b.marks[(c.device, c.epoch)] = c.watermark
            log.error(
                "device %r: epoch %d seqs %s never arrived and were not declared dropped "
                "within %.0f s; counted lost_unexplained",
                c.device,
                c.epoch,
                ", ".join(f"{a}..{z}" for a, z in c.ranges),
                self.config.gap_retention_s,
                extra=_about(c.device),
            )
        if own:
            self._ack_marks(b)
            self._save_counters(b.counts)
            self._tally(b.counts)

    def _idle_tick(self) -> None:
        """With no message for a while, the observer still gets its turn (an empty batch):
        buffered readings of silent devices are counted, the fleet rule is checked."""
        if self.observer is None or time.monotonic() < self._next_idle_tick:
            return
        self._next_idle_tick = time.monotonic() + _IDLE_TICK_S
        counts: Counter[CounterKey] = Counter()
        try:
            counts.update(self.observer.observe([]))
        except Exception:
            log.exception("ingest: the drift monitor failed on an idle tick")
            counts[(None, "ingest_errors")] += 1
        if counts:
            self._save_counters(counts)
            self._tally(counts)

    def _track(self, b: _Batch) -> None:
        """Tell the state tracker what arrived (before the stream write, whose
        duplicates it is told of next)."""
        if self.states is None:
            return
        try:
            for device, at in b.touched.items():
                self.states.seen(device, at)
            for status, at in b.statuses:
                self.states.status(status, at)
            for health, at in b.healths.values():
                self.states.heartbeat(health, at)
        except Exception:  # judging states must never stop ingest
            log.exception("ingest: the device state tracker failed")
            b.counts[(None, "ingest_errors")] += 1

    def _record_states(self, b: _Batch, *, every: bool = False) -> None:
        """Store the state changes of the devices heard from (of all with ``every``:
        the periodic stale check) in one call, and count them."""
        if self.states is None:
            return
        now = time.time()
        try:
            if every:
                self._next_state_check = time.monotonic() + self.states.check_every_s
                changes = self.states.check_stale(now)
            else:
                changes = self.states.changes(now)
        except Exception:
            log.exception("ingest: the device state tracker failed")
            b.counts[(None, "ingest_errors")] += 1
            return
        # The tracker remembers only what the store took: after a failed write the
        # same devices are judged again (those heard from at the next batch, all at
        # the next periodic check).
        if not changes or self._guard(b, None, self.store.record_device_states, changes):
            self.states.commit(changes)
            for c in changes:
                if c.is_change:
                    b.counts[(c.device, f"device_state:{c.state}")] += 1

    def _check_states(self) -> None:
        """The periodic check while idle: devices silent past the timeout go stale."""
        b = _Batch()
        self._record_states(b, every=True)
        if b.counts:
            self._save_counters(b.counts)
            self._tally(b.counts)

    def _ack_marks(self, b: _Batch) -> None:
        if not self.config.ack or not b.marks:
            return
        sent = 0
        for (device, epoch), seq in b.marks.items():
            if seq < 1:
                continue
            payload = encode(Ack(device, epoch, seq))
            if self.link.publish(self.topics.topic(device, Kind.ACK), payload, qos=1):
                sent += 1
            else:
                b.counts[(device, "dropped:ack_refused")] += 1
        b.marks.clear()
        with self._lock:
            self._acks += sent

    def _fits_heavy(self, b: _Batch, msg: Telemetry, raw: Incoming) -> bool:
        heavy, version = self.heavy_models.for_edge(msg.model, msg.model_version)
        if heavy is None:
            b.counts[(msg.device, "no_heavy_model")] += 1
            return True
        want = heavy.n_features
        if want is None or msg.features.shape[1] == want:
            return True
        self._refuse(
            b,
            msg,
            raw,
            "feature_count",
            f"telemetry seq {msg.seq} has {msg.features.shape[1]} features per reading; the "
            f"heavy model {version} reads {want} (is the device's model from "
            "another feature set?)",
        )
        return False

    def _record_status(self, b: _Batch, status: Status, at: float) -> None:
        if status.state == "online":
            self._check_epoch(b, status)
        if self._guard(b, status.device, self.store.record_status, status, at):
            if status.state == "online":
                log.info(
                    "device %r online: epoch %d, agent %s, model %s %s",
                    status.device,
                    status.epoch,
                    status.agent_version,
                    status.model,
                    status.model_version,
                    extra=_about(status.device, status.model_version),
                )
            else:
                log.info(
                    "device %r offline: epoch %d, last seq %d, model %s %s (as of its connect)",
                    status.device,
                    status.epoch,
                    status.seq,
                    status.model,
                    status.model_version,
                    extra=_about(status.device, status.model_version),
                )

    def _check_epoch(self, b: _Batch, status: Status) -> None:
        """A birth of an older epoch than the device's: its state was wiped and its clock
        is behind (see edge_agent.epoch). Its readings may collide with old ones: say so.
        A replay's epoch (shared.epochs) is the recording's, repeated on purpose: not checked."""
        if is_replay_epoch(status.epoch):
            return
        try:
            known = self.store.device(status.device)
        except Exception:
            log.exception(
                "ingest: store.device failed (device %r)",
                status.device,
                extra=_about(status.device),
            )
            b.counts[(None, "ingest_errors")] += 1
            return
        if known is None or known.epoch <= status.epoch:
            return
        b.counts[(status.device, "epoch_regressed")] += 1
        log.error(
            "device %r started at epoch %d, below its epoch %d: its state directory was "
            "wiped and its clock is behind. Readings it sends under seqs already stored "
            "for epoch %d will be taken for replays; set the device's clock and restart "
            "the agent (a new state directory starts at the current unix time)",
            status.device,
            status.epoch,
            known.epoch,
            status.epoch,
            extra=_about(status.device, status.model_version),
        )

    # -- heavy model and the stream write ------------------------------------------------------

    def _score(self, b: _Batch) -> None:
        """Fill every stream entry's ``item``; telemetry the model cannot score is dead-lettered.

        Telemetry is scored in one call per heavy model (usually one for the batch).
        """
        groups: dict[tuple[int, str], tuple[OnnxScorer | None, str, list[_Stream]]] = {}
        for s in b.stream:
            if isinstance(s.msg, Telemetry):
                heavy, version = self.heavy_models.for_edge(s.msg.model, s.msg.model_version)
                # By version too: one scorer may serve under two versions' names.
                groups.setdefault((id(heavy), version), (heavy, version, []))[2].append(s)
            else:
                s.item = s.msg
        for heavy, version, telemetry in groups.values():
            self._score_group(b, heavy, version, telemetry)

    def _score_group(
        self, b: _Batch, model: OnnxScorer | None, version: str, telemetry: list[_Stream]
    ) -> None:
        heavy_parts: list[npt.NDArray[np.float32]] = []
        if model is not None:
            features = [s.msg.features for s in telemetry if isinstance(s.msg, Telemetry)]
            try:
                scores = model.scores(np.concatenate(features))
                heavy_parts = np.split(scores, np.cumsum([len(f) for f in features])[:-1])
            except Exception:
                log.exception(
                    "ingest: heavy model %s failed on a batch of %d telemetry messages; "
                    "scoring them one by one",
                    version,
                    len(telemetry),
                )
                b.counts[(None, "ingest_errors")] += 1
                heavy_parts = []
        for i, s in enumerate(telemetry):
            msg = s.msg
            assert isinstance(msg, Telemetry)
            if model is None:
                heavy = np.empty((len(msg), 0), dtype=np.float32)
            elif heavy_parts:
                heavy = heavy_parts[i]
            else:
                try:
                    heavy = model.scores(msg.features)
                except Exception as exc:
                    self._refuse(b, msg, s.raw, "heavy_error", str(exc))
                    continue
            s.item = TelemetryRows(
                device=msg.device,
                epoch=msg.epoch,
                seq=msg.seq,
                edge_model_version=msg.model_version,
                heavy_model_version=version if model is not None else self.heavy_version,
                ts=msg.ts,
                features=msg.features,
                edge_scores=msg.scores,
                heavy_scores=heavy.astype(np.float32, copy=False),
                received_at=s.raw[2],
            )

    def _store_stream(self, b: _Batch) -> None:
        self._score(b)
        entries = [s for s in b.stream if s.item is not None]
        if not entries:
            return
        items = [s.item for s in entries if s.item is not None]
        result: WriteResult | None = None
        for attempt in (1, 2):
            try:
                result = self.store.write_stream(items, max_ahead=self.config.max_seq_ahead)
                break
            except Exception:
                log.exception(
                    "ingest: the store failed to write a batch of %d stream messages "
                    "(attempt %d of 2)",
                    len(items),
                    attempt,
                )
                b.counts[(None, "ingest_errors")] += 1
        if result is None:
            for s in entries:
                self._dead(
                    b,
                    s.msg.device,
                    "store_error",
                    s.raw,
                    "the store failed twice to write this message's batch",
                    counter="dropped:store_error",
                )
            return
        committed = time.time()
        latency_ms = (committed - b.oldest) * 1000.0
        with self._lock:
            self._latency.add(latency_ms * 1000.0)
            self._last_batch = (self._last_batch[0], self._last_batch[1], latency_ms)
        self._ack(b, result)
        dups = Counter(result.duplicates)
        far = Counter(result.too_far)
        stored: list[StoredTelemetry] = []
        for s in entries:
            msg = s.msg
            key = (msg.device, msg.epoch, msg.seq)
            if far[key] > 0:
                far[key] -= 1
                self._dead(
                    b,
                    msg.device,
                    "seq_too_far_ahead",
                    s.raw,
                    f"{msg.kind.value} epoch {msg.epoch} seq {msg.seq} is more than "
                    f"{self.config.max_seq_ahead} beyond the device's watermark; refused",
                )
                continue
            if dups[key] > 0:
                dups[key] -= 1
                b.counts[(msg.device, "duplicates")] += 1
                if self.states is not None and not is_replay_epoch(msg.epoch):
                    self.states.resent(msg.device)
                log.debug(
                    "device %r: %s epoch %d seq %d is a duplicate",
                    msg.device,
                    msg.kind.value,
                    msg.epoch,
                    msg.seq,
                    extra=_about(msg.device, getattr(msg, "model_version", None)),
                )
                continue
            b.counts[(msg.device, "stored_messages")] += 1
            if isinstance(msg, Telemetry):
                b.counts[(msg.device, "stored_readings")] += len(msg)
                if isinstance(s.item, TelemetryRows) and s.item.heavy_scores.shape[1]:
                    # Operators watch how often the int8 edge model and the heavy
                    # model pick different classes for the same readings.
                    edge, heavy = (
                        s.item.edge_scores.argmax(axis=1),
                        s.item.heavy_scores.argmax(axis=1),
                    )
                    b.counts[(msg.device, "compared_readings")] += len(msg)
                    b.counts[(msg.device, "edge_heavy_disagreements")] += int((edge != heavy).sum())
                if self.observer is not None and isinstance(s.item, TelemetryRows):
                    stored.append(
                        StoredTelemetry(
                            device=msg.device,
                            model=msg.model,
                            version=msg.model_version,
                            features=msg.features,
                            edge_scores=msg.scores,
                            heavy_scores=s.item.heavy_scores,
                            received_at=s.item.received_at,
                        )
                    )
            elif isinstance(msg, Event):
                b.counts[(msg.device, "stored_events")] += 1
        if stored and self.observer is not None:
            try:
                b.counts.update(self.observer.observe(stored))
            except Exception:  # drift tracking must never stop ingest
                log.exception("ingest: the drift monitor failed on %d messages", len(stored))
                b.counts[(None, "ingest_errors")] += 1

    def _ack(self, b: _Batch, result: WriteResult) -> None:
        if not self.config.ack:
            return
        marks = {(w.device, w.epoch): w for w in result.watermarks}
        for device, epoch, _seq in result.duplicates:
            if (device, epoch) in marks:
                continue
            try:
                marks[(device, epoch)] = AckWatermark(
                    device, epoch, self.store.watermark(device, epoch)
                )
            except Exception:
                log.exception(
                    "ingest: store.watermark failed (device %r)", device, extra=_about(device)
                )
                b.counts[(None, "ingest_errors")] += 1
        sent = 0
        for mark in marks.values():
            if mark.seq < 1:
                continue
            payload = encode(Ack(mark.device, mark.epoch, mark.seq))
            if self.link.publish(self.topics.topic(mark.device, Kind.ACK), payload, qos=1):
                sent += 1
            else:
                b.counts[(mark.device, "dropped:ack_refused")] += 1
        with self._lock:
            self._acks += sent

    # -- bookkeeping ---------------------------------------------------------------------------

    def _dead(
        self,
        b: _Batch,
        device: str | None,
        reason: str,
        raw: Incoming,
        error: str,
        *,
        counter: str | None = None,
    ) -> None:
        topic, payload, received_at = raw
        b.counts[(device, counter or f"invalid:{reason}")] += 1
        b.counts[(device, "dead_letters")] += 1
        b.dead.append(
            DeadLetter(
                received_at=received_at,
                topic=topic,
                device=device,
                reason=reason,
                error=error[:_ERROR_CHARS],
                payload_head=bytes(payload[:HEAD_BYTES]),
                payload_size=payload.size
                if isinstance(payload, OversizedPayload)
                else len(payload),
            )
        )
        key = (device, reason)
        if key in self._warned:
            log.debug(
                "device %r: dead letter on %s (%s): %s",
                device,
                topic,
                reason,
                error,
                extra=_about(device),
            )
        else:
            if len(self._warned) < _WARNED_MAX:
                self._warned.add(key)
            log.warning(
                "device %r: refused a message on %s (%s): %s; counted as %s, kept as a dead "
                "letter (further ones of this device and reason are logged at DEBUG)",
                device,
                topic,
                reason,
                error[:200],
                counter or f"invalid:{reason}",
                extra=_about(device),
            )

    def _guard(
        self,
        b: _Batch,
        device: str | None,
        call: Callable[_P, object],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> bool:
        """Run one store call; a failure is logged and counted, never raised. True if it worked."""
        try:
            call(*args, **kwargs)
        except Exception:
            what = getattr(call, "__name__", repr(call))
            log.exception("ingest: store.%s failed (device %r)", what, device, extra=_about(device))
            b.counts[(None, "ingest_errors")] += 1
            return False
        return True

    def _save_counters(self, counts: Counter[CounterKey]) -> None:
        """One add_counters per batch; counts a failed call keeps go with the next one."""
        pending = self._unsaved + counts
        if not pending:
            return
        try:
            self.store.add_counters(dict(pending))
        except Exception:
            log.exception(
                "ingest: store.add_counters failed; keeping %d counts for the next batch",
                len(pending),
            )
            counts[(None, "ingest_errors")] += 1
            self._unsaved = pending
            self._unsaved[(None, "ingest_errors")] += 1
            return
        self._unsaved = Counter()

    def _tally(self, counts: Counter[CounterKey]) -> None:
        with self._lock:
            for (_device, name), n in counts.items():
                self._totals[name] += n

    def __repr__(self) -> str:
        return (
            f"IngestWorker(heavy={self.heavy_version!r}, root={self.topics.root!r}, "
            f"running={self.running}, queued={self._queue.qsize()})"
        )


def _group(totals: dict[str, int], prefix: str) -> dict[str, int]:
    return {name[len(prefix) :]: n for name, n in sorted(totals.items()) if name.startswith(prefix)}
