"""``edgeloop-sim bench flood`` end to end, small: every flood is answered or counted, JSON last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ModelPaths

PHASES = ("a_http_no_token", "b_large_telemetry", "c_oversized_telemetry", "d_invalid_json")


@pytest.mark.timeout(240)
def test_bench_flood_counts_every_flood_and_reports_both_processes(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "bench",
            "flood",
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--work-dir",
            str(tmp_path / "work"),
            "--http-clients",
            "2",
            "--http-body-mb",
            "2",
            "--messages",
            "20",
            "--payload-kb",
            "200",
            "--invalid-messages",
            "50",
            "--settle-s",
            "0.5",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "flood" and result["baseline_mb"] > 0
    assert result["broker_baseline_mb"] > 0
    for phase in PHASES:
        figures = result[phase]
        for key in ("peak_over_baseline_mb", "after_over_baseline_mb"):
            assert isinstance(figures[key], float), (phase, figures)
            assert isinstance(figures[f"broker_{key}"], float), (phase, figures)
    assert result["a_http_no_token"]["answered_401"] == 2
    assert result["b_large_telemetry"]["counted_invalid"] == 20
    assert result["c_oversized_telemetry"]["counted_invalid"] == 20
    assert result["d_invalid_json"]["counted_invalid"] == 50
