"""``edgeloop-sim bench batch``: its figures come from interleaved rounds, and the
per-row loop's output equals ``batch score``'s for the same rows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from simulators.cli import main
from tests.conftest import ModelPaths


@pytest.mark.timeout(240)
def test_bench_batch_reports_medians_of_interleaved_rounds(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    models_dir = model_packages.heavy.parent.parent
    argv = ["bench", "batch", "--rows", "20000", "--per-row-rows", "2000", "--repeat", "2"]
    argv += ["--chunk-rows", "4096", "--models-dir", str(models_dir)]
    assert main([*argv, "--work-dir", str(tmp_path / "work")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "batch" and result["rows"] == 20_000 and result["repeat"] == 2
    for key, name in (
        ("e2e", "rows_per_s"),
        ("model", "model_only_rows_per_s"),
        ("per_row", "per_row_rows_per_s"),
    ):
        rounds = result["rounds"][key]
        assert len(rounds) == 2 and all(r > 0 for r in rounds)
        assert result[name] == pytest.approx(statistics.median(rounds), abs=0.1)
    ratio = result["rows_per_s"] / result["model_only_rows_per_s"]
    assert result["ratio_to_model_only"] == pytest.approx(ratio, abs=1e-3)
    assert result["urgent_rows"] > 0 and result["peak_rss_mb"] > 0
    # The naive loop does batch score's job: its rows equal the first rows of the result.
    work = tmp_path / "work"
    per_row = (work / "per-row.csv").read_text().splitlines()
    scored = (work / "scored.csv").read_text().splitlines()
    assert len(per_row) == 2001 and per_row == scored[:2001]
