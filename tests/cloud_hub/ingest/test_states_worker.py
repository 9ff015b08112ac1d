"""Device states as the ingest worker judges them, on a real broker and store: a
device resending what the hub already has is buffering, a deep outbox keeps it
so, a quiet heartbeat brings it back online, its will takes it offline."""

from __future__ import annotations

import time
from typing import cast

import pytest

from cloud_hub.devices.states import StateRules
from cloud_hub.devices.tracker import StateTracker
from cloud_hub.inference import OnnxScorer
from cloud_hub.store.base import Store
from cloud_hub.store.sqlite import SQLiteStore
from shared.endpoint import BrokerEndpoint
from shared.messages import Ack, Health, Status
from shared.topics import Topics
from tests.cloud_hub.ingest.conftest import (
    Client,
    FailingStore,
    running_hub,
    telemetry,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def _health(outbox_depth: int = 0) -> Health:
    return Health(
        "dev-a", 1, 1, time.time(), "m", "1.0.0", 1.0, 5, 90.0, 150.0, 1.0, 30.0, outbox_depth, 1
    )


def test_resends_and_a_deep_outbox_are_buffering_then_online_then_offline(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    rules = StateRules(
        stale_after_s=60.0, buffering_outbox_messages=100, degraded_clear_heartbeats=1
    )
    tracker = StateTracker(store, rules)

    def judged() -> tuple[str | None, str | None]:
        record = store.device("dev-a")
        return (None, None) if record is None else (record.judged_state, record.state_reason)

    def changes() -> list[tuple[str, str]]:
        page = store.device_state_events("dev-a", 0.0, 1e12, 100)
        return [(e.state, e.reason) for e in page.items]

    with running_hub(broker, topics, store, heavy, states=tracker):
        send = device_client.send
        send(Status("dev-a", 1, 0, "online", "0.1.0", "1.0.0", time.time(), "m"))
        send(telemetry("dev-a", 1))
        device_client.wait_for("ack 1", lambda msgs: Ack("dev-a", 1, 1) in msgs)
        send(_health())
        send(telemetry("dev-a", 1))  # sent again: the hub has it
        wait_until("the duplicate", lambda: store.counters("dev-a").get("duplicates") == 1)
        send(_health())
        wait_until("buffering", lambda: len(changes()) == 2)
        send(_health(outbox_depth=500))  # still buffering, for another reason: no new event
        deep = ("buffering", "outbox 500 messages > 100")
        wait_until("the deep outbox's reason", lambda: judged() == deep)
        assert len(changes()) == 2
        send(_health())
        wait_until("online again", lambda: len(changes()) == 3)
        send(Status("dev-a", 1, 1, "offline", "0.1.0", "1.0.0", time.time() - 60, "m"))
        wait_until("offline", lambda: len(changes()) == 4)
    got = changes()
    assert [s for s, _ in got] == ["online", "buffering", "online", "offline"], got
    assert got[0][1] == "birth: agent 0.1.0, model m 1.0.0"
    assert got[1][1] == "resending: 1 message the hub already had"
    assert got[2][1].startswith("heartbeat: no new errors")
    assert got[3][1].startswith("its last will: the connection dropped")
    counters = store.counters("dev-a")
    assert counters["device_state:buffering"] == 1 and counters["device_state:online"] == 2
    record = store.device("dev-a")
    assert record is not None and record.judged_state == "offline"


def test_a_state_change_the_store_failed_to_take_is_stored_at_the_next_batch(
    broker: BrokerEndpoint,
    topics: Topics,
    store: SQLiteStore,
    heavy: OnnxScorer,
    device_client: Client,
) -> None:
    tracker = StateTracker(store, StateRules(stale_after_s=60.0))
    failing = cast(Store, FailingStore(store, 1, "record_device_states"))
    with running_hub(broker, topics, failing, heavy, states=tracker):
        send = device_client.send
        send(Status("dev-a", 1, 0, "online", "0.1.0", "1.0.0", time.time(), "m"))
        wait_until("the failed write", lambda: store.counters().get("ingest_errors") == 1)
        assert store.device_state_events("dev-a", 0.0, 1e12, 10).items == []
        send(telemetry("dev-a", 1))
        wait_until("online", lambda: store.device("dev-a").judged_state == "online")  # type: ignore[union-attr]
    (event,) = store.device_state_events("dev-a", 0.0, 1e12, 10).items
    assert (event.previous, event.state) == ("never_seen", "online")
    assert event.reason == "birth: agent 0.1.0, model m 1.0.0"
