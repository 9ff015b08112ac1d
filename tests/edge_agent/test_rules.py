"""The urgent rule: one episode per cause, each firing once at its start and re-armed when clear."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.rules import Decision, UrgentRule
from shared import urgent as rules
from shared.manifest import UrgentSpec

pytestmark = pytest.mark.timeout(30)

SENSORS = ("temperature", "vibration", "pressure")
NORMAL = np.array([70.0, 3.0, 6.0])
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "temperature": (None, 110.0),
    "pressure": (2.0, 9.0),
}


def rule(threshold: float = 0.8, k: int = 3, limits: bool = True, release: int = 1) -> UrgentRule:
    spec = UrgentSpec(threshold, k, dict(LIMITS) if limits else {}, release)
    return UrgentRule(spec, 2, SENSORS)


def with_values(**values: float) -> np.ndarray:
    raw = NORMAL.copy()
    for sensor, value in values.items():
        raw[SENSORS.index(sensor)] = value
    return raw


def hot(temperature: float) -> Decision:
    return Decision("hard_limit", 0.0, "temperature", temperature)


def test_docstring_examples() -> None:
    result = doctest.testmod(rules, report=False)
    assert result.attempted >= 8 and result.failed == 0


def test_score_fires_after_k_consecutive_readings_once_per_episode() -> None:
    r = rule(k=3)
    got = [r.check(NORMAL, s) for s in (0.9, 0.95, 0.9, 0.99, 0.9, 0.85)]
    assert got[:2] == [(), ()]
    assert got[2] == (Decision("score", 0.9),)
    assert got[3:] == [(), (), ()]  # same episode: fired once


def test_score_run_is_reset_by_a_low_score() -> None:
    r = rule(k=3)
    got = [r.check(NORMAL, s) for s in (0.9, 0.9, 0.1, 0.9, 0.9)]
    assert got == [()] * 5
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)


def test_score_rearms_when_the_score_drops_below_threshold() -> None:
    r = rule(k=2)
    assert r.check(NORMAL, 0.9) == ()
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)
    assert r.check(NORMAL, 0.9) == ()
    assert r.check(NORMAL, 0.2) == ()  # below: the episode ends
    assert r.check(NORMAL, 0.9) == ()  # a new run starts from one
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)


def test_release_keeps_a_flickering_score_in_one_episode() -> None:
    # A fault whose score hovers at the threshold: with release 1 every crossing
    # is a new event; with release 3 the dips of one or two readings are not.
    flicker = [0.9, 0.7, 0.85, 0.6, 0.7, 0.9, 0.79, 0.95, 0.5, 0.81]
    assert sum(bool(rule(k=1).check(NORMAL, s)) for s in flicker) == 5
    r = rule(k=1, release=3)
    assert [t for t, s in enumerate(flicker) if r.check(NORMAL, s)] == [0]
    # Three lows in a row end it; the next high score starts a new episode.
    assert [r.check(NORMAL, s) for s in (0.1, 0.2, 0.3)] == [(), (), ()]
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)


def test_release_counts_low_readings_in_a_row() -> None:
    r = rule(k=2, release=2)
    assert [bool(r.check(NORMAL, s)) for s in (0.9, 0.9)] == [False, True]
    # Low, high, low, high: never two lows in a row, so the episode goes on.
    assert [r.check(NORMAL, s) for s in (0.1, 0.9, 0.1, 0.9, 0.9)] == [()] * 5
    assert [r.check(NORMAL, s) for s in (0.1, 0.1)] == [(), ()]  # ended
    # Re-armed: a new episode needs k highs in a row again.
    assert [bool(r.check(NORMAL, s)) for s in (0.9, 0.1, 0.9, 0.9)] == [False] * 3 + [True]


def test_a_missing_score_neither_counts_nor_breaks_a_run() -> None:
    r = rule(k=2, release=2)
    assert r.check(NORMAL, 0.9) == ()
    assert r.check(NORMAL, math.nan) == ()  # the run of highs is not broken ...
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)  # ... nor counted
    assert [r.check(NORMAL, s) for s in (0.1, math.nan, math.nan)] == [(), (), ()]
    assert r.check(NORMAL, 0.9) == ()  # one low, then gaps: still the same episode
    assert [r.check(NORMAL, s) for s in (0.1, math.nan, 0.1, 0.9)] == [(), (), (), ()]
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)


def test_threshold_is_inclusive() -> None:
    r = rule(threshold=0.5, k=1)
    assert r.check(NORMAL, 0.5) == (Decision("score", 0.5),)


def test_hard_limit_max_fires_immediately_with_sensor_and_value() -> None:
    r = rule(k=5)
    assert r.check(with_values(temperature=118.5), 0.1) == (
        Decision("hard_limit", 0.1, "temperature", 118.5),
    )


def test_hard_limit_min_fires_immediately() -> None:
    r = rule(k=5)
    assert r.check(with_values(pressure=1.5), 0.3) == (
        Decision("hard_limit", 0.3, "pressure", 1.5),
    )


def test_hard_limit_once_per_episode_and_rearmed_back_inside() -> None:
    r = rule(k=5)
    assert r.check(with_values(temperature=120.0), 0.0) == (hot(120.0),)
    assert r.check(with_values(temperature=125.0), 0.0) == ()  # same episode
    assert r.check(with_values(temperature=100.0), 0.0) == ()  # back inside: re-armed
    assert r.check(with_values(temperature=121.0), 0.0) == (hot(121.0),)


def test_a_breach_on_another_sensor_during_a_limit_episode_fires() -> None:
    r = rule(k=5)
    assert r.check(with_values(temperature=120.0), 0.0) == (hot(120.0),)
    assert r.check(with_values(temperature=120.0, pressure=12.0), 0.0) == (
        Decision("hard_limit", 0.0, "pressure", 12.0),
    )
    # Pressure back inside re-arms pressure only: temperature is still in its episode.
    assert r.check(with_values(temperature=120.0), 0.0) == ()
    assert r.check(with_values(temperature=120.0, pressure=1.0), 0.0) == (
        Decision("hard_limit", 0.0, "pressure", 1.0),
    )


def test_a_breach_during_a_score_episode_fires() -> None:
    r = rule(k=2)
    assert r.check(NORMAL, 0.9) == ()
    assert r.check(NORMAL, 0.9) == (Decision("score", 0.9),)
    assert r.check(with_values(pressure=9.5), 0.95) == (
        Decision("hard_limit", 0.95, "pressure", 9.5),
    )
    assert r.check(with_values(pressure=9.5), 0.95) == ()  # both episodes go on


def test_a_score_episode_during_a_breach_fires() -> None:
    r = rule(k=2)
    assert r.check(with_values(temperature=130.0), 0.9) == (
        Decision("hard_limit", 0.9, "temperature", 130.0),
    )
    assert r.check(with_values(temperature=130.0), 0.9) == (Decision("score", 0.9),)


def test_causes_starting_together_all_fire_most_severe_first() -> None:
    r = rule(k=1)
    raw = with_values(temperature=130.0, pressure=0.5)
    assert r.check(raw, 0.99) == (
        Decision("hard_limit", 0.99, "temperature", 130.0),
        Decision("hard_limit", 0.99, "pressure", 0.5),
        Decision("score", 0.99),
    )
    assert r.check(raw, 0.99) == ()


def test_the_score_ending_does_not_rearm_a_limit() -> None:
    r = rule(k=1)
    assert len(r.check(with_values(temperature=130.0), 0.9)) == 2
    assert r.check(with_values(temperature=130.0), 0.1) == ()  # score ends; limit goes on
    assert r.check(with_values(temperature=130.0), 0.9) == (Decision("score", 0.9),)


def test_value_on_the_limit_is_not_beyond() -> None:
    r = rule()
    assert r.check(with_values(temperature=110.0), 0.0) == ()
    assert r.check(with_values(pressure=2.0), 0.0) == ()
    assert r.check(with_values(pressure=9.0), 0.0) == ()


@pytest.mark.parametrize("missing", [math.nan, math.inf, -math.inf])
def test_missing_values_never_breach(missing: float) -> None:
    r = rule()
    raw = np.full(len(SENSORS), missing)
    for _ in range(5):
        assert r.check(raw, 0.0) == ()


@pytest.mark.parametrize("missing", [math.nan, math.inf, -math.inf])
def test_a_missing_value_does_not_end_a_limit_episode(missing: float) -> None:
    # An unseen sensor is not known to be back inside: a dropout in the middle of
    # an overheat must not make it fire again.
    r = rule()
    assert r.check(with_values(temperature=120.0), 0.0) == (hot(120.0),)
    assert r.check(with_values(temperature=missing), 0.0) == ()
    assert r.check(with_values(temperature=120.0), 0.0) == ()
    assert r.check(with_values(temperature=100.0), 0.0) == ()
    assert r.check(with_values(temperature=120.0), 0.0) == (hot(120.0),)


def test_no_limits() -> None:
    r = rule(k=1, limits=False)
    assert r.check(np.array([1e9, 1e9, 1e9]), 0.0) == ()
    assert r.check(NORMAL, 1.0) == (Decision("score", 1.0),)


def test_limit_on_unknown_sensor_is_refused() -> None:
    with pytest.raises(ValueError, match="oil_pressure"):
        UrgentRule(UrgentSpec(0.5, 1, {"oil_pressure": (None, 5.0)}), 2, SENSORS)


# -- properties: the rule restated per cause, episode by episode ------------------------------

THRESHOLD = 0.7
_VALUE = st.one_of(
    st.floats(-50.0, 200.0),
    st.sampled_from([2.0, 9.0, 110.0, math.nan, math.inf, -math.inf]),
)
_SCORE = st.one_of(st.floats(0.0, 1.0), st.just(THRESHOLD))
_STREAM = st.lists(st.tuples(_SCORE, _VALUE, _VALUE), max_size=80)


def _limit_starts(values: list[float], lo: float, hi: float) -> list[int]:
    """Readings where a limit episode starts: a finite value beyond, where the last
    finite value before it (missing ones skipped) was inside or there was none."""
    starts, was_beyond = [], False
    for t, v in enumerate(values):
        if not math.isfinite(v):
            continue
        is_beyond = not lo <= v <= hi
        if is_beyond and not was_beyond:
            starts.append(t)
        was_beyond = is_beyond
    return starts


def _score_starts(scores: list[float], k: int) -> list[int]:
    """Readings that complete a window of k high scores not preceded by a high one."""
    high = [s >= THRESHOLD for s in scores]
    return [
        t
        for t in range(k - 1, len(scores))
        if all(high[t - k + 1 : t + 1]) and (t < k or not high[t - k])
    ]


def _fire_log(k: int, stream: list[tuple[float, float, float]]) -> list[tuple[int, Decision]]:
    r = rule(threshold=THRESHOLD, k=k)
    return [
        (t, d)
        for t, (score, temp, pressure) in enumerate(stream)
        for d in r.check(np.array([temp, 3.0, pressure]), score)
    ]


@given(k=st.integers(1, 4), stream=_STREAM)
def test_every_cause_fires_exactly_once_at_the_start_of_each_episode(
    k: int, stream: list[tuple[float, float, float]]
) -> None:
    log = _fire_log(k, stream)
    scores = [s for s, _, _ in stream]
    temps = [t for _, t, _ in stream]
    pressures = [p for _, _, p in stream]
    by_cause: dict[str | None, list[int]] = {"temperature": [], "pressure": [], None: []}
    for t, d in log:
        by_cause[d.sensor].append(t)
        if d.rule == "hard_limit":
            assert d.value == stream[t][1 if d.sensor == "temperature" else 2]
        assert d.score == stream[t][0]
    assert by_cause["temperature"] == _limit_starts(temps, -math.inf, 110.0)
    assert by_cause["pressure"] == _limit_starts(pressures, 2.0, 9.0)
    assert by_cause[None] == _score_starts(scores, k)


@given(k=st.integers(1, 4), stream=_STREAM)
def test_causes_are_independent_and_reported_most_severe_first(
    k: int, stream: list[tuple[float, float, float]]
) -> None:
    log = _fire_log(k, stream)
    # What fires for one cause does not depend on the others: the same stream with
    # every other input held normal fires that cause on the same readings.
    alone = {
        "temperature": [(s, t, 6.0) for s, t, _ in stream],
        "pressure": [(s, 70.0, p) for s, _, p in stream],
    }
    for sensor, only in alone.items():
        mine = [(t, d) for t, d in _fire_log(k, only) if d.sensor == sensor]
        assert mine == [(t, d) for t, d in log if d.sensor == sensor]
    quiet = [(s, 70.0, 6.0) for s, _, _ in stream]
    assert _fire_log(k, quiet) == [(t, d) for t, d in log if d.rule == "score"]
    # On one reading: temperature, then pressure (the manifest's order), then the score.
    rank = {"temperature": 0, "pressure": 1, None: 2}
    for t in {t for t, _ in log}:
        order = [rank[d.sensor] for u, d in log if u == t]
        assert order == sorted(order) and len(set(order)) == len(order)


_HOVER = st.one_of(
    st.floats(0.0, 1.0),
    st.sampled_from([THRESHOLD, THRESHOLD - 0.01, THRESHOLD + 0.01, math.nan]),
)


def _hysteresis_starts(scores: list[float], k: int, release: int) -> list[int]:
    """Where score events start, restated: drop the missing scores; cut the rest at
    every run of ``release`` or more lows; in each piece, the first reading that
    ends ``k`` highs in a row."""
    seen = [(t, s >= THRESHOLD) for t, s in enumerate(scores) if not math.isnan(s)]
    starts: list[int] = []
    run = lows = 0
    fired = False
    for t, high in seen:
        lows = 0 if high else lows + 1
        if lows >= release:
            fired = False  # a cut: the next piece begins
        run = run + 1 if high else 0
        if run >= k and not fired:
            starts.append(t)
            fired = True
    return starts


@given(k=st.integers(1, 4), release=st.integers(1, 4), scores=st.lists(_HOVER, max_size=120))
def test_score_events_start_once_per_episode_with_release(
    k: int, release: int, scores: list[float]
) -> None:
    r = rule(threshold=THRESHOLD, k=k, limits=False, release=release)
    got = [t for t, s in enumerate(scores) if r.check(NORMAL, s)]
    assert got == _hysteresis_starts(scores, k, release)
