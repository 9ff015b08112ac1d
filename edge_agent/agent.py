"""Wires an agent together: source → features → model → rule → action → outbox → link.

Two threads of ours (see the package docstring): the *reading loop* (the
caller of :meth:`Agent.run`) and the *link thread*, which seals overdue
batches, sends the outbox, handles incoming messages and sends heartbeats;
with OTA on, a third, the OTA worker (:mod:`edge_agent.ota.runner`), while the
reading loop runs the update state machine between readings.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Final

import numpy as np

from edge_agent.actuators import ActionResult, Actuator
from edge_agent.batcher import Batch, Batcher
from edge_agent.engine import EdgeModel
from edge_agent.epoch import next_epoch
from edge_agent.ota.checks import ModelFigures, input_columns
from edge_agent.ota.machine import Target
from edge_agent.outbox import Outbox
from edge_agent.reading import ReadingPath
from edge_agent.replay_identity import identity_for
from edge_agent.rules import Decision
from edge_agent.settings import AgentSettings
from edge_agent.sources.base import Source, StopSignal
from edge_agent.stats import Counters, LatencyWindow, ProcessUsage
from edge_agent.transport import MqttLink
from edge_agent.waiting import ReadingWait
from shared import __version__
from shared.baseline import Baseline, BaselineError
from shared.errors import ContractError
from shared.messages import (
    DEFAULT_LIMITS,
    Ack,
    Desired,
    Event,
    Health,
    Ota,
    Status,
    Telemetry,
    decode,
    encode,
)
from shared.ota import OtaTransition
from shared.topics import HUB_TO_EDGE, Kind, Topics

if TYPE_CHECKING:
    from edge_agent.ota.runner import OtaConfig, OtaRunner

__all__ = ["EXIT_NEVER_CONNECTED", "EXIT_NO_READINGS", "Agent"]

log = logging.getLogger(__name__)
AGENT_VERSION: Final = __version__
EXIT_NEVER_CONNECTED: Final = 3
"""The exit status of a run that ended without ever reaching its broker (2: bad settings)."""
EXIT_NO_READINGS: Final = 4
"""The exit status of a run whose source ended without giving a single reading."""
_RESEND_MAX_S: Final = 300.0
_SEND_CHUNK: Final = 50
_WRITE_RETRY_S: Final = 1.0
"""Pause before writing the outbox again after a write failed (a full or failing disk)."""


class Agent:
    """One device's agent. Build it, then call :meth:`run` with a stop event.

    ``baseline``: this device's baseline (:func:`edge_agent.reading.load_baseline`
    reads and checks ``--baseline FILE``); None to feed the model raw values,
    as its reference expects of an average device.
    """

    def __init__(
        self,
        settings: AgentSettings,
        model: EdgeModel,
        source: Source,
        actuators: list[Actuator],
        baseline: Baseline | None = None,
    ) -> None:
        self.ota: OtaRunner | None = None
        """Over-the-air updates (:mod:`edge_agent.ota.runner`), once :meth:`enable_ota` ran."""
        self.settings = settings
        self.device = settings.device
        self.model = model
        self.source = source
        self.actuators = actuators
        self.topics = Topics(settings.root)
        manifest = model.manifest
        self.path = ReadingPath(model, baseline)
        self.source_sensors = manifest.input.sensor_names
        """The sensors the source delivers, in its order (those of the model it started with)."""
        self._columns: tuple[int, ...] | None = None
        """Where the running model's sensors are in the source's readings (None: in order)."""
        self._model_readings = 0
        self._model_events = 0
        self._earlier_models: Counter[str] = Counter()
        """Readings scored by models switched away from, by version (:meth:`readings_by_model`)."""
        self.baseline = baseline
        self.features = self.path.features
        self.inputs = self.path.inputs
        self.rule = self.path.rule
        # A replayed recording's epoch is the recording's (edge_agent.replay_identity);
        # any other source's is bumped (and fsynced) here, so the outbox knows which
        # epoch its new seqs belong to before the first reading.
        self.replay = identity_for(settings, manifest)
        self.epoch = self.replay.epoch if self.replay else next_epoch(settings.state_dir)
        self.batcher = Batcher(
            settings.max_batch,
            settings.max_delay_ms / 1000.0,
            self.features.n_features,
            model.n_classes,
            recorded_time=self.replay is not None,
        )
        self.wake = threading.Event()
        self.outbox = Outbox(
            settings.state_dir / "outbox.db" if settings.outbox == "disk" else None,
            self.epoch,
            max_bytes=settings.outbox_max_bytes,
            max_messages=settings.outbox_max,
            max_age_s=settings.outbox_max_age_s,
            min_free_bytes=settings.outbox_min_free_bytes,
            fsync_ms=settings.outbox_fsync_ms,
            wake=self.wake,
            replay=self.replay is not None,
            model=(model.manifest.name, model.version),
        )
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=settings.inbox_max)
        self.readings = 0
        self.events = 0
        self.desired: Desired | None = None
        self.desired_logged: tuple[str, str] | None = None
        self._started = time.monotonic()
        self._draining = threading.Event()
        self._drain_deadline = math.inf
        """Monotonic time at which draining at shutdown ends: ``--shutdown-timeout-s`` after
        it began or, at the end of a finite source, after the last ack (link thread)."""
        self._drain_while_acked = False
        self._resend_at: float | None = None
        self._resend_every = settings.resend_after_s
        self._write_retry_at: float | None = None
        self._link_wakes_at = math.inf
        """Monotonic time by which the link thread looks at the batcher again by itself
        (inf while it is between two looks): the reading loop wakes it for a new batch
        only if that is later than the batch's deadline. Woken for every batch, the
        link thread took the GIL 1,200 times a second at 60,000 readings/s."""
        self._connects_seen = 0
        self._write_failures = 0
        """Outbox writes failed in a row (a full or failing disk); 0 once one succeeds."""
        self._link: MqttLink | None = None
        self._usage = ProcessUsage()
        self.drain_by: float | None = None
        """A monotonic time by which draining at shutdown ends, even before
        ``--shutdown-timeout-s`` (``edgeloop-sim replay --timeout-s``); None: no such bound."""

    def enable_ota(self, config: OtaConfig) -> None:
        """Act on the hub's desired model (before :meth:`run`): :mod:`edge_agent.ota.runner`."""
        from edge_agent.ota.runner import OtaRunner  # noqa: PLC0415 - only with --ota
        from edge_agent.ota.slots import ModelSlots  # noqa: PLC0415

        self.ota = OtaRunner(config, ModelSlots(self.settings.state_dir), self.model, self)

    @property
    def link(self) -> MqttLink | None:
        """The broker link, once :meth:`run` has started it (None before)."""
        return self._link

    # -- messages ------------------------------------------------------------------------------

    def _status(self, state: str, *, clean: bool = False) -> tuple[str, bytes]:
        msg = Status(
            self.device,
            self.epoch,
            self.outbox.last_seq,
            "online" if state == "online" else "offline",
            AGENT_VERSION,
            self.model.version,
            time.time(),
            self.model.manifest.name,
            clean=clean,
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
                batch.model_name,
            )
        )

    def _emit_event(self, ts: float, decision: Decision, results: list[ActionResult]) -> None:
        self.events += 1
        action = ",".join(r.name for r in results) or "none"
        detail = "; ".join(f"{r.name}: {r.detail}" for r in results)
        version = self.model.version  # now: the link thread builds the message later
        self.outbox.emit(
            lambda seq: Event(
                self.device,
                self.epoch,
                seq,
                ts,
                version,
                decision.rule,
                min(max(decision.score, 0.0), 1.0),
                decision.sensor,
                decision.value,
                action,
                all(r.ok for r in results),
                detail[:500],
            ),
            urgent=True,
        )

    # -- the reading loop ----------------------------------------------------------------------

    def process(self, ts: float, values: np.ndarray) -> tuple[Decision, ...]:
        """Score one reading, act on each urgent cause that starts on it, and queue it.

        The hot path. Every decision gets the actuators' actions and an event of
        its own, the most severe first; returns the decisions (usually none).
        Before it, the OTA runner takes its events (a switch happens here,
        between two readings); during a trial, :meth:`_trial_step` scores.
        """
        if self.ota is not None:
            self._ota_between()
            ota = self.ota  # None if it failed just now
            if ota is not None and ota.in_trial:
                return self._record(ts, *self._trial_step(values))
        if self._columns is not None:
            values = values[list(self._columns)]
        t0 = time.perf_counter_ns()
        feats, scores, decisions = self.path.step(values)  # see edge_agent.reading
        self.latency.add((time.perf_counter_ns() - t0) / 1000.0)
        return self._record(ts, feats, scores, decisions)

    def _record(
        self, ts: float, feats: np.ndarray, scores: np.ndarray, decisions: tuple[Decision, ...]
    ) -> tuple[Decision, ...]:
        """Act on a scored reading's decisions and queue it in the batch of its model."""
        for decision in decisions:
            results = [a.act(self.device, decision) for a in self.actuators]
            self._emit_event(ts, decision, results)
        model = self.model
        sealed, started = self.batcher.add(ts, feats, scores, model.version, model.manifest.name)
        if sealed is not None:
            self._emit_batch(sealed)
        elif started and self._link_wakes_at > time.monotonic() + self.batcher.max_delay_s:
            self.wake.set()  # the link thread must learn the new batch's deadline
        self.readings += 1
        self._model_readings += 1
        if decisions:  # readings that started an urgent event, as the trial counts them
            self._model_events += 1
        return decisions

    def _trial_step(
        self, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, tuple[Decision, ...]]:
        """Score a reading with the model on trial and tell the OTA runner how it went.

        A reading the trial model fails on (an error, a NaN or infinite score) makes
        the runner revert at once; the previous model, back, then scores that same
        reading, so no reading is dropped and none is scored twice into telemetry.
        """
        ota = self.ota
        assert ota is not None
        path = self.path
        cols = self._columns
        given = values if cols is None else values[list(cols)]
        t0 = time.perf_counter_ns()
        raw = feats = scores = None
        decisions: tuple[Decision, ...] = ()
        try:
            raw, feats = path.features_of(given)
            scores, decisions = path.decide(raw, feats)
        except Exception as exc:  # the trial model failed: counted, reverted
            log.warning("device %r: the model on trial failed to score: %r", self.device, exc)
        latency = (time.perf_counter_ns() - t0) / 1000.0
        self.latency.add(latency)
        error = scores is None
        finite = scores is not None and bool(np.isfinite(scores).all())
        ota.trial_reading(latency, finite, error, finite and bool(decisions))
        if finite:
            assert feats is not None and scores is not None
            return feats, scores, decisions
        back = self.path
        if back is path:  # not reverted: the trial tolerates some errors
            raise RuntimeError("the model on trial failed and was not reverted")
        if back.features is path.features and raw is not None and feats is not None:
            scores, decisions = back.decide(raw, feats)  # the window has this reading already
            return feats, scores, decisions
        cols = self._columns
        return back.step(values if cols is None else values[list(cols)])

    # -- OTA: the reading loop, between two readings ------------------------------------------

    def _ota_busy(self) -> bool:
        ota = self.ota
        return ota is not None and ota.busy

    def _ota_between(self) -> None:
        """The OTA runner's next steps, between two readings (the source's wait)."""
        ota = self.ota
        if ota is not None:
            try:
                ota.poll(self.path.rule.episode_on)
            except Exception:  # a bug in the update must not stop the readings
                self._ota_failed()

    def _ota_failed(self) -> None:
        """Turn updates off for this run after an unexpected error in the OTA runner."""
        self.counters.add("ota_errors")
        log.exception(
            "device %r: OTA failed unexpectedly; updates are off until the agent restarts "
            "(it restarts on its last committed model). Please report this",
            self.device,
        )
        ota, self.ota = self.ota, None
        if ota is not None:
            ota.stop(timeout=0.0)  # the reading loop does not wait for a download

    def switch_model(self, model: EdgeModel) -> ModelFigures:
        """Score from the next reading on with ``model``; returns the replaced model's figures.

        The batch in flight is sealed first, so every telemetry batch names one model.
        The feature window carries over when both models read the same input; the
        baseline too, when it fits the new model.
        """
        p50, p99 = self.latency.percentiles()
        figures = ModelFigures(self._model_readings, self._model_events, p99, p50)
        # The first score on this thread binds the model's buffers (about a millisecond):
        # paid here, between two readings, not by the trial's first reading, whose
        # latency would otherwise be the trial's p99 against a warm previous model.
        model.score(np.asarray(model.manifest.test_vectors.inputs[0], dtype=np.float32))
        batch = self.batcher.seal_if_due(time.monotonic(), force=True)
        if batch is not None:
            self._emit_batch(batch)
        old = self.path
        try:
            path = ReadingPath(model, self.baseline)
        except (BaselineError, ValueError) as exc:
            log.warning(
                "device %r: the baseline does not fit model %s %s (%s); it scores raw values",
                self.device,
                model.manifest.name,
                model.version,
                exc,
            )
            path = ReadingPath(model, None)
        if model.manifest.input == old.model.manifest.input:
            path.features = old.features
        cols = input_columns(self.source_sensors, model.manifest.input.sensor_names)
        self._columns = None if cols == tuple(range(len(self.source_sensors))) else cols
        if (model.n_features, model.n_classes) != (self.model.n_features, self.model.n_classes):
            self.batcher = Batcher(
                self.settings.max_batch,
                self.settings.max_delay_ms / 1000.0,
                model.n_features,
                model.n_classes,
                recorded_time=self.replay is not None,
            )
        self._earlier_models[self.model.version] += self._model_readings
        self.model, self.path = model, path
        self.features, self.inputs, self.rule = path.features, path.inputs, path.rule
        self._model_readings = self._model_events = 0
        return figures

    def readings_by_model(self) -> dict[str, int]:
        """Readings each model version scored in this run (each is in a batch naming it)."""
        counts = Counter(self._earlier_models)
        counts[self.model.version] += self._model_readings
        return {version: n for version, n in counts.items() if n}

    def report_ota(self, transition: OtaTransition) -> None:
        """Send an OTA transition through the durable outbox, like an event."""
        ts = time.time()
        fields = transition.ota_fields()
        self.outbox.emit(
            lambda seq: Ota(
                self.device,
                self.epoch,
                seq,
                ts,
                str(fields["state"]),
                str(fields["reason"]),
                fields["from_version"],
                fields["to_version"],
                str(fields["detail"]),
            )
        )

    def run(self, stop: threading.Event) -> int:
        """Run until the source ends, ``settings.readings`` are done, or ``stop`` is set."""
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
        link.will = lambda: self._status("offline")
        self._link = link
        if self.replay is not None:
            log.info(
                "device %r: replaying %s (sha256 %s) as epoch %d, seqs from 1",
                device,
                self.settings.csv_path,
                self.replay.file_sha256[:16],
                self.epoch,
            )
        log.info(
            "device %r: agent %s starting, epoch %d, model %s %s, broker %s",
            device,
            AGENT_VERSION,
            self.epoch,
            self.model.manifest.name,
            self.model.version,
            self.settings.broker.redacted_url,
        )
        if self.baseline is not None:
            log.info(
                "device %r: readings are mapped onto the model's reference with the baseline "
                "created %s from %d readings",
                device,
                self.baseline.created,
                self.baseline.readings,
            )
        if self.outbox.recovered:
            log.info(
                "device %r: %d unacked messages of earlier runs are in the outbox; sending them "
                "again with their original epoch and seq",
                device,
                self.outbox.recovered,
            )
        link.start()
        link_thread = threading.Thread(target=self._link_loop, name="edgeloop-link", daemon=True)
        link_thread.start()
        limit = self.settings.readings
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's way so its pauses stay short on the reading path.
        waits: StopSignal = stop
        if self.ota is not None:
            wait = ReadingWait(stop, self._ota_busy, self._ota_between)
            self.ota.wake = wait.wake
            waits = wait
            self.ota.start()
        gc.freeze()
        finished = False
        try:
            for reading in self.source.readings(waits):
                self.process(reading.ts, reading.values)
                if limit and self.readings >= limit:
                    break
                if self.replay is not None and self.readings % self.settings.max_batch == 0:
                    self._wait_for_room(stop)
            finished = not stop.is_set()
        finally:
            if self.ota is not None:
                self.ota.stop()
            self._shutdown(link, link_thread, finished=finished)
        if finished and not self.readings:
            # Not the broker's fault: the run may end before a connection was even tried.
            self._no_readings()
            return EXIT_NO_READINGS
        if not link.connects:
            self._never_connected(link)
            return EXIT_NEVER_CONNECTED
        return 0

    def _never_connected(self, link: MqttLink) -> None:
        """Say that this run delivered nothing, where it tried, and what to do."""
        s = self.settings
        latest = link.failures.latest()
        why = (
            "no attempt finished before the agent stopped"
            if latest is None
            else f"{latest[1]} attempt(s) failed, the last: {latest[0].what}; check {latest[0].check}"
        )
        kept = (
            "stay in the outbox and are sent at the next start"
            if s.outbox == "disk"
            else "are lost with the memory outbox"
        )
        log.error(
            "device %r: never connected to the broker at %s during this run (%s). Nothing was "
            "delivered: the %d readings' messages %s. Start the broker (or the hub with its "
            "embedded broker) or correct --broker (EDGELOOP_AGENT_BROKER), then run the agent "
            "again; exit status %d",
            self.device,
            s.broker.redacted_url,
            why,
            self.readings,
            kept,
            EXIT_NEVER_CONNECTED,
        )

    def _drain_bound(self, now: float) -> float:
        """When draining ends if nothing changes from ``now``: ``--shutdown-timeout-s``
        later, and by ``drain_by`` at the latest."""
        bound = now + self.settings.shutdown_timeout_s
        return bound if self.drain_by is None else min(bound, self.drain_by)

    def _no_readings(self) -> None:
        s = self.settings
        what = f"csv source ({s.csv_path})" if s.source == "csv" else f"{s.source} source"
        log.error(
            "device %r: the %s ended without giving a single reading (the error above says "
            "why, if the source said it); nothing was sent. Give it readings and run the "
            "agent again; exit status %d",
            self.device,
            what,
            EXIT_NO_READINGS,
        )

    def _wait_for_room(self, stop: threading.Event) -> None:
        """A replay waits for acks rather than let its outbox reach a bound and drop: its
        source can wait, and a dropped seq is closed on the hub for every later replay."""
        outbox, waited = self.outbox, False
        while not stop.is_set() and (
            outbox.depth + outbox.staged >= outbox.max_messages // 2
            or outbox.size_bytes >= outbox.max_bytes // 2
            or outbox.staged >= outbox.staging_max // 2
        ):
            if not waited:
                waited = True
                log.info(
                    "device %r: replay paused at reading %d: %d messages (%d bytes) wait for "
                    "the hub's ack",
                    self.device,
                    self.readings,
                    len(outbox),
                    outbox.size_bytes,
                )
            stop.wait(0.05)

    def _shutdown(self, link: MqttLink, link_thread: threading.Thread, *, finished: bool) -> None:
        if self.replay is not None and not finished:
            # Sealed now, the open batch would be cut where this run stopped, not where
            # every full replay cuts it: its seq would name other rows next time.
            unsent = self.batcher.discard()
            if unsent:
                log.info(
                    "device %r: replay stopped before the end of %s; the %d readings of its "
                    "open batch are not sent (replay the file again to send them)",
                    self.device,
                    self.settings.csv_path,
                    unsent,
                )
        batch = self.batcher.seal_if_due(time.monotonic(), force=True)
        if batch is not None:
            self._emit_batch(batch)
        # A finite source that ended should end with its messages acked: wait while the
        # hub keeps acking. On a signal, the user wants the agent gone: a fixed bound.
        self._drain_while_acked = finished
        self._drain_deadline = self._drain_bound(time.monotonic())
        self._draining.set()
        self.wake.set()
        # Bounded: the deadline moves only when an ack shrank the (finite) outbox.
        while link_thread.is_alive() and time.monotonic() < self._drain_deadline + 1.0:
            link_thread.join(0.2)
        outbox = self.outbox
        try:
            outbox.flush()
        except Exception as exc:  # a full disk: say what is lost, and still shut down cleanly
            unwritten = outbox.staged
            self.counters.add("dropped:unwritten_at_shutdown_messages", unwritten)
            log.error(
                "device %r: %d messages could not be written to the outbox at shutdown (%s); "
                "they are lost (they never got a seq, so the hub sees no gap). Free space on "
                "the state directory's disk (%s)",
                self.device,
                unwritten,
                exc,
                self.settings.state_dir,
            )
        if outbox.depth:
            if self.settings.outbox == "disk":
                log.warning(
                    "device %r: %d messages not yet acked by the hub stay in the outbox and "
                    "are sent at the next start: %s. To wait longer, raise "
                    "--shutdown-timeout-s (now %g s)",
                    self.device,
                    outbox.depth,
                    "no ack came for --shutdown-timeout-s"
                    if finished
                    else "the agent was stopped and waited --shutdown-timeout-s",
                    self.settings.shutdown_timeout_s,
                )
            elif self.replay is not None:
                # Declared lost, these seqs would be closed on the hub for every later
                # replay of the recording; left open, the next replay fills them.
                log.warning(
                    "device %r: %d messages of the replay not acked before shutdown are "
                    "not kept (memory outbox); replay the file again to deliver them",
                    self.device,
                    outbox.depth,
                )
            else:
                # A memory outbox ends with the process: declare what it still holds,
                # so the hub counts it lost at the edge rather than waiting for it.
                lost = outbox.drop_all("shutdown_unsent")
                log.warning(
                    "device %r: %d messages not acked before shutdown are lost (memory "
                    "outbox); declared to the hub",
                    self.device,
                    lost,
                )
                if link.connected.is_set():
                    self._send_declarations(link)
        if link.connected.is_set():
            self._send_health(link)  # the hub hears the last counts before the will
        link.close(self._status("offline", clean=True), timeout=1.0)
        outbox.close()
        for actuator in self.actuators:
            actuator.close()
        log.info(
            "device %r: stopped after %d readings, %d urgent events; readings by model %s",
            self.device,
            self.readings,
            self.events,
            json.dumps(self.readings_by_model(), sort_keys=True),
        )

    # -- the link thread -----------------------------------------------------------------------

    def _link_loop(self) -> None:
        link = self._link
        assert link is not None
        outbox = self.outbox
        heartbeat = self.settings.heartbeat_s
        next_beat = time.monotonic() + min(heartbeat, 1.0)
        drain_left: int | None = None
        self._usage.cpu_percent()  # the heartbeat's CPU figure counts from here
        while True:
            self.wake.clear()
            self._link_wakes_at = math.inf
            now = time.monotonic()
            self._handle_inbox()
            batch = self.batcher.seal_if_due(now)
            if batch is not None:
                self._emit_batch(batch)
            beat = now >= next_beat
            self._write_outbox(now, heartbeat=beat)
            if link.connected.is_set():
                self._resend_if_due(link, now)
                self._pump(link)
            report_in = link.report_failures(now)
            if beat:
                self._send_health(link)
                next_beat = now + heartbeat
            outbox.sync_if_due()
            if self._draining.is_set():
                left = len(outbox)
                if self._drain_while_acked and drain_left is not None and left < drain_left:
                    self._drain_deadline = self._drain_bound(now)  # acks still come: wait on
                drain_left = left
                if (not left and not link.outstanding) or now >= self._drain_deadline:
                    return
            waits = [next_beat - now]
            if report_in is not None:
                waits.append(report_in)
            for due in (
                self.batcher.deadline(),
                self._write_due(),
                outbox.fsync_due(),
                self._resend_at,
            ):
                if due is not None:
                    waits.append(due - now)
            if drain_left is not None:
                waits.append(0.05)
            timeout = max(0.0, min(waits))
            self._link_wakes_at = time.monotonic() + timeout
            self.wake.wait(timeout)

    def _write_due(self) -> float | None:
        """When the link thread must next write staged messages (None: none staged)."""
        due = self.outbox.write_due()
        if due is not None and self._write_retry_at is not None:
            return max(due, self._write_retry_at)
        return due

    def _write_outbox(self, now: float, *, heartbeat: bool = False) -> None:
        """Write the staged messages when due; before a heartbeat, so that it counts
        them; and all of them while draining. After a failed write, wait
        :data:`_WRITE_RETRY_S` before the next try (but not while draining)."""
        due = self._write_due()
        if due is None:
            return
        retrying = self._write_retry_at is not None and now < self._write_retry_at
        if not self._draining.is_set() and now < due and (retrying or not heartbeat):
            return
        try:
            if self.outbox.flush():
                self._write_succeeded()
            self._write_retry_at = None
        except Exception as exc:  # a full or failing disk must not end the link
            self._write_retry_at = now + _WRITE_RETRY_S
            self._write_failed("writing new messages", exc)

    def _write_failed(self, what: str, exc: Exception) -> None:
        """Count an outbox write that failed; log the first of a run of them (not each one)."""
        self.counters.add("outbox_write_errors")
        self._write_failures += 1
        if self._write_failures == 1:
            log.error(
                "device %r: the outbox cannot be written (%s: %s) while %s; new messages wait "
                "in memory (%d now, at most %d) and the write is retried. Free space on the "
                "state directory's disk (%s)",
                self.device,
                type(exc).__name__,
                exc,
                what,
                self.outbox.staged,
                self.outbox.staging_max,
                self.settings.state_dir,
                exc_info=not isinstance(exc, sqlite3.Error),
            )
        else:
            log.debug("device %r: outbox write failed again while %s: %s", self.device, what, exc)

    def _write_succeeded(self) -> None:
        if self._write_failures:
            log.warning(
                "device %r: the outbox can be written again, after %d failed attempts",
                self.device,
                self._write_failures,
            )
            self._write_failures = 0

    def _resend_if_due(self, link: MqttLink, now: float) -> None:
        """Rewind the outbox at a reconnect, and when acks stopped while messages wait."""
        if link.connects != self._connects_seen:
            self._connects_seen = link.connects
            self.outbox.rewind()
            self._resend_every = self.settings.resend_after_s
            self._resend_at = None
        if not self.outbox.depth:
            self._resend_at = None
        elif self._resend_at is None:
            self._resend_at = now + self._resend_every
        elif now >= self._resend_at:
            # Sent, taken by the broker, never acked: the hub lost them (or is away).
            self.counters.add("resends")
            log.info(
                "device %r: no ack for %.0f s; sending the %d unacked messages again",
                self.device,
                self._resend_every,
                self.outbox.depth,
            )
            self.outbox.rewind()
            self._resend_every = min(self._resend_every * 2, _RESEND_MAX_S)
            self._resend_at = now + self._resend_every

    def _pump(self, link: MqttLink) -> None:
        self._send_declarations(link)
        while link.connected.is_set():
            chunk = self.outbox.unsent(_SEND_CHUNK)
            if not chunk:
                return
            for msg in chunk:
                if not link.publish(self.topics.topic(self.device, msg.kind), msg.payload, qos=1):
                    return  # paho's queue is full; on_publish wakes us
                self.outbox.sent(msg)

    def _send_declarations(self, link: MqttLink) -> None:
        declarations = self.outbox.declarations(self.device)
        for i, d in enumerate(declarations):
            if not link.publish(self.topics.topic(self.device, Kind.DROPPED), encode(d), qos=1):
                self.outbox.redeclare()  # paho's queue is full: all of them again later
                log.debug("device %r: %d declarations wait", self.device, len(declarations) - i)
                return

    def _send_health(self, link: MqttLink) -> None:
        if not link.connected.is_set():
            return
        p50, p99 = self.latency.percentiles()
        dropped, invalid = self.drop_counts()
        msg = Health(
            self.device,
            self.epoch,
            self.outbox.last_seq,
            time.time(),
            self.model.manifest.name,
            self.model.version,
            round(time.monotonic() - self._started, 3),
            self.readings,
            round(p50, 2),
            round(p99, 2),
            self._usage.cpu_percent(),
            round(self._usage.rss_bytes() / 2**20, 2),
            len(self.outbox),
            self.outbox.acked_seq(),
            dropped,
            invalid,
            None if self.baseline is None else self.baseline.created,
        )
        link.publish(self.topics.topic(self.device, Kind.HEALTH), encode(msg), qos=0)

    def drop_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """What the heartbeat reports as ``dropped`` and ``invalid``, by reason (the
        outbox's, the source's, the inputs' and the agent's own counters together)."""
        counts = self.counters.snapshot()
        dropped = dict(self.outbox.dropped)
        dropped.update(self.outbox.declared)
        invalid = dict(self.source.invalid)
        invalid.update(self.inputs.counts())
        if len(invalid) > DEFAULT_LIMITS.max_counters:  # the hub refuses more; keep the largest
            top = sorted(invalid.items(), key=lambda kv: -kv[1])[: DEFAULT_LIMITS.max_counters]
            invalid = dict(top)
        for name, n in counts.items():
            group, _, key = name.partition(":")
            if group == "dropped":
                dropped[key] = dropped.get(key, 0) + n
            elif group == "invalid":
                invalid[key] = invalid.get(key, 0) + n
        return dropped, invalid

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
                depth = self.outbox.depth
                try:
                    verdict = self.outbox.ack(msg.epoch, msg.seq)
                except sqlite3.Error as exc:
                    # A full disk: the ack is not applied, and a later one (acks are
                    # cumulative; a resend brings the hub's ack again) covers it.
                    self._write_failed("applying an ack", exc)
                    continue
                if verdict is not None:
                    self.counters.add(f"invalid:{verdict}")
                    log.warning(
                        "device %r: ignored an ack of epoch %d seq %d (%s; this agent is at "
                        "epoch %d, seq %d)",
                        self.device,
                        msg.epoch,
                        msg.seq,
                        verdict,
                        self.epoch,
                        self.outbox.last_seq,
                    )
                elif self.outbox.depth < depth:  # progress: the hub is there
                    self._resend_every = self.settings.resend_after_s
                    self._resend_at = None
            elif isinstance(msg, Desired):
                self.desired = msg
                log.debug(
                    "device %r: hub wants model %s %s (running %s)",
                    self.device,
                    msg.model_name,
                    msg.model_version,
                    self.model.version,
                )
                if self.ota is not None:
                    self.ota.desired(Target.from_desired(msg))  # the reading loop acts on it
                elif self.desired_logged != (msg.model_name, msg.model_version):
                    self.desired_logged = (msg.model_name, msg.model_version)
                    log.info(
                        "device %r: hub wants model %s %s; updates are off (--ota false)",
                        self.device,
                        msg.model_name,
                        msg.model_version,
                    )
