"""``edgeloop-sim bench urgent``: events per fault episode for settings of the rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulators.bench.urgent import measure
from simulators.cli import main


def test_measure_attributes_events_to_episodes_and_counts_false_alarms() -> None:
    fired = np.zeros(20_000, dtype=bool)
    fired[[105, 110, 300, 9000]] = True  # 2 in the first fault, 1 just after the second
    figures = measure(fired, [(100, 150, 1.0), (250, 295, 0.5), (5000, 5050, 0.2)], window=10)
    assert figures["detected_share"] == round(2 / 3, 3)
    assert figures["events_per_detected_episode"] == 1.5 and figures["max_events_per_episode"] == 2
    assert figures["multi_event_share"] == 0.5 and figures["mean_delay_readings"] == 27.5
    normal = 20_000 - (60 + 55 + 60)
    assert figures["false_alarms_per_10k"] == round(1 / normal * 1e4, 3)


@pytest.mark.timeout(180)
def test_bench_urgent_compares_settings_with_the_old_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "urgent", "--train-readings", "4000", "--test-readings", "12000"]
    assert main([*argv, "--episodes", "24", "--settings", "2:10"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "urgent" and result["settings"] == ["1:1", "2:10"]
    assert result["episodes"] == 24
    for kind in ("unsupervised", "labelled"):
        old, new = result["models"][kind]["1:1"], result["models"][kind]["2:10"]
        assert old["detected_share"] > 0.5, (kind, old)
        assert 1.0 <= new["events_per_detected_episode"] <= old["events_per_detected_episode"]
        assert new["false_alarms_per_10k"] <= old["false_alarms_per_10k"]
