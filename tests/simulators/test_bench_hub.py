"""``edgeloop-sim bench hub`` end to end, small: it runs, cleans up and loses nothing.

Correctness only (exit status, the JSON contract, nothing lost, nothing stored
twice); the speed figures are the benchmark's to report, never a test's to assert.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

KEYS = {
    "readings_per_s",
    "lost",
    "duplicates_stored",
    "p50_ms",
    "p99_ms",
    "latency_is_publish_to_ack",
    "ceiling_readings_per_s",
    "broker",
    "devices",
    "readings_per_message",
    "messages",
    "features",
    "ingest_batch_max",
    "ingest_batch_wait_ms",
    "hub_cpu_pct",
    "hub_rss_mb",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "broker", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
)
def test_bench_hub_stores_every_reading_once(
    broker: str, model_packages: ModelPaths, tmp_path: Path
) -> None:
    if broker == "mosquitto":
        require_mosquitto()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "bench",
            "hub",
            "--broker",
            broker,
            "--messages",
            "200",
            "--devices",
            "10",
            "--readings-per-message",
            "10",
            "--publishers",
            "1",
            "--timeout-s",
            "60",
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.keys() >= KEYS, KEYS - result.keys()
    assert result["broker"] == broker
    assert result["messages"] == 200 and result["devices"] == 10
    assert result["lost"] == 0
    assert result["duplicates_stored"] == 0
    assert result["complete"] is True
    assert result["stored_readings"] == 200 * 10
    assert result["readings_without_heavy_scores"] == 0
    assert result["latency_is_publish_to_ack"] is True
    assert result["ceiling_lost"] == 0
