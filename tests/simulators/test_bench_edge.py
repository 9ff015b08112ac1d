"""``edgeloop-sim bench edge`` end to end, small: it runs and its JSON holds together.

Correctness only (exit status, the JSON contract, figures consistent with one
another); the speed figures are the benchmark's to report, never a test's to assert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ModelPaths

KEYS = {
    "p50_us",
    "p99_us",
    "baseline_p99_us",
    "speedup_p99",
    "rss_mb",
    "idle_cpu_pct",
    "paced_p50_us",
    "paced_p99_us",
    "process_p99_us",
    "baseline_process_p99_us",
    "baseline_agreement",
    "timed_span",
    "outbox",
    "outbox_messages",
    "broker",
    "load_avg_1m_before",
    "cpu",
    "any_cpu_p99_us",
    "baseline_one_cpu_p99_us",
    "baseline_any_cpu_p99_us",
}


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators", "bench", "edge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


@pytest.mark.timeout(180)
def test_bench_edge_reports_consistent_figures(model_packages: ModelPaths, tmp_path: Path) -> None:
    done = _bench(
        "--models",
        str(model_packages.edge.parent.parent),
        "--readings",
        "400",
        "--baseline-readings",
        "200",
        "--paced-readings",
        "40",
        "--paced-rate-hz",
        "400",
        "--idle-seconds",
        "1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.keys() >= KEYS, KEYS - result.keys()
    assert result["readings"] == 400 and result["paced_readings"] == 40
    assert 0 < result["p50_us"] <= result["p99_us"]
    assert 0 < result["paced_p50_us"] <= result["paced_p99_us"]
    assert result["baseline_p99_us"] > 0
    assert result["speedup_p99"] == pytest.approx(
        result["baseline_p99_us"] / result["p99_us"], rel=0.01
    )
    assert result["baseline_agreement"] >= 0.99  # the baseline is the same MLP
    # The baseline ran on one CPU and on any; its figures are the better run's.
    assert result["baseline_p99_us"] == min(
        result["baseline_one_cpu_p99_us"], result["baseline_any_cpu_p99_us"]
    )
    assert 0 < result["any_cpu_p50_us"] <= result["any_cpu_p99_us"]
    assert 0 < result["any_cpu_paced_p50_us"] <= result["any_cpu_paced_p99_us"]
    # As edgeloop-agent --cpu auto picks: one of this process's CPUs.
    assert result["cpu"] in os.sched_getaffinity(0)
    assert result["rss_mb"] > 0 and result["idle_cpu_pct"] >= 0
    # The agent's default outbox, written by its link thread while it was timed:
    # 800 readings in batches of 50 at least.
    assert result["outbox"] == "disk" and result["outbox_messages"] >= 16
    assert result["broker"] in ("mosquitto", "embedded")
    assert result["model"].endswith("machine-edge/1.1.0")


@pytest.mark.timeout(180)
def test_bench_edge_without_a_broker_times_the_disk_outbox_alone(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    done = _bench(
        "--models",
        str(model_packages.edge.parent.parent),
        "--readings",
        "400",
        "--baseline-readings",
        "200",
        "--paced-readings",
        "0",
        "--broker",
        "none",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["broker"] == "none" and result["outbox"] == "disk"
    assert result["outbox_messages"] >= 16  # written, though nothing was sent
    assert 0 < result["p50_us"] <= result["p99_us"] and result["baseline_p99_us"] > 0
    assert "rss_mb" not in result  # no agent process ran


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("option", "value"),
    [("--readings", "0"), ("--paced-rate-hz", "0"), ("--paced-readings", "-1")],
)
def test_bench_edge_refuses_out_of_range_options(option: str, value: str, tmp_path: Path) -> None:
    done = _bench(option, value, cwd=tmp_path)
    assert done.returncode == 2
    assert option in done.stderr and repr(value) in done.stderr
