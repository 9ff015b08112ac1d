"""``edgeloop-sim bench drift`` with tiny settings: its JSON keys and sane numbers."""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest

from simulators.cli import main

TINY = [
    "bench",
    "drift",
    "--readings",
    "20000",
    "--stream-readings",
    "20000",
    "--streams-per-kind",
    "2",
    "--pre-drift",
    "500",
    "--horizon",
    "1000",
    "--kswin-readings",
    "2000",
]


def _last_json(out: str) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


@pytest.mark.timeout(180)
def test_bench_drift_reports_delays_and_false_alarms(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("river")
    assert main(TINY) == 0
    f = _last_json(capsys.readouterr().out)
    assert f["readings"] == 20000 and f["false_alarms"] >= 0
    assert f["false_alarms_per_million"] == f["false_alarms"] / 20000 * 1e6
    assert f["false_alarms_per_million_upper95"] > f["false_alarms_per_million"]
    assert 0 <= f["missed_1sigma"] <= 2
    assert f["missed_1sigma"] == 2 or 0 < f["delay_p95_readings_1sigma"] <= 1000
    assert set(f["kinds"]) == {
        "mean_shift_0.5",
        "mean_shift_1",
        "mean_shift_2",
        "variance_x2",
        "stuck",
        "recalibration",
    }
    for kind in f["kinds"].values():
        assert kind["streams"] == 2 and 0 <= kind["missed"] <= 2
    assert f["threshold_h"] > 0 and f["settings"]["batch"] == 50
    assert set(f["river"]) == {"ADWIN", "PageHinkley", "KSWIN"}
    for name, r in f["river"].items():
        assert r["default"] is not None, name
        assert r["stationary_readings"] > 0
        matched = r["matched"]
        if matched is not None:  # a setting with no more false alarms than ours
            assert matched["false_alarms"] <= r["our_false_alarms_there"]
            assert "delay_p95_readings_1sigma" in matched and "missed_1sigma" in matched


@pytest.mark.timeout(30)
def test_bench_drift_says_how_to_install_river(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_river(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "river" or name.startswith("river."):
            raise ImportError("No module named 'river'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_river)
    assert main(TINY) == 2
    err = capsys.readouterr().err
    assert "pip install 'edgeloop[bench]'" in err and "--no-river" in err
