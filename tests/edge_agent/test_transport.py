"""The agent's MQTT link against a real broker: what it keeps of the messages it sent."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time

import pytest

from edge_agent.settings import AgentSettings, load_settings
from edge_agent.stats import Counters
from edge_agent.transport import MqttLink
from shared.endpoint import BrokerEndpoint
from simulators.harness import AmqttBroker
from tests.brokers import EDGELOOP_USER

pytestmark = pytest.mark.timeout(60)


def test_a_running_link_forgets_what_the_broker_acknowledged(broker: BrokerEndpoint) -> None:
    # Each QoS 1 publish leaves paho's info (with a lock and a condition) with
    # the link. Kept until shutdown, they grew a running agent's memory by one
    # per message sent: about 2 MB an hour at the default 10 readings/s.
    link = _started_link(broker)
    try:
        assert link.connected.wait(30.0), "the link never connected"
        for _ in range(500):
            while not link.publish("edgeloop-link-test/data", b"x" * 100, qos=1):
                time.sleep(0.01)  # paho's queue is full: as the agent, try again later
        deadline = time.monotonic() + 30.0
        while not all(info.is_published() for info in list(link._pending)):
            assert time.monotonic() < deadline, "the broker never acknowledged them all"
            time.sleep(0.05)
        assert link.publish("edgeloop-link-test/data", b"last", qos=1)
        # What the broker acknowledged is forgotten at the next publish, not at shutdown.
        assert len(link._pending) == 1
    finally:
        link.close(None, timeout=1.0)


def test_a_publish_that_finds_no_connection_is_not_counted_outstanding() -> None:
    # A publish racing a disconnect gets MQTT_ERR_NO_CONN from paho, whose info's
    # is_published() then always raises RuntimeError: kept, it broke the link thread.
    settings = load_settings(
        ["--model", "unused", "--device", "link-test"],
        env={"EDGELOOP_AGENT_BROKER": "mqtt://127.0.0.1:1"},
    )
    link = _link(settings)  # never started: paho has no connection
    assert link.publish("edgeloop-link-test/data", b"x", qos=1)
    assert link.outstanding == 0


def test_close_with_paho_queue_full_logs_the_unsent_status_and_does_not_raise(
    embedded_broker: AmqttBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # A fast CSV run ended with paho's queue full of messages the broker had not yet
    # acknowledged: the offline status was refused (MQTT_ERR_QUEUE_SIZE) and paho's
    # is_published() raised ValueError out of close, so the agent exited 1.
    # Fault: the broker process is paused (SIGSTOP), so nothing is acknowledged.
    link = _started_link(
        embedded_broker.endpoint(EDGELOOP_USER), "--inflight", "2", "--mqtt-queue", "2"
    )
    pid = embedded_broker.pid
    assert pid is not None
    try:
        assert link.connected.wait(30.0), "the link never connected"
        os.kill(pid, signal.SIGSTOP)
        sent = 0
        while link.publish("edgeloop-link-test/data", b"x", qos=1):
            sent += 1
            assert sent < 10, "paho's queue of 2 never filled"
        with caplog.at_level(logging.WARNING, logger="edge_agent.transport"):
            link.close(("edgeloop-link-test/status", b"offline"), timeout=0.3)
    finally:
        os.kill(pid, signal.SIGCONT)
    line = next(r.getMessage() for r in caplog.records if "offline status" in r.getMessage())
    assert "was not sent" in line and "--mqtt-queue" in line, line
    assert not link._client.is_connected()


def _started_link(broker: BrokerEndpoint, *args: str) -> MqttLink:
    """A started link as device ``link-test`` with the agent options ``args``."""
    settings = load_settings(
        ["--model", "unused", "--device", "link-test", *args],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    link = _link(settings)
    link.start()
    return link


def _link(settings: AgentSettings) -> MqttLink:
    return MqttLink(
        settings,
        subscriptions=["edgeloop-link-test/in"],
        will=("edgeloop-link-test/will", b"offline"),
        inbox=queue.Queue(),
        wake=threading.Event(),
        counters=Counters(),
    )
