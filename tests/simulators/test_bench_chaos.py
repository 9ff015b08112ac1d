"""``edgeloop-sim bench chaos`` end to end, tiny: it runs two faults, prints a line for each and
the JSON last, loses and duplicates nothing, and leaves nothing running.

The faults themselves are tested one by one in ``tests/test_chaos_faults.py``;
here it is the command: its options, its output contract, its clean-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

FAULT_KEYS = {
    "fault",
    "name",
    "produced",
    "stored",
    "duplicates_stored",
    "lost_at_edge",
    "lost_unexplained",
    "catch_up_s",
    "settled",
}


@pytest.mark.timeout(180)
@pytest.mark.mosquitto
def test_bench_chaos_runs_faults_a_and_c_and_prints_the_json(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    require_mosquitto()
    work = tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "bench",
            "chaos",
            "--devices",
            "2",
            "--faults",
            "a,c",
            "--warmup-s",
            "1",
            "--broker-down-s",
            "1",
            "--agent-down-s",
            "1",
            "--settle-timeout-s",
            "60",
            "--agent-arg=--resend-after-s",
            "--agent-arg=2",
            "--agent-arg=--reconnect-max-s",
            "--agent-arg=2",
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--work-dir",
            str(work),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split()[:3] for line in lines[:-1]] == [
        ["fault", "a", "broker_killed:"],
        ["fault", "c", "agent_killed:"],
    ], done.stdout
    result = json.loads(lines[-1])
    assert result["bench"] == "chaos"
    faults = result["faults"]
    assert [f["fault"] for f in faults] == ["a", "c"]
    for f in faults:
        assert f.keys() >= FAULT_KEYS, FAULT_KEYS - f.keys()
        assert f["devices"] == 2 and f["produced"] > 0 and f["settled"] is True, f
        assert f["stored"] + f["lost_at_edge"] == f["produced"], f
    assert result["produced"] == sum(f["produced"] for f in faults)
    assert result["stored"] == result["produced"]
    assert result["duplicates_stored"] == 0
    assert result["lost_unexplained"] == 0
    assert result["lost_at_edge_recoverable"] == 0
    # Everything it started is gone: no process still runs from its work directory.
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(work) in cmdline:
            leftovers.append(cmdline)
    assert not leftovers, leftovers


def test_bench_chaos_refuses_an_unknown_fault(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulators", "bench", "chaos", "--faults", "a,z"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "choose faults from a,b,c,d,e,f" in done.stderr
