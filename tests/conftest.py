"""Shared fixtures. Broker fixtures live in ``tests/brokers.py``; this file only wires them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.broker.embedded import EmbeddedBroker
from shared.endpoint import BrokerEndpoint
from tests.brokers import EDGELOOP_SECRET, EDGELOOP_USER, running_amqtt, running_mosquitto


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
