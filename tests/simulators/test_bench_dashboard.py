"""``edgeloop-sim bench dashboard``: a short run on a small seeded fleet (the figures
are the benchmark's to report, not the test's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from simulators.cli import main
from tests.brokers import require_tool
from tests.conftest import ModelPaths

pytestmark = [pytest.mark.timeout(120), pytest.mark.browser]


def test_bench_dashboard_prints_its_figures_as_one_json_object_last(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = require_tool(shutil.which("chromium"), "chromium", "the browser tests")
    models = tmp_path / "models"
    shutil.copytree(model_packages.edge.parent.parent, models)
    argv = ["bench", "dashboard", "--devices", "30", "--runs", "1", "--chromium", chromium]
    assert main([*argv, "--models-dir", str(models)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "dashboard" and result["devices"] == 30 and result["runs"] == 1
    assert len(result["render_ms"]) == 1 and result["render_ms_p50"] > 0
    assert result["data_in_page_ms_p50"] <= result["render_ms_p50"]
    assert isinstance(result["meets_target"], bool) and result["target_ms"] == 1000.0


def test_bench_dashboard_names_a_missing_browser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "dashboard", "--chromium", "/nonexistent/chromium"]) == 2
    err = capsys.readouterr().err
    assert "--chromium /nonexistent/chromium" in err and "apt-get install -y chromium" in err
