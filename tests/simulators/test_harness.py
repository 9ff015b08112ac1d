"""The harness itself: bounded waits, process lifecycles, both brokers, a hub and an agent.

Each part is started for real, then stopped, killed and restarted on the same
ports and directories, as the demo, the benchmarks and fault tests use them.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub import service
from shared.endpoint import BrokerEndpoint
from simulators import harness
from simulators.harness import (
    AgentProcess,
    ApiError,
    CancelledError,
    HubProcess,
    ManagedProcess,
    Mosquitto,
    StartError,
    WaitTimeoutError,
    wait_for_port_closed,
    wait_until,
)
from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


def _logs_in(endpoint: BrokerEndpoint) -> bool:
    """Whether the broker accepts ``endpoint``'s credentials (a real CONNECT/CONNACK)."""
    answered = threading.Event()
    codes: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(endpoint.username, endpoint.password)

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        codes.append(not getattr(rc, "is_failure", True))
        answered.set()
        c.disconnect()

    client.on_connect = on_connect
    client.connect(endpoint.host, endpoint.port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(WAIT), f"no CONNACK from {endpoint.host}:{endpoint.port}"
    finally:
        client.loop_stop()
    return codes[0]


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_mosquitto_limits_are_the_deploy_configs() -> None:
    conf = (PROJECT_ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    deployed = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    for key, value in harness.MOSQUITTO_HUB_LIMITS.items():
        assert deployed.get(key) == str(value), key
    assert deployed["max_packet_size"] == str(harness.MOSQUITTO_MAX_PACKET_SIZE)
    assert "message_size_limit" not in deployed
    assert harness.HUB_USER == service.HUB_USER


@pytest.mark.timeout(10)
def test_wait_until_is_bounded_in_time_and_attempts() -> None:
    calls = 0

    def never() -> bool:
        nonlocal calls
        calls += 1
        return False

    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="the thing"):
        wait_until("the thing", never, timeout=0.3, interval=0.1)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert 2 <= calls <= 5

    def flaky() -> bool:
        raise OSError("not yet")

    with pytest.raises(WaitTimeoutError):
        wait_until("flaky", flaky, timeout=0.1, interval=0.05, ignore=(OSError,))
    with pytest.raises(OSError):
        wait_until("flaky", flaky, timeout=0.1, interval=0.05)

    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        wait_until("forever", never, timeout=30, interval=10, cancel=cancel)
    assert time.monotonic() - started < 5.0

    def dead() -> None:
        raise StartError("it exited")

    with pytest.raises(StartError, match="it exited"):
        wait_until("a dead thing", never, timeout=30, alive=dead)


# -- a plain process ----------------------------------------------------------------------

_STUBBORN = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM", flush=True))
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
for _ in range(600):
    time.sleep(0.1)
"""


@pytest.mark.timeout(60)
def test_process_stop_term_once_then_kill_restart_and_context(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    stubborn = ManagedProcess(
        [sys.executable, "-c", _STUBBORN, "ignore"], log_path=log, ready_marker="ready"
    )
    stubborn.start()
    first = stubborn.pid
    assert stubborn.is_running
    assert stubborn.stop(timeout=0.5) == -signal.SIGKILL
    assert stubborn.output().count("SIGTERM") == 1  # one SIGTERM, then SIGKILL
    stubborn.restart()
    assert stubborn.pid != first and stubborn.starts == 2
    assert stubborn.kill() == -signal.SIGKILL
    assert stubborn.output().count("ready") == 2  # the log is appended across restarts

    with ManagedProcess(
        [sys.executable, "-c", _STUBBORN, "exit"], log_path=log, ready_marker="ready"
    ) as polite:
        assert polite.is_running
    assert polite.returncode == 0

    quitter = ManagedProcess(
        [sys.executable, "-c", "print('bye')"], log_path=log, ready_marker="never"
    )
    with pytest.raises(StartError, match="exited with status 0"):
        quitter.start()


# -- brokers ------------------------------------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_mosquitto_kill_restart_same_port_and_accounts_added_live(tmp_path: Path) -> None:
    require_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto", users={"hub": "hub-secret-0123456789"})
    with broker:
        port = broker.port
        assert _logs_in(broker.endpoint("hub"))
        assert not _logs_in(broker.endpoint("hub", "wrong"))
        for key, value in harness.MOSQUITTO_HUB_LIMITS.items():
            assert f"{key} {value}\n" in broker.config()
        assert f"max_packet_size {harness.MOSQUITTO_MAX_PACKET_SIZE}\n" in broker.config()
        assert broker.kill() == -signal.SIGKILL
        wait_for_port_closed(harness.HOST, port, WAIT)
        broker.restart()
        assert broker.port == port
        assert _logs_in(broker.endpoint("hub"))
        broker.add_accounts(users={"pi-07": "device-secret-0123456789"})
        wait_until(
            "the new account to work",
            lambda: _logs_in(broker.endpoint("pi-07")),
            timeout=WAIT,
            interval=0.2,
        )
    assert broker.returncode == 0


def _retained(endpoint: BrokerEndpoint, topic: str) -> bytes | None:
    """The retained message on ``topic`` (None if there is none), read by a fresh client."""
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(endpoint.username, endpoint.password)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        arrived.set()

    client.on_message = on_message
    client.connect(endpoint.host, endpoint.port, keepalive=10)
    client.loop_start()
    try:
        assert subscribed.wait(WAIT), "no SUBACK"
        # A retained message comes right after the SUBACK; the broker sends it or nothing.
        arrived.wait(2.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


@pytest.mark.mosquitto
@pytest.mark.timeout(60)
def test_persistent_mosquitto_keeps_retained_messages_across_a_restart(tmp_path: Path) -> None:
    require_mosquitto()
    with Mosquitto(
        tmp_path / "mosquitto", users={"hub": "hub-secret-0123456789"}, persistent=True
    ) as broker:
        endpoint = broker.endpoint("hub")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retainer")
        client.username_pw_set(endpoint.username, endpoint.password)
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        client.publish("t/state", b"kept", qos=1, retain=True).wait_for_publish(WAIT)
        client.disconnect()
        client.loop_stop()
        assert broker.stop() == 0  # a clean stop saves the store
        broker.start()
        assert _retained(endpoint, "t/state") == b"kept"


# -- a hub and an agent -------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_hub_and_agent_kill_and_restart_on_the_same_ports(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    hub = HubProcess(tmp_path / "hub", model_packages.edge.parent.parent)
    device = hub.provision("pi-01")
    agent = AgentProcess(
        model_packages.edge,
        tmp_path / "agents" / "pi-01",
        env=device.agent_env,
        args=(
            "--source",
            "sim",
            "--rate-hz",
            "20",
            "--reconnect-min-s",
            "1",
            "--reconnect-max-s",
            "2",
        ),
        log_level="INFO",
    )

    def state() -> str:
        return str(hub.api.get_json("/v1/devices/pi-01")["state"])

    with hub:
        assert hub.api.get_json("/healthz")["status"] == "ok"
        with pytest.raises(ApiError) as refused:
            hub.api.with_token(None).get_json("/v1/devices")
        assert refused.value.status == 401
        with agent:
            hub.wait_until("pi-01 online", lambda: state() == "online", timeout=WAIT)
            ports = (hub.http_port, hub.broker_port)
            assert hub.kill() == -signal.SIGKILL
            assert hub.broker_port is not None
            # The embedded broker dies with the hub: its port is free for the restart.
            wait_for_port_closed(harness.HOST, hub.broker_port, WAIT)
            hub.restart()
            assert (hub.http_port, hub.broker_port) == ports
            agent.wait_until(
                "the agent to reconnect to the restarted hub's broker",
                lambda: agent.output().count("connected to") >= 2,
                timeout=90,
            )
            hub.wait_until("pi-01 online again", lambda: state() == "online", timeout=WAIT)
            assert agent.starts == 1
        assert agent.returncode == 0
        hub.wait_until("pi-01 offline", lambda: state() == "offline", timeout=WAIT)
        agent.restart()
        hub.wait_until("pi-01 back", lambda: state() == "online", timeout=WAIT)
        assert agent.output().count("connected to") >= 3, agent.log_tail()
        assert agent.stop() == 0
    assert hub.returncode == 0, hub.log_tail()
