"""Runs the OTA state machine inside the agent: its events, its effects, its worker thread.

Threads (the machine's rule 3):

- The *reading loop* owns the machine. :meth:`OtaRunner.poll`, called before
  every reading and, while an update is in progress, as soon as the worker
  posts an outcome (in the source's wait between two readings,
  :mod:`edge_agent.waiting`), hands it the events queued since (desired
  messages, the worker's outcomes, urgent episodes starting or ending) and a
  tick, and carries out the effects it returns. The effects that touch the
  reading path (switch, revert) and the quick ones (breadcrumb, report,
  commit) run right there, between two readings; :meth:`trial_reading` feeds
  each reading of a trial.
- The *link thread* only queues desired messages (:meth:`desired`).
- One *worker thread* does the slow effects and every file write, one at a
  time and in the machine's order: download, verify, stage (copy into its
  slot and open the model), smoke test, discard, the breadcrumb, the commit's
  ``current.json`` and the deletion of older slots. The reading loop never
  waits for the disk. Each step posts its outcome back to the queue. An
  outcome of an update that was abandoned meanwhile is dropped (each update
  has a number).

Because the files are written by the worker, a crash a few milliseconds after
a step may find the breadcrumb of the step before (a kill just after the
switch reads as ``crashed_in_smoke``; just after a commit was reported, as
``crashed_in_trial`` with the previous model loaded): the agent always
restarts on a model that was committed on disk.

The reading loop's host (:class:`OtaHost`, the agent) swaps the model: the
runner holds at most two models, the running one and the staged one (before
the switch) or the previous one (during the trial, for a revert).
"""

from __future__ import annotations

import base64
import collections
import logging
import queue
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from edge_agent.engine import EdgeModel
from edge_agent.malloc import trim
from edge_agent.ota.checks import ModelFigures, compatibility, smoke_verdict
from edge_agent.ota.machine import (
    AgentStarted,
    ClearBreadcrumb,
    Commit,
    DesiredReceived,
    Discard,
    DownloadDone,
    DownloadFailed,
    Effect,
    Event,
    OtaMachine,
    OtaSettings,
    Refused,
    Report,
    Revert,
    Running,
    SmokeFailed,
    SmokePassed,
    SmokeTest,
    Stage,
    Staged,
    StageFailed,
    StartDownload,
    Step,
    Stopped,
    SwitchDone,
    SwitchModel,
    Target,
    TrialReading,
    UrgentEnded,
    UrgentStarted,
    Verified,
    Verify,
    WriteBreadcrumb,
)
from edge_agent.ota.slots import ModelSlots, SlotName
from shared.errors import ManifestError
from shared.manifest import load_package
from shared.ota import IN_PROGRESS, OtaState, OtaTransition
from shared.reasons import OtaReason, RejectReason

if TYPE_CHECKING:
    from shared.signing import TrustedKey, Verifier

__all__ = ["OtaConfig", "OtaHost", "OtaRunner", "open_slot"]

log = logging.getLogger(__name__)

_TICK_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """What the runner needs of the agent's settings (:mod:`edge_agent.settings`)."""

    hub_url: str
    trusted: tuple[TrustedKey, ...]
    settings: OtaSettings
    max_bytes: int
    agent_version: str
    source_sensors: tuple[str, ...]
    credentials: tuple[str, str] | None = None
    """(device, secret) for HTTP Basic: the agent's own broker account."""
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    smoke_budget_us: float = 20_000.0
    """The median latency per test-vector row a smoke test allows (``--ota-smoke-budget-ms``;
    20 ms: a model 100 x slower than the default edge model's)."""
    load_model: Callable[[Path], EdgeModel] | None = field(default=None, compare=False)
    """Opens a staged, verified package (its slot) as a model; None: a session of its
    own (:func:`open_slot`). The fleet simulator's hosts share one per package."""
    verifier: Verifier | None = field(default=None, compare=False)
    """The Ed25519 check; None: a child process (:mod:`edge_agent.ota.sigcheck`), so the
    agent never loads ``cryptography``. A host of many simulated agents may pass
    :func:`shared.signing.verify_in_process` instead (one process, one ``cryptography``)."""


class OtaHost(Protocol):
    """What the runner asks of the agent, on the reading thread, between two readings."""

    def switch_model(self, model: EdgeModel) -> ModelFigures:
        """Seal the batch in flight and score the next reading with ``model``; return the
        figures of the model it replaces."""
        ...

    def report_ota(self, transition: OtaTransition) -> None:
        """Send the transition on ``ota`` through the durable outbox."""
        ...


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A worker's answer: the update it belongs to, its event, a staged model."""

    update: int
    event: Event
    model: EdgeModel | None = None


class OtaRunner:
    """The OTA machine of one agent, driven between readings (see the module docstring)."""

    def __init__(
        self,
        config: OtaConfig,
        slots: ModelSlots,
        model: EdgeModel,
        host: OtaHost,
    ) -> None:
        self.wake: Callable[[], None] = _nothing
        """Called (from the link or worker thread) when the reading loop has OTA work: a
        desired message or a step's outcome (:class:`edge_agent.waiting.ReadingWait`)."""
        self.config = config
        self.slots = slots
        self.host = host
        self.model = model
        """The running model (the reading loop's)."""
        self.machine = OtaMachine(Running(model.manifest.name, model.version), config.settings)
        self._events: collections.deque[_Outcome] = collections.deque()
        """The worker's outcomes: at most one per job, and jobs come from the machine."""
        self._desired: collections.deque[Target] = collections.deque(maxlen=1)
        """The latest desired message not yet handed to the machine (the hub re-sends
        it while the device runs another model; only the latest matters)."""
        self._jobs: queue.Queue[tuple[int, Effect] | None] = queue.Queue()
        self._update = 0
        self._staged: EdgeModel | None = None
        self._previous: EdgeModel | None = None
        self._urgent_told = False
        self._next_tick = 0.0
        self._worker: threading.Thread | None = None
        self.in_trial = False

    # -- any thread --

    def desired(self, target: Target) -> None:
        """Queue a desired message for the reading loop (the link thread calls this)."""
        self._desired.append(target)  # replaces one not yet taken
        self.wake()

    # -- the reading loop --

    def start(self) -> None:
        """The first event (AgentStarted with the breadcrumb on disk), and the worker."""
        self.slots.prepare()
        if not self.config.trusted:
            log.warning("OTA: no --trust key, updates refused")
        else:
            log.info(
                "OTA: packages signed by %s are trusted",
                ", ".join(f"key {k.key_id} ({k.source})" for k in self.config.trusted),
            )
        self._worker = threading.Thread(target=self._work, name="edgeloop-ota", daemon=True)
        self._worker.start()
        crumb = self.slots.breadcrumb()
        if crumb is not None:
            log.warning(
                "OTA: the agent stopped during an update to %s %s (state %s); running %s %s",
                crumb.target.name,
                crumb.target.version,
                crumb.state.value,
                self.model.manifest.name,
                self.model.version,
            )
        self._apply(self.machine.handle(AgentStarted(crumb), time.monotonic()))

    def stop(self, timeout: float = 2.0) -> None:
        """End an update under way with ``stopped`` (the machine's rule 5: a clean stop is
        no crash), then stop the worker after its jobs, waiting at most ``timeout`` s for
        it (a download may go on until its own timeout; the thread is a daemon). Called on
        the reading thread once the readings are over, before the outbox is drained."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        ended = False
        try:
            self._apply(self.machine.handle(Stopped(), time.monotonic()))
            ended = True
        except Exception:  # after a bug in the runner: the breadcrumb stays, as after a crash
            log.exception("OTA: could not end the update under way at stop")
        self._jobs.put(None)
        worker.join(timeout=timeout)
        if ended and worker.is_alive():
            # Stuck in a download: its .part files are all it writes, and the jobs after it
            # (this stop's discard and clear) wait for it. Clear the breadcrumb here.
            self.slots.clear_breadcrumb()

    @property
    def busy(self) -> bool:
        """Whether an update is in progress or has work queued (the reading loop)."""
        return self.machine.state in IN_PROGRESS or bool(self._events or self._desired)

    def poll(self, urgent_on: bool) -> None:
        """Before a reading: queued events, urgent episodes and deadlines. Cheap when idle."""
        machine = self.machine
        if not self._events and not self._desired and machine.deadline is None:
            return
        now = time.monotonic()
        while self._events:
            item = self._events.popleft()
            if item.update == self._update and _expected(item.event, machine.state):
                if item.model is not None:
                    self._staged = item.model
                self._apply(machine.handle(item.event, now))
            # else: an outcome of an abandoned update (its model, if any, is dropped)
        if self._desired:  # only this thread takes: popleft finds it there
            self._apply(machine.handle(DesiredReceived(self._desired.popleft()), now))
        if machine.state in IN_PROGRESS and urgent_on != self._urgent_told:
            self._urgent_told = urgent_on
            event = UrgentStarted() if urgent_on else UrgentEnded()
            self._apply(machine.handle(event, now))
        if machine.deadline is not None and now >= self._next_tick:
            self._next_tick = now + _TICK_S
            self._apply(machine.tick(now))

    def trial_reading(self, latency_us: float, finite: bool, error: bool, urgent: bool) -> None:
        """One reading the model on trial scored (or failed to)."""
        event = TrialReading(latency_us, finite, error, urgent)
        self._apply(self.machine.handle(event, time.monotonic()))

    # -- effects --

    def _apply(self, step: Step) -> None:
        for fx in step.effects:
            if isinstance(fx, StartDownload):
                self._update += 1
                self._urgent_told = self.machine.urgent_active
                self._jobs.put((self._update, fx))
            elif isinstance(fx, Verify | Stage | SmokeTest | WriteBreadcrumb | ClearBreadcrumb):
                self._jobs.put((self._update, fx))  # the reading loop never touches the disk
            elif isinstance(fx, SwitchModel):
                self._switch(fx.target)
            elif isinstance(fx, Revert):
                self._revert()
            elif isinstance(fx, Commit):
                self._previous = None  # the old model is unloaded; its files go on the worker
                self._jobs.put((self._update, fx))
            elif isinstance(fx, Discard):
                self._staged = None
                self._update += 1  # outcomes still coming for it are dropped
                self._jobs.put((self._update, fx))
            elif isinstance(fx, Report):
                self._report(fx.transition)
        self.in_trial = self.machine.state is OtaState.TRIAL

    def _report(self, t: OtaTransition) -> None:
        level = logging.INFO if t.reason in (OtaReason.OK,) else logging.WARNING
        log.log(
            level,
            "OTA: %s (%s) %s -> %s%s",
            t.state.value,
            t.reason.value,
            t.from_version,
            t.to_version,
            f": {t.detail}" if t.detail else "",
        )
        self.host.report_ota(t)

    def _switch(self, target: Target) -> None:
        staged = self._staged
        assert staged is not None and staged.version == target.version, "switch without a model"
        previous = self.host.switch_model(staged)
        self._previous, self._staged, self.model = self.model, None, staged
        self._apply(self.machine.handle(SwitchDone(previous), time.monotonic()))

    def _revert(self) -> None:
        previous = self._previous
        if previous is None:  # reverted before the switch was carried out: nothing swapped
            return
        self.host.switch_model(previous)
        self.model, self._previous = previous, None

    def _commit(self, target: Target) -> None:
        keep = SlotName(target.name, target.version)
        self.slots.set_current(keep.name, keep.version)
        gone = self.slots.prune(keep)
        if gone:
            log.info("OTA: deleted older model slots %s", [f"{s.name} {s.version}" for s in gone])

    # -- the worker thread --

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            update, fx = job
            try:
                outcome = self._do(fx)
            except Exception as exc:  # a bug must not leave the update hanging: say so
                log.exception("OTA: %s failed unexpectedly", type(fx).__name__)
                outcome = _failure(fx, f"{type(exc).__name__}: {exc}")
            trim()  # what the step freed goes back to the kernel (edge_agent.malloc)
            if outcome is not None:
                self._events.append(_Outcome(update, *outcome))
                self.wake()

    def _do(self, fx: Effect) -> tuple[Event, EdgeModel | None] | None:
        if isinstance(fx, StartDownload):
            return self._download(fx.target), None
        if isinstance(fx, Verify):
            return self._verify(fx.target), None
        if isinstance(fx, Stage):
            return self._stage(fx.target)
        if isinstance(fx, SmokeTest):
            return self._smoke(), None
        if isinstance(fx, WriteBreadcrumb):
            self.slots.write_breadcrumb(fx.breadcrumb)
        elif isinstance(fx, ClearBreadcrumb):
            self.slots.clear_breadcrumb()
        elif isinstance(fx, Commit):
            self._commit(fx.target)
        elif isinstance(fx, Discard):
            self.slots.clear_staging()
            running = self.model.manifest
            keep = {SlotName(running.name, running.version)}
            current = self.slots.current()
            if current is not None:
                keep.add(current)
            self.slots.remove(fx.target.name, fx.target.version, keep)
        return None

    def _download(self, target: Target) -> Event:
        # Loaded at the first update, not at start: an agent that never updates keeps
        # its memory (edge_agent.ota.download and shared.package_verify, ~1 MB).
        from edge_agent.ota.download import DownloadError, fetch_package  # noqa: PLC0415

        base = urllib.parse.urlsplit(self.config.hub_url)
        url = urllib.parse.urlsplit(urllib.parse.urljoin(self.config.hub_url, target.manifest_url))
        if (url.scheme, url.netloc) != (base.scheme, base.netloc):
            return DownloadFailed(
                OtaReason.DOWNLOAD_FAILED,
                f"manifest_url {target.manifest_url!r} is not on the hub ({self.config.hub_url})",
            )
        headers: dict[str, str] = {}
        if self.config.credentials is not None:
            token = base64.b64encode(":".join(self.config.credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        limit = self.config.max_bytes
        if target.size > 0:
            limit = min(limit, target.size)
        try:
            got = fetch_package(
                url.geturl(),
                self.slots.staging,
                expected_manifest_sha256=target.manifest_sha256,
                size_limit=limit,
                headers=headers,
                tls=self.config.tls,
            )
        except DownloadError as exc:
            return DownloadFailed(exc.reason, str(exc))
        except OSError as exc:
            return DownloadFailed(OtaReason.DOWNLOAD_FAILED, f"{url.geturl()}: {exc}")
        log.info(
            "OTA: downloaded %s %s: %d bytes, %d resume(s)",
            target.name,
            target.version,
            got.bytes_fetched,
            got.resumes,
        )
        return DownloadDone()

    def _verify(self, target: Target) -> Event:
        from edge_agent.ota.sigcheck import child_verifier  # noqa: PLC0415 - see _download
        from shared.package_verify import verify_package  # noqa: PLC0415
        from shared.signing import VerifierError  # noqa: PLC0415

        # The Ed25519 check runs in a child process: this one never loads cryptography.
        try:
            verifier = self.config.verifier or child_verifier()
            result = verify_package(self.slots.staging, self.config.trusted, verifier)
        except VerifierError as exc:
            return Refused(OtaReason.VERIFIER_FAILED, str(exc))
        failed = result.failure
        if failed is not None:
            assert failed.reason is not None
            return Refused(failed.reason, f"{failed.what}: {failed.detail}")
        candidate = result.manifest
        assert candidate is not None
        if (candidate.name, candidate.version) != (target.name, target.version):
            return Refused(
                RejectReason.MALFORMED_MANIFEST,
                f"the package is {candidate.name} {candidate.version}, the desired message "
                f"names {target.name} {target.version}",
            )
        why = compatibility(
            self.model.manifest,
            candidate,
            self.config.agent_version,
            self.config.source_sensors,
            target.allow_downgrade,
        )
        if why is not None:
            return Refused(*why)
        return Verified()

    def _stage(self, target: Target) -> tuple[Event, EdgeModel | None]:
        try:
            slot = self.slots.install(self.slots.staging, target.name, target.version)
            model = (self.config.load_model or open_slot)(slot)
        except (ManifestError, OSError, ValueError) as exc:
            return StageFailed(str(exc)), None
        finally:
            self.slots.clear_staging()
        return Staged(), model

    def _smoke(self) -> Event:
        model = self._staged_for_smoke()
        tv = model.manifest.test_vectors
        rows = np.asarray(tv.inputs, dtype=np.float32)
        # One untimed call first: a thread's first score binds the model's buffers (about
        # a millisecond, far more on a loaded machine), which no later reading pays. With
        # one test vector, that cold call was the median the budget judged.
        model.score(rows[0])
        scores, latencies = [], []
        for row in rows:
            t0 = time.perf_counter_ns()
            scores.append(model.score(row))
            latencies.append((time.perf_counter_ns() - t0) / 1000.0)
        result = smoke_verdict(
            np.stack(scores), tv.expected_scores, tv.atol, latencies, self.config.smoke_budget_us
        )
        if result.reason is not None:
            return SmokeFailed(result.reason, result.detail)
        return SmokePassed()

    def _staged_for_smoke(self) -> EdgeModel:
        # Set by poll before SmokeTest was queued; read-only here.
        staged = self._staged
        assert staged is not None, "smoke test without a staged model"
        return staged


def open_slot(slot: Path) -> EdgeModel:
    """A staged, verified package's model, in a session of its own."""
    return EdgeModel(load_package(slot))


def _expected(event: Event, state: OtaState) -> bool:
    """Whether a worker's outcome fits the state (else it is stale)."""
    if isinstance(event, DownloadDone | DownloadFailed):
        return state is OtaState.DOWNLOADING
    if isinstance(event, Verified | Refused):
        return state is OtaState.VERIFYING
    if isinstance(event, Staged | StageFailed):
        return state is OtaState.STAGED
    if isinstance(event, SmokePassed | SmokeFailed):
        return state is OtaState.SMOKE_TESTING
    return False


def _nothing() -> None:
    pass


def _failure(fx: Effect, detail: str) -> tuple[Event, EdgeModel | None] | None:
    """The outcome that ends an update whose worker step raised."""
    if isinstance(fx, StartDownload):
        return DownloadFailed(OtaReason.DOWNLOAD_FAILED, detail), None
    if isinstance(fx, Verify):
        return Refused(RejectReason.MALFORMED_MANIFEST, detail), None
    if isinstance(fx, Stage):
        return StageFailed(detail), None
    if isinstance(fx, SmokeTest):
        return SmokeFailed(OtaReason.SMOKE_FAILED, detail), None
    return None
