"""``edgeloop-sim`` end to end: the demo, the edge benchmark and CSV generation."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.sensors import SENSOR_NAMES
from tests.conftest import ModelPaths


def _sim(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(60)
def test_generate_writes_the_csv_replay_format(tmp_path: Path) -> None:
    out = tmp_path / "machine.csv"
    done = _sim(
        "generate", "--out", str(out), "--readings", "50", "--seed", "3", cwd=tmp_path, timeout=50
    )
    assert done.returncode == 0, done.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 50
    assert set(rows[0]) == {"ts", *SENSOR_NAMES, "label"}
    again = tmp_path / "again.csv"
    _sim(
        "generate", "--out", str(again), "--readings", "50", "--seed", "3", cwd=tmp_path, timeout=50
    )
    assert again.read_text() == out.read_text()


@pytest.mark.timeout(60)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _sim(
        "generate",
        "--out",
        str(tmp_path / "x.csv"),
        "--drift",
        "mean_shift:nosuch:1:1",
        cwd=tmp_path,
        timeout=50,
    )
    assert done.returncode == 2
    assert "nosuch" in done.stderr and "Traceback" not in done.stderr


def test_replay_names_a_hub_url_without_its_scheme(tmp_path: Path) -> None:
    # It used to try the URL, fail, and say the hub "does not answer (Connection refused)".
    done = _sim("replay", str(tmp_path), "--hub", "127.0.0.1:8080", cwd=tmp_path, timeout=50)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "argument --hub: '127.0.0.1:8080' is not an http:// or https:// URL" in done.stderr
    assert "e.g. http://127.0.0.1:8080" in done.stderr


@pytest.mark.timeout(180)
def test_demo_runs_a_fleet_and_stops_cleanly(tmp_path: Path, model_packages: ModelPaths) -> None:
    models = model_packages.edge.parent.parent
    done = _sim(
        "demo",
        "--devices",
        "3",
        "--duration",
        "12",
        "--rate-hz",
        "20",
        "--summary-every",
        "2",
        "--models",
        str(models),
        "--work-dir",
        str(tmp_path / "demo"),
        cwd=tmp_path,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = [line for line in done.stdout.splitlines() if "devices connected" in line]
    assert summaries, done.stdout
    assert "devices connected 3/3" in summaries[-1]
    readings = re.search(r"readings (\d+)", summaries[-1])
    assert readings is not None and int(readings[1]) > 0, summaries[-1]
    assert "agents stopped: 3/3 exited cleanly" in done.stdout
    assert "hub stopped (exit 0)" in done.stdout
    found = re.search(r"read token in (\S+),", done.stdout)
    assert found is not None, done.stdout
    assert Path(found[1]).read_text().strip() not in done.stdout, "the token itself is not shown"
    admin = (Path(found[1]).parent / "admin-token").read_text().strip()
    assert admin not in done.stdout
    # The dashboard's URL is the demo's first line; the one-time link follows once the
    # hub is up, for the same URL.
    lines = done.stdout.splitlines()
    first = re.fullmatch(r"dashboard: (http://127\.0\.0\.1:\d+/)", lines[0])
    assert first is not None, lines[0]
    link = [line for line in lines if "sign in once with" in line]
    assert len(link) == 1 and f"sign in once with {first[1]}#code=" in link[0], link


@pytest.mark.timeout(240)
def test_bench_edge_prints_one_json_object_last(tmp_path: Path, model_packages: ModelPaths) -> None:
    models = model_packages.edge.parent.parent
    done = _sim(
        "bench",
        "edge",
        "--models",
        str(models),
        "--readings",
        "400",
        "--baseline-readings",
        "100",
        "--idle-seconds",
        "1",
        cwd=tmp_path,
        timeout=230,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("p50_us", "p99_us", "baseline_p99_us", "speedup_p99", "rss_mb", "idle_cpu_pct"):
        assert isinstance(result[key], float | int) and result[key] >= 0, key
    assert result["p50_us"] <= result["p99_us"] and result["rss_mb"] > 10
