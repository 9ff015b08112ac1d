"""The agent against real brokers: amqtt in its own process, and Mosquitto.

Each test uses its own topic root, so nothing leaks between tests. The agent
runs as a real process (``python -m edge_agent``) where a signal matters, and
in-process where the test must see the simulated machine it drives.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.pipeline.build import DEFAULT_VERSION, EDGE_NAME
from edge_agent.actuators import LogActuator, MachineActuator
from edge_agent.agent import Agent
from edge_agent.engine import load_edge_model
from edge_agent.settings import load_settings
from edge_agent.sources.base import Reading
from shared import __version__
from shared.endpoint import BrokerEndpoint
from shared.features import features_for_stream
from shared.messages import (
    Ack,
    Dropped,
    Event,
    Health,
    Message,
    Status,
    Telemetry,
    decode,
    encode,
)
from shared.topics import EDGE_TO_HUB, Kind, Topics
from simulators.generate import write_csv
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import SENSOR_NAMES, SENSORS
from tests.brokers import HUB_SECRET, HUB_USER
from tests.conftest import ModelPaths, StartAgent

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0


class Recorder:
    """A subscriber that keeps every decoded message of one device, in arrival order.

    It logs in as the hub (only the hub's account may read a device's edge topics);
    ``endpoint`` stays the agents' account."""

    def __init__(self, endpoint: BrokerEndpoint, topics: Topics, device: str) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self.messages: list[Message] = []
        self.undecodable: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rec-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(HUB_USER, HUB_SECRET)
        filters = [(topics.topic(device, kind), 1) for kind in sorted(EDGE_TO_HUB)]
        client.on_connect = lambda c, *_: c.subscribe(filters)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        self.client = client
        assert self._subscribed.wait(WAIT), "recorder never subscribed"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            decoded = decode(self.topics.parse(msg.topic).kind, bytes(msg.payload))
        except Exception:
            with self._cond:
                self.undecodable.append((msg.topic, bytes(msg.payload)))
            return
        with self._cond:
            self.messages.append(decoded)
            self._cond.notify_all()

    def wait_for(
        self, what: str, predicate: Callable[[list[Message]], bool], timeout: float = WAIT
    ) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                kinds = [type(m).__name__ for m in self.messages[-10:]]
                raise AssertionError(f"timed out waiting for {what}; last messages: {kinds}")

    def of(self, cls: type[Any]) -> list[Any]:
        with self._cond:
            return [m for m in self.messages if isinstance(m, cls)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _count(cls: type[Any], n: int) -> Callable[[list[Message]], bool]:
    return lambda msgs: sum(isinstance(m, cls) for m in msgs) >= n


def _status(state: str) -> Callable[[list[Message]], bool]:
    return lambda msgs: any(isinstance(m, Status) and m.state == state for m in msgs)


def _stream_seqs(rec: Recorder) -> list[int]:
    return [m.seq for m in rec.messages if isinstance(m, (Telemetry, Event))]


def _check_stream(rec: Recorder, *, complete: bool, log: str = "") -> None:
    """Stream seqs arrived once each, in order within each kind, without a gap.

    An urgent event may overtake telemetry staged before it (the outbox sends
    events first), so across kinds the arrival order is not the seq order. With
    ``complete`` every seq up to the last arrived; else (the agent was killed)
    every seq up to the last telemetry that arrived (an event may have overtaken
    telemetry that was written but not yet sent).
    """
    seqs = _stream_seqs(rec)
    assert len(set(seqs)) == len(seqs), f"a stream seq arrived twice: {seqs[:40]}\n{log}"
    for kind in (Telemetry, Event):
        mine = [m.seq for m in rec.messages if isinstance(m, kind)]
        assert mine == sorted(mine), f"{kind.__name__} out of order: {mine[:40]}\n{log}"
    telemetry = [m.seq for m in rec.messages if isinstance(m, Telemetry)]
    upto = max(seqs, default=0) if complete else max(telemetry, default=0)
    missing = sorted(set(range(1, upto + 1)) - set(seqs))
    assert not missing, f"stream seqs missing: {missing[:40]}; arrived {seqs[:40]}\n{log}"


@pytest.fixture
def topics() -> Topics:
    return Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")


@pytest.fixture
def recorder(broker: BrokerEndpoint, topics: Topics) -> Iterator[Recorder]:
    rec = Recorder(broker, topics, "dev-a")
    yield rec
    rec.close()


def test_birth_stream_in_order_urgent_events_and_will_after_sigkill(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
) -> None:
    proc = start_agent(
        broker,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "200",
        "--sim-urgent-rate",
        "0.02",
        "--max-batch",
        "10",
        "--max-delay-ms",
        "200",
        "--heartbeat-s",
        "0.5",
    )
    try:
        recorder.wait_for("birth", _status("online"))
        recorder.wait_for("telemetry", _count(Telemetry, 20))
        recorder.wait_for("an urgent event", _count(Event, 1))
        recorder.wait_for("a heartbeat", _count(Health, 1))
        proc.send_signal(signal.SIGKILL)
        recorder.wait_for("the will", _status("offline"))
    finally:
        proc.kill()
        log = proc.output()
    birth = next(m for m in recorder.of(Status) if m.state == "online")
    will = next(m for m in recorder.of(Status) if m.state == "offline")
    assert (birth.agent_version, birth.model_version) == (__version__, DEFAULT_VERSION)
    assert birth.epoch >= 1 and will.epoch == birth.epoch
    assert not will.clean  # a will never says it was a clean stop
    # Wire v2: birth, will, every heartbeat and every telemetry batch name the model.
    running = (EDGE_NAME, DEFAULT_VERSION)
    named = [*recorder.of(Status), *recorder.of(Health), *recorder.of(Telemetry)]
    assert named and {(m.model, m.model_version) for m in named} == {running}
    _check_stream(recorder, complete=False, log=log)
    for t in recorder.of(Telemetry):
        assert t.features.shape == (len(t), 32) and t.scores.shape == (len(t), 3)
        assert np.allclose(t.scores.sum(axis=1), 1.0, atol=1e-3)
    events = recorder.of(Event)
    assert all(
        e.rule in ("score", "hard_limit") and e.action == "log" and e.action_ok for e in events
    )
    assert not recorder.undecodable


def test_finite_run_delivers_every_reading_then_exits_zero(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
) -> None:
    proc = start_agent(
        broker,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "1000",
        "--readings",
        "777",
        "--max-batch",
        "50",
    )
    try:
        assert proc.wait(WAIT) == 0, proc.output()
        recorder.wait_for("the offline status", _status("offline"))
    finally:
        proc.kill()
        log = proc.output()
    assert sum(len(t) for t in recorder.of(Telemetry)) == 777, log
    _check_stream(recorder, complete=True, log=log)
    # A clean stop says so, so a hub hearing it late does not take it for a will.
    assert [m.clean for m in recorder.of(Status) if m.state == "offline"] == [True]


def test_sigterm_flushes_publishes_offline_and_exits_zero(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
) -> None:
    proc = start_agent(
        broker,
        topics,
        "--source",
        "stdin",
        "--max-delay-ms",
        "60000",
        "--heartbeat-s",
        "0.2",
        stdin_pipe=True,
    )
    try:
        recorder.wait_for("birth", _status("online"))
        assert proc.stdin is not None
        for i in range(7):
            proc.stdin.write(
                f'{{"ts": {1000 + i}, "values": [65, 2.5, 6, 18, 1800, 50, 100, 75]}}\n'.encode()
            )
        proc.stdin.flush()
        # The agent has read all 7 once a heartbeat says so; their batch stays open (60 s).
        recorder.wait_for(
            "a heartbeat after 7 readings",
            lambda msgs: any(isinstance(m, Health) and m.readings == 7 for m in msgs),
        )
        assert not recorder.of(Telemetry)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        recorder.wait_for("the offline status", _status("offline"))
    finally:
        proc.kill()
        log = proc.output()
    batches = recorder.of(Telemetry)
    assert sum(len(t) for t in batches) == 7, log
    assert [float(x) for t in batches for x in t.ts] == [1000.0 + i for i in range(7)]


def test_garbage_on_subscribed_topics_is_counted_and_survived(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
) -> None:
    proc = start_agent(
        broker,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "50",
        "--max-batch",
        "5",
        "--heartbeat-s",
        "0.3",
    )
    ack, desired = topics.topic("dev-a", Kind.ACK), topics.topic("dev-a", Kind.DESIRED)
    garbage: list[tuple[str, bytes]] = [
        (ack, b"\xff\xfe not utf-8"),
        (ack, b"{not json"),
        (ack, b"[1, 2, 3]"),
        (ack, b'{"v": 99, "device": "dev-a", "epoch": 1, "seq": 1}'),
        (ack, b'{"v": 2, "device": "dev-a", "epoch": "one", "seq": 1}'),
        (ack, b'{"v": 2, "device": "someone-else", "epoch": 1, "seq": 1}'),
        (desired, b'{"v": 2, "device": "dev-a", "ts": NaN}'),
        (desired, b"x" * 2_000_000),
        (desired, b""),
    ]
    try:
        recorder.wait_for("birth", _status("online"))
        recorder.wait_for("telemetry", _count(Telemetry, 2))
        for topic, payload in garbage:
            recorder.client.publish(topic, payload, qos=1).wait_for_publish(WAIT)

        def counted(msgs: list[Message]) -> bool:
            beats = [m for m in msgs if isinstance(m, Health)]
            return bool(beats) and sum(beats[-1].invalid.values()) >= len(garbage)

        recorder.wait_for("a heartbeat counting every bad message", counted)
        seen = len(recorder.of(Telemetry))
        recorder.wait_for("telemetry after the garbage", _count(Telemetry, seen + 3))
        assert proc.poll() is None, "the agent died"
    finally:
        proc.kill()
        log = proc.output()
    invalid = recorder.of(Health)[-1].invalid
    for reason in (
        "not_utf8",
        "not_json",
        "not_object",
        "unknown_version",
        "wrong_type",
        "device_mismatch",
        "too_large",
    ):
        assert invalid.get(reason, 0) >= 1, (reason, invalid, log)


class _InjectingSource:
    """The simulated machine, with an overheat injected just before reading ``at``."""

    def __init__(self, machine: SimulatedMachine, at: int, total: int) -> None:
        self.machine, self.at, self.total = machine, at, total
        self.invalid: dict[str, int] = {}

    def readings(self, stop: threading.Event) -> Iterator[Reading]:
        for i in range(self.total):
            if stop.is_set():
                return
            if i == self.at:
                self.machine.inject_urgent("overheat")
            yield Reading(time.time(), self.machine.step().values)


def test_injected_urgent_condition_stops_machine_before_next_reading_and_is_sent(
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    settings = load_settings(
        [
            "--device",
            "dev-a",
            "--root",
            topics.root,
            "--model",
            str(model_packages.edge),
            "--state-dir",
            str(tmp_path),
            "--actions",
            "machine",
            "--max-batch",
            "10",
        ],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    machine = SimulatedMachine(MachineConfig(seed=3, urgent_rate=0.0, fault_rate=0.0))
    agent = Agent(
        settings,
        load_edge_model(model_packages.edge, __version__),
        _InjectingSource(machine, 60, 120),
        [MachineActuator(machine)],
    )
    assert agent.run(threading.Event()) == 0
    kinds = [
        (kind, index) for kind, index, _ in machine.log if kind in ("inject", "stop", "reading")
    ]
    stop_at = kinds.index(next(k for k in kinds if k[0] == "stop"))
    # The overheat shows on reading 60; the stop is logged after reading 60 and
    # before reading 61 was produced.
    assert kinds[stop_at] == ("stop", 60)
    assert kinds[stop_at - 1] == ("reading", 60) and kinds[stop_at + 1] == ("reading", 61)
    recorder.wait_for("the urgent event", _count(Event, 1))
    event = recorder.of(Event)[0]
    assert (event.rule, event.sensor, event.action, event.action_ok) == (
        "hard_limit",
        "temperature",
        "machine",
        True,
    )
    assert event.value is not None and event.value > 110


class _ListSource:
    """Readings given in advance, as they are."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows
        self.invalid: dict[str, int] = {}

    def readings(self, stop: threading.Event) -> Iterator[Reading]:
        for row in self.rows:
            if stop.is_set():
                return
            yield Reading(time.time(), row)


def test_every_urgent_cause_gets_its_own_action_and_event(
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    nominal = np.array([s.fallback for s in SENSORS])

    def reading(**values: float) -> np.ndarray:
        row = nominal.copy()
        for name, value in values.items():
            row[SENSOR_NAMES.index(name)] = value
        return row

    rows = (
        [nominal] * 20
        + [reading(temperature=120.0, vibration=20.0)] * 4  # two causes start together
        + [nominal] * 5  # both back inside: re-armed
        + [reading(vibration=21.0)] * 3
        + [reading(vibration=21.0, temperature=125.0)] * 3  # an escalation mid-episode
        + [nominal] * 5
    )
    settings = load_settings(
        [
            "--device",
            "dev-a",
            "--root",
            topics.root,
            "--model",
            str(model_packages.edge),
            "--state-dir",
            str(tmp_path),
            "--actions",
            "log",
        ],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    agent = Agent(
        settings,
        load_edge_model(model_packages.edge, __version__),
        _ListSource(rows),
        [LogActuator()],
    )
    assert agent.run(threading.Event()) == 0
    want = [
        ("temperature", 120.0),
        ("vibration", 20.0),
        ("vibration", 21.0),
        ("temperature", 125.0),
    ]
    recorder.wait_for(
        "an event per cause",
        lambda msgs: sum(isinstance(m, Event) and m.rule == "hard_limit" for m in msgs) >= 4,
    )
    events = recorder.of(Event)
    limits = [e for e in events if e.rule == "hard_limit"]
    assert [(e.sensor, e.value) for e in limits] == want
    assert all((e.action, e.action_ok) == ("log", True) for e in events)
    assert len({e.seq for e in events}) == len(events)  # each its own message
    assert limits[0].ts == limits[1].ts  # the two that started on one reading


def test_heartbeat_counts_inputs_per_sensor_and_out_of_range_is_not_urgent(
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    nominal = np.array([s.fallback for s in SENSORS])
    broken = nominal.copy()
    broken[SENSOR_NAMES.index("temperature")] = 9999.0  # beyond the valid range: a sensor error
    unseen = nominal.copy()
    unseen[SENSOR_NAMES.index("speed")] = 5500.0  # valid, but far beyond the training data
    dropout = nominal.copy()
    dropout[SENSOR_NAMES.index("flow")] = np.nan
    rows = [nominal] * 10 + [broken] * 3 + [unseen] * 2 + [dropout] * 4 + [nominal] * 5
    settings = load_settings(
        [
            *("--device", "dev-a", "--root", topics.root, "--model", str(model_packages.edge)),
            *("--state-dir", str(tmp_path), "--actions", "log"),
        ],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    model = load_edge_model(model_packages.edge, __version__)
    agent = Agent(settings, model, _ListSource(rows), [LogActuator()])
    assert agent.run(threading.Event()) == 0
    recorder.wait_for("the last heartbeat", lambda msgs: any(isinstance(m, Health) for m in msgs))
    invalid = recorder.of(Health)[-1].invalid
    assert invalid["out_of_range:temperature"] == 3
    assert invalid["out_of_distribution:speed"] == 2
    assert invalid["missing:flow"] == 4
    # 9999 degC is a broken sensor, not an overheating machine: no hard-limit event for it.
    assert not [e for e in recorder.of(Event) if e.rule == "hard_limit"]


def _slow_acks(rec: Recorder, stop: threading.Event, step: int, every_s: float) -> None:
    """Ack the stream as a slow hub would: ``step`` seqs more every ``every_s`` seconds."""
    acked = 0
    while not stop.wait(every_s):
        sent = rec.of(Telemetry)
        if sent and acked < sent[-1].seq:
            acked = min(acked + step, sent[-1].seq)
            ack = Ack("dev-a", sent[-1].epoch, acked)
            rec.client.publish(rec.topics.topic("dev-a", Kind.ACK), encode(ack), qos=1)


@pytest.mark.parametrize("hub_acks", [True, False])
def test_a_finite_source_waits_while_acks_come_and_warns_of_what_stays_unacked(
    *,
    broker: BrokerEndpoint,
    topics: Topics,
    recorder: Recorder,
    model_packages: ModelPaths,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    hub_acks: bool,
) -> None:
    # A fast CSV run ended 5 s (--shutdown-timeout-s) after its last reading while the
    # hub was still acking: 7604 messages stayed unacked, said in one INFO line.
    readings = 30
    settings = load_settings(
        [
            *("--device", "dev-a", "--root", topics.root, "--model", str(model_packages.edge)),
            *("--state-dir", str(tmp_path), "--actions", "log", "--max-batch", "1"),
            *("--shutdown-timeout-s", "1"),
        ],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    model = load_edge_model(model_packages.edge, __version__)
    rows = [np.array([s.fallback for s in SENSORS])] * readings
    agent = Agent(settings, model, _ListSource(rows), [LogActuator()])
    stop_acks = threading.Event()
    # 3 seqs every 0.3 s: about 3 s for all, longer than --shutdown-timeout-s 1.
    acker = threading.Thread(target=_slow_acks, args=(recorder, stop_acks, 3, 0.3), daemon=True)
    if hub_acks:
        acker.start()
    try:
        with caplog.at_level(logging.INFO, logger="edge_agent.agent"):
            assert agent.run(threading.Event()) == 0
    finally:
        stop_acks.set()
        if hub_acks:
            acker.join(5.0)
    unacked = [r for r in caplog.records if "not yet acked" in r.getMessage()]
    if hub_acks:
        assert not unacked, unacked[0].getMessage()
        return
    assert len(unacked) == 1 and unacked[0].levelno == logging.WARNING
    line = unacked[0].getMessage()
    assert f"{readings} messages not yet acked" in line, line
    assert "no ack came for --shutdown-timeout-s" in line and "now 1 s" in line, line


def test_csv_replay_gives_the_same_predictions_as_the_model_called_directly(
    start_agent: StartAgent,
    topics: Topics,
    recorder: Recorder,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    csv_path = tmp_path / "recorded.csv"
    write_csv(csv_path, MachineConfig(seed=11, urgent_rate=0.01, fault_rate=0.005), 240)
    proc = start_agent(
        recorder.endpoint,
        topics,
        "--source",
        "csv",
        "--csv-path",
        str(csv_path),
        "--csv-pace",
        "fast",
        "--max-batch",
        "32",
    )
    try:
        assert proc.wait(WAIT) == 0, proc.output()
        recorder.wait_for("the offline status", _status("offline"))
    finally:
        proc.kill()
        log = proc.output()
    batches = sorted(recorder.of(Telemetry), key=lambda t: t.seq)
    got_features = np.concatenate([t.features for t in batches])
    got_scores = np.concatenate([t.scores for t in batches])
    import csv  # noqa: PLC0415

    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))

    values = np.array([[float(r[s]) if r[s] else np.nan for s in SENSOR_NAMES] for r in rows])
    model = load_edge_model(model_packages.edge, __version__)
    features = features_for_stream(
        values, model.manifest.input.window, model.manifest.input.fallback
    )
    expected = np.stack([model.score(f) for f in features])
    assert got_features.shape == features.shape, log
    assert np.array_equal(got_features, features)
    assert np.array_equal(got_scores, expected)


@pytest.mark.timeout(120)
def test_agent_rides_out_a_broker_outage_with_a_bounded_queue(
    start_agent: StartAgent, embedded_broker: Any, topics: Topics
) -> None:
    endpoint: BrokerEndpoint = embedded_broker.endpoint("edgeloop", "edgeloop-test-secret")
    recorder = Recorder(endpoint, topics, "dev-a")
    proc = start_agent(
        endpoint,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "200",
        "--max-batch",
        "10",
        "--outbox-max",
        "5",
        "--heartbeat-s",
        "0.5",
        "--reconnect-min-s",
        "1",
        "--reconnect-max-s",
        "2",
    )
    try:
        recorder.wait_for("telemetry", _count(Telemetry, 3))
        recorder.close()
        embedded_broker.kill()
        time.sleep(3)  # the outage itself: ~600 readings = 60 batches against an outbox of 5
        assert proc.poll() is None, "the agent died with the broker"
        embedded_broker.start()
        recorder = Recorder(endpoint, topics, "dev-a")

        def dropped_reported(msgs: list[Message]) -> bool:
            return any(
                isinstance(m, Health) and m.dropped.get("outbox_full_messages", 0) > 0 for m in msgs
            )

        recorder.wait_for("a heartbeat reporting the dropped batches", dropped_reported, timeout=60)
        recorder.wait_for("a declaration of the dropped seqs", _count(Dropped, 1))
        recorder.wait_for("telemetry after the outage", _count(Telemetry, 3))
        assert proc.poll() is None
    finally:
        recorder.close()
        proc.kill()
        log = proc.output()
    beat = next(m for m in reversed(recorder.of(Health)) if m.dropped.get("outbox_full_messages"))
    # Bounded: whatever the outage, at most outbox_max messages are held; each
    # dropped one is declared with the readings it carried.
    assert beat.dropped["outbox_full_readings"] == 10 * beat.dropped["outbox_full_messages"], log
    declared = recorder.of(Dropped)
    assert all(d.reason == "outbox_full" and set(d.readings) == {10} for d in declared), log
    assert all(d.epoch == beat.epoch for d in declared)
    assert beat.outbox_depth <= 5
