"""Local actions on an urgent decision, taken at once and never over the network.

Built-ins: ``log`` (a warning line), ``command`` (runs the command line from
the agent's own configuration, never one named by a message; started, not
awaited, so a slow script cannot stall the reading loop; its environment is
the agent's without the ``EDGELOOP_AGENT_*`` settings, which may hold the
broker password), and ``machine``
(stops the simulated machine, which then reacts in its next reading; it is
handed the machine, so this module never imports :mod:`simulators`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge_agent.rules import Decision

if TYPE_CHECKING:  # a device without the simulator never loads it
    from simulators.machine import SimulatedMachine

__all__ = ["ActionResult", "Actuator", "CommandActuator", "LogActuator", "MachineActuator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActionResult:
    name: str
    ok: bool
    detail: str


class Actuator(Protocol):
    name: str

    def act(self, device: str, decision: Decision) -> ActionResult: ...

    def close(self) -> None: ...


class LogActuator:
    name = "log"

    def act(self, device: str, decision: Decision) -> ActionResult:
        what = (
            f"{decision.sensor}={decision.value:g}"
            if decision.sensor
            else f"score={decision.score:.3f}"
        )
        log.warning("device %r: URGENT (%s, %s)", device, decision.rule, what)
        return ActionResult(self.name, True, "logged")

    def close(self) -> None:
        return None


class CommandActuator:
    """Starts a configured command with the decision in its environment.

    At most ``max_running`` commands run at once; a decision beyond that is
    reported as a failed action instead of piling up processes.
    """

    name = "command"

    def __init__(self, command: str, max_running: int = 4) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("the action command is empty")
        self.max_running = max_running
        self._running: list[subprocess.Popen[bytes]] = []

    def act(self, device: str, decision: Decision) -> ActionResult:
        self._running = [p for p in self._running if p.poll() is None]
        if len(self._running) >= self.max_running:
            return ActionResult(
                self.name, False, f"{len(self._running)} earlier commands still running"
            )
        # The agent's own settings stay with it: EDGELOOP_AGENT_BROKER may hold the password.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_AGENT_")}
        env.update(
            EDGELOOP_DEVICE=device,
            EDGELOOP_RULE=decision.rule,
            EDGELOOP_SCORE=f"{decision.score:.6f}",
            EDGELOOP_SENSOR=decision.sensor or "",
            EDGELOOP_VALUE="" if decision.value is None else f"{decision.value:g}",
        )
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return ActionResult(self.name, False, f"cannot start {self.argv[0]!r}: {exc.strerror}")
        self._running.append(proc)
        return ActionResult(self.name, True, f"started pid {proc.pid}")

    def close(self) -> None:
        for proc in self._running:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()  # reap it: no zombie left behind


class MachineActuator:
    """Stops the simulated machine the agent reads from."""

    name = "machine"

    def __init__(self, machine: SimulatedMachine) -> None:
        self.machine = machine

    def act(self, device: str, decision: Decision) -> ActionResult:
        if self.machine.stopped:
            return ActionResult(self.name, True, "machine already stopped")
        self.machine.stop(f"urgent {decision.rule}")
        return ActionResult(self.name, True, "machine stopped")

    def close(self) -> None:
        return None
