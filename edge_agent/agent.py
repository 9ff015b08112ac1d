"""Wires an agent together: source → features → model → rule → action → outbox → link.

Two threads of ours (see the package docstring): the *reading loop* (the
caller of :meth:`Agent.run`) and the *link thread*, which seals overdue
batches, sends the outbox, handles incoming messages and sends heartbeats.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from typing import Final

import numpy as np
import psutil

from edge_agent.actuators import ActionResult, Actuator
from edge_agent.batcher import Batch, Batcher
from edge_agent.engine import EdgeModel
from edge_agent.epoch import next_epoch
from edge_agent.outbox import MemoryOutbox
from edge_agent.rules import Decision, UrgentRule
from edge_agent.settings import AgentSettings
from edge_agent.sources.base import Source
from edge_agent.stats import Counters, LatencyWindow
from edge_agent.transport import MqttLink
from shared import __version__
from shared.errors import ContractError
from shared.features import SENSOR_NAMES, FeatureWindow
from shared.messages import Ack, Desired, Event, Health, Status, Telemetry, decode, encode
from shared.topics import HUB_TO_EDGE, Kind, Topics

__all__ = ["Agent"]

log = logging.getLogger(__name__)
AGENT_VERSION: Final = __version__


class Agent:
    """One device's agent. Build it, then call :meth:`run` with a stop event."""

    def __init__(
        self,
        settings: AgentSettings,
        model: EdgeModel,
        source: Source,
        actuators: list[Actuator],
    ) -> None:
        self.settings = settings
        self.device = settings.device
        self.model = model
        self.source = source
        self.actuators = actuators
        self.topics = Topics(settings.root)
        manifest = model.manifest
        self.features = FeatureWindow(manifest.input.window)
        self.rule = UrgentRule(manifest.urgent, manifest.output.urgent_index, SENSOR_NAMES)
        self.urgent_index = manifest.output.urgent_index
        self.batcher = Batcher(
            settings.max_batch,
            settings.max_delay_ms / 1000.0,
            self.features.n_features,
            model.n_classes,
        )
        self.wake = threading.Event()
        self.outbox = MemoryOutbox(settings.outbox_max, self.wake)
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=settings.inbox_max)
        self.epoch = 0
        self.readings = 0
        self.events = 0
        self.desired: Desired | None = None
        self._started = time.monotonic()
        self._draining = threading.Event()
        self._link: MqttLink | None = None
        self._process = psutil.Process()

    # -- messages ------------------------------------------------------------------------------

    def _status(self, state: str) -> tuple[str, bytes]:
        msg = Status(
            self.device,
            self.epoch,
            self.outbox.last_seq,
            "online" if state == "online" else "offline",
            AGENT_VERSION,
            self.model.version,
            time.time(),
        )
        return self.topics.topic(self.device, Kind.STATUS), encode(msg)

    def _emit_batch(self, batch: Batch) -> None:
        self.outbox.emit(
            lambda seq: Telemetry(
                self.device,
                self.epoch,
                seq,
                batch.model_version,
                batch.ts,
                batch.features,
                batch.scores,
            )
        )

    def _emit_event(self, ts: float, decision: Decision, results: list[ActionResult]) -> None:
        self.events += 1
        action = ",".join(r.name for r in results) or "none"
        detail = "; ".join(f"{r.name}: {r.detail}" for r in results)
        self.outbox.emit(
            lambda seq: Event(
                self.device,
                self.epoch,
                seq,
                ts,
                self.model.version,
                decision.rule,
                min(max(decision.score, 0.0), 1.0),
                decision.sensor,
                decision.value,
                action,
                all(r.ok for r in results),
                detail[:500],
            )
        )

    # -- the reading loop ----------------------------------------------------------------------

    def process(self, ts: float, values: np.ndarray) -> Decision | None:
        """Score one reading, act on it if urgent, and queue it. The hot path."""
        t0 = time.perf_counter_ns()
        feats = self.features.push(values)  # always finite: bad values are carried forward
        scores = self.model.score(feats)
        decision = self.rule.check(values, scores.item(self.urgent_index))
        self.latency.add((time.perf_counter_ns() - t0) / 1000.0)
        if decision is not None:
            results = [a.act(self.device, decision) for a in self.actuators]
            self._emit_event(ts, decision, results)
        sealed, started = self.batcher.add(ts, feats, scores, self.model.version)
        if sealed is not None:
            self._emit_batch(sealed)
        elif started:
            self.wake.set()  # the link thread must learn the new batch's deadline
        self.readings += 1
        return decision

    def run(self, stop: threading.Event) -> int:
        """Run until the source ends, ``settings.readings`` are done, or ``stop`` is set."""
        self.epoch = next_epoch(self.settings.state_dir)
        topics, device = self.topics, self.device
        link = MqttLink(
            self.settings,
            subscriptions=[topics.topic(device, Kind.DESIRED), topics.topic(device, Kind.ACK)],
            will=self._status("offline"),
            inbox=self.inbox,
            wake=self.wake,
            counters=self.counters,
        )
        link.birth = lambda: self._status("online")
        self._link = link
        log.info(
            "device %r: agent %s starting, epoch %d, model %s %s, broker %s",
            device,
            AGENT_VERSION,
            self.epoch,
            self.model.manifest.name,
            self.model.version,
            self.settings.broker.redacted_url,
        )
        link.start()
        link_thread = threading.Thread(target=self._link_loop, name="edgeloop-link", daemon=True)
        link_thread.start()
        limit = self.settings.readings
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's way so its pauses stay short on the reading path.
        gc.freeze()
        try:
            for reading in self.source.readings(stop):
                self.process(reading.ts, reading.values)
                if limit and self.readings >= limit:
                    break
        finally:
            self._shutdown(link, link_thread)
        return 0

    def _shutdown(self, link: MqttLink, link_thread: threading.Thread) -> None:
        batch = self.batcher.seal_if_due(time.monotonic(), force=True)
        if batch is not None:
            self._emit_batch(batch)
        self._draining.set()
        self.wake.set()
        link_thread.join(self.settings.shutdown_timeout_s + 1.0)
        unsent = len(self.outbox) + link.outstanding
        if unsent:
            self.counters.add("dropped:shutdown_unsent", unsent)
            log.warning(
                "device %r: %d messages not delivered before shutdown (broker unreachable?)",
                self.device,
                unsent,
            )
        link.close(self._status("offline"), timeout=1.0)
        for actuator in self.actuators:
            actuator.close()
        log.info(
            "device %r: stopped after %d readings, %d urgent events",
            self.device,
            self.readings,
            self.events,
        )

    # -- the link thread -----------------------------------------------------------------------

    def _link_loop(self) -> None:
        link = self._link
        assert link is not None
        heartbeat = self.settings.heartbeat_s
        next_beat = time.monotonic() + min(heartbeat, 1.0)
        drain_deadline: float | None = None
        self._process.cpu_percent(None)
        while True:
            self.wake.clear()
            now = time.monotonic()
            self._handle_inbox()
            batch = self.batcher.seal_if_due(now)
            if batch is not None:
                self._emit_batch(batch)
            if link.connected.is_set():
                self._pump(link)
            report_in = link.report_failures(now)
            if now >= next_beat:
                self._send_health(link)
                next_beat = now + heartbeat
            if self._draining.is_set():
                if drain_deadline is None:
                    drain_deadline = now + self.settings.shutdown_timeout_s
                if (not len(self.outbox) and not link.outstanding) or now >= drain_deadline:
                    return
            waits = [next_beat - now]
            if report_in is not None:
                waits.append(report_in)
            deadline = self.batcher.deadline()
            if deadline is not None:
                waits.append(deadline - now)
            if drain_deadline is not None:
                waits.append(0.05)
            self.wake.wait(max(0.0, min(waits)))

    def _pump(self, link: MqttLink) -> None:
        while link.connected.is_set():
            msg = self.outbox.take()
            if msg is None:
                return
            try:
                payload = encode(msg)
            except ValueError as exc:  # never let one bad message stop the link
                self.counters.add(f"dropped:unencodable_{msg.kind.value}")
                log.error(
                    "device %r: dropped %s seq %d: %s", self.device, msg.kind.value, msg.seq, exc
                )
                continue
            if not link.publish(self.topics.topic(self.device, msg.kind), payload, qos=1):
                self.outbox.give_back(msg)  # paho's queue is full; on_publish wakes us
                return

    def _send_health(self, link: MqttLink) -> None:
        if not link.connected.is_set():
            return
        p50, p99 = self.latency.percentiles()
        counts = self.counters.snapshot()
        dropped = dict(self.outbox.dropped)
        invalid = dict(self.source.invalid)
        for name, n in counts.items():
            group, _, key = name.partition(":")
            if group == "dropped":
                dropped[key] = dropped.get(key, 0) + n
            elif group == "invalid":
                invalid[key] = invalid.get(key, 0) + n
        msg = Health(
            self.device,
            self.epoch,
            self.outbox.last_seq,
            time.time(),
            self.model.version,
            round(time.monotonic() - self._started, 3),
            self.readings,
            round(p50, 2),
            round(p99, 2),
            self._process.cpu_percent(None),
            round(self._process.memory_info().rss / 2**20, 2),
            len(self.outbox),
            self.outbox.acked_seq,
            dropped,
            invalid,
        )
        link.publish(self.topics.topic(self.device, Kind.HEALTH), encode(msg), qos=0)

    def _handle_inbox(self) -> None:
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            try:
                addr = self.topics.parse(topic)
                if addr.device != self.device or addr.kind not in HUB_TO_EDGE:
                    self.counters.add("invalid:foreign_topic")
                    continue
                msg = decode(addr.kind, payload)
            except ContractError as exc:
                self.counters.add(f"invalid:{exc.reason}")
                log.debug("device %r: ignored bad message on %s: %s", self.device, topic, exc)
                continue
            if msg.device != self.device:
                self.counters.add("invalid:device_mismatch")
            elif isinstance(msg, Ack):
                if msg.epoch == self.epoch:
                    self.outbox.acked(msg.seq)
                else:
                    self.counters.add("invalid:stale_epoch")
            elif isinstance(msg, Desired):
                self.desired = msg
                log.info(
                    "device %r: hub wants model %s %s (running %s)",
                    self.device,
                    msg.model_name,
                    msg.model_version,
                    self.model.version,
                )
