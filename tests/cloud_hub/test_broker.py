"""The embedded broker, its password file and the broker test fixtures.

Integration tests run against both real brokers through the ``broker`` fixture;
the password-file and URL tests are pure and need no socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker.auth import (
    PasswordFileError,
    add_user,
    hash_password,
    read_password_file,
    verify_password,
)
from cloud_hub.broker.embedded import BrokerExit, BrokerStartError, EmbeddedBroker
from shared.endpoint import BrokerEndpoint, parse_broker_url
from shared.logformat import JsonFormatter, readable_line
from shared.topics import Topics
from simulators import harness
from simulators.harness import AmqttBroker, wait_for_port, wait_for_port_closed
from tests import brokers
from tests.brokers import HUB_SECRET, HUB_USER

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds to wait for any one broker event; generous for loaded CI machines


class Probe:
    """A paho-mqtt 2.x client that turns callbacks into events and a message queue."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        client_id: str | None = None,
        *,
        clean_session: bool = True,
    ) -> None:
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:12]}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean_session,
        )
        if endpoint.username is not None:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        self.endpoint = endpoint
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK reason code (success or refusal)."""
        self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(WAIT), f"no SUBACK for {topic!r}"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic!r} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            client.disconnect()  # or paho's loop thread keeps retrying the refused login
        self.connack.put(reason_code)

    def _on_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.disconnected.set()

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subscribed.set()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        self.messages.put(message)


@contextlib.contextmanager
def device_of(hub: harness.HubProcess, device: str, topics: Topics) -> Iterator[Probe]:
    """``device`` provisioned on ``hub``'s embedded broker, connected as a raw client while
    the block runs."""
    from cloud_hub.provision import provision_device  # noqa: PLC0415

    assert hub.broker_port is not None
    where = BrokerEndpoint(harness.HOST, hub.broker_port)
    secret = provision_device(
        device, broker=where, topics=topics, password_file=hub.data_dir / "broker-passwd"
    ).secret
    probe = Probe(replace(where, username=device, password=secret), device)
    code = probe.connect()
    assert not code.is_failure, code
    try:
        yield probe
    finally:
        probe.close()


def unique_topic(name: str) -> str:
    """A device topic under a fresh root (the test brokers' rules allow ``edgeloop-test/+``)."""
    return f"edgeloop-test/{uuid.uuid4().hex}/dev/probe/{name}"


def as_hub(broker: BrokerEndpoint) -> BrokerEndpoint:
    """The hub's account: only it may read telemetry and write desired."""
    return replace(broker, username=HUB_USER, password=HUB_SECRET)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=PROJECT_ROOT,
        check=False,
    )


# -- against both brokers -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_qos1_publish_round_trips_to_a_subscriber(broker: BrokerEndpoint) -> None:
    topic = unique_topic("telemetry")
    subscriber, publisher = Probe(as_hub(broker)), Probe(broker)
    try:
        assert not subscriber.connect().is_failure
        subscriber.subscribe(topic, qos=1)
        assert not publisher.connect().is_failure
        publisher.publish(topic, b'{"seq": 1}', qos=1)
        message = subscriber.messages.get(timeout=WAIT)
    finally:
        subscriber.close()
        publisher.close()
    assert (message.topic, message.payload, message.qos) == (topic, b'{"seq": 1}', 1)


@pytest.mark.timeout(30)
def test_second_user_can_log_in(broker: BrokerEndpoint) -> None:
    probe = Probe(replace(broker, username=HUB_USER, password=HUB_SECRET))
    try:
        assert not probe.connect().is_failure
    finally:
        probe.close()


@pytest.mark.timeout(30)
def test_wrong_password_is_refused(broker: BrokerEndpoint) -> None:
    probe = Probe(replace(broker, password="not-the-secret"))
    try:
        reason = probe.connect()
    finally:
        probe.close()
    assert reason.is_failure, reason


@pytest.mark.timeout(30)
def test_unknown_user_is_refused(broker: BrokerEndpoint) -> None:
    probe = Probe(replace(broker, username="nobody", password="whatever"))
    try:
        reason = probe.connect()
    finally:
        probe.close()
    assert reason.is_failure, reason


@pytest.mark.timeout(30)
def test_no_credentials_is_refused(broker: BrokerEndpoint) -> None:
    probe = Probe(replace(broker, username=None, password=None))
    try:
        reason = probe.connect()
    finally:
        probe.close()
    assert reason.is_failure, reason


@pytest.mark.timeout(30)
def test_offline_persistent_session_gets_queued_qos1_messages(broker: BrokerEndpoint) -> None:
    # The reason authentication is on for amqtt: it queues nothing for anonymous sessions.
    topic = unique_topic("desired")
    client_id = f"device-{uuid.uuid4().hex[:8]}"
    first = Probe(broker, client_id, clean_session=False)
    try:
        assert not first.connect().is_failure
        first.subscribe(topic, qos=1)
    finally:
        first.close()
    publisher = Probe(as_hub(broker))
    try:
        assert not publisher.connect().is_failure
        publisher.publish(topic, b"while-offline", qos=1)
    finally:
        publisher.close()
    again = Probe(broker, client_id, clean_session=False)
    try:
        assert not again.connect().is_failure
        message = again.messages.get(timeout=WAIT)
    finally:
        again.close()
    assert (message.topic, message.payload) == (topic, b"while-offline")


# -- the embedded broker's process -----------------------------------------------------


@pytest.mark.timeout(30)
def test_killed_broker_is_detected(
    embedded_broker: AmqttBroker, amqtt_broker: BrokerEndpoint
) -> None:
    probe = Probe(amqtt_broker)
    try:
        assert not probe.connect().is_failure
        embedded_broker.kill()
        assert probe.disconnected.wait(WAIT), "client did not notice the broker dying"
    finally:
        probe.close()
    assert not embedded_broker.is_running
    assert embedded_broker.returncode == -signal.SIGKILL
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((embedded_broker.host, embedded_broker.port), timeout=WAIT)


@pytest.mark.timeout(60)
def test_restart_after_kill_keeps_the_port(
    embedded_broker: AmqttBroker, amqtt_broker: BrokerEndpoint
) -> None:
    port = embedded_broker.port
    embedded_broker.kill()
    embedded_broker.start()
    assert embedded_broker.port == port
    probe = Probe(amqtt_broker)
    try:
        assert not probe.connect().is_failure
    finally:
        probe.close()


@pytest.mark.timeout(30)
def test_sigterm_stops_the_broker_cleanly(embedded_broker: AmqttBroker) -> None:
    assert embedded_broker.stop() == BrokerExit.OK
    assert not embedded_broker.is_running


@pytest.mark.timeout(60)
def test_broker_exits_when_its_parent_process_dies(tmp_path: Path) -> None:
    password_file = tmp_path / "passwd"
    add_user(password_file, "edgeloop", "edgeloop-test-secret")
    parent_code = (
        "import sys, time; from pathlib import Path\n"
        "from cloud_hub.broker.embedded import EmbeddedBroker\n"
        f"b = EmbeddedBroker(password_file=Path({str(password_file)!r})).start()\n"
        "print(b.port, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
    )
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        wait_for_port("127.0.0.1", port, WAIT)
    finally:
        parent.kill()  # no chance to stop its broker
        parent.wait()
    wait_for_port_closed("127.0.0.1", port, WAIT)


@pytest.mark.timeout(30)
def test_user_added_while_running_can_log_in(
    embedded_broker: AmqttBroker, amqtt_broker: BrokerEndpoint
) -> None:
    add_user(embedded_broker.password_file, "pi-07", "late-device-secret")
    # A device connects with its name as client id (the broker's rules).
    probe = Probe(replace(amqtt_broker, username="pi-07", password="late-device-secret"), "pi-07")
    try:
        assert not probe.connect().is_failure
    finally:
        probe.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_start_failure_reports_the_child_log(tmp_path: Path, log_format: str) -> None:
    log_path = tmp_path / "broker.log"
    broker = EmbeddedBroker(
        password_file=tmp_path / "missing",
        startup_timeout=20,
        log_path=log_path,
        log_format=log_format,
    )
    with pytest.raises(BrokerStartError) as caught:
        broker.start()
    assert caught.value.returncode == BrokerExit.PASSWORD_FILE
    assert "does not exist" in caught.value.log_tail
    assert not caught.value.log_tail.startswith("{")  # quoted as text in either format
    assert not broker.is_running
    (line,) = log_path.read_text().splitlines()
    if log_format == "json":
        record = json.loads(line)
        assert (record["level"], record["logger"]) == ("ERROR", "cloud_hub.broker")
        assert "does not exist" in record["message"] and record["time"].endswith("Z")
    else:
        assert line.startswith("python -m cloud_hub.broker: error: password file")


def test_a_json_log_line_is_quoted_as_text_with_its_context_and_traceback() -> None:
    try:
        raise OSError("disk gone")
    except OSError:
        record = logging.LogRecord(
            "cloud_hub.broker", logging.ERROR, "", 0, "cannot %s", ("write",), sys.exc_info()
        )
    record.device = "pi-07"
    text = readable_line(JsonFormatter().format(record))
    first, *rest = text.splitlines()
    assert re.fullmatch(r"\S+Z ERROR cloud_hub\.broker: cannot write \(device=pi-07\)", first), (
        first
    )
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "OSError: disk gone"
    for other in ("{not json", '{"time": 1}', "[1, 2]", "plain text"):
        assert readable_line(other) == other


@pytest.mark.timeout(30)
def test_json_broker_logs_warnings_and_uncaught_exceptions_as_json_lines() -> None:
    code = (
        "import threading, warnings\n"
        "from cloud_hub.broker.__main__ import _configure_logging\n"
        "_configure_logging('warning', 'json')\n"
        "warnings.warn('an old api')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
        "raise RuntimeError('boom')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
        check=False,
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines()]
    messages = [r["message"] for r in records]
    assert any("an old api" in m for m in messages), messages
    assert any("worker" in m and "ZeroDivisionError" in m for m in messages), messages
    assert any("RuntimeError: boom" in m for m in messages), messages


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format 'xml' must be one of text, json"):
        EmbeddedBroker(password_file=Path("passwd"), log_format="xml")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_cli_port_in_use_is_one_line_and_no_traceback(tmp_path: Path, log_format: str) -> None:
    password_file = tmp_path / "passwd"
    add_user(password_file, "edgeloop", "edgeloop-test-secret")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--password-file",
            str(password_file),
            "--log-format",
            log_format,
        )
    assert result.returncode == BrokerExit.ADDRESS_IN_USE
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if log_format == "json":
        assert json.loads(lines[0])["level"] == "ERROR"
    assert f"127.0.0.1:{port}" in lines[0]
    assert "already in use" in lines[0]


@pytest.mark.timeout(30)
def test_cli_unreadable_password_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-passwd"
    result = run_cli("--port", "1883", "--password-file", str(missing))
    assert result.returncode == BrokerExit.PASSWORD_FILE
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0]


# -- password file (pure) ------------------------------------------------------------


@pytest.mark.timeout(10)
def test_hash_and_verify_round_trip() -> None:
    encoded = hash_password("edgeloop-test-secret")
    assert encoded.startswith("pbkdf2_sha256$")
    assert verify_password("edgeloop-test-secret", encoded)


@pytest.mark.timeout(10)
def test_wrong_secret_does_not_verify() -> None:
    encoded = hash_password("edgeloop-test-secret")
    assert not verify_password("edgeloop-test-secreT", encoded)
    assert not verify_password("", encoded)


@pytest.mark.timeout(10)
def test_same_secret_hashes_differently_each_time() -> None:
    assert hash_password("s", iterations=1) != hash_password("s", iterations=1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "pbkdf2_sha256$x$00$00",
        "pbkdf2_sha256$0$aa$" + "00" * 32,
        "md5$1$aa$" + "00" * 32,
        "pbkdf2_sha256$1$zz$" + "00" * 32,
        "pbkdf2_sha256$1$aa$00",
    ],
)
def test_malformed_hash_never_verifies(encoded: str) -> None:
    assert not verify_password("anything", encoded)


@pytest.mark.timeout(10)
def test_malformed_line_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    good = hash_password("secret", iterations=1)
    path.write_text(f"# devices\nedgeloop:{good}\n\npi-07:not-a-hash\n", encoding="utf-8")
    with pytest.raises(PasswordFileError) as caught:
        read_password_file(path)
    assert caught.value.line_number == 4
    assert "line 4" in str(caught.value)
    assert str(path) in str(caught.value)
    assert "not-a-hash" not in str(caught.value)  # never echo what may be a secret


@pytest.mark.timeout(10)
def test_line_without_colon_and_duplicate_user_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    good = hash_password("secret", iterations=1)
    path.write_text("just-a-name\n", encoding="utf-8")
    with pytest.raises(PasswordFileError, match="line 1"):
        read_password_file(path)
    path.write_text(f"a:{good}\na:{good}\n", encoding="utf-8")
    with pytest.raises(PasswordFileError, match=r"line 2.*twice"):
        read_password_file(path)


@pytest.mark.timeout(10)
def test_missing_password_file_error_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="add_user") as caught:
        read_password_file(tmp_path / "nope")
    assert caught.value.line_number is None


@pytest.mark.timeout(10)
def test_add_user_creates_private_file_and_replaces_secret(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    add_user(path, "edgeloop", "first", iterations=1)
    add_user(path, "hub", "hub-secret", iterations=1)
    add_user(path, "edgeloop", "second", iterations=1)
    users = read_password_file(path)
    assert sorted(users) == ["edgeloop", "hub"]
    assert verify_password("second", users["edgeloop"])
    assert not verify_password("first", users["edgeloop"])
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(10)
@pytest.mark.parametrize("username", ["", "a:b", "has space", "#comment"])
def test_add_user_rejects_names_the_file_cannot_hold(tmp_path: Path, username: str) -> None:
    with pytest.raises(ValueError, match="username"):
        add_user(tmp_path / "passwd", username, "secret")


# -- broker URLs (pure) --------------------------------------------------------------


@pytest.mark.timeout(10)
def test_parse_broker_url_round_trips_with_encoded_credentials() -> None:
    endpoint = parse_broker_url("mqtt://hub:p%40ss%3Aword@broker.local:1884")
    assert endpoint == BrokerEndpoint("broker.local", 1884, "hub", "p@ss:word")
    assert parse_broker_url(endpoint.url) == endpoint
    assert "p@ss" not in repr(endpoint)
    assert "p%40ss" not in endpoint.redacted_url


@pytest.mark.timeout(10)
def test_parse_broker_url_defaults() -> None:
    assert parse_broker_url("mqtt://localhost") == BrokerEndpoint("localhost", 1883)
    assert parse_broker_url("mqtt://[::1]:1884/").url == "mqtt://[::1]:1884"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://broker:1883", "scheme 'http'"),
        ("broker:1883", "scheme"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:70000", "port"),
        ("mqtt://broker:abc", "port"),
        ("mqtt://broker:0", "port 0"),
        ("mqtt://broker:1883/topic", "path"),
        ("", "empty"),
    ],
)
def test_parse_broker_url_rejects_with_a_clear_message(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_broker_url(url)


@pytest.mark.timeout(10)
def test_parse_broker_url_errors_do_not_leak_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        parse_broker_url("mqtt://hub:topsecret@broker:99999")
    assert "topsecret" not in str(caught.value)


# -- the fixtures themselves --------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_missing_mosquitto_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(harness, "find_mosquitto", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="mosquitto"):
        brokers.require_mosquitto()
