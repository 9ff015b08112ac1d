"""Local actions: log, run the configured command without waiting, stop the machine."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.actuators import ActionResult, CommandActuator, LogActuator, MachineActuator
from edge_agent.rules import Decision
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import SENSOR_NAMES

pytestmark = pytest.mark.timeout(30)

SCORE = Decision("score", 0.93)
HOT = Decision("hard_limit", 0.2, "temperature", 121.5)


def _pid(result: ActionResult) -> int:
    assert result.ok, result
    return int(result.detail.rsplit(" ", 1)[1])


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of commands a test started; killed at the end so none outlives it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_log_actuator_names_device_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_agent.actuators"):
        assert LogActuator().act("pi-07", HOT) == ActionResult("log", True, "logged")
        assert LogActuator().act("pi-08", SCORE).ok
    first, second = caplog.records
    assert "'pi-07'" in first.getMessage()
    assert "hard_limit" in first.getMessage()
    assert "temperature=121.5" in first.getMessage()
    assert "'pi-08'" in second.getMessage()
    assert "score=0.930" in second.getMessage()


def test_command_runs_with_the_decision_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = (
        'echo "$EDGELOOP_DEVICE $EDGELOOP_RULE $EDGELOOP_SCORE $EDGELOOP_SENSOR $EDGELOOP_VALUE"'
        f" > {shlex.quote(str(out))}"
    )
    act = CommandActuator(f"sh -c {shlex.quote(script)}")
    result = act.act("pi-07", HOT)
    assert result.name == "command"
    assert result.ok
    assert result.detail.startswith("started pid ")
    act.close()  # waits for the command to finish
    assert out.read_text().split() == ["pi-07", "hard_limit", "0.200000", "temperature", "121.5"]


def test_command_score_decision_has_empty_sensor(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = f'echo "[$EDGELOOP_RULE][$EDGELOOP_SENSOR][$EDGELOOP_VALUE]" > {shlex.quote(str(out))}'
    act = CommandActuator(f"sh -c {shlex.quote(script)}")
    assert act.act("pi-07", SCORE).ok
    act.close()
    assert out.read_text().strip() == "[score][][]"


def test_command_is_started_not_awaited(started: list[int]) -> None:
    act = CommandActuator("sleep 5")
    t0 = time.monotonic()
    result = act.act("pi-07", SCORE)
    assert time.monotonic() - t0 < 1.0  # the reading loop never waits for the command
    started.append(_pid(result))
    os.kill(started[-1], 0)  # still running


def test_command_concurrency_is_capped(started: list[int]) -> None:
    act = CommandActuator("sleep 5", max_running=2)
    started.extend(_pid(act.act("pi-07", SCORE)) for _ in range(2))
    refused = act.act("pi-07", SCORE)
    assert refused == ActionResult("command", False, "2 earlier commands still running")
    os.kill(started[0], signal.SIGKILL)
    os.waitpid(started[0], 0)  # reaped here; the actuator's poll() sees it has ended
    started.append(_pid(act.act("pi-07", SCORE)))  # a slot is free again


def test_missing_executable_is_a_failed_action(tmp_path: Path) -> None:
    act = CommandActuator(f"{tmp_path}/no-such-program --now")
    result = act.act("pi-07", SCORE)
    assert not result.ok
    assert "no-such-program" in result.detail
    assert "No such file" in result.detail
    act.close()


def test_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        CommandActuator("   ")


def test_close_kills_a_command_that_will_not_end(tmp_path: Path) -> None:
    act = CommandActuator("sleep 30")
    pid = _pid(act.act("pi-07", SCORE))
    act.close()  # waits 2 s, then kills and reaps
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left


def test_machine_actuator_stops_the_machine() -> None:
    machine = SimulatedMachine(MachineConfig(seed=5, dropout_prob=0.0))
    for _ in range(50):
        machine.step()
    machine.inject_urgent("overheat")
    before = machine.step().values
    act = MachineActuator(machine)
    assert act.act("pi-07", HOT) == ActionResult("machine", True, "machine stopped")
    assert machine.stopped
    assert act.act("pi-07", HOT) == ActionResult("machine", True, "machine already stopped")
    after = [machine.step().values for _ in range(10)]
    speed, current = SENSOR_NAMES.index("speed"), SENSOR_NAMES.index("current")
    assert after[0][current] < before[current] / 2  # the motor is cut at once
    assert after[0][speed] < before[speed]
    speeds = np.array([v[speed] for v in after])
    assert speeds[-1] < speeds[0] / 2  # the shaft coasts down
    assert machine.log[-11] == ("stop", 50, "urgent hard_limit")
    act.close()


def test_command_does_not_inherit_the_agents_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_BROKER", "mqtt://pi-07:Pw7-secret@hub.local:1883")
    monkeypatch.setenv("EDGELOOP_AGENT_BROKER_PASSWORD", "Pw7-secret")
    out = tmp_path / "env.txt"
    act = CommandActuator(f"sh -c {shlex.quote(f'env > {shlex.quote(str(out))}')}")
    assert act.act("pi-07", HOT).ok
    act.close()
    seen = out.read_text()
    assert "Pw7-secret" not in seen and "EDGELOOP_AGENT_" not in seen
    assert "EDGELOOP_DEVICE=pi-07" in seen
