"""``edgeloop-sim bench fleet``: a small fleet of real agents against a real hub and broker.

Correctness only (every device online, nothing lost), never speed: the figures
the bench reports are for people to read, not for tests to time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.bench.fleet import FleetBenchConfig
from simulators.fleet import AgentSpec, HostSpec
from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

DEVICES = 20
KEYS = {
    "devices",
    "devices_online",
    "readings_sent",
    "readings_stored",
    "lost",
    "hub_cpu_pct",
    "hub_rss_mb",
    "broker",
    "hosts",
    "host_cpu_pct",
    "host_rss_mb",
    "startup_s",
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "broker", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
)
def test_fleet_bench_runs_every_agent_and_loses_nothing(
    broker: str, tmp_path: Path, model_packages: ModelPaths
) -> None:
    if broker == "mosquitto":
        require_mosquitto()
    work = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "bench",
            "fleet",
            "--devices",
            str(DEVICES),
            "--duration-s",
            "10",
            "--broker",
            broker,
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--work-dir",
            str(work),
            "--poll-s",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS, sorted(KEYS - set(result))
    context = f"{json.dumps(result)}\nlogs in {work}"
    assert result["broker"] == broker
    assert result["devices"] == DEVICES
    assert result["devices_online"] == DEVICES, context
    assert result["readings_sent"] > 0, context
    assert result["lost"] == 0, context


@pytest.mark.timeout(10)
def test_host_spec_round_trips_and_refuses_garbage() -> None:
    spec = HostSpec(
        model="/m/edge",
        agents=(AgentSpec("fleet-00001", "mqtt://fleet-00001:s@127.0.0.1:1", "/s/1", 7),),
        agent_args=("--rate-hz", "1"),
        start_interval_s=0.01,
    )
    assert HostSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="not a fleet host spec"):
        HostSpec.from_json('{"agents": [{}]}', "spec.json")


@pytest.mark.timeout(10)
def test_config_bounds_and_host_count() -> None:
    assert FleetBenchConfig(devices=1000).host_count == 5
    assert FleetBenchConfig(devices=20).host_count == 2
    assert FleetBenchConfig(devices=1).host_count == 1
    assert FleetBenchConfig(devices=100, hosts=3).host_count == 3
    with pytest.raises(ValueError, match="--devices"):
        FleetBenchConfig(devices=0)
    with pytest.raises(ValueError, match="--broker"):
        FleetBenchConfig(broker="emqx")
