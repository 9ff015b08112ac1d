"""The agent's MQTT link against a real broker: what it keeps of the messages it sent."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from edge_agent.settings import load_settings
from edge_agent.stats import Counters
from edge_agent.transport import MqttLink
from shared.endpoint import BrokerEndpoint

pytestmark = pytest.mark.timeout(60)


def test_a_running_link_forgets_what_the_broker_acknowledged(broker: BrokerEndpoint) -> None:
    # Each QoS 1 publish leaves paho's info (with a lock and a condition) with
    # the link. Kept until shutdown, they grew a running agent's memory by one
    # per message sent: about 2 MB an hour at the default 10 readings/s.
    settings = load_settings(
        ["--model", "unused", "--device", "link-test"], env={"EDGELOOP_AGENT_BROKER": broker.url}
    )
    link = MqttLink(
        settings,
        subscriptions=["edgeloop-link-test/in"],
        will=("edgeloop-link-test/will", b"offline"),
        inbox=queue.Queue(),
        wake=threading.Event(),
        counters=Counters(),
    )
    link.start()
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
