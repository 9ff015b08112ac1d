"""Staged rollouts, pure part: cohorts, settling, gates, abort and rollback, commands."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.ota.rollout import (
    CohortFigures,
    DeviceReport,
    DeviceState,
    Gates,
    Rollback,
    Rollout,
    RolloutError,
    RolloutState,
    SetDesired,
    assign_cohorts,
    command,
    new_rollout,
    step,
)

pytestmark = pytest.mark.timeout(60)

OLD, NEW = ("m-edge", "1.0.0"), ("m-edge", "2.0.0")
FLEET = [f"pi-{i:02d}" for i in range(20)]


def _start(gates: Gates | None = None, percents: tuple[float, ...] = (5, 50, 100)) -> Rollout:
    r, actions = new_rollout(
        "r1", NEW, dict.fromkeys(FLEET, OLD), percents=percents, gates=gates or Gates(), now=0.0
    )
    assert actions == [SetDesired(r.cohorts[0])]
    return r


def _running(
    r: Rollout, devices: tuple[str, ...], figures: CohortFigures | None = None
) -> dict[str, DeviceReport]:
    return {d: DeviceReport(*NEW, figures=figures or CohortFigures()) for d in devices}


def test_cohorts_take_every_device_once_canary_first() -> None:
    cohorts = assign_cohorts(FLEET, [1, 10, 50, 100], "seed")
    assert [len(c) for c in cohorts] == [1, 1, 8, 10]
    assert sorted(d for c in cohorts for d in c) == sorted(FLEET)
    assert cohorts == assign_cohorts(list(reversed(FLEET)), [1, 10, 50, 100], "seed")
    assert cohorts != assign_cohorts(FLEET, [1, 10, 50, 100], "other seed")
    for bad in ([50, 10, 100], [10, 50], [0, 100], [10, 10, 100]):
        with pytest.raises(RolloutError):
            assign_cohorts(FLEET, bad, "s")


def test_a_rollout_advances_cohort_by_cohort_to_completed() -> None:
    r = _start()
    told = set(r.cohorts[0])
    for i in range(len(r.cohorts)):
        # Not settled yet: nothing moves.
        r, actions = step(r, {}, CohortFigures(), now=float(i * 10 + 1))
        assert actions == [] and r.cohort == i
        r, actions = step(r, _running(r, r.cohorts[i]), CohortFigures(), now=float(i * 10 + 2))
        if i + 1 < len(r.cohorts):
            assert actions == [SetDesired(r.cohorts[i + 1])]
            told |= set(r.cohorts[i + 1])
        else:
            assert actions == [] and r.state is RolloutState.COMPLETED
    assert told == set(FLEET)
    assert r.counts()["committed"] == len(FLEET)
    assert [d.what for d in r.decisions][-2:] == ["cohort_passed", "completed"]


def test_a_failed_canary_aborts_and_rolls_back_only_the_moved_devices() -> None:
    r = _start(Gates(max_failure_fraction=0.0))
    canary = r.cohorts[0]
    reports = {d: DeviceReport(*OLD, failed="smoke_failed") for d in canary}
    r, actions = step(r, reports, CohortFigures(), now=5.0)
    assert r.state is RolloutState.ABORTED
    assert actions == [Rollback(dict.fromkeys(canary, OLD))]
    assert all(r.devices[d] is DeviceState.ROLLED_BACK for d in canary)
    assert all(r.devices[d] is DeviceState.PENDING for d in FLEET if d not in canary)
    assert "1 failed" in r.decisions[-1].why or "failed" in r.decisions[-1].why
    # Finished: nothing more happens, and commands are refused.
    assert step(r, {}, CohortFigures(), 99.0) == (r, [])
    with pytest.raises(RolloutError, match="aborted"):
        command(r, "resume", 100.0)


def test_a_device_that_never_answers_times_out_and_counts_as_a_failure() -> None:
    r = _start(Gates(device_timeout_s=30.0, max_failure_fraction=0.0))
    r, actions = step(r, {}, CohortFigures(), now=29.0)
    assert actions == [] and r.state is RolloutState.RUNNING
    r, actions = step(r, {}, CohortFigures(), now=30.0)
    assert r.state is RolloutState.ABORTED
    assert isinstance(actions[0], Rollback)
    assert "1 timed out" in r.decisions[-1].why


def test_a_canary_whose_urgent_rate_rises_past_its_gate_is_rolled_back() -> None:
    gates = Gates(max_urgent_ratio=2.0, urgent_floor=0.001, soak_s=10.0, min_readings=100)
    r = _start(gates)
    canary = r.cohorts[0]
    noisy = CohortFigures(readings=1000, urgent_events=50)
    control = CohortFigures(readings=10_000, urgent_events=10)
    r, actions = step(r, _running(r, canary, noisy), control, now=1.0)
    assert actions == [] and r.settled_at == 1.0  # settled; soaking
    r, actions = step(r, _running(r, canary, noisy), control, now=11.0)
    assert r.state is RolloutState.ABORTED
    assert actions == [Rollback(dict.fromkeys(canary, OLD))]
    last = r.decisions[-1]
    assert "urgent_rate" in last.why and last.gates["urgent_rate"]["value"] == pytest.approx(0.05)


def test_the_disagreement_gate_and_a_gate_without_evidence() -> None:
    gates = Gates(max_disagreement_delta=0.01, min_readings=100, device_timeout_s=60.0)
    r = _start(gates)
    canary = r.cohorts[0]
    good = CohortFigures(readings=500, compared=500, disagreements=1)
    control = CohortFigures(readings=5000, compared=5000, disagreements=5)
    passed, actions = step(r, _running(r, canary, good), control, now=1.0)
    assert actions == [SetDesired(passed.cohorts[1])]
    bad = CohortFigures(readings=500, compared=500, disagreements=50)
    failed, _ = step(r, _running(r, canary, bad), control, now=1.0)
    assert failed.state is RolloutState.ABORTED and "disagreement" in failed.decisions[-1].why
    # Too few readings: wait, then fail closed once the deadline passes.
    thin = CohortFigures(readings=5, compared=5)
    waiting, actions = step(r, _running(r, canary, thin), control, now=1.0)
    assert actions == [] and waiting.state is RolloutState.RUNNING
    closed, _ = step(waiting, _running(r, canary, thin), control, now=62.0)
    assert closed.state is RolloutState.ABORTED and "no_evidence" in closed.decisions[-1].why


def test_pause_resume_abort_by_hand_and_the_state_survives_json() -> None:
    r = _start()
    r, _ = command(r, "pause", 1.0, "look at the canary")
    canary = r.cohorts[0]
    r, actions = step(r, _running(r, canary), CohortFigures(), now=2.0)
    assert (
        actions == [] and r.devices[canary[0]] is DeviceState.COMMITTED
    )  # converging, not advancing
    again = Rollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r
    r, _ = command(again, "resume", 3.0)
    r, actions = step(r, _running(r, canary), CohortFigures(), now=4.0)
    assert actions == [SetDesired(r.cohorts[1])]
    r, actions = command(r, "abort", 5.0, "operator said so")
    moved = set(r.cohorts[0]) | set(r.cohorts[1])
    assert actions == [Rollback(dict.fromkeys(moved, OLD))]
    assert r.decisions[-1].why == "aborted by hand: operator said so"
    with pytest.raises(RolloutError, match="not a rollout command"):
        command(_start(), "restart", 0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(FLEET),
            st.sampled_from(["commit", "fail", "silent"]),
            st.floats(0, 50),
        ),
        max_size=60,
    )
)
def test_devices_are_told_only_by_cohort_and_rolled_back_only_if_moved(
    events: list[tuple[str, str, float]],
) -> None:
    r = _start(Gates(device_timeout_s=20.0, max_failure_fraction=0.5))
    told: set[str] = set(r.cohorts[0])
    reports: dict[str, DeviceReport] = {}
    now = 0.0
    for device, what, dt in events:
        now += dt
        if what == "commit":
            reports[device] = DeviceReport(*NEW)
        elif what == "fail":
            reports[device] = DeviceReport(*OLD, failed="trial_nan")
        r, actions = step(r, reports, CohortFigures(), now)
        for a in actions:
            if isinstance(a, SetDesired):
                assert not told & set(a.devices)
                told |= set(a.devices)
            else:
                assert set(a.devices) <= told
        if r.finished:
            break
    assert all(s is DeviceState.PENDING for d, s in r.devices.items() if d not in told)
