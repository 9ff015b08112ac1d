"""A payload over the size a device may send is refused by the hub's link before it is
queued or decoded: counted for its device, dead-lettered as its first kilobyte, and the
hub goes on ingesting.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.inference import OnnxScorer
from cloud_hub.ingest import HubLink
from cloud_hub.ingest.transport import HEAD_BYTES, OversizedPayload
from cloud_hub.store.sqlite import SQLiteStore
from shared.endpoint import BrokerEndpoint
from shared.topics import Kind, Topics
from simulators.harness import MOSQUITTO_MAX_PACKET_SIZE, Mosquitto
from tests.brokers import EDGELOOP_SECRET, EDGELOOP_USER, USERS, require_mosquitto
from tests.cloud_hub.ingest.conftest import WAIT, Client, running_hub, settled, telemetry
from tests.cloud_hub.ingest.test_worker import acked, stored_rows

pytestmark = pytest.mark.timeout(120)

LIMIT = 64 * 1024


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


def test_the_link_queues_only_the_head_of_an_oversized_payload() -> None:
    topics = Topics("edgeloop-test/size")
    link = HubLink(BrokerEndpoint(host="127.0.0.1", port=1), topics, max_payload_bytes=LIMIT)
    topic = topics.topic("dev-a", Kind.TELEMETRY)
    link._on_message(link._client, None, _message(topic, b"x" * (LIMIT + 1)))
    link._on_message(link._client, None, _message(topic, b"y" * LIMIT))
    big, _ = link.queue.get_nowait(), None
    at_limit = link.queue.get_nowait()
    assert isinstance(big[1], OversizedPayload)
    assert (len(big[1]), big[1].size, big[1].limit) == (HEAD_BYTES, LIMIT + 1, LIMIT)
    assert type(at_limit[1]) is bytes and len(at_limit[1]) == LIMIT
    assert link.queue.bytes == 0 and link.queue.empty()


def test_an_oversized_flood_is_counted_not_stored_and_ingest_goes_on(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    flood = 200
    topic = topics.topic("dev-f", Kind.TELEMETRY)
    junk = b'{"device": "dev-f", "pad": "' + b"z" * (LIMIT + 100) + b'"}'
    with running_hub(broker, topics, store, heavy, max_payload_bytes=LIMIT) as hub:
        queued_bytes: list[int] = []
        done = threading.Event()

        def watch() -> None:  # the queue's byte count never holds a whole payload
            while not done.wait(0.005):
                queued_bytes.append(hub.link.queue.bytes)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        device_client.send(telemetry("dev-f", 1))
        for _ in range(flood):
            device_client.publish(topic, junk)
        device_client.send(telemetry("dev-f", 2))
        device_client.wait_for("ack of dev-f seq 2", acked("dev-f", 2))
        stats = settled(
            hub.worker,
            "every oversized message counted",
            lambda s: s.invalid.get("too_large", 0) == flood,
        )
        done.set()
        watcher.join(5)
        # The hub still ingests after the flood.
        device_client.send(telemetry("dev-f", 3))
        device_client.wait_for("ack of dev-f seq 3", acked("dev-f", 3))

    assert stats.invalid == {"too_large": flood}
    assert store.counters("dev-f")["invalid:too_large"] == flood
    assert sorted(r.seq for r in stored_rows(store, "dev-f")) == [1, 2, 3]
    letters = store.dead_letters(limit=flood + 10)
    assert len(letters) == flood
    assert all(
        d.reason == "too_large"
        and d.device == "dev-f"
        and d.payload_size == len(junk)
        and d.payload_head == junk[:HEAD_BYTES]
        for d in letters
    )
    assert "over the limit of 65536" in letters[0].error
    # Heads only: 200 whole payloads would be 13 MB, their heads are 200 KiB.
    valid = 3 * len(telemetry("dev-f", 1).to_json())
    assert max(queued_bytes, default=0) <= flood * HEAD_BYTES + valid


@pytest.mark.mosquitto
def test_mosquitto_refuses_a_packet_over_the_limit_before_the_hub_sees_it(
    tmp_path: Path, topics: Topics, store: SQLiteStore, heavy: OnnxScorer
) -> None:
    require_mosquitto()
    with Mosquitto(tmp_path / "mosquitto", users=USERS) as mosquitto:  # the deployed limit
        endpoint = mosquitto.endpoint(EDGELOOP_USER)
        with running_hub(endpoint, topics, store, heavy) as hub:
            gone = threading.Event()
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-big")
            client.username_pw_set(EDGELOOP_USER, EDGELOOP_SECRET)
            client.on_disconnect = lambda *_: gone.set()
            client.connect(endpoint.host, endpoint.port)
            client.loop_start()
            try:
                over = MOSQUITTO_MAX_PACKET_SIZE + 1
                client.publish(topics.topic("dev-b", Kind.TELEMETRY), b"z" * over, qos=1)
                assert gone.wait(WAIT), "Mosquitto did not disconnect the sender of a big packet"
            finally:
                client.loop_stop()
            device = Client(endpoint, topics, subscribe=(topics.topic("dev-b", Kind.ACK),))
            try:
                device.send(telemetry("dev-b", 1))
                device.wait_for("ack of dev-b seq 1", acked("dev-b", 1))
            finally:
                device.close()
            stats = settled(hub.worker, "the good message stored", lambda s: s.stored_messages == 1)
    assert stats.invalid == {}
    assert store.dead_letters(limit=10) == []
