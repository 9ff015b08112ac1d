"""The whole loop as operators run it: ``edgeloop-hub serve`` and real agents.

Once with the hub's embedded broker, once with Mosquitto as an external
broker. Five agents run a bounded stream each (urgent conditions included);
one more is killed with SIGKILL. Everything is checked through the hub's
HTTP API, as an operator would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from shared.endpoint import BrokerEndpoint
from simulators.harness import AgentProcess, HubProcess
from tests.brokers import HUB_SECRET, HUB_USER
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(240)
READINGS = 400
AGENTS = 5
ADD_OPTIONS = frozenset({"--data-dir", "--root", "--broker-host", "--broker-port"})


@dataclass
class RunningHub:
    process: HubProcess
    provision: Callable[[str], dict[str, str]]
    """Agent environment for a new device, made as an operator would make it."""
    agents: list[AgentProcess] = field(default_factory=list)
    """Every agent started, killed at teardown if still running."""

    def get(self, path: str) -> Any:
        return self.process.api.get_json(path)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        self.process.wait_until(what, check, timeout=timeout, ignore=(OSError,))


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def hub(
    request: pytest.FixtureRequest, tmp_path: Path, model_packages: ModelPaths
) -> Iterator[RunningHub]:
    root = f"edgeloop-test/{uuid.uuid4().hex[:8]}"
    mosquitto: BrokerEndpoint | None = None
    if request.param == "mosquitto":
        mosquitto = request.getfixturevalue("mosquitto_broker")
    process = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        broker=None
        if mosquitto is None
        else replace(mosquitto, username=HUB_USER, password=HUB_SECRET),
        root=root,
        log_level="INFO",
    )
    if mosquitto is None:
        # `devices add` takes only the options that say where the broker, its
        # accounts and the store are; serve's others (--http-port...) it refuses.
        pairs = zip(process.flags[::2], process.flags[1::2], strict=True)
        add_flags = [x for option, value in pairs if option in ADD_OPTIONS for x in (option, value)]

        def provision(device: str) -> dict[str, str]:
            done = subprocess.run(
                [sys.executable, "-m", "cloud_hub", "devices", "add", device, *add_flags],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return dict(
                line.split("=", 1)
                for line in done.stdout.splitlines()
                if line.startswith("EDGELOOP_AGENT_")
            )
    else:
        shared = mosquitto

        def provision(device: str) -> dict[str, str]:
            # Mosquitto's accounts are the test fixture's; devices share one here.
            return {
                "EDGELOOP_AGENT_DEVICE": device,
                "EDGELOOP_AGENT_BROKER": shared.url,
                "EDGELOOP_AGENT_ROOT": root,
            }

    running = RunningHub(process, provision)
    try:
        with process:
            yield running
        assert process.returncode == 0, process.log_tail(60)
    finally:
        for agent in running.agents:
            agent.kill()


def _agent(hub: RunningHub, device: str, model: Path, state: Path, *args: str) -> AgentProcess:
    agent = AgentProcess(
        model, state / device, env=hub.provision(device), args=args, log_level="INFO"
    )
    hub.agents.append(agent)
    return agent.start()


def test_hub_and_agents_store_every_reading_once_with_both_predictions(
    hub: RunningHub, model_packages: ModelPaths, tmp_path: Path
) -> None:
    agents = {
        f"e2e-{i}": _agent(
            hub,
            f"e2e-{i}",
            model_packages.edge,
            tmp_path,
            "--source",
            "sim",
            "--rate-hz",
            "400",
            "--readings",
            str(READINGS),
            "--sim-seed",
            str(i),
            "--sim-urgent-rate",
            "0.02",
            "--max-batch",
            "25",
            "--heartbeat-s",
            "0.5",
        )
        for i in range(AGENTS)
    }
    victim = _agent(
        hub, "e2e-victim", model_packages.edge, tmp_path, "--source", "sim", "--rate-hz", "50"
    )
    for name, agent in agents.items():
        assert agent.wait(120) == 0, (name, agent.log_tail(40))

    def all_stored() -> bool:
        return all(
            hub.get(f"/v1/devices/{name}")["counters"].get("stored_readings", 0) >= READINGS
            for name in agents
        )

    hub.wait_for("every reading stored", all_stored)
    hub.wait_for(
        "the victim online", lambda: hub.get("/v1/devices/e2e-victim")["state"] == "online"
    )
    assert victim.kill() == -signal.SIGKILL
    hub.wait_for(
        "the victim offline through its will",
        lambda: hub.get("/v1/devices/e2e-victim")["state"] == "offline",
    )

    events = 0
    for name in agents:
        detail = hub.get(f"/v1/devices/{name}")
        assert detail["state"] == "offline" and detail["gaps"] == [], detail
        assert (
            detail["counters"]["stored_readings"] == READINGS
            and detail["counters"].get("duplicates", 0) == 0
        )
        seen: list[float] = []
        cursor = ""
        while True:
            page = hub.get(f"/v1/devices/{name}/telemetry?since=0&limit=150{cursor}")
            for reading in page["readings"]:
                assert len(reading["edge_scores"]) == 3 and len(reading["heavy_scores"]) == 3
                seen.append(reading["ts"])
            if not page.get("next_cursor"):
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert len(seen) == READINGS and len(set(seen)) == READINGS, name
        events += len(hub.get(f"/v1/events?device={name}&since=0&limit=1000")["events"])
    assert events > 0, "urgent events were expected at an urgent rate of 2 %"
    stats = hub.get("/v1/stats/ingest")
    assert stats["duplicates"] == 0 and stats["invalid_total"] == 0, stats
