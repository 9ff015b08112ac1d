"""The urgent rule: once per episode, re-armed by a clear reading; hard limits at once."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.rules import Decision, UrgentRule
from shared.manifest import UrgentSpec

pytestmark = pytest.mark.timeout(30)

SENSORS = ("temperature", "vibration", "pressure")
NORMAL = np.array([70.0, 3.0, 6.0])
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "temperature": (None, 110.0),
    "pressure": (2.0, 9.0),
}


def rule(threshold: float = 0.8, k: int = 3, limits: bool = True) -> UrgentRule:
    return UrgentRule(UrgentSpec(threshold, k, dict(LIMITS) if limits else {}), 2, SENSORS)


def with_value(sensor: str, value: float) -> np.ndarray:
    raw = NORMAL.copy()
    raw[SENSORS.index(sensor)] = value
    return raw


def test_score_fires_after_k_consecutive_readings_once_per_episode() -> None:
    r = rule(k=3)
    got = [r.check(NORMAL, s) for s in (0.9, 0.95, 0.9, 0.99, 0.9, 0.85)]
    assert got[:2] == [None, None]
    assert got[2] == Decision("score", 0.9)
    assert got[3:] == [None, None, None]  # same episode: fired once


def test_score_run_is_reset_by_a_low_score() -> None:
    r = rule(k=3)
    got = [r.check(NORMAL, s) for s in (0.9, 0.9, 0.1, 0.9, 0.9)]
    assert got == [None] * 5
    assert r.check(NORMAL, 0.9) == Decision("score", 0.9)


def test_rearms_after_a_clear_reading() -> None:
    r = rule(k=2)
    assert r.check(NORMAL, 0.9) is None
    assert r.check(NORMAL, 0.9) is not None
    assert r.check(NORMAL, 0.9) is None
    assert r.check(NORMAL, 0.2) is None  # clear: re-arm
    assert r.check(NORMAL, 0.9) is None  # a new run starts from one
    assert r.check(NORMAL, 0.9) == Decision("score", 0.9)


def test_threshold_is_inclusive() -> None:
    r = rule(threshold=0.5, k=1)
    assert r.check(NORMAL, 0.5) == Decision("score", 0.5)


def test_hard_limit_max_fires_immediately_with_sensor_and_value() -> None:
    r = rule(k=5)
    d = r.check(with_value("temperature", 118.5), 0.1)
    assert d == Decision("hard_limit", 0.1, "temperature", 118.5)


def test_hard_limit_min_fires_immediately() -> None:
    r = rule(k=5)
    d = r.check(with_value("pressure", 1.5), 0.3)
    assert d == Decision("hard_limit", 0.3, "pressure", 1.5)


def test_hard_limit_once_per_episode_and_rearm() -> None:
    r = rule(k=5)
    hot = with_value("temperature", 120.0)
    assert r.check(hot, 0.0) is not None
    assert r.check(hot, 0.0) is None
    assert r.check(with_value("pressure", 12.0), 0.0) is None  # still urgent: same episode
    assert r.check(NORMAL, 0.0) is None
    assert r.check(hot, 0.0) is not None


def test_hard_limit_wins_over_score() -> None:
    r = rule(k=1)
    d = r.check(with_value("temperature", 130.0), 0.99)
    assert d is not None
    assert (d.rule, d.sensor) == ("hard_limit", "temperature")


def test_value_on_the_limit_is_not_beyond() -> None:
    r = rule()
    assert r.check(with_value("temperature", 110.0), 0.0) is None
    assert r.check(with_value("pressure", 2.0), 0.0) is None


@pytest.mark.parametrize("missing", [math.nan, math.inf, -math.inf])
def test_missing_values_never_breach(missing: float) -> None:
    r = rule()
    raw = np.full(len(SENSORS), missing)
    for _ in range(5):
        assert r.check(raw, 0.0) is None


def test_no_limits() -> None:
    r = rule(k=1, limits=False)
    assert r.check(np.array([1e9, 1e9, 1e9]), 0.0) is None
    assert r.check(NORMAL, 1.0) == Decision("score", 1.0)


def test_limit_on_unknown_sensor_is_refused() -> None:
    with pytest.raises(ValueError, match="oil_pressure"):
        UrgentRule(UrgentSpec(0.5, 1, {"oil_pressure": (None, 5.0)}), 2, SENSORS)


_VALUE = st.one_of(st.floats(-50.0, 200.0), st.just(math.nan), st.just(math.inf))


@given(
    k=st.integers(1, 4),
    stream=st.lists(
        st.tuples(st.floats(0.0, 1.0), _VALUE, _VALUE),
        max_size=80,
    ),
)
def test_never_fires_twice_without_a_clear_reading_between(
    k: int, stream: list[tuple[float, float, float]]
) -> None:
    r = rule(threshold=0.7, k=k)
    armed = True
    run = 0
    for score, temp, pressure in stream:
        raw = np.array([temp, 3.0, pressure])
        d = r.check(raw, score)
        # What a clear reading is, restated: no finite value beyond a limit, and fewer than
        # k high scores in a row.
        run = run + 1 if score >= 0.7 else 0
        breach = (math.isfinite(temp) and temp > 110.0) or (
            math.isfinite(pressure) and not 2.0 <= pressure <= 9.0
        )
        urgent = breach or run >= k
        if d is not None:
            assert armed, "fired twice in one episode"
            assert urgent
            assert (d.rule == "hard_limit") == breach
            armed = False
        elif not urgent:
            armed = True
        else:
            assert not armed, "an urgent reading while armed must fire"
