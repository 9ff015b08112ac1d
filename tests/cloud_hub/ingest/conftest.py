"""Fixtures for ingest tests: a real hub link, worker and SQLite store on a real broker.

Every test gets its own topic root and its own hub client id, so nothing of
one test (retained births, a persistent session) reaches another.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.devices.tracker import StateTracker
from cloud_hub.inference import OnnxScorer
from cloud_hub.ingest import HubLink, IngestConfig, IngestStats, IngestWorker
from cloud_hub.ingest.heavy import HeavyModels
from cloud_hub.ingest.worker import TelemetryObserver
from cloud_hub.store.base import Store
from cloud_hub.store.sqlite import SQLiteStore
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from shared.messages import Message, Telemetry, decode, encode
from shared.topics import Topics
from simulators import harness
from tests.brokers import HUB_SECRET, HUB_USER
from tests.conftest import ModelPaths

WAIT = 30.0
N_FEATURES = 32
N_CLASSES = 3


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``check`` (a store or stats read: nothing to await) until true, or fail the test."""
    try:
        harness.wait_until(what, check, timeout=timeout, interval=0.02)
    except harness.WaitTimeoutError as exc:
        raise AssertionError(str(exc)) from None


def settled(worker: IngestWorker, what: str, check: Callable[[IngestStats], bool]) -> IngestStats:
    """The worker's stats once ``check`` holds.

    A batch's acks go out as soon as its write is durable, before its counters
    are added up, so an ack seen on the wire is no barrier for the stats.
    """
    wait_until(what, lambda: check(worker.stats()))
    return worker.stats()


def hub_endpoint(broker: BrokerEndpoint) -> BrokerEndpoint:
    return dataclasses.replace(broker, username=HUB_USER, password=HUB_SECRET)


class FailingStore:
    """The real store, whose ``method`` raises the first ``failures`` times (the fault)."""

    def __init__(self, inner: Store, failures: int, method: str = "write_stream") -> None:
        self.inner = inner
        self.failures = failures
        self.method = method

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name != self.method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error (injected)")
            return real(*args, **kwargs)

        call.__name__ = name
        return call


@dataclasses.dataclass
class Hub:
    link: HubLink
    worker: IngestWorker
    store: Store
    topics: Topics
    heavy: OnnxScorer


@contextmanager
def running_hub(
    broker: BrokerEndpoint,
    topics: Topics,
    store: Store,
    heavy: OnnxScorer,
    *,
    config: IngestConfig | None = None,
    client_id: str | None = None,
    max_payload_bytes: int | None = None,
    heavy_models: HeavyModels | None = None,
    observer: TelemetryObserver | None = None,
    states: StateTracker | None = None,
) -> Iterator[Hub]:
    client_id = client_id or f"hub-{uuid.uuid4().hex[:8]}"
    size = {} if max_payload_bytes is None else {"max_payload_bytes": max_payload_bytes}
    link = HubLink(hub_endpoint(broker), topics, client_id=client_id, **size)
    worker = IngestWorker(
        store,
        link,
        heavy,
        "1.0.0",
        topics,
        config=config,
        heavy_models=heavy_models,
        observer=observer,
        states=states,
    )
    worker.start()
    link.start(timeout=WAIT)
    try:
        yield Hub(link, worker, store, topics, heavy)
    finally:
        worker.stop(timeout=10)
        link.close()


class Client:
    """A plain MQTT client for tests: publishes crafted payloads, records what it is sent."""

    def __init__(
        self, endpoint: BrokerEndpoint, topics: Topics, subscribe: tuple[str, ...] = ()
    ) -> None:
        self.topics = topics
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(endpoint.username, endpoint.password)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)

        def on_connect(c: mqtt.Client, *_: Any) -> None:
            if subscribe:
                c.subscribe([(f, 1) for f in subscribe])
            else:
                subscribed.set()

        client.on_connect = on_connect
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        self.client = client
        assert subscribed.wait(WAIT), "test client never connected"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            decoded = decode(self.topics.parse(msg.topic).kind, bytes(msg.payload))
        except Exception:
            return
        with self._cond:
            self.messages.append(decoded)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def send(self, msg: Message) -> None:
        self.publish(self.topics.topic(msg.device, msg.kind), encode(msg))

    def wait_for(self, what: str, predicate: Callable[[list[Message]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.messages), WAIT), (
                f"timed out waiting for {what}; got {self.messages[-5:]}"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def telemetry(device: str, seq: int, n: int = 5, epoch: int = 1, seed: int = 0) -> Telemetry:
    """A valid telemetry message with ``n`` readings of plausible features."""
    rng = np.random.default_rng(seed * 100_003 + seq)
    scores = rng.random((n, N_CLASSES)).astype(np.float32)
    scores /= scores.sum(axis=1, keepdims=True)
    return Telemetry(
        device=device,
        epoch=epoch,
        seq=seq,
        model_version="1.0.0",
        ts=1_700_000_000.0 + seq * 10 + np.arange(n, dtype=np.float64) * 0.01,
        features=rng.normal(size=(n, N_FEATURES)).astype(np.float32),
        scores=scores,
        model="machine-edge",
    )


@pytest.fixture
def topics() -> Topics:
    return Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "hub.db") as s:
        yield s


@pytest.fixture(scope="session")
def heavy(model_packages: ModelPaths) -> OnnxScorer:
    return OnnxScorer.from_package(load_package(model_packages.heavy))


@pytest.fixture
def hub(
    broker: BrokerEndpoint, topics: Topics, store: SQLiteStore, heavy: OnnxScorer
) -> Iterator[Hub]:
    with running_hub(broker, topics, store, heavy) as h:
        yield h


@pytest.fixture
def device_client(broker: BrokerEndpoint, topics: Topics) -> Iterator[Client]:
    """Publishes as a device would (user ``edgeloop``) and records every ack it is sent."""
    c = Client(broker, topics, subscribe=(f"{topics.root}/dev/+/ack",))
    yield c
    c.close()
