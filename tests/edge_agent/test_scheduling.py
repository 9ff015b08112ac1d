"""``--cpu``: which CPU the agent's threads share, chosen purely and applied to a real agent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.scheduling import CPU_ANY, CPU_AUTO, allowed_cpus, choose_cpu, parse_cpu
from edge_agent.settings import load_settings
from shared.endpoint import BrokerEndpoint
from shared.errors import ConfigError
from simulators.harness import HOST, AgentProcess, free_port, wait_until
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

linux_only = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)"
)


def test_parse_cpu_takes_auto_any_and_cpu_numbers() -> None:
    assert parse_cpu("auto") == CPU_AUTO
    assert parse_cpu(" ANY ") == CPU_ANY
    assert parse_cpu("3") == 3
    for bad in ("-1", "first", "1.5", ""):
        with pytest.raises(ValueError, match="CPU number"):
            parse_cpu(bad)


def test_auto_picks_an_allowed_cpu_by_process_id_so_agents_spread() -> None:
    allowed = {2, 3, 5}
    picked = [choose_cpu(CPU_AUTO, allowed, pid) for pid in range(100, 106)]
    assert picked == [3, 5, 2, 3, 5, 2]
    assert choose_cpu(CPU_AUTO, {7}, 12345) == 7


def test_any_and_a_platform_that_cannot_pin_leave_placement_to_the_os() -> None:
    assert choose_cpu(CPU_ANY, {0, 1}, 1) is None
    assert choose_cpu(CPU_AUTO, frozenset(), 1) is None


def test_a_named_cpu_must_be_one_the_process_may_use() -> None:
    assert choose_cpu(1, {0, 1, 2, 5}, 1) == 1
    with pytest.raises(ValueError, match=r"CPU 4 is not one this process may use \(0-2, 5\)"):
        choose_cpu(4, {0, 1, 2, 5}, 1)
    with pytest.raises(ValueError, match=r"cannot keep threads on one CPU.*--cpu any"):
        choose_cpu(0, frozenset(), 1)


def test_settings_default_to_auto_and_refuse_a_bad_value(tmp_path: Path) -> None:
    base = ["--model", str(tmp_path), "--device", "d1"]
    assert load_settings(base, env={}).cpu == CPU_AUTO
    assert load_settings([*base, "--cpu", "0"], env={}).cpu == 0
    assert load_settings(base, env={"EDGELOOP_AGENT_CPU": "any"}).cpu == CPU_ANY
    with pytest.raises(ConfigError, match=r"setting 'cpu' .* = 'fast' is invalid.*--cpu"):
        load_settings([*base, "--cpu", "fast"], env={})


def _thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    """The CPUs each thread of process ``pid`` may run on."""
    return {
        int(tid): frozenset(os.sched_getaffinity(int(tid)))
        for tid in os.listdir(f"/proc/{pid}/task")
    }


@linux_only
def test_a_running_agent_keeps_every_thread_on_the_cpu_it_names(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    cpu = max(allowed_cpus())
    # Nothing listens at the broker's address: the agent runs its reading loop,
    # link thread and MQTT client all the same, retrying the connection.
    endpoint = BrokerEndpoint(HOST, free_port(), "dev-cpu", "not-a-secret")
    agent = AgentProcess(
        model_packages.edge,
        tmp_path / "agent",
        broker=endpoint,
        device="dev-cpu",
        args=("--cpu", str(cpu), "--rate-hz", "50"),
        log_level="INFO",
    )
    agent.start(wait=False)
    pid = agent.pid
    assert pid is not None
    try:
        wait_until(
            "the agent to say where its threads run",
            lambda: f"threads run on CPU {cpu} (--cpu {cpu})" in agent.output(),
            timeout=30.0,
        )
        # The link thread and paho's network thread start after that line.
        wait_until(
            "the agent's threads to start",
            lambda: len(_thread_cpus(pid)) >= 3,
            timeout=30.0,
        )
        threads = _thread_cpus(pid)
        agent.check_alive()
    finally:
        agent.kill()
    assert set(threads.values()) == {frozenset({cpu})}, threads


@linux_only
def test_a_cpu_the_agent_may_not_use_is_refused_with_what_to_do(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    beyond = max(allowed_cpus()) + 1
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "--model",
            str(model_packages.edge),
            "--device",
            "dev-cpu",
            "--state-dir",
            str(tmp_path / "state"),
            "--cpu",
            str(beyond),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"setting 'cpu' = {beyond}: CPU {beyond} is not one this process may use" in done.stderr
    assert "--cpu auto" in done.stderr and "EDGELOOP_AGENT_CPU" in done.stderr
