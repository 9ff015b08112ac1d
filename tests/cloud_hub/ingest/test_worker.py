"""The ingest worker on real brokers, a real SQLite store and the real heavy model.

Idempotency and gaps, hostile input, store faults, draining at stop. Each
test runs on amqtt and on Mosquitto (the ``broker`` fixture).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

import numpy as np
import pytest

from cloud_hub.inference import OnnxScorer
from cloud_hub.ingest import HubLink, IngestConfig, IngestWorker
from cloud_hub.store.base import Gap, Store, TelemetryRows
from cloud_hub.store.sqlite import SQLiteStore
from shared.endpoint import BrokerEndpoint
from shared.errors import DecodeError
from shared.messages import Ack, Message, decode
from shared.topics import Kind, Topics
from tests.cloud_hub.ingest.conftest import (
    WAIT,
    Client,
    FailingStore,
    Hub,
    hub_endpoint,
    running_hub,
    settled,
    telemetry,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


def stored_rows(store: Store, device: str) -> list[TelemetryRows]:
    rows: list[TelemetryRows] = []
    cursor = None
    while True:
        page = store.telemetry(device, 0.0, 1e12, 10_000, cursor)
        rows += page.items
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def acked(device: str, seq: int, epoch: int = 1) -> Callable[[list[Message]], bool]:
    return lambda msgs: Ack(device, epoch, seq) in msgs


def test_telemetry_is_stored_with_edge_and_heavy_scores_and_acked(
    hub: Hub, device_client: Client, heavy: OnnxScorer
) -> None:
    sent = [telemetry("dev-a", seq, n=7) for seq in (1, 2, 3)]
    for msg in sent:
        device_client.send(msg)
    device_client.wait_for("the ack of seq 3", acked("dev-a", 3))
    stats = settled(hub.worker, "3 messages counted", lambda s: s.stored_messages == 3)
    rows = sorted(stored_rows(hub.store, "dev-a"), key=lambda r: r.seq)
    assert [r.seq for r in rows] == [1, 2, 3]
    for row, msg in zip(rows, sent, strict=True):
        assert np.array_equal(row.ts, msg.ts)
        assert np.array_equal(row.features, msg.features)
        assert np.array_equal(row.edge_scores, msg.scores)
        assert (row.edge_model_version, row.heavy_model_version) == ("1.0.0", "1.0.0")
        # The batch's one heavy call scores each row as a call of its own would, closely.
        assert np.allclose(row.heavy_scores, heavy.scores(msg.features), atol=1e-5)
        assert np.allclose(row.heavy_scores.sum(axis=1), 1.0, atol=1e-4)
    assert (stats.stored_messages, stats.stored_readings, stats.duplicates) == (3, 21, 0)
    counters = hub.store.counters("dev-a")
    assert counters["stored_readings"] == 21 and counters["received"] == 3
    assert stats.latency_p99_ms > 0 and stats.batches >= 1


def test_replay_is_a_counted_duplicate_and_gaps_close_when_the_missing_seqs_arrive(
    hub: Hub, device_client: Client
) -> None:
    store, send = hub.store, device_client.send
    send(telemetry("dev-a", 1))
    send(telemetry("dev-a", 2))
    device_client.wait_for("ack 2", acked("dev-a", 2))

    send(telemetry("dev-a", 2))  # a replay: same device, epoch and seq
    wait_until("the duplicate counted", lambda: store.counters("dev-a").get("duplicates") == 1)
    device_client.wait_for(
        "a second ack of 2 (a replaying device needs it)",
        lambda msgs: msgs.count(Ack("dev-a", 1, 2)) >= 2,
    )
    assert sorted(r.seq for r in stored_rows(store, "dev-a")) == [1, 2]

    send(telemetry("dev-a", 5))  # seqs 3 and 4 skipped
    wait_until("seq 5 stored", lambda: len(stored_rows(store, "dev-a")) == 3)
    assert store.gaps("dev-a") == [Gap("dev-a", 1, 3, 4)]
    assert store.watermark("dev-a", 1) == 2

    send(telemetry("dev-a", 3))
    wait_until("seq 3 stored", lambda: store.watermark("dev-a", 1) == 3)
    assert store.gaps("dev-a") == [Gap("dev-a", 1, 4, 4)]

    send(telemetry("dev-a", 4))  # the last missing one: the watermark jumps over 5
    device_client.wait_for("ack 5", acked("dev-a", 5))
    assert store.gaps("dev-a") == []
    assert sorted(r.seq for r in stored_rows(store, "dev-a")) == [1, 2, 3, 4, 5]
    assert sum(len(r) for r in stored_rows(store, "dev-a")) == 25
    acks = [m.seq for m in device_client.messages if isinstance(m, Ack)]
    assert acks == sorted(acks), "an ack went backwards"
    stats = settled(hub.worker, "5 messages counted", lambda s: s.stored_messages == 5)
    assert (stats.stored_messages, stats.duplicates, stats.invalid) == (5, 1, {})


def _hostile(topics: Topics) -> list[tuple[str, bytes, str, str | None]]:
    """(topic, payload, expected reason, device counted) of each hostile message."""
    t = topics.topic("dev-h", Kind.TELEMETRY)
    good = json.loads(telemetry("dev-h", 90).to_json())
    random_bytes = np.random.default_rng(5).bytes(4096)
    try:
        decode(Kind.TELEMETRY, random_bytes)
    except DecodeError as exc:
        random_reason = exc.reason
    wrong_types = {**good, "seq": 91, "epoch": "one"}
    nan = telemetry("dev-h", 92).to_json()
    first_feature = nan.index('"features":[[') + len('"features":[[')
    nan = nan[:first_feature] + "NaN" + nan[nan.index(",", first_feature) :]
    oversized = telemetry("dev-h", 93, n=1001).to_json().encode()
    mismatched = {**good, "seq": 94, "features": good["features"][:-1]}
    other_device = telemetry("dev-good", 99).to_json().encode()  # on dev-h's topic
    long_id = topics.root + "/dev/" + "x" * 70 + "/telemetry"
    return [
        (t, random_bytes, random_reason, "dev-h"),
        (t, json.dumps(wrong_types).encode(), "wrong_type", "dev-h"),
        (t, nan.encode(), "not_finite", "dev-h"),
        (t, oversized, "batch_too_large", "dev-h"),
        (t, json.dumps(mismatched).encode(), "length_mismatch", "dev-h"),
        (long_id, telemetry("dev-h", 95).to_json().encode(), "bad_device_id", None),
        (t, other_device, "device_mismatch", "dev-h"),
        (t, b"{" + b" " * 10_000_000 + b"}", "too_large", "dev-h"),
    ]


def test_hostile_telemetry_is_counted_dead_lettered_and_survived(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    keep = 4
    hostile = _hostile(topics)
    with running_hub(
        broker, topics, store, heavy, config=IngestConfig(dead_letter_keep=keep)
    ) as hub:
        device_client.send(telemetry("dev-h", 1))
        for seq, (topic, payload, _, _) in enumerate(hostile, start=1):
            device_client.send(telemetry("dev-good", seq))
            device_client.publish(topic, payload)
        device_client.send(telemetry("dev-h", 2))
        device_client.send(telemetry("dev-good", len(hostile) + 1))
        device_client.wait_for("ack of dev-good", acked("dev-good", len(hostile) + 1))
        device_client.wait_for("ack of dev-h", acked("dev-h", 2))
        wait_until(
            "every hostile message counted",
            lambda: sum(hub.worker.stats().invalid.values()) == len(hostile),
        )
        assert hub.worker.running and hub.link.connected.is_set()
        stats = hub.worker.stats()

    expected: dict[str, int] = {}
    for _, _, reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats.invalid == expected
    per_device = {k: v for k, v in store.counters("dev-h").items() if k.startswith("invalid:")}
    assert per_device == {f"invalid:{r}": n for r, n in expected.items() if r != "bad_device_id"}
    assert store.counters()["invalid:bad_device_id"] == 1
    # None of it stored; all the good data around it stored.
    assert sorted(r.seq for r in stored_rows(store, "dev-h")) == [1, 2]
    good = stored_rows(store, "dev-good")
    assert sorted(r.seq for r in good) == list(range(1, len(hostile) + 2))
    assert store.gaps() == [] and store.watermark("dev-good", 1) == len(hostile) + 1
    assert {d.device for d in store.devices()} == {"dev-h", "dev-good"}
    # Dead letters: bounded, newest first, heads cut to 1 KiB, sizes kept.
    letters = store.dead_letters(limit=100)
    assert [d.reason for d in letters] == [r for _, _, r, _ in reversed(hostile)][:keep]
    assert all(len(d.payload_head) <= 1024 for d in letters)
    huge = letters[0]
    assert (huge.reason, huge.payload_size, huge.device) == ("too_large", 10_000_002, "dev-h")
    assert huge.payload_head == (b"{" + b" " * 1023)


def test_a_store_failure_is_retried_once_and_loses_nothing(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    failing = cast(Store, FailingStore(store, failures=1))
    with running_hub(broker, topics, failing, heavy) as hub:
        for seq in range(1, 6):
            device_client.send(telemetry("dev-a", seq))
        device_client.wait_for("ack 5", acked("dev-a", 5))
        stats = settled(hub.worker, "5 messages counted", lambda s: s.stored_messages == 5)
    assert sorted(r.seq for r in stored_rows(store, "dev-a")) == [1, 2, 3, 4, 5]
    assert stats.ingest_errors == 1 and stats.dropped == {} and stats.stored_messages == 5
    assert store.counters()["ingest_errors"] == 1
    assert store.dead_letters() == []


def test_a_batch_the_store_refuses_twice_is_dead_lettered_unacked_and_taken_when_resent(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    failing = cast(Store, FailingStore(store, failures=2))
    with running_hub(broker, topics, failing, heavy) as hub:
        device_client.send(telemetry("dev-a", 1))
        wait_until("the dead letter", lambda: len(store.dead_letters()) == 1)
        assert not [m for m in device_client.messages if isinstance(m, Ack)]
        device_client.send(telemetry("dev-a", 1))  # the device resends what was never acked
        device_client.wait_for("ack 1", acked("dev-a", 1))
        stats = settled(hub.worker, "the resent message counted", lambda s: s.stored_messages == 1)
    (letter,) = store.dead_letters()
    assert (letter.reason, letter.device) == ("store_error", "dev-a")
    assert stats.ingest_errors == 2 and stats.dropped == {"store_error": 1}
    assert [r.seq for r in stored_rows(store, "dev-a")] == [1]


def test_stop_stores_everything_already_queued(
    broker: BrokerEndpoint, topics: Topics, store: SQLiteStore, heavy: OnnxScorer
) -> None:
    link = HubLink(hub_endpoint(broker), topics, client_id="hub-drain")
    worker = IngestWorker(
        store, link, heavy, "1.0.0", topics, config=IngestConfig(batch_max_messages=7)
    )
    link.start(timeout=WAIT)
    sender = Client(broker, topics)
    try:
        for seq in range(1, 41):
            sender.send(telemetry("dev-a", seq))
        wait_until("40 messages queued", lambda: link.queue.qsize() == 40)
        worker.start()
        assert worker.stop(timeout=WAIT)
    finally:
        sender.close()
        link.close()
    assert store.watermark("dev-a", 1) == 40
    stats = worker.stats()
    assert (stats.stored_messages, stats.queue_depth, stats.running) == (40, 0, False)
    assert stats.batches >= 40 // 7


def test_messages_sent_while_the_hub_restarts_wait_for_it_in_its_session(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    """clean_session=False: the broker queues QoS 1 messages for the hub while it is away."""
    with running_hub(broker, topics, store, heavy, client_id="hub-restart"):
        device_client.send(telemetry("dev-a", 1))
        device_client.wait_for("ack 1", acked("dev-a", 1))
    for seq in range(2, 12):
        device_client.send(telemetry("dev-a", seq))  # the hub is down
    with running_hub(broker, topics, store, heavy, client_id="hub-restart") as hub:
        device_client.wait_for("ack 11", acked("dev-a", 11))
        settled(hub.worker, "10 messages counted", lambda s: s.stored_messages == 10)
    assert sorted(r.seq for r in stored_rows(store, "dev-a")) == list(range(1, 12))
