"""``edgeloop-sim bench ota``: a new signed version rolled out to a small fleet of real agents.

Correctness only (every device commits, every reading stored once under the model
that scored it), never speed: the figures are for people to read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.bench.ota import OtaBenchConfig
from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

DEVICES = 8
KEYS = {
    "devices",
    "committed",
    "converge_s",
    "readings_produced",
    "readings_stored",
    "readings_dropped",
    "readings_duplicated",
    "readings_wrong_model",
    "max_agent_rss_mb",
    "agent_rss_mb_before",
    "broker",
    "targets_met",
}


@pytest.mark.timeout(300)
@pytest.mark.mosquitto
def test_ota_bench_moves_every_device_and_stores_every_reading_once(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    require_mosquitto()
    work = tmp_path / "run"
    before = sorted(p.name for p in model_packages.edge.iterdir())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "bench",
            "ota",
            "--devices",
            str(DEVICES),
            "--rss-agents",
            "1",
            "--duration-s",
            "3",
            "--after-s",
            "2",
            "--broker",
            "mosquitto",
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
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS, sorted(KEYS - set(result))
    context = f"{json.dumps(result)}\nlogs in {work}"
    assert result["devices"] == DEVICES
    assert result["rollout_state"] == "completed", context
    assert result["committed"] == DEVICES, context
    assert result["from_version"] != result["to_version"]
    assert result["readings_produced"] > 0
    assert result["readings_stored"] == result["readings_produced"], context
    assert result["readings_dropped"] == 0, context
    assert result["readings_duplicated"] == 0, context
    assert result["readings_wrong_model"] == 0, context
    # Every device's readings were compared version by version, the separate agent's
    # too, and the new model scored some of them.
    assert result["devices_compared_by_version"] == DEVICES, context
    assert result["readings_by_model"].get(result["to_version"], 0) > 0, context
    assert result["max_agent_rss_mb"] > 0, context
    assert result["errors"] == [], context
    # The models given are never signed in place: the hub and the agents got a copy.
    assert sorted(p.name for p in model_packages.edge.iterdir()) == before


@pytest.mark.timeout(10)
def test_separate_agents_default_to_two_and_leave_the_hosts_one_device() -> None:
    assert OtaBenchConfig(devices=100).solo_agents == 2
    assert OtaBenchConfig(devices=2).solo_agents == 1
    assert OtaBenchConfig(devices=1).solo_agents == 0
    assert OtaBenchConfig(devices=3).host_count == 1  # the separate agents are in no host
    assert OtaBenchConfig(devices=1000).host_count == 10
    with pytest.raises(ValueError, match=r"bench ota: --rss-agents must be 0-9 .* got 20"):
        OtaBenchConfig(devices=10, rss_agents=20)
    with pytest.raises(ValueError, match=r"^bench ota: --devices must be"):
        OtaBenchConfig(devices=0)
