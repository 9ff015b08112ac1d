"""The OTA state machine (issue 10 section 3): its table, every way an update ends, its deadlines."""

from __future__ import annotations

import ast
import doctest
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ota import machine
from edge_agent.ota.checks import ModelFigures
from edge_agent.ota.machine import (
    TRANSITIONS,
    AgentStarted,
    Breadcrumb,
    ClearBreadcrumb,
    DesiredReceived,
    Discard,
    DownloadDone,
    DownloadFailed,
    Effect,
    Event,
    OtaMachine,
    OtaProtocolError,
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
    Tick,
    TrialReading,
    UrgentEnded,
    UrgentStarted,
    Verified,
    Verify,
    WriteBreadcrumb,
)
from shared.ota import IN_PROGRESS, TERMINAL, OtaState
from shared.reasons import OtaReason, RejectReason

pytestmark = pytest.mark.timeout(30)

S = OtaState
OLD = Running("pump", "1.0.0")
NEW = Target("pump", "1.1.0", "a" * 64, "http://127.0.0.1:8080/m/pump/1.1.0")
NEWER = Target("pump", "1.2.0", "b" * 64, "http://127.0.0.1:8080/m/pump/1.2.0")
PREVIOUS = ModelFigures(readings=1000, urgent_events=5, latency_p99_us=50.0)
CFG = OtaSettings(trial_readings=20, trial_s=10.0, trial_deadline_s=100.0)


def started(now: float = 0.0, cfg: OtaSettings = CFG) -> OtaMachine:
    m = OtaMachine(OLD, cfg)
    m.handle(AgentStarted(None), now)
    return m


def reach(state: OtaState, now: float = 0.0, urgent: bool = False) -> OtaMachine:
    """A started machine in ``state`` (switching: with its switch asked for, unless ``urgent``)."""
    m = started(now)
    if urgent:
        m.handle(UrgentStarted(), now)
    path: list[tuple[OtaState, Event]] = [
        (S.DOWNLOADING, DesiredReceived(NEW)),
        (S.VERIFYING, DownloadDone()),
        (S.STAGED, Verified()),
        (S.SMOKE_TESTING, Staged()),
        (S.SWITCHING, SmokePassed()),
        (S.TRIAL, SwitchDone(PREVIOUS)),
    ]
    for _, event in path:
        if m.state is state:
            return m
        m.handle(event, now)
    if state is S.TRIAL:
        return m
    if state is S.COMMITTED:
        for i in range(CFG.trial_readings):
            m.handle(TrialReading(40.0), now + i)
        m.tick(now + CFG.trial_s)
    elif state is S.REVERTED:
        m.handle(TrialReading(40.0, finite=False), now)
    elif state is S.REJECTED:
        m = reach(S.DOWNLOADING, now)
        m.handle(DownloadFailed(OtaReason.DOWNLOAD_FAILED), now)
    assert m.state is state
    return m


def reports(effects: Iterable[Effect]) -> list[tuple[OtaState, str]]:
    return [
        (e.transition.state, e.transition.reason.value) for e in effects if isinstance(e, Report)
    ]


def kinds(step: Step) -> list[str]:
    return [type(e).__name__ for e in step.effects]


def test_doctests() -> None:
    result = doctest.testmod(machine, report=False)
    assert result.attempted and not result.failed


def test_happy_path_reports_every_state_and_commits() -> None:
    m = started()
    steps = [
        m.handle(DesiredReceived(NEW), 1.0),
        m.handle(DownloadDone(), 2.0),
        m.handle(Verified(), 3.0),
        m.handle(Staged(), 4.0),
        m.handle(SmokePassed(), 5.0),
        m.handle(SwitchDone(PREVIOUS), 6.0),
    ]
    assert [s.state for s in steps] == [
        S.DOWNLOADING,
        S.VERIFYING,
        S.STAGED,
        S.SMOKE_TESTING,
        S.SWITCHING,
        S.TRIAL,
    ]
    actions = [e for s in steps for e in s.effects if not isinstance(e, Report | WriteBreadcrumb)]
    assert actions == [
        StartDownload(NEW),
        Verify(NEW),
        Stage(NEW),
        SmokeTest(NEW),
        SwitchModel(NEW),
    ]
    for step in steps:  # breadcrumb first, so a crash while acting is seen at the next start
        assert step.effects[0] == WriteBreadcrumb(Breadcrumb(step.state, NEW, "1.0.0"))
        assert reports(step.effects) == [(step.state, "ok")]
    trial = [m.handle(TrialReading(45.0), 6.0 + i * 0.1) for i in range(20)]
    assert all(s.state is S.TRIAL and not s.effects for s in trial)  # 2 s of the 10 s window
    assert m.tick(15.9).effects == ()
    done = m.tick(16.0)
    assert done.state is S.COMMITTED and done.reason is OtaReason.OK
    assert kinds(done) == ["Commit", "ClearBreadcrumb", "Report"]
    report = done.effects[-1]
    assert isinstance(report, Report)
    assert report.transition.ota_fields()["from_version"] == "1.0.0"
    assert report.transition.to_version == "1.1.0"
    assert m.running == Running("pump", "1.1.0") and m.deadline is None
    again = m.handle(DesiredReceived(NEW), 17.0)
    assert (again.state, again.reason, again.effects) == (
        S.COMMITTED,
        OtaReason.ALREADY_RUNNING,
        (),
    )


def test_desired_naming_the_running_version_does_nothing() -> None:
    m = started()
    step = m.handle(DesiredReceived(Target("pump", "1.0.0", "c" * 64, "http://127.0.0.1/x")), 1.0)
    assert (step.state, step.reason, step.effects) == (S.IDLE, OtaReason.ALREADY_RUNNING, ())


def test_the_same_desired_again_mid_update_does_nothing() -> None:
    m = reach(S.STAGED)
    step = m.handle(DesiredReceived(NEW), 1.0)
    assert (step.state, step.reason, step.effects) == (S.STAGED, OtaReason.IN_PROGRESS, ())


REJECTIONS: list[tuple[OtaState, Event, str]] = [
    *[
        (S.DOWNLOADING, DownloadFailed(r, "x"), r.value)
        for r in (
            OtaReason.DOWNLOAD_FAILED,
            OtaReason.DOWNLOAD_TIMEOUT,
            OtaReason.TOO_LARGE,
            OtaReason.NO_SPACE,
        )
    ],
    *[(S.VERIFYING, Refused(r, "x"), r.value) for r in RejectReason],
    *[
        (S.VERIFYING, Refused(r, "x"), r.value)
        for r in (OtaReason.DOWNGRADE, OtaReason.INCOMPATIBLE_INPUT, OtaReason.AGENT_TOO_OLD)
    ],
    (S.STAGED, StageFailed("onnxruntime: invalid graph"), "load_failed"),
    (S.SMOKE_TESTING, SmokeFailed(OtaReason.SMOKE_FAILED, "x"), "smoke_failed"),
    (S.SMOKE_TESTING, SmokeFailed(OtaReason.SMOKE_TOO_SLOW, "x"), "smoke_too_slow"),
]


@pytest.mark.parametrize(("state", "event", "reason"), REJECTIONS, ids=lambda v: str(v)[:40])
def test_each_rejection_discards_the_package_and_keeps_the_running_model(
    state: OtaState, event: Event, reason: str
) -> None:
    m = reach(state)
    step = m.handle(event, 1.0)
    assert step.state is S.REJECTED and step.reason is not None and step.reason.value == reason
    assert kinds(step) == ["Discard", "ClearBreadcrumb", "Report"]
    assert step.effects[0] == Discard(NEW)
    assert reports(step.effects) == [(S.REJECTED, reason)]
    assert m.running == OLD and m.deadline is None


@pytest.mark.parametrize(
    ("reading", "immediate", "reason"),
    [
        (TrialReading(45.0, finite=False), True, "trial_nan"),
        (TrialReading(45.0, error=True), True, "trial_errors"),
        (TrialReading(500.0), False, "trial_latency"),  # 10x slower than the previous p99
        (TrialReading(45.0, urgent=True), False, "trial_urgent_rate"),
    ],
)
def test_each_trial_failure_reverts_to_the_previous_model(
    reading: TrialReading, immediate: bool, reason: str
) -> None:
    m = reach(S.TRIAL)
    if immediate:
        step = m.handle(reading, 0.0)
    else:  # judged when the window completes, not before
        steps = [m.handle(reading, 0.1 * i) for i in range(CFG.trial_readings)]
        assert all(s.state is S.TRIAL for s in steps)
        step = m.tick(CFG.trial_s)
    assert step.state is S.REVERTED and step.reason is not None and step.reason.value == reason
    assert step.effects[:2] == (Revert("1.0.0"), Discard(NEW))
    assert kinds(step)[2:] == ["ClearBreadcrumb", "Report"]
    assert m.running == OLD


def test_the_switch_waits_for_an_urgent_episode_to_end() -> None:
    m = reach(S.SMOKE_TESTING)
    m.handle(UrgentStarted(), 1.0)
    waiting = m.handle(SmokePassed(), 2.0)
    assert waiting.state is S.SWITCHING and SwitchModel(NEW) not in waiting.effects
    assert m.handle(UrgentStarted(), 3.0).effects == ()  # a second episode start changes nothing
    ended = m.handle(UrgentEnded(), 4.0)
    assert ended.effects == (SwitchModel(NEW),) and ended.state is S.SWITCHING
    assert m.handle(SwitchDone(PREVIOUS), 4.0).state is S.TRIAL


def test_an_urgent_episode_longer_than_the_wait_rejects_instead_of_switching() -> None:
    m = reach(S.SWITCHING, now=0.0, urgent=True)
    assert m.tick(CFG.switch_wait_s - 0.01).effects == ()
    step = m.tick(CFG.switch_wait_s)
    assert step.state is S.REJECTED and step.reason is OtaReason.URGENT_ACTIVE
    assert not any(isinstance(e, SwitchModel | Revert) for e in step.effects)


def test_after_switch_model_only_switch_done_is_taken() -> None:
    m = reach(S.SWITCHING)
    for event in (Tick(), DesiredReceived(NEWER), UrgentStarted(), UrgentEnded()):
        with pytest.raises(OtaProtocolError, match="SwitchDone must come next"):
            m.handle(event, 1.0)
    assert m.handle(SwitchDone(PREVIOUS), 1.0).state is S.TRIAL


def test_switch_done_without_switch_model_is_a_protocol_error() -> None:
    m = reach(S.SWITCHING, urgent=True)
    with pytest.raises(OtaProtocolError, match="no SwitchModel"):
        m.handle(SwitchDone(PREVIOUS), 1.0)


@pytest.mark.parametrize("state", sorted(IN_PROGRESS - {S.SWITCHING}))
def test_every_in_progress_state_ends_at_its_deadline(state: OtaState) -> None:
    m = reach(state, now=100.0)
    limit = CFG.deadline_s(state)
    assert m.tick(100.0 + limit - 0.001).state is state
    step = m.tick(100.0 + limit)
    expected = S.REVERTED if state is S.TRIAL else S.REJECTED
    assert (step.state, step.reason) == (expected, OtaReason.DEADLINE)
    assert ClearBreadcrumb() in step.effects and Discard(NEW) in step.effects


def test_switching_ends_at_its_deadline_only_while_it_waits() -> None:
    # Only a switch that waits (an urgent episode) can see its deadline: else
    # SwitchModel is asked for at once and SwitchDone must come next.
    m = reach(S.SWITCHING, now=100.0, urgent=True)
    assert m.deadline == 100.0 + CFG.switch_wait_s
    assert m.tick(100.0 + CFG.switch_wait_s).reason is OtaReason.URGENT_ACTIVE


def test_a_trial_without_enough_readings_is_never_committed() -> None:
    m = reach(S.TRIAL)
    for i in range(CFG.trial_readings - 1):
        m.handle(TrialReading(40.0), float(i))
    assert m.tick(CFG.trial_deadline_s - 1).state is S.TRIAL  # window time long past
    step = m.tick(CFG.trial_deadline_s)
    assert (step.state, step.reason) == (S.REVERTED, OtaReason.DEADLINE)


@pytest.mark.parametrize(
    "state", [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SMOKE_TESTING, S.SWITCHING, S.TRIAL]
)
def test_a_newer_desired_mid_update_abandons_it_and_starts_toward_the_new_one(
    state: OtaState,
) -> None:
    m = reach(state, urgent=state is S.SWITCHING)
    step = m.handle(DesiredReceived(NEWER), 5.0)
    ended = S.REVERTED if state is S.TRIAL else S.REJECTED
    assert reports(step.effects) == [(ended, "superseded"), (S.DOWNLOADING, "ok")]
    assert Discard(NEW) in step.effects and step.effects[-1] == StartDownload(NEWER)
    assert (Revert("1.0.0") in step.effects) is (state is S.TRIAL)
    assert step.state is S.DOWNLOADING and m.target == NEWER
    assert m.deadline == 5.0 + CFG.download_s


def test_a_desired_back_to_the_running_version_mid_update_abandons_it_and_rests() -> None:
    m = reach(S.VERIFYING)
    step = m.handle(DesiredReceived(Target("pump", "1.0.0", "c" * 64, "http://127.0.0.1/")), 1.0)
    assert (step.state, step.reason) == (S.REJECTED, OtaReason.ALREADY_RUNNING)
    assert reports(step.effects) == [(S.REJECTED, "superseded")]


def test_a_refused_package_is_not_tried_again_but_another_is() -> None:
    m = reach(S.SMOKE_TESTING)
    m.handle(SmokeFailed(OtaReason.SMOKE_FAILED), 1.0)
    again = m.handle(DesiredReceived(NEW), 1e6)
    assert (again.state, again.reason, again.effects) == (
        S.REJECTED,
        OtaReason.REFUSED_BEFORE,
        (),
    )
    rebuilt = Target("pump", "1.1.0", "d" * 64, NEW.manifest_url)  # same version, new package
    assert m.handle(DesiredReceived(rebuilt), 1e6).state is S.DOWNLOADING


def test_a_passing_failure_is_retried_after_retry_after_s() -> None:
    m = reach(S.DOWNLOADING)
    m.handle(DownloadFailed(OtaReason.DOWNLOAD_TIMEOUT), 10.0)
    soon = m.handle(DesiredReceived(NEW), 10.0 + CFG.retry_after_s - 1)
    assert soon.reason is OtaReason.REFUSED_BEFORE
    later = m.handle(DesiredReceived(NEW), 10.0 + CFG.retry_after_s)
    assert later.state is S.DOWNLOADING


@pytest.mark.parametrize(
    ("crumb_state", "state", "reason"),
    [
        (S.DOWNLOADING, S.REJECTED, "interrupted"),
        (S.VERIFYING, S.REJECTED, "interrupted"),
        (S.STAGED, S.REJECTED, "interrupted"),
        (S.SMOKE_TESTING, S.REJECTED, "crashed_in_smoke"),
        (S.SWITCHING, S.REVERTED, "crashed_in_trial"),
        (S.TRIAL, S.REVERTED, "crashed_in_trial"),
    ],
)
def test_a_breadcrumb_at_start_reports_where_the_agent_stopped(
    crumb_state: OtaState, state: OtaState, reason: str
) -> None:
    m = OtaMachine(OLD, CFG)
    step = m.handle(AgentStarted(Breadcrumb(crumb_state, NEW, "1.0.0")), 0.0)
    assert step.state is state and reports(step.effects) == [(state, reason)]
    assert kinds(step) == ["Discard", "ClearBreadcrumb", "Report"]  # no Revert: LKG runs
    assert m.handle(DesiredReceived(NEW), 1.0).reason is OtaReason.REFUSED_BEFORE
    later = m.handle(DesiredReceived(NEW), CFG.retry_after_s)  # only an interruption is retried
    assert (later.state is S.DOWNLOADING) is (reason == "interrupted")


@pytest.mark.parametrize("state", sorted(IN_PROGRESS))
def test_a_clean_stop_ends_the_update_so_the_next_start_tries_it_again(state: OtaState) -> None:
    m = reach(state, urgent=state is S.SWITCHING)
    step = m.handle(Stopped(), 1.0)
    ended = S.REVERTED if state is S.TRIAL else S.REJECTED
    assert reports(step.effects) == [(ended, "stopped")]
    assert "Discard" in kinds(step) and "ClearBreadcrumb" in kinds(step)
    assert ("Revert" in kinds(step)) is (state is S.TRIAL)
    assert m.handle(Stopped(), 2.0).effects == ()  # resting: nothing more
    # No breadcrumb is left, so a new start knows nothing of it and tries again.
    again = OtaMachine(OLD, CFG)
    again.handle(AgentStarted(None), 3.0)
    assert again.handle(DesiredReceived(NEW), 3.0).state is S.DOWNLOADING


def test_a_breadcrumb_naming_the_running_model_means_the_commit_went_through() -> None:
    m = OtaMachine(Running("pump", "1.1.0"), CFG)
    step = m.handle(AgentStarted(Breadcrumb(S.TRIAL, NEW, "1.0.0")), 0.0)
    assert (step.state, step.reason) == (S.COMMITTED, OtaReason.OK)
    assert kinds(step) == ["ClearBreadcrumb", "Report"]


def test_agent_started_comes_first_and_once() -> None:
    m = OtaMachine(OLD, CFG)
    with pytest.raises(OtaProtocolError, match="first event must be AgentStarted"):
        m.tick(0.0)
    m.handle(AgentStarted(None), 0.0)
    with pytest.raises(OtaProtocolError):
        m.handle(AgentStarted(None), 0.0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="trial_deadline_s"):
        OtaSettings(trial_s=60.0, trial_deadline_s=30.0)
    with pytest.raises(ValueError, match="download_s"):
        OtaSettings(download_s=0.0)


# --- the table ---------------------------------------------------------------------

SAMPLES: dict[type[Event], Event] = {
    AgentStarted: AgentStarted(None),
    DesiredReceived: DesiredReceived(NEWER),
    DownloadDone: DownloadDone(),
    DownloadFailed: DownloadFailed(OtaReason.DOWNLOAD_FAILED),
    Verified: Verified(),
    Refused: Refused(RejectReason.BAD_SIGNATURE),
    Staged: Staged(),
    StageFailed: StageFailed(),
    SmokePassed: SmokePassed(),
    SmokeFailed: SmokeFailed(OtaReason.SMOKE_FAILED),
    SwitchDone: SwitchDone(PREVIOUS),
    UrgentStarted: UrgentStarted(),
    UrgentEnded: UrgentEnded(),
    TrialReading: TrialReading(40.0),
    Tick: Tick(),
    Stopped: Stopped(),
}


def machine_in(state: OtaState, event: type[Event]) -> OtaMachine:
    if event is AgentStarted and state is S.IDLE:
        return OtaMachine(OLD, CFG)  # AgentStarted is taken once, first, by a fresh machine
    # In switching, the switch has been asked for unless an urgent episode holds it
    # back; SwitchDone is taken only in the first case, the rest only in the second.
    return reach(state, urgent=state is S.SWITCHING and event is not SwitchDone)


@pytest.mark.parametrize("state", list(OtaState))
@pytest.mark.parametrize("event", list(SAMPLES))
def test_every_pair_in_the_table_is_taken_and_every_other_raises(
    state: OtaState, event: type[Event]
) -> None:
    m = machine_in(state, event)
    allowed = TRANSITIONS.get((state, event))
    if allowed is None:
        with pytest.raises(OtaProtocolError, match=state.value):
            m.handle(SAMPLES[event], 1.0)
        assert m.state is state  # a refused event changes nothing
    else:
        assert m.handle(SAMPLES[event], 1.0).state in allowed


def test_the_table_names_only_known_states_and_events() -> None:
    assert {e for _, e in TRANSITIONS} == set(SAMPLES)
    assert all(to <= set(OtaState) and to for to in TRANSITIONS.values())
    for state in IN_PROGRESS:  # time can end every state in progress
        assert TRANSITIONS[state, Tick] - {state}


# --- property: nothing stays in progress past its deadline --------------------------

EVENTS: list[Event] = [
    DesiredReceived(NEW),
    DesiredReceived(NEWER),
    DesiredReceived(Target("pump", "1.0.0", "c" * 64, "http://127.0.0.1/")),
    DownloadDone(),
    DownloadFailed(OtaReason.NO_SPACE),
    Verified(),
    Refused(OtaReason.DOWNGRADE),
    Staged(),
    StageFailed(),
    SmokePassed(),
    SmokeFailed(OtaReason.SMOKE_TOO_SLOW),
    UrgentStarted(),
    UrgentEnded(),
    Tick(),
    TrialReading(40.0),
    TrialReading(40.0, urgent=True),
    TrialReading(900.0),
    TrialReading(40.0, finite=False),
    TrialReading(40.0, error=True),
    Stopped(),
]

FORWARD: list[Event] = [
    DesiredReceived(NEW),
    DownloadDone(),
    Verified(),
    Staged(),
    SmokePassed(),
    TrialReading(40.0),
]


def play(m: OtaMachine, event: Event, now: float, crumb: Breadcrumb | None) -> Breadcrumb | None:
    """Hand ``event`` to ``m`` as a well-behaved caller would; return the breadcrumb on disk."""
    try:
        step = m.handle(event, now)
    except OtaProtocolError:
        return crumb  # a pair outside the table: the caller's bug, refused loudly
    for effect in step.effects:
        if isinstance(effect, WriteBreadcrumb):
            crumb = effect.breadcrumb
        elif isinstance(effect, ClearBreadcrumb):
            crumb = None
        elif isinstance(effect, SwitchModel):  # rule 3: carried out at once
            done = m.handle(SwitchDone(PREVIOUS), now)
            crumb = next(e.breadcrumb for e in done.effects if isinstance(e, WriteBreadcrumb))
    assert (crumb is not None) == (m.state in IN_PROGRESS)
    assert crumb is None or crumb.state is m.state
    if isinstance(event, Tick) and m.deadline is not None:
        assert now < m.deadline, f"{m.state} outlived its deadline"
    return crumb


@settings(max_examples=150, deadline=None, database=None)
@given(st.data())
def test_any_events_then_a_late_tick_end_in_a_resting_state(data: st.DataObject) -> None:
    m = started(cfg=OtaSettings(trial_readings=3, trial_s=2.0, trial_deadline_s=100.0))
    crumb, now = None, 0.0
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        # Mostly an event the state takes, often one that moves it on (so runs reach
        # the trial and its end), sometimes any.
        taken = [e for e in EVENTS if (m.state, type(e)) in TRANSITIONS]
        onward = [e for e in FORWARD if (m.state, type(e)) in TRANSITIONS] or taken
        event = data.draw(
            st.sampled_from(onward) | st.sampled_from(taken) | st.sampled_from(EVENTS)
        )
        now += data.draw(st.floats(0.0, 2.0) | st.floats(0.0, 200.0))
        crumb = play(m, event, now, crumb)
    m.tick(now + 1e9)
    assert m.state in TERMINAL or m.state is S.IDLE
    assert m.deadline is None
    assert m.running in (OLD, Running("pump", "1.1.0"), Running("pump", "1.2.0"))


@pytest.mark.parametrize("module", ["machine", "checks"])
def test_the_machine_and_its_checks_do_no_io(module: str) -> None:
    path = Path(machine.__file__).with_name(f"{module}.py")
    imported = {
        ((node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name).split(
            "."
        )[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    pure = {"__future__", "collections", "dataclasses", "enum", "math", "typing", "numpy"}
    assert imported <= pure | {"shared", "edge_agent"}, imported


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d.pop("state"),
        lambda d: d.update(state="committed"),  # not a state in progress
        lambda d: d.update(state="nonsense"),
        lambda d: d["target"].pop("manifest_sha256"),
        lambda d: d["target"].update(allow_downgrade="yes"),
        lambda d: d.update(from_version=3),
        lambda d: d.update(target=[]),
    ],
)
def test_a_breadcrumb_not_written_by_the_agent_is_refused_with_what_to_do(
    spoil: Callable[[dict[str, Any]], object],
) -> None:
    raw = Breadcrumb(S.TRIAL, NEW, "1.0.0").to_dict()
    assert Breadcrumb.from_dict(json.loads(json.dumps(raw))) == Breadcrumb(S.TRIAL, NEW, "1.0.0")
    spoil(raw)
    with pytest.raises(ValueError, match=r"OTA breadcrumb: .*delete it"):
        Breadcrumb.from_dict(raw)


def test_a_signature_checker_that_could_not_run_is_retried_after_retry_after_s() -> None:
    m = reach(S.VERIFYING)
    step = m.handle(Refused(OtaReason.VERIFIER_FAILED, "the signature checker was killed"), 10.0)
    assert reports(step.effects) == [(S.REJECTED, "verifier_failed")]
    assert m.handle(DesiredReceived(NEW), 11.0).reason is OtaReason.REFUSED_BEFORE
    assert m.handle(DesiredReceived(NEW), 10.0 + CFG.retry_after_s).state is S.DOWNLOADING
