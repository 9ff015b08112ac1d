"""``edgeloop-sim bench loop``: the closed loop on a tiny fleet of real agents, end to end,
and its pure parts (replaying an agent's machine, matching its readings, the figures).

The end-to-end test is also the loop's test on the embedded broker (issue 11 §5): drift
injected on two of four real agents -> drift events and ``GET /v1/drift`` -> fleet alarm
-> pipeline run recorded -> candidate registered with lineage -> canary rollout -> an
operator's promotion; and a sabotaged run the gate rejects. The bench's JSON carries what
it saw through the API at each stage.

Correctness only (every stage happens, the JSON holds sane values, the sabotaged run is
rejected), never speed: the figures are for people to read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.features import features_for_stream
from simulators.bench.loop import (
    LoopBenchConfig,
    agreement,
    disagreement,
    match_readings,
    replay_machine,
)
from simulators.drift import parse_drift
from simulators.machine import CLASSES
from tests.conftest import ModelPaths

KEYS = {
    "disagreement_before",
    "disagreement_after",
    "ground_truth_agreement_before",
    "ground_truth_agreement_after",
    "alarm_s",
    "retrain_s",
    "rollout_s",
    "worse_candidate_rejected",
    "devices",
    "drifted",
    "broker",
    "targets_met",
}
SENSORS = ("temperature", "vibration", "pressure", "current", "speed", "oil_temp", "flow")


@pytest.mark.timeout(300)
def test_loop_bench_runs_every_stage_and_the_gate_stops_the_worse_run(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    work = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "-m", "simulators", "bench", "loop",
            "--devices", "4",
            "--drifted-share", "0.5",
            "--rate-hz", "200",
            "--drift-at", "2100",
            "--drift-wait-s", "5",
            "--after-s", "2",
            "--models-dir", str(model_packages.edge.parent.parent),
            "--work-dir", str(work),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS, sorted(KEYS - set(result))
    context = f"{json.dumps(result)}\nlogs in {work}"
    assert result["errors"] == [], context
    assert (result["devices"], result["drifted"], result["broker"]) == (4, 2, "embedded")
    # The alarm named drifted devices (with detectors started on 2,000 readings rather
    # than the calibrated 30,000, an undrifted one may be named too); by the end of the
    # run it started, the API showed both drifted devices' drift events and states.
    assert result["alarm_devices_drifted"] >= 1 and result["alarm_streams"], context
    drifted = set(result["drifted_devices"])
    assert drifted <= set(result["drift_event_devices"]), context
    assert drifted <= set(result["drifting_in_api"]), context
    # The stages happened in order, after the drift began.
    assert 0 < result["alarm_s"] < result["retrain_s"] < result["rollout_s"], context
    assert result["retrain_run_state"] == "succeeded", context
    assert result["to_version"] != result["from_version"]
    lineage = result["candidate_lineage"]
    assert lineage["parent"] == result["from_version"], context
    assert lineage["pipeline_run"] == result["retrain_run"] and lineage["data_hash"], context
    assert "production" in result["promoted"], context
    assert result["production_after_promotion"] == [result["to_version"]], context
    # Both model versions scored drifted readings; each figure is a share.
    assert result["readings_before"] > 0 and result["readings_after"] > 0, context
    for key in KEYS:
        if key.startswith(("disagreement", "ground_truth")):
            assert 0.0 <= result[key] <= 1.0, (key, context)
    # No reading was lost, so every drifted reading was matched to its ground truth.
    assert result["ground_truth_matched"] == 1.0, context
    assert result["disagreement_after"] < result["disagreement_before"], context
    # The sabotaged run: rejected by the gate, production and registry untouched.
    assert result["worse_run_state"] == "rejected", context
    assert result["worse_candidate_rejected"] is True, context
    assert result["targets_met"] == {
        "disagreement_after<disagreement_before": True,
        "worse_candidate_rejected": True,
        "every_stage": True,
    }, context


@pytest.mark.timeout(30)
def test_a_replayed_machine_matches_what_the_agent_scored_reading_by_reading() -> None:
    drifts = (parse_drift("offset:pressure:300:5.0"),)
    values, labels = replay_machine(
        11, rate_hz=20.0, drifts=drifts, fault_rate=0.01, n=1000, sensors=SENSORS
    )
    again, labels_again = replay_machine(
        11, rate_hz=20.0, drifts=drifts, fault_rate=0.01, n=1000, sensors=SENSORS
    )
    assert np.array_equal(values, again, equal_nan=True) and np.array_equal(labels, labels_again)
    assert set(labels.tolist()) <= set(range(len(CLASSES)))
    # The agent's features (the same FeatureWindow): the first columns are the latest values.
    fallback = np.nanmedian(values, axis=0)
    feats = features_for_stream(values.astype(np.float64), 8, fallback)
    ok = match_readings(feats[:, : len(SENSORS)], values)
    assert ok.mean() > 0.99  # only a reading with every sensor missing fails
    # A lost reading shifts the rest: they no longer match, and are left out.
    shifted = np.delete(feats, 500, axis=0)
    ok = match_readings(shifted[:, : len(SENSORS)], values)
    assert ok[:500].mean() > 0.99 and ok[500:].mean() < 0.01
    # Another seed's machine does not match at all; more stored rows than replayed ones neither.
    other, _ = replay_machine(
        12, rate_hz=20.0, drifts=drifts, fault_rate=0.01, n=1000, sensors=SENSORS
    )
    assert not match_readings(feats[:, : len(SENSORS)], other).any()
    assert not match_readings(feats[:, : len(SENSORS)], values[:10])[10:].any()


@pytest.mark.timeout(10)
def test_disagreement_and_agreement_are_argmax_shares() -> None:
    edge = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], np.float32)
    heavy = np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    assert disagreement(edge, heavy) == pytest.approx(1 / 3)
    assert agreement(heavy, np.array([0, 0, 1])) == pytest.approx(2 / 3)
    empty = np.empty((0, 3), np.float32)
    assert disagreement(empty, empty) is None and agreement(empty, np.empty(0, np.int64)) is None


@pytest.mark.timeout(10)
def test_settings_that_cannot_work_are_refused_with_the_option_named() -> None:
    assert LoopBenchConfig(devices=50).drifted == 15
    assert LoopBenchConfig(devices=2, drifted_share=0.1).drifted == 1
    with pytest.raises(ValueError, match=r"--drift-at \(1500\) must come after"):
        LoopBenchConfig(drift_at=1500)
    with pytest.raises(ValueError, match=r"--drifted-share must be in \(0, 1\]"):
        LoopBenchConfig(drifted_share=0.0)
