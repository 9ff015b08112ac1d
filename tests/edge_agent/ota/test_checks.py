"""The OTA's pure decisions: compatibility, smoke verdict, trial verdict."""

from __future__ import annotations

import dataclasses
import doctest
import math
import sys
from typing import Any

import pytest

from edge_agent.ota import checks
from edge_agent.ota.checks import (
    ModelFigures,
    TrialSettings,
    TrialStats,
    compatibility,
    input_columns,
    smoke_verdict,
    trial_verdict,
)
from shared.features import SensorSpec
from shared.manifest import InputSpec, ModelManifest
from shared.reasons import OtaReason

pytestmark = pytest.mark.timeout(30)

SOURCE = ("temperature", "pressure", "vibration")


def test_doctests() -> None:
    result = doctest.testmod(checks, report=False)
    assert result.attempted and not result.failed


@pytest.fixture
def running(manifest_dict: dict[str, Any]) -> ModelManifest:
    return ModelManifest.from_dict(manifest_dict)  # bearing-fault 1.4.0, temperature + pressure


def with_sensors(m: ModelManifest, *sensors: SensorSpec) -> ModelManifest:
    return dataclasses.replace(m, input=InputSpec(sensors, m.input.window))


def test_a_newer_compatible_model_passes(running: ModelManifest) -> None:
    candidate = dataclasses.replace(running, version="1.5.0")
    assert compatibility(running, candidate, "0.1.0", SOURCE, allow_downgrade=False) is None


def test_agent_too_old(running: ModelManifest) -> None:
    candidate = dataclasses.replace(running, version="1.5.0", min_agent_version="0.2.0")
    verdict = compatibility(running, candidate, "0.1.0", SOURCE, allow_downgrade=False)
    assert verdict is not None and verdict[0] is OtaReason.AGENT_TOO_OLD
    assert "needs agent >= 0.2.0; this agent is 0.1.0" in verdict[1]


def test_a_sensor_the_source_lacks_is_incompatible(running: ModelManifest) -> None:
    rpm = SensorSpec("rpm", "1/min", 0.0, 10000.0, 1500.0)
    candidate = with_sensors(running, *running.input.sensors, rpm)
    verdict = compatibility(running, candidate, "0.1.0", SOURCE, allow_downgrade=False)
    assert verdict is not None and verdict[0] is OtaReason.INCOMPATIBLE_INPUT
    assert "['rpm']" in verdict[1] and "vibration" in verdict[1]


def test_a_sensor_in_another_unit_is_incompatible(running: ModelManifest) -> None:
    temp, pressure = running.input.sensors
    fahrenheit = dataclasses.replace(temp, unit="degF", min=-40.0, max=480.0, fallback=150.0)
    verdict = compatibility(
        running, with_sensors(running, fahrenheit, pressure), "0.1.0", SOURCE, False
    )
    assert verdict is not None and verdict[0] is OtaReason.INCOMPATIBLE_INPUT
    assert "'degF'" in verdict[1] and "'degC'" in verdict[1]


def test_another_order_or_subset_of_the_delivered_sensors_is_compatible(
    running: ModelManifest,
) -> None:
    temp = running.input.sensors[0]
    vibration = SensorSpec("vibration", "mm/s", 0.0, 50.0, 2.0)
    candidate = with_sensors(running, vibration, temp)  # a window of any length computes too
    candidate = dataclasses.replace(candidate, input=InputSpec(candidate.input.sensors, 500))
    assert compatibility(running, candidate, "0.1.0", SOURCE, allow_downgrade=False) is None
    assert input_columns(SOURCE, candidate.input.sensor_names) == (2, 0)


@pytest.mark.parametrize(
    ("version", "allow", "refused"),
    [
        ("1.3.9", False, True),
        ("1.3.9", True, False),
        (
            "1.4.0",
            False,
            False,
        ),  # the same version is no downgrade (the machine says already_running)
        ("2.0.0", False, False),
    ],
)
def test_downgrade_only_with_allow_downgrade(
    running: ModelManifest, version: str, allow: bool, refused: bool
) -> None:
    candidate = dataclasses.replace(running, version=version)
    verdict = compatibility(running, candidate, "0.1.0", SOURCE, allow_downgrade=allow)
    assert (verdict is not None and verdict[0] is OtaReason.DOWNGRADE) is refused


EXPECTED = [[0.9, 0.1], [0.2, 0.8]]


@pytest.mark.parametrize(
    ("scores", "latencies", "reason"),
    [
        (EXPECTED, [40.0, 50.0, 60.0], None),
        ([[0.9, 0.1], [0.2, 0.81]], [40.0], None),  # within atol
        ([[0.9, 0.1], [0.3, 0.7]], [40.0], OtaReason.SMOKE_FAILED),
        ([[0.9, 0.1], [math.nan, 0.8]], [40.0], OtaReason.SMOKE_FAILED),
        ([[0.9, 0.1]], [40.0], OtaReason.SMOKE_FAILED),  # a row missing
        (EXPECTED, [5000.0, 50.0, 60.0], None),  # one warm-up row does not decide
        (EXPECTED, [500.0, 500.0, 60.0], OtaReason.SMOKE_TOO_SLOW),
        ([[0.5, 0.5], [0.2, 0.8]], [500.0, 500.0], OtaReason.SMOKE_FAILED),  # wrong over slow
    ],
)
def test_smoke_verdict(
    scores: list[list[float]], latencies: list[float], reason: OtaReason | None
) -> None:
    result = smoke_verdict(scores, EXPECTED, 0.02, latencies, budget_us=100.0)
    assert result.reason is reason, result.detail


def test_smoke_verdict_without_a_budget_judges_scores_only() -> None:
    assert smoke_verdict(EXPECTED, EXPECTED, 0.0, [1e9]).reason is None


PREVIOUS = ModelFigures(readings=10_000, urgent_events=20, latency_p99_us=50.0)


def trial(n: int, latency: float = 45.0, every_urgent: int = 0, **bad: bool) -> TrialStats:
    stats = TrialStats(latency_ring=64)
    for i in range(n):
        urgent = every_urgent > 0 and i % every_urgent == 0
        stats.add(latency, finite=not bad.get("nan"), error=bool(bad.get("error")), urgent=urgent)
    return stats


@pytest.mark.parametrize(
    ("stats", "complete", "reason"),
    [
        (trial(200), True, None),
        (trial(200, latency=140.0), True, None),  # under 3 x 50 + 100
        (trial(200, latency=500.0), True, OtaReason.TRIAL_LATENCY),  # 10x slower
        (trial(200, latency=500.0), False, None),  # not judged before the window is complete
        (trial(200, every_urgent=100), True, None),  # 0.01 per reading: under 2 x 0.002 + 0.01
        (trial(200, every_urgent=10), True, OtaReason.TRIAL_URGENT_RATE),
        # A short trial: one urgent reading of three is a rate of 1/3, but one event alone
        # never fails; two do.
        (trial(3, every_urgent=3), True, None),
        (trial(3, every_urgent=2), True, OtaReason.TRIAL_URGENT_RATE),
        (trial(1, nan=True), False, OtaReason.TRIAL_NAN),
        (trial(1, error=True), False, OtaReason.TRIAL_ERRORS),
    ],
)
def test_trial_verdict(stats: TrialStats, complete: bool, reason: OtaReason | None) -> None:
    verdict = trial_verdict(stats, PREVIOUS, TrialSettings(), complete)
    assert (verdict[0] if verdict else None) is reason


def test_trial_stats_keep_fixed_memory_and_judge_the_last_latencies() -> None:
    stats = trial(64, latency=1000.0)
    size = sys.getsizeof(stats._latency._ring)
    for _ in range(10_000):
        stats.add(40.0, finite=True, error=False, urgent=False)
    assert sys.getsizeof(stats._latency._ring) == size
    assert stats.readings == 10_064 and stats.latency_p99_us == 40.0


def test_trial_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="latency_factor"):
        TrialSettings(latency_factor=math.nan)
    with pytest.raises(ValueError, match="latency_ring"):
        TrialSettings(latency_ring=0)


def test_one_slow_reading_does_not_fail_a_trial_but_a_slower_model_does() -> None:
    previous = ModelFigures(1000, 0, latency_p99_us=300.0, latency_p50_us=20.0)
    spiky = TrialStats(64)
    for i in range(50):
        spiky.add(3000.0 if i == 7 else 20.0, finite=True, error=False, urgent=False)
    assert spiky.latency_p99_us > 3 * 300.0 + 100.0  # the p99 alone would fail it
    assert trial_verdict(spiky, previous, TrialSettings(), complete=True) is None
    slow = TrialStats(64)
    for _ in range(50):
        slow.add(2000.0, finite=True, error=False, urgent=False)
    verdict = trial_verdict(slow, previous, TrialSettings(), complete=True)
    assert verdict is not None and verdict[0] is OtaReason.TRIAL_LATENCY
