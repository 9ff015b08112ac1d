"""Shared fixtures: real brokers from ``simulators.harness`` with the accounts of ``tests/brokers.py``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from cloud_hub.broker.rules import BrokerRules
from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from simulators.harness import AgentProcess, AmqttBroker, Mosquitto
from tests.brokers import EDGELOOP_USER, FLEET, ROOTS, USERS, require_mosquitto


@dataclass(frozen=True)
class ModelPaths:
    edge: Path
    heavy: Path


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[AmqttBroker]:
    """The embedded amqtt broker process, for tests that stop, kill or restart it."""
    with AmqttBroker(
        tmp_path / "amqtt", users=USERS, log_level="info", fleet=FLEET, roots=ROOTS
    ) as broker:
        yield broker


@pytest.fixture
def amqtt_broker(embedded_broker: AmqttBroker) -> BrokerEndpoint:
    """The embedded amqtt broker, as the fleet account ``edgeloop`` (``hub`` exists too)."""
    return embedded_broker.endpoint(EDGELOOP_USER)


@pytest.fixture
def mosquitto_process(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto 2.x, for tests that stop, kill or restart it; skipped where not
    installed, failed under CI=true."""
    require_mosquitto()
    # No size limit at the broker: tests send the hub and the agents oversized
    # payloads to see them refused there, whatever broker is in front.
    with Mosquitto(
        tmp_path / "mosquitto",
        users=USERS,
        rules=BrokerRules(roots=ROOTS, fleet=frozenset(FLEET)),
        max_packet_size=0,
        verbose_log=True,
    ) as broker:
        yield broker


@pytest.fixture
def mosquitto_broker(mosquitto_process: Mosquitto) -> BrokerEndpoint:
    """Mosquitto 2.x, as the fleet account ``edgeloop`` (``hub`` exists too)."""
    return mosquitto_process.endpoint(EDGELOOP_USER)


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker(request: pytest.FixtureRequest) -> BrokerEndpoint:
    """Each real broker in turn: a test written once runs against both."""
    endpoint: BrokerEndpoint = request.getfixturevalue(f"{request.param}_broker")
    return endpoint


class StartAgent(Protocol):
    def __call__(
        self,
        endpoint: BrokerEndpoint,
        topics: Topics,
        *args: str,
        device: str = "dev-a",
        stdin_pipe: bool = False,
    ) -> AgentProcess: ...


@pytest.fixture
def start_agent(tmp_path: Path, model_packages: ModelPaths) -> Iterator[StartAgent]:
    """Starts real agent processes (``edgeloop-agent``) with the default edge model,
    logging at INFO, each ready once connected; the broker URL, with its secret,
    goes by environment. State and logs are under ``tmp_path/agents``. Every agent
    still running at the end of the test is killed."""
    started: list[AgentProcess] = []

    def start(
        endpoint: BrokerEndpoint,
        topics: Topics,
        *args: str,
        device: str = "dev-a",
        stdin_pipe: bool = False,
    ) -> AgentProcess:
        agent = AgentProcess(
            model_packages.edge,
            tmp_path / "agents" / f"{device}-{len(started)}",
            broker=endpoint,
            device=device,
            root=topics.root,
            args=args,
            log_level="INFO",
            stdin_pipe=stdin_pipe,
        )
        started.append(agent)
        return agent.start()

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture(scope="session")
def model_packages(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    """The default edge and heavy model packages, built once per test session."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

    built = build_default_models(tmp_path_factory.mktemp("models"), seed=7)
    return ModelPaths(edge=built.edge, heavy=built.heavy)
