"""The agent's OTA update state machine: events in, effects out. Pure: no I/O, no threads, no clock.

Rules
=====

1. Everything that decides a state transition lives in this module: the
   :data:`TRANSITIONS` table says, for every (state, event type) pair, which
   states the event may lead to; the code below picks one of them (by the
   event's content, the machine's memory and the time passed in) and checks its
   pick is in the table. A pair not in the table is a programming error in the
   caller: :class:`OtaProtocolError`, never silently ignored.
2. The machine does nothing itself. It returns :class:`Effect` values the
   caller carries out, in order, before it hands the machine the next event
   (download, verify, stage, smoke-test, switch, revert, commit, discard, write
   or clear the breadcrumb, report). The caller reports each outcome back as an
   event. Time is passed in (``now``, seconds, any monotonic-enough clock).
3. One caller thread: the agent's reading loop, between two readings. That is
   what makes :class:`SwitchModel` "between two readings": it must be carried
   out before the next reading is scored, and :class:`SwitchDone` must be the
   next event (any other raises).
4. Nothing stays in progress forever: every state in
   :data:`shared.ota.IN_PROGRESS` has a deadline (:class:`OtaSettings`), and a
   :meth:`OtaMachine.tick` past it ends the update with reason ``deadline``
   (``rejected`` before the switch, ``reverted`` after it).
5. The first event is :class:`AgentStarted` (once), with the breadcrumb the
   agent found on disk, if any. The breadcrumb is written on entering every
   in-progress state and cleared when the update ends, so a crash is seen at
   the next start: in ``switching`` or ``trial`` the new model may be what
   crashed the agent, so the update is ``reverted`` (``crashed_in_trial``); in
   ``smoke_testing``, ``rejected`` (``crashed_in_smoke``); earlier, ``rejected``
   (``interrupted``, may be retried). The caller has already loaded the last
   known good model; a breadcrumb whose target is that model means the commit
   went through and only the clean-up was lost: ``committed``. A *clean* stop
   (a signal, the end of the readings) is no crash: :class:`Stopped` ends the
   update there and then, ``rejected`` (or ``reverted`` in ``trial``) with
   ``stopped``, files discarded and breadcrumb cleared, so the next start
   finds none and tries the hub's desired version again at once. Only a stop
   that could not clear the breadcrumb (SIGKILL, power loss) reads as a crash.
6. Desired versions: one naming the running model does nothing
   (``already_running``); one naming the update under way does nothing
   (``in_progress``); any other, mid-update, abandons the update (``rejected`` /
   ``reverted`` with ``superseded``, its files discarded) and starts toward the
   new one at once. A package refused before is not tried again
   (``refused_before``), except after a refusal that says nothing about the
   package (download failures, deadlines, urgent waits, interruptions, a
   signature checker that could not run), and then only ``retry_after_s``
   later. A desired message with a different ``allow_downgrade`` or sha256
   is another package.
7. Urgent episodes: never paused, never cut. The switch waits while one is
   active and happens when it ends; if it lasts past ``switch_wait_s`` the
   update is ``rejected`` (``urgent_active``) rather than switched anyway:
   swapping the model mid-episode would restart the urgent rule's state (its
   consecutive count, its episode) under a model not yet trusted, exactly when
   the running, trusted one is handling an emergency. The hub's desired stays,
   so a later attempt follows (``retry_after_s``).
8. The trial: the new model's figures (:class:`edge_agent.ota.checks.TrialStats`)
   against the previous model's, given with :class:`SwitchDone`. An error or a
   non-finite score reverts at once; latency p99 and urgent rate are judged
   when the window is complete (``trial_readings`` readings *and* ``trial_s``
   seconds), on a reading or a tick. Too few readings by ``trial_deadline_s``:
   ``reverted`` (``deadline``); a model is never committed on no evidence.

Diagram (``rejected`` from every state before ``trial``)::

    idle -> downloading -> verifying -> staged -> smoke_testing -> switching -> trial -> committed
                                                                                  \\-> reverted

>>> m = OtaMachine(Running("pump", "1.0.0"))
>>> m.handle(AgentStarted(None), now=0.0).state
<OtaState.IDLE: 'idle'>
>>> step = m.handle(DesiredReceived(Target("pump", "1.1.0", "ab" * 32, "http://127.0.0.1/p")), 1.0)
>>> step.state, [type(e).__name__ for e in step.effects]
(<OtaState.DOWNLOADING: 'downloading'>, ['WriteBreadcrumb', 'Report', 'StartDownload'])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge_agent.ota.checks import ModelFigures, TrialSettings, TrialStats, trial_verdict
from shared.messages import Desired
from shared.ota import IN_PROGRESS, TERMINAL, OtaState, OtaTransition, Reason
from shared.reasons import OtaReason

__all__ = [
    "TRANSITIONS",
    "AgentStarted",
    "Breadcrumb",
    "ClearBreadcrumb",
    "Commit",
    "DesiredReceived",
    "Discard",
    "DownloadDone",
    "DownloadFailed",
    "Effect",
    "Event",
    "OtaMachine",
    "OtaProtocolError",
    "OtaSettings",
    "Refused",
    "Report",
    "Revert",
    "Running",
    "SmokeFailed",
    "SmokePassed",
    "SmokeTest",
    "Stage",
    "StageFailed",
    "Staged",
    "StartDownload",
    "Step",
    "Stopped",
    "SwitchDone",
    "SwitchModel",
    "Target",
    "Tick",
    "TrialReading",
    "UrgentEnded",
    "UrgentStarted",
    "Verified",
    "Verify",
    "WriteBreadcrumb",
]

S = OtaState


class OtaProtocolError(RuntimeError):
    """The caller handed the machine an event its state does not take: a bug in the caller."""

    def __init__(self, state: OtaState, event: object, why: str) -> None:
        super().__init__(
            f"OTA machine in state {state.value!r} cannot take {type(event).__name__}: {why}"
        )
        self.state = state
        self.event = event


# --- what the machine works on ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Running:
    """The model the agent runs: its name and version."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Target:
    """The package a desired message names (:class:`shared.messages.Desired`)."""

    name: str
    version: str
    manifest_sha256: str
    manifest_url: str
    rollout: str = ""
    allow_downgrade: bool = False
    size: int = 0
    """The most the download may take, in bytes (the desired message's ``size``)."""

    @classmethod
    def from_desired(cls, desired: Desired) -> Target:
        return cls(
            desired.model_name,
            desired.model_version,
            desired.manifest_sha256,
            desired.manifest_url,
            desired.rollout,
            desired.allow_downgrade,
            desired.size,
        )

    @property
    def package(self) -> tuple[str, str, str, bool]:
        """What makes two targets the same package: rule 6."""
        return (self.name, self.version, self.manifest_sha256, self.allow_downgrade)


_TARGET_TYPES: Final[Mapping[str, type]] = {"allow_downgrade": bool, "size": int}
"""The fields of :class:`Target` that are not strings, with their type."""


@dataclass(frozen=True, slots=True)
class Breadcrumb:
    """What the agent keeps on disk while an update is in progress (rule 5).

    >>> crumb = Breadcrumb(OtaState.TRIAL, Target("pump", "1.1.0", "ab" * 32, "u"), "1.0.0")
    >>> Breadcrumb.from_dict(crumb.to_dict()) == crumb
    True
    """

    state: OtaState
    target: Target
    from_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "from_version": self.from_version,
            "target": dataclasses.asdict(self.target),
        }

    @classmethod
    def from_dict(cls, obj: Any) -> Breadcrumb:
        """The breadcrumb in a decoded JSON object, or ValueError naming the field at fault."""
        try:
            state = OtaState(obj["state"])
            raw = obj["target"]
            fields = {f.name: raw[f.name] for f in dataclasses.fields(Target)}
            crumb = cls(state, Target(**fields), obj["from_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"OTA breadcrumb: missing or invalid field ({exc!r}); it was not written by "
                "this agent: delete it"
            ) from None
        typed = (
            crumb.state in IN_PROGRESS
            and isinstance(crumb.from_version, str)
            and all(
                type(getattr(crumb.target, f.name)) is _TARGET_TYPES.get(f.name, str)
                for f in dataclasses.fields(Target)
            )
        )
        if not typed:
            raise ValueError(
                f"OTA breadcrumb: a field has the wrong type or the state {crumb.state.value!r} "
                "is not one in progress; it was not written by this agent: delete it"
            )
        return crumb


@dataclass(frozen=True, slots=True)
class OtaSettings:
    """Deadlines (seconds) of each in-progress state, the trial window and its thresholds."""

    download_s: float = 600.0
    verify_s: float = 60.0
    stage_s: float = 60.0
    smoke_s: float = 60.0
    switch_wait_s: float = 30.0
    """The longest the switch waits for an urgent episode to end (rule 7)."""
    trial_readings: int = 100
    trial_s: float = 60.0
    """The trial window: at least this many readings and this many seconds (rule 8)."""
    trial_deadline_s: float = 600.0
    """The longest a trial may last waiting for its readings; at least ``trial_s``."""
    retry_after_s: float = 300.0
    """How long before a package that failed for a passing reason is tried again (rule 6)."""
    trial: TrialSettings = field(default_factory=TrialSettings)

    def __post_init__(self) -> None:
        for name in (
            "download_s",
            "verify_s",
            "stage_s",
            "smoke_s",
            "switch_wait_s",
            "trial_s",
            "trial_deadline_s",
            "retry_after_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"OTA setting {name} = {value} must be a finite number of seconds > 0"
                )
        if self.trial_readings < 1:
            raise ValueError(f"OTA setting trial_readings = {self.trial_readings} must be >= 1")
        if self.trial_deadline_s < self.trial_s:
            raise ValueError(
                f"OTA setting trial_deadline_s = {self.trial_deadline_s} must be >= "
                f"trial_s = {self.trial_s}: a trial needs its window"
            )

    def deadline_s(self, state: OtaState) -> float:
        """How long ``state`` (one of :data:`shared.ota.IN_PROGRESS`) may last."""
        return {
            S.DOWNLOADING: self.download_s,
            S.VERIFYING: self.verify_s,
            S.STAGED: self.stage_s,
            S.SMOKE_TESTING: self.smoke_s,
            S.SWITCHING: self.switch_wait_s,
            S.TRIAL: self.trial_deadline_s,
        }[state]


# --- events: what the caller tells the machine --------------------------------


@dataclass(frozen=True, slots=True)
class AgentStarted:
    """The first event: the breadcrumb found on disk at start, or None."""

    breadcrumb: Breadcrumb | None


@dataclass(frozen=True, slots=True)
class DesiredReceived:
    target: Target


@dataclass(frozen=True, slots=True)
class DownloadDone:
    pass


@dataclass(frozen=True, slots=True)
class DownloadFailed:
    """``reason``: download_failed, download_timeout, too_large or no_space; or, when the
    bytes are not the package the desired message names, the :class:`RejectReason`
    sha256_mismatch, size_mismatch or malformed_manifest (:mod:`edge_agent.ota.download`)."""

    reason: Reason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Verified:
    """The package verifies and :func:`edge_agent.ota.checks.compatibility` passed."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A :class:`RejectReason` of the package, a compatibility :class:`OtaReason`, or
    ``verifier_failed`` (the signature checker could not run)."""

    reason: Reason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Staged:
    """The package sits beside the running model and its onnxruntime session is open."""


@dataclass(frozen=True, slots=True)
class StageFailed:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SmokePassed:
    pass


@dataclass(frozen=True, slots=True)
class SmokeFailed:
    """``reason``: smoke_failed or smoke_too_slow (:func:`edge_agent.ota.checks.smoke_verdict`)."""

    reason: OtaReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SwitchDone:
    """The swap happened; ``previous`` are the old model's figures from before it."""

    previous: ModelFigures


@dataclass(frozen=True, slots=True)
class UrgentStarted:
    pass


@dataclass(frozen=True, slots=True)
class UrgentEnded:
    pass


@dataclass(frozen=True, slots=True)
class TrialReading:
    """One reading the new model scored during its trial."""

    latency_us: float
    finite: bool = True
    error: bool = False
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (:meth:`OtaMachine.tick`)."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """The agent is stopping cleanly (rule 5): an update under way ends with ``stopped``."""


Event = (
    AgentStarted
    | DesiredReceived
    | DownloadDone
    | DownloadFailed
    | Verified
    | Refused
    | Staged
    | StageFailed
    | SmokePassed
    | SmokeFailed
    | SwitchDone
    | UrgentStarted
    | UrgentEnded
    | TrialReading
    | Tick
    | Stopped
)

# --- effects: what the caller must do, in order -------------------------------


@dataclass(frozen=True, slots=True)
class StartDownload:
    target: Target


@dataclass(frozen=True, slots=True)
class Verify:
    """Verify the downloaded package and its compatibility; answer Verified or Refused."""

    target: Target


@dataclass(frozen=True, slots=True)
class Stage:
    """Place the package beside the running model (slot B) and open it; answer Staged or StageFailed."""

    target: Target


@dataclass(frozen=True, slots=True)
class SmokeTest:
    target: Target


@dataclass(frozen=True, slots=True)
class SwitchModel:
    """Swap to the staged model now, before the next reading (rule 3); seal the batch in flight."""

    target: Target


@dataclass(frozen=True, slots=True)
class Revert:
    """Swap back to ``version``, the last known good model; seal the batch in flight."""

    version: str


@dataclass(frozen=True, slots=True)
class Commit:
    """Make the new model the last known good one on disk."""

    target: Target


@dataclass(frozen=True, slots=True)
class Discard:
    """Stop any download of ``target`` and delete its files (never the running model's)."""

    target: Target


@dataclass(frozen=True, slots=True)
class WriteBreadcrumb:
    breadcrumb: Breadcrumb


@dataclass(frozen=True, slots=True)
class ClearBreadcrumb:
    pass


@dataclass(frozen=True, slots=True)
class Report:
    """Send this transition on ``ota`` (through the durable outbox)."""

    transition: OtaTransition


Effect = (
    StartDownload
    | Verify
    | Stage
    | SmokeTest
    | SwitchModel
    | Revert
    | Commit
    | Discard
    | WriteBreadcrumb
    | ClearBreadcrumb
    | Report
)


@dataclass(frozen=True, slots=True)
class Step:
    """The state after an event, why (None: nothing happened), and the effects to carry out."""

    state: OtaState
    reason: Reason | None
    effects: tuple[Effect, ...]


# --- the table ------------------------------------------------------------------

_RESTING: Final = (S.IDLE, *sorted(TERMINAL))
_EVERY: Final = tuple(OtaState)
_ABANDON: Final = {S.REJECTED, S.DOWNLOADING}
"""A newer desired before the switch: abandoned (rejected), and maybe a new download."""


def _table() -> dict[tuple[OtaState, type[Event]], frozenset[OtaState]]:
    t: dict[tuple[OtaState, type[Event]], frozenset[OtaState]] = {}

    def add(states: tuple[OtaState, ...], event: type[Event], *to: OtaState) -> None:
        for state in states:
            t[state, event] = frozenset(to)

    add((S.IDLE,), AgentStarted, S.IDLE, S.REJECTED, S.REVERTED, S.COMMITTED)
    for state in _RESTING:
        add((state,), DesiredReceived, state, S.DOWNLOADING)
    for state in (S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SMOKE_TESTING, S.SWITCHING):
        add((state,), DesiredReceived, state, *_ABANDON)
    add((S.TRIAL,), DesiredReceived, S.TRIAL, S.REVERTED, S.DOWNLOADING)
    add((S.DOWNLOADING,), DownloadDone, S.VERIFYING)
    add((S.DOWNLOADING,), DownloadFailed, S.REJECTED)
    add((S.VERIFYING,), Verified, S.STAGED)
    add((S.VERIFYING,), Refused, S.REJECTED)
    add((S.STAGED,), Staged, S.SMOKE_TESTING)
    add((S.STAGED,), StageFailed, S.REJECTED)
    add((S.SMOKE_TESTING,), SmokePassed, S.SWITCHING)
    add((S.SMOKE_TESTING,), SmokeFailed, S.REJECTED)
    add((S.SWITCHING,), SwitchDone, S.TRIAL)
    for state in _EVERY:
        add((state,), UrgentStarted, state)
        add((state,), UrgentEnded, state)
    add((S.TRIAL,), TrialReading, S.TRIAL, S.COMMITTED, S.REVERTED)
    for state in _RESTING:
        add((state,), Tick, state)
    for state in (S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SMOKE_TESTING, S.SWITCHING):
        add((state,), Tick, state, S.REJECTED)
    add((S.TRIAL,), Tick, S.TRIAL, S.COMMITTED, S.REVERTED)
    for state in _RESTING:
        add((state,), Stopped, state)
    for state in (S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SMOKE_TESTING, S.SWITCHING):
        add((state,), Stopped, S.REJECTED)
    add((S.TRIAL,), Stopped, S.REVERTED)
    return t


TRANSITIONS: Final[Mapping[tuple[OtaState, type[Event]], frozenset[OtaState]]] = _table()
"""(state, event type) -> the states that event may lead to. Not here: a protocol error."""

_RETRYABLE: Final[frozenset[Reason]] = frozenset(
    {
        OtaReason.DOWNLOAD_FAILED,
        OtaReason.DOWNLOAD_TIMEOUT,
        OtaReason.NO_SPACE,
        OtaReason.DEADLINE,
        OtaReason.URGENT_ACTIVE,
        OtaReason.INTERRUPTED,
        OtaReason.STOPPED,
        OtaReason.VERIFIER_FAILED,
    }
)
"""Refusals that say nothing about the package itself (rule 6)."""

_NEXT: Final = {
    S.DOWNLOADING: S.VERIFYING,
    S.VERIFYING: S.STAGED,
    S.STAGED: S.SMOKE_TESTING,
    S.SMOKE_TESTING: S.SWITCHING,
}


# --- the machine ------------------------------------------------------------------


class OtaMachine:
    """One agent's OTA updates, one at a time. Feed :meth:`handle` and :meth:`tick`."""

    def __init__(self, running: Running, settings: OtaSettings | None = None) -> None:
        self.settings = settings or OtaSettings()
        self.state = S.IDLE
        self.running = running
        self.target: Target | None = None
        self.from_version = running.version
        self.deadline: float | None = None
        """When the current in-progress state ends with ``deadline``; None when resting."""
        self.urgent_active = False
        self._started = False
        self._switch_requested = False
        self._refused: tuple[Target, float | None] | None = None
        self._trial: TrialStats | None = None
        self._previous: ModelFigures | None = None
        self._trial_start = 0.0
        self._now = 0.0

    def tick(self, now: float) -> Step:
        """Let time pass: ends a state past its deadline, completes a trial window."""
        return self.handle(Tick(), now)

    def handle(self, event: Event, now: float) -> Step:
        """Apply ``event`` at time ``now``; raise :class:`OtaProtocolError` if the state
        does not take it (rules 1, 3, 5)."""
        allowed = TRANSITIONS.get((self.state, type(event)))
        if allowed is None:
            raise OtaProtocolError(self.state, event, "no such transition in TRANSITIONS")
        if not self._started and not isinstance(event, AgentStarted):
            raise OtaProtocolError(self.state, event, "the first event must be AgentStarted")
        if self._started and isinstance(event, AgentStarted):
            raise OtaProtocolError(self.state, event, "the agent started already")
        if self._switch_requested and not isinstance(event, SwitchDone):
            raise OtaProtocolError(
                self.state, event, "SwitchModel was asked for; SwitchDone must come next"
            )
        if isinstance(event, SwitchDone) and not self._switch_requested:
            raise OtaProtocolError(self.state, event, "no SwitchModel was asked for")
        self._now = now
        fx: list[Effect] = []
        reason = self._dispatch(event, now, fx)
        if self.state not in allowed:  # the code disagrees with the table: a bug here
            raise AssertionError(
                f"{type(event).__name__} led to {self.state.value}, not in {sorted(allowed)}"
            )
        return Step(self.state, reason, tuple(fx))

    # --- handlers: each returns the reason of what it did (None: nothing) ---

    def _dispatch(self, event: Event, now: float, fx: list[Effect]) -> Reason | None:
        if isinstance(event, AgentStarted):
            self._started = True
            return self._on_start(event.breadcrumb, fx)
        if isinstance(event, DesiredReceived):
            return self._on_desired(event.target, now, fx)
        if isinstance(event, UrgentStarted | UrgentEnded):
            self.urgent_active = isinstance(event, UrgentStarted)
            if self.state is S.SWITCHING and not self.urgent_active:
                self._request_switch(fx)
                return OtaReason.OK
            return None
        if isinstance(event, Tick):
            return self._on_tick(now, fx)
        if isinstance(event, Stopped):
            return self._on_stop(fx)
        if isinstance(event, TrialReading):
            assert self._trial is not None
            self._trial.add(event.latency_us, event.finite, event.error, event.urgent)
            return self._judge_trial(now, fx)
        if isinstance(event, DownloadFailed | Refused | SmokeFailed):
            return self._reject(event.reason, event.detail, fx)
        if isinstance(event, StageFailed):
            return self._reject(OtaReason.LOAD_FAILED, event.detail, fx)
        if isinstance(event, SwitchDone):
            self._switch_requested = False
            self._previous = event.previous
            self._trial = TrialStats(self.settings.trial.latency_ring)
            self._trial_start = now
            return self._enter(S.TRIAL, OtaReason.OK, "", now, fx)
        # DownloadDone, Verified, Staged, SmokePassed: one step forward.
        return self._advance(now, fx)

    def _advance(self, now: float, fx: list[Effect]) -> Reason:
        target = self._target()
        new = _NEXT[self.state]
        self._enter(new, OtaReason.OK, "", now, fx)
        if new is S.VERIFYING:
            fx.append(Verify(target))
        elif new is S.STAGED:
            fx.append(Stage(target))
        elif new is S.SMOKE_TESTING:
            fx.append(SmokeTest(target))
        elif not self.urgent_active:  # SWITCHING
            self._request_switch(fx)
        return OtaReason.OK

    def _on_start(self, crumb: Breadcrumb | None, fx: list[Effect]) -> Reason | None:
        if crumb is None:
            return None
        self.target, self.from_version = crumb.target, crumb.from_version
        if crumb.target.version == self.running.version and crumb.target.name == self.running.name:
            return self._finish(S.COMMITTED, OtaReason.OK, "committed before a restart", fx)
        where = f"the agent stopped in state {crumb.state.value}"
        fx.append(Discard(crumb.target))  # the last known good model runs already
        if crumb.state in (S.SWITCHING, S.TRIAL):
            return self._finish(S.REVERTED, OtaReason.CRASHED_IN_TRIAL, where, fx)
        if crumb.state is S.SMOKE_TESTING:
            return self._finish(S.REJECTED, OtaReason.CRASHED_IN_SMOKE, where, fx)
        return self._finish(S.REJECTED, OtaReason.INTERRUPTED, where, fx)

    def _on_stop(self, fx: list[Effect]) -> Reason | None:
        if self.state not in IN_PROGRESS:
            return None
        detail = f"the agent was stopped in state {self.state.value}; tried again at its next start"
        if self.state is S.TRIAL:
            return self._revert(OtaReason.STOPPED, detail, fx)
        return self._reject(OtaReason.STOPPED, detail, fx)

    def _on_desired(self, target: Target, now: float, fx: list[Effect]) -> Reason:
        if self.state in IN_PROGRESS:
            if target.package == self._target().package:
                return OtaReason.IN_PROGRESS
            detail = f"desired changed to {target.name} {target.version}"
            if self.state is S.TRIAL:
                self._revert(OtaReason.SUPERSEDED, detail, fx)
            else:
                self._reject(OtaReason.SUPERSEDED, detail, fx)
        if (target.name, target.version) == (self.running.name, self.running.version):
            return OtaReason.ALREADY_RUNNING
        if self._refused is not None:
            refused, retry_at = self._refused
            if refused.package == target.package and (retry_at is None or now < retry_at):
                return OtaReason.REFUSED_BEFORE
        self.target, self.from_version = target, self.running.version
        self._enter(S.DOWNLOADING, OtaReason.OK, "", now, fx)
        fx.append(StartDownload(target))
        return OtaReason.OK

    def _on_tick(self, now: float, fx: list[Effect]) -> Reason | None:
        if self.state is S.TRIAL:
            verdict = self._judge_trial(now, fx)
            if verdict is not None:
                return verdict
        if self.deadline is None or now < self.deadline:
            return None
        detail = (
            f"state {self.state.value} lasted past its {self.settings.deadline_s(self.state):g} s"
        )
        if self.state is S.TRIAL:
            assert self._trial is not None
            detail += f" with {self._trial.readings} of {self.settings.trial_readings} readings"
            return self._revert(OtaReason.DEADLINE, detail, fx)
        if self.state is S.SWITCHING and self.urgent_active:
            return self._reject(OtaReason.URGENT_ACTIVE, detail, fx)
        return self._reject(OtaReason.DEADLINE, detail, fx)

    def _judge_trial(self, now: float, fx: list[Effect]) -> Reason | None:
        assert self._trial is not None and self._previous is not None
        s = self.settings
        complete = self._trial.readings >= s.trial_readings and now - self._trial_start >= s.trial_s
        verdict = trial_verdict(self._trial, self._previous, s.trial, complete)
        if verdict is not None:
            return self._revert(verdict[0], verdict[1], fx)
        if not complete:
            return None
        target = self._target()
        fx.append(Commit(target))
        self.running = Running(target.name, target.version)
        self._refused = None
        detail = (
            f"{self._trial.readings} readings, p99 {self._trial.latency_p99_us:.0f} us, "
            f"{self._trial.urgent_events} urgent"
        )
        return self._finish(S.COMMITTED, OtaReason.OK, detail, fx)

    # --- moves ---

    def _request_switch(self, fx: list[Effect]) -> None:
        self._switch_requested = True
        fx.append(SwitchModel(self._target()))

    def _reject(self, reason: Reason, detail: str, fx: list[Effect]) -> Reason:
        fx.append(Discard(self._target()))
        self._switch_requested = False
        return self._finish(S.REJECTED, reason, detail, fx)

    def _revert(self, reason: Reason, detail: str, fx: list[Effect]) -> Reason:
        fx.append(Revert(self.running.version))
        fx.append(Discard(self._target()))
        return self._finish(S.REVERTED, reason, detail, fx)

    def _finish(self, state: OtaState, reason: Reason, detail: str, fx: list[Effect]) -> Reason:
        """End the update in a terminal ``state``; remember a refusal (rule 6)."""
        if state is not S.COMMITTED and reason is not OtaReason.SUPERSEDED:
            retry_at = self._now + self.settings.retry_after_s if reason in _RETRYABLE else None
            self._refused = (self._target(), retry_at)
        self._trial = self._previous = None
        fx.append(ClearBreadcrumb())
        return self._enter(state, reason, detail, self._now, fx)

    def _enter(
        self, state: OtaState, reason: Reason, detail: str, now: float, fx: list[Effect]
    ) -> Reason:
        target = self._target()
        self.state = state
        if state in IN_PROGRESS:
            self.deadline = now + self.settings.deadline_s(state)
            fx.append(WriteBreadcrumb(Breadcrumb(state, target, self.from_version)))
        else:
            self.deadline = None
        fx.append(Report(OtaTransition(state, reason, self.from_version, target.version, detail)))
        return reason

    def _target(self) -> Target:
        assert self.target is not None, "no update under way"
        return self.target
