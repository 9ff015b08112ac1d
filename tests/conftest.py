"""Shared fixtures. Broker fixtures live in ``tests/brokers.py``; this file only wires them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.broker.embedded import EmbeddedBroker
from shared.endpoint import BrokerEndpoint
from tests.brokers import EDGELOOP_SECRET, EDGELOOP_USER, running_amqtt, running_mosquitto


@dataclass(frozen=True)
class ModelPaths:
    edge: Path
    heavy: Path


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """The embedded amqtt broker process, for tests that stop, kill or restart it."""
    with running_amqtt(tmp_path / "amqtt") as broker:
        yield broker


@pytest.fixture
def amqtt_broker(embedded_broker: EmbeddedBroker) -> BrokerEndpoint:
    """The embedded amqtt broker, as user ``edgeloop`` (``hub`` exists too)."""
    return embedded_broker.endpoint(EDGELOOP_USER, EDGELOOP_SECRET)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerEndpoint]:
    """Mosquitto 2.x, as user ``edgeloop``; skipped where not installed, failed under CI=true."""
    with running_mosquitto(tmp_path / "mosquitto") as endpoint:
        yield endpoint


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker(request: pytest.FixtureRequest) -> BrokerEndpoint:
    """Each real broker in turn: a test written once runs against both."""
    endpoint: BrokerEndpoint = request.getfixturevalue(f"{request.param}_broker")
    return endpoint


@pytest.fixture(scope="session")
def model_packages(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    """The default edge and heavy model packages, built once per test session."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

    built = build_default_models(tmp_path_factory.mktemp("models"), seed=7)
    return ModelPaths(edge=built.edge, heavy=built.heavy)
