"""The hub keeps its broker and its broker link alive, and says so on ``/healthz``.

A real ``edgeloop-hub serve`` with its embedded broker and real agents: the
broker's process is killed with SIGKILL while the agents read; the hub
restarts it, ``/healthz`` answers 503 naming it during the outage and 200
after, the agents reconnect, and every reading is stored exactly once,
counted through the API. The hub's session taken over by another client with
its client id is noticed, counted and taken back.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.auth import add_user
from cloud_hub.broker.embedded import EmbeddedBroker
from simulators.harness import HUB_USER, AgentProcess, HubProcess, Mosquitto, wait_until
from tests.brokers import HUB_SECRET
from tests.conftest import ModelPaths
from tests.readings import count_readings

AGENTS = 3
READINGS = 600
WAIT = 45.0


def _broker_child(hub: HubProcess) -> int:
    """The pid of the hub's embedded broker process (a child of the hub)."""
    assert hub.pid is not None
    children: list[int] = []
    for task in Path(f"/proc/{hub.pid}/task").iterdir():
        text = (task / "children").read_text()
        children += [int(pid) for pid in text.split()]
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"cloud_hub.broker" in cmdline:
            return pid
    raise AssertionError(f"the hub (pid {hub.pid}) has no broker child among {children}")


def _health(hub: HubProcess) -> tuple[int, dict[str, Any]]:
    reply = hub.api.with_token(None).get("/healthz", timeout=2.0)
    body: dict[str, Any] = reply.json()
    return reply.status, body


class _HealthWatch:
    """Polls ``/healthz`` in a thread and keeps every distinct (status, down) it saw."""

    def __init__(self, hub: HubProcess) -> None:
        self._hub = hub
        self.seen: list[tuple[int, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 2 * WAIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = _health(self._hub)
            except OSError:
                continue
            entry = (status, tuple(body["down"]))
            if not self.seen or self.seen[-1] != entry:
                self.seen.append(entry)
            self._stop.wait(0.05)

    def __enter__(self) -> _HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


@pytest.fixture
def hub(tmp_path: Path, model_packages: ModelPaths) -> Iterator[HubProcess]:
    hub = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        root=f"edgeloop-test/{uuid.uuid4().hex[:8]}",
        log_level="INFO",
    )
    with hub:
        yield hub


@pytest.mark.timeout(120)
def test_a_killed_embedded_broker_is_restarted_and_loses_nothing(
    hub: HubProcess, model_packages: ModelPaths, tmp_path: Path
) -> None:
    status, body = _health(hub)
    assert status == 200 and body["down"] == [], body
    assert set(body["parts"]) == {"broker_link", "embedded_broker"}
    assert body["parts"]["broker_link"]["reason"] is None, body  # no outage yet
    devices = [f"sup-{i}" for i in range(AGENTS)]
    agents = [
        AgentProcess(
            model_packages.edge,
            tmp_path / "agents" / device,
            env=hub.provision(device).agent_env,
            args=(
                "--source",
                "sim",
                "--sim-seed",
                str(i),
                "--rate-hz",
                "50",
                "--readings",
                str(READINGS),
                "--max-batch",
                "10",
                "--max-delay-ms",
                "200",
                "--resend-after-s",
                "5",
                "--reconnect-min-s",
                "1",
                "--reconnect-max-s",
                "2",
                "--shutdown-timeout-s",
                "40",
            ),
            log_level="INFO",
        ).start()
        for i, device in enumerate(devices)
    ]
    try:
        wait_until(
            "readings stored",
            lambda: hub.api.get_json("/v1/stats/ingest")["stored_readings"] > 150,
            timeout=WAIT,
        )
        broker_pid = _broker_child(hub)
        with _HealthWatch(hub) as watch:
            os.kill(broker_pid, signal.SIGKILL)
            wait_until(
                "the hub to see the broker gone", lambda: _health(hub)[0] == 503, timeout=WAIT
            )
            # As the watch saw it, not only this thread: its last entry is then the 200.
            wait_until(
                "the hub to be healthy again",
                lambda: len(watch.seen) > 1 and watch.seen[-1][0] == 200,
                timeout=WAIT,
            )
        for agent in agents:
            assert agent.wait(WAIT) == 0, agent.output()[-3000:]
        stats = hub.api.get_json("/v1/stats/ingest")
        per_device = [count_readings(hub, device) for device in devices]
        status, body = _health(hub)
    finally:
        for agent in agents:
            agent.kill()
    outage = [down for code, down in watch.seen if code == 503]
    assert outage and all(down for down in outage), watch.seen
    assert any("embedded_broker" in down for down in outage), watch.seen
    assert any("broker_link" in down for down in outage), watch.seen
    assert watch.seen[-1] == (200, ()), watch.seen
    assert status == 200, body
    assert _broker_child(hub) != broker_pid
    parts = body["parts"]
    assert parts["embedded_broker"]["counts"] == {"exits": 1, "restarts": 1}, parts
    assert "SIGKILL" in parts["embedded_broker"]["reason"], parts
    assert parts["broker_link"]["counts"] == {"disconnects": 1, "reconnects": 1}, parts
    log = hub.output()
    assert "was killed by SIGKILL" in log and "running again" in log, log[-3000:]
    assert "hub lost its broker link" in log and "is back after" in log, log[-3000:]
    # Produced = stored, reading by reading through the API: nothing lost, nothing twice.
    assert per_device == [READINGS] * AGENTS, (per_device, stats)
    assert stats["stored_readings"] == AGENTS * READINGS, stats
    assert stats["gaps"]["count"] == 0, stats["gaps"]
    assert stats["lost_unexplained_messages"] == 0
    assert stats["counters"].get("broker_disconnects") == 1, stats["counters"]
    assert stats["counters"].get("broker_reconnects") == 1, stats["counters"]


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def any_hub(
    request: pytest.FixtureRequest, tmp_path: Path, model_packages: ModelPaths
) -> Iterator[tuple[HubProcess, str]]:
    """A hub on its embedded broker, then on Mosquitto; with the hub account's secret."""
    if request.param == "amqtt":
        hub: HubProcess = request.getfixturevalue("hub")
        yield hub, (hub.data_dir / "hub-broker-secret").read_text().strip()
        return
    mosquitto: Mosquitto = request.getfixturevalue("mosquitto_process")
    with HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        broker=mosquitto.endpoint(HUB_USER, HUB_SECRET),
        root=f"edgeloop-test/{uuid.uuid4().hex[:8]}",
        log_level="INFO",
    ) as hub:
        yield hub, HUB_SECRET


@pytest.mark.timeout(60)
def test_a_taken_over_hub_session_is_noticed_counted_and_taken_back(
    any_hub: tuple[HubProcess, str],
) -> None:
    # The hub's own account and client id, as a leaked hub secret would allow: the
    # broker hands the session to the newcomer and closes the hub's connection.
    hub, secret = any_hub
    endpoint = hub.broker_endpoint()
    intruder = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="edgeloop-hub",
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    intruder.username_pw_set(HUB_USER, secret)
    intruder.connect(endpoint.host, endpoint.port, 30)
    intruder.loop_start()
    try:
        wait_until(
            "the hub to count the lost session",
            lambda: _health(hub)[1]["parts"]["broker_link"]["counts"]["disconnects"] >= 1,
            timeout=WAIT,
        )
    finally:
        intruder.loop_stop()
        intruder.disconnect()
    wait_until("the hub's link back up", lambda: _health(hub)[0] == 200, timeout=WAIT)
    status, body = _health(hub)
    link = body["parts"]["broker_link"]
    assert status == 200 and link["up"], body
    assert link["counts"]["reconnects"] >= 1, link
    assert "connection to the broker was lost" in link["reason"], link
    if hub.external_broker is None:
        assert body["parts"]["embedded_broker"]["counts"]["exits"] == 0, body
    else:
        assert set(body["parts"]) == {"broker_link"}, body
    assert "hub lost its broker link" in hub.output()


@pytest.mark.timeout(90)
@pytest.mark.mosquitto
def test_a_restarted_external_broker_is_reported_down_then_up(
    mosquitto_process: Mosquitto, tmp_path: Path, model_packages: ModelPaths
) -> None:
    with HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        broker=mosquitto_process.endpoint(HUB_USER, HUB_SECRET),
        log_level="INFO",
    ) as hub:
        mosquitto_process.kill()
        wait_until("the hub to see the broker gone", lambda: _health(hub)[0] == 503, timeout=WAIT)
        status, body = _health(hub)
        assert status == 503 and body["down"] == ["broker_link"], body
        assert body["parts"]["broker_link"]["check"], body
        mosquitto_process.restart()
        wait_until("the hub's link back up", lambda: _health(hub)[0] == 200, timeout=WAIT)
        counts = _health(hub)[1]["parts"]["broker_link"]["counts"]
    assert counts == {"disconnects": 1, "reconnects": 1}, counts


@pytest.mark.timeout(60)
def test_the_broker_holds_devices_until_the_hub_has_subscribed(tmp_path: Path) -> None:
    password_file = tmp_path / "passwd"
    add_user(password_file, "hub", "hub-secret-0123456789")
    add_user(password_file, "dev-1", "dev-secret-0123456789")
    order: list[str] = []
    connacked = threading.Event()

    def on_device_connect(*_: object) -> None:
        order.append("device connack")
        connacked.set()

    with EmbeddedBroker(password_file=password_file, hold_devices_for="hub") as broker:
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-1", clean_session=False)
        device.username_pw_set("dev-1", "dev-secret-0123456789")
        device.on_connect = on_device_connect
        device.connect(broker.host, broker.port, 30)
        device.loop_start()
        hub = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="edgeloop-hub", clean_session=False
        )
        hub.username_pw_set("hub", "hub-secret-0123456789")
        subscribed = threading.Event()

        def on_hub_connect(client: mqtt.Client, *_: object) -> None:
            # Recorded before the SUBSCRIBE leaves: the device's CONNACK may only follow it.
            # (The hub's SUBACK and the device's CONNACK arrive on two client threads, whose
            # callbacks a loaded machine may run in either order.)
            order.append("hub subscribes")
            client.subscribe("edgeloop/v1/dev/+/telemetry", 1)

        hub.on_connect = on_hub_connect
        hub.on_subscribe = lambda *_: subscribed.set()
        try:
            # Held: the device's CONNACK does not come while the hub is away.
            assert not connacked.wait(2.0), order
            hub.connect(broker.host, broker.port, 30)
            hub.loop_start()
            assert subscribed.wait(WAIT) and connacked.wait(WAIT), order
        finally:
            for client in (device, hub):
                client.loop_stop()
                client.disconnect()
    assert order == ["hub subscribes", "device connack"], order
