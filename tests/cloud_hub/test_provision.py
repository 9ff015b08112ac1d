"""Provisioning: the credentials it makes are accepted by the real brokers."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.embedded import EmbeddedBroker
from cloud_hub.provision import (
    DeviceExistsError,
    mosquitto_acl,
    mosquitto_password_line,
    provision_device,
)
from shared.endpoint import BrokerEndpoint, parse_broker_url
from shared.topics import Kind, Topics
from simulators.harness import Mosquitto
from tests.brokers import HUB_SECRET, HUB_USER, USERS, require_mosquitto

pytestmark = pytest.mark.timeout(60)


def _connect(endpoint: BrokerEndpoint) -> tuple[mqtt.Client, Any]:
    """Connect and return the client with the CONNACK reason code."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        result["rc"] = rc
        done.set()

    # A device's client id is its account name (the broker's rules).
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=endpoint.username or f"t-{uuid.uuid4().hex[:8]}"
    )
    client.username_pw_set(endpoint.username, endpoint.password)
    client.on_connect = on_connect
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    assert done.wait(20), "no CONNACK"
    return client, result["rc"]


def test_mosquitto_password_line_matches_mosquitto_passwd_format() -> None:
    line = mosquitto_password_line("pi-07", "s3cret", salt=b"0123456789ab")
    user, _, hashed = line.partition(":")
    assert user == "pi-07"
    kind, iterations, salt, digest = hashed.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    assert len(salt) == 16 and len(digest) == 88


def test_embedded_broker_accepts_a_device_provisioned_while_it_runs(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    from cloud_hub.broker.auth import add_user  # noqa: PLC0415

    add_user(passwd, HUB_USER, HUB_SECRET)
    with EmbeddedBroker(password_file=passwd) as broker:
        done = provision_device(
            "pi-07",
            broker=BrokerEndpoint(broker.host, broker.port),
            topics=Topics(),
            password_file=passwd,
        )
        endpoint = parse_broker_url(done.agent_env["EDGELOOP_AGENT_BROKER"])
        assert endpoint.username == "pi-07" and endpoint.password == done.secret
        client, rc = _connect(endpoint)
        client.disconnect()
        client.loop_stop()
        assert not rc.is_failure, rc
        wrong, rc = _connect(BrokerEndpoint(broker.host, broker.port, "pi-07", "not-the-secret"))
        wrong.loop_stop()
        assert rc.is_failure


@pytest.mark.mosquitto
def test_mosquitto_accepts_the_printed_lines_and_confines_the_device(tmp_path: Path) -> None:
    require_mosquitto()
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:8]}")
    device = provision_device(
        "pi-07", broker=BrokerEndpoint("127.0.0.1", 1883), topics=topics, password_file=None
    )
    assert device.mosquitto_password_line and "pi-07" in device.render()
    with Mosquitto(
        tmp_path / "mosquitto",
        users=USERS,
        password_lines=[device.mosquitto_password_line],
        acl=f"user {HUB_USER}\ntopic readwrite #\n\n" + mosquitto_acl("pi-07", topics),
        verbose_log=True,
    ) as base:
        hub, rc = _connect(BrokerEndpoint(base.host, base.port, HUB_USER, HUB_SECRET))
        assert not rc.is_failure
        got: list[str] = []
        seen = threading.Event()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            got.append(msg.topic)
            if msg.topic.endswith("/marker"):
                seen.set()

        hub.on_message = on_message
        subscribed = threading.Event()
        hub.on_subscribe = lambda *_: subscribed.set()
        hub.subscribe(f"{topics.root}/#", qos=1)
        assert subscribed.wait(10)
        dev, rc = _connect(BrokerEndpoint(base.host, base.port, "pi-07", device.secret))
        assert not rc.is_failure, rc
        own = topics.topic("pi-07", Kind.TELEMETRY)
        other = topics.topic("pi-08", Kind.TELEMETRY)
        dev.publish(other, b"not mine", qos=1).wait_for_publish(10)
        dev.publish(own, b"mine", qos=1).wait_for_publish(10)
        hub.publish(f"{topics.root}/marker", b"", qos=1).wait_for_publish(10)
        assert seen.wait(10)
        for client in (dev, hub):
            client.disconnect()
            client.loop_stop()
    assert own in got and other not in got


def test_embedded_broker_rotation_keeps_the_connected_session_and_refuses_the_old_secret(
    tmp_path: Path,
) -> None:
    """What ``devices add --rotate`` prints for the embedded broker, checked."""
    passwd = tmp_path / "passwd"
    from cloud_hub.broker.auth import add_user  # noqa: PLC0415

    add_user(passwd, HUB_USER, HUB_SECRET)
    with EmbeddedBroker(password_file=passwd) as broker:
        where = BrokerEndpoint(broker.host, broker.port)
        old = provision_device("pi-07", broker=where, topics=Topics(), password_file=passwd)
        with pytest.raises(DeviceExistsError, match="--rotate"):
            provision_device("pi-07", broker=where, topics=Topics(), password_file=passwd)
        session, rc = _connect(BrokerEndpoint(broker.host, broker.port, "pi-07", old.secret))
        assert not rc.is_failure, rc
        new = provision_device(
            "pi-07", broker=where, topics=Topics(), password_file=passwd, rotate=True
        )
        assert new.rotated and new.secret != old.secret
        # The connected session still works: a QoS 1 publish is acknowledged.
        session.publish("edgeloop/v1/dev/pi-07/telemetry", b"x", qos=1).wait_for_publish(10)
        refused, rc = _connect(BrokerEndpoint(broker.host, broker.port, "pi-07", old.secret))
        refused.loop_stop()
        assert rc.is_failure, "the old secret must not open a new session"
        fresh, rc = _connect(BrokerEndpoint(broker.host, broker.port, "pi-07", new.secret))
        assert not rc.is_failure, rc
        for client in (session, fresh):
            client.disconnect()
            client.loop_stop()


@pytest.mark.mosquitto
def test_mosquitto_reload_after_rotation_drops_the_session_and_refuses_the_old_secret(
    tmp_path: Path,
) -> None:
    """What ``devices add --rotate`` prints for Mosquitto, checked against Mosquitto."""
    where = BrokerEndpoint("127.0.0.1", 1883)
    old = provision_device("pi-07", broker=where, topics=Topics(), password_file=None)
    new = provision_device(
        "pi-07", broker=where, topics=Topics(), password_file=None, known=True, rotate=True
    )
    assert old.mosquitto_password_line and new.mosquitto_password_line
    assert "replace the line that starts with 'pi-07:'" in new.render()
    require_mosquitto()
    with Mosquitto(tmp_path / "mosquitto", password_lines=[old.mosquitto_password_line]) as mq:
        session, rc = _connect(mq.endpoint("pi-07", old.secret))
        assert not rc.is_failure, rc
        dropped = threading.Event()
        session.on_disconnect = lambda *_: dropped.set()
        mq.password_lines = [new.mosquitto_password_line]  # replaced, not appended
        mq.add_accounts()  # rewrites the password file and sends SIGHUP
        assert dropped.wait(20), "Mosquitto kept the session of a rotated password"
        session.loop_stop()
        refused, rc = _connect(mq.endpoint("pi-07", old.secret))
        refused.loop_stop()
        assert rc.is_failure, "the old secret must not open a new session"
        fresh, rc = _connect(mq.endpoint("pi-07", new.secret))
        assert not rc.is_failure, rc
        fresh.disconnect()
        fresh.loop_stop()
