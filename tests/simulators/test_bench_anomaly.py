"""``edgeloop-sim bench anomaly``: the anomaly candidates measured on simulated faults."""

from __future__ import annotations

import json

import pytest

from simulators.cli import main


@pytest.mark.timeout(120)
def test_bench_anomaly_measures_every_candidate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "anomaly", "--devices", "4", "--readings-per-device", "800"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)  # strict JSON: no NaN for a class the holdout lacks
    assert figures["budget"] == 1e-4 and figures["train_normal_rows"] > 0
    for name in ("mahalanobis", "autoencoder", "autoencoder_wide", "isolation_forest"):
        f = figures[name]
        assert 0.0 <= f["false_alarm_rate"] <= 1.0
        assert 0.5 <= f["auc_urgent_vs_normal"] <= 1.0, (name, f)
        assert f["urgent_recall"] is None or 0.0 <= f["urgent_recall"] <= 1.0
    # The candidates with MatMuls are quantized and gated like the shipped models.
    for name in ("mahalanobis", "autoencoder", "autoencoder_wide"):
        assert figures[name]["int8_fp32_agreement"] >= 0.95, figures[name]
    assert "int8_fp32_agreement" not in figures["isolation_forest"]
