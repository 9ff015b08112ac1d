"""The ingest worker's observer (the hub's drift monitor): it is told of every newly
stored telemetry message once, duplicates excluded, and its failures never stop ingest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from cloud_hub.drift.monitor import StoredTelemetry
from cloud_hub.inference import OnnxScorer
from cloud_hub.store.base import Store
from shared.endpoint import BrokerEndpoint
from shared.messages import Ack, Message
from shared.topics import Topics
from tests.cloud_hub.ingest.conftest import Client, running_hub, telemetry, wait_until

pytestmark = pytest.mark.timeout(60)

Counts = Counter[tuple[str | None, str]]


def _acked(seq: int) -> Callable[[list[Message]], bool]:
    return lambda msgs: Ack("dev-a", 1, seq) in msgs


class Recording:
    """Records what it is told; counts a figure per message, as the monitor would."""

    def __init__(self) -> None:
        self.seen: list[StoredTelemetry] = []
        self.idle = 0

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        self.seen.extend(batch)
        self.idle += not batch
        return Counter({(m.device, "observed"): 1 for m in batch})


class Failing:
    """A fault: every call raises."""

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        raise RuntimeError("injected observer failure")


def test_the_observer_sees_each_stored_message_once_and_idle_ticks(
    broker: BrokerEndpoint, topics: Topics, store: Store, heavy: OnnxScorer
) -> None:
    observer = Recording()
    with running_hub(broker, topics, store, heavy, observer=observer):
        client = Client(broker, topics, subscribe=(f"{topics.root}/dev/+/ack",))
        try:
            for seq in (1, 2, 2, 3):  # seq 2 twice: a duplicate
                client.send(telemetry("dev-a", seq, n=4))
            client.wait_for("ack 3", _acked(3))
            wait_until("3 observed", lambda: len(observer.seen) == 3)
            wait_until("an idle tick", lambda: observer.idle >= 1, timeout=10)
        finally:
            client.close()
    assert sorted(len(m.features) for m in observer.seen) == [4, 4, 4]
    assert {(m.device, m.model, m.version) for m in observer.seen} == {
        ("dev-a", telemetry("dev-a", 1).model, "1.0.0")
    }
    assert all(m.heavy_scores.shape == (4, 3) for m in observer.seen)
    assert store.counters("dev-a")["duplicates"] == 1


def test_an_observer_that_fails_costs_a_count_not_a_reading(
    broker: BrokerEndpoint, topics: Topics, store: Store, heavy: OnnxScorer
) -> None:
    with running_hub(broker, topics, store, heavy, observer=Failing()) as hub:
        client = Client(broker, topics, subscribe=(f"{topics.root}/dev/+/ack",))
        try:
            for seq in (1, 2, 3):
                client.send(telemetry("dev-a", seq, n=4))
            client.wait_for("ack 3", _acked(3))
        finally:
            client.close()
        wait_until("3 stored", lambda: hub.worker.stats().stored_readings == 12)
        wait_until("errors counted", lambda: hub.worker.stats().ingest_errors >= 1)
