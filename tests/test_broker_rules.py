"""Breach tests: a provisioned device tries what a hostile device would, on both brokers.

Each broker runs with two device accounts (``dev-a``, the attacker, and
``dev-b``) and the hub's account, the embedded broker with its topic rules and
Mosquitto with the ACL that ``edgeloop-hub devices add`` writes and client ids
bound to user names, as deploy/mosquitto/mosquitto.conf ships it.

"Nothing arrived" is shown with a marker: a message that is allowed, sent after
the refused ones on the same path, arrives while the refused ones do not (both
brokers deliver one publisher's messages to a subscriber in order).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from paho.mqtt.client import Client
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.broker.rules import HUB_CLIENT_ID, BrokerRules
from cloud_hub.provision import provision_device
from shared.endpoint import BrokerEndpoint
from shared.logformat import LOG_FORMAT_ENV
from shared.messages import encode
from shared.topics import EDGE_TO_HUB, Kind, Topics
from simulators.harness import HUB_USER, AmqttBroker, ApiError, HubProcess, Mosquitto
from tests.brokers import require_mosquitto
from tests.cloud_hub.ingest.conftest import telemetry
from tests.cloud_hub.test_broker import Probe
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
QUIET = 1.0  # how long "nothing more arrives" is watched after a marker
A, B = "dev-a", "dev-b"
SECRETS = {HUB_USER: "hub-breach-secret", A: "a-breach-secret", B: "b-breach-secret"}
T = Topics()


class Peer(Probe):
    """A probe that also keeps SUBACK codes, with a will if asked; its client id is its
    account name unless told otherwise, as a device's must be."""

    def __init__(
        self,
        broker: BrokerEndpoint,
        username: str,
        *,
        client_id: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        secret = password if password is not None else SECRETS[username]
        super().__init__(
            replace(broker, username=username, password=secret),
            client_id if client_id is not None else username,
            clean_session=clean_session,
        )
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()

    def subscribe(self, topic: str, qos: int = 1) -> bool:  # type: ignore[override]
        """Subscribe; True if the broker granted it."""
        self.client.subscribe(topic, qos=qos)
        codes = self.subacks.get(timeout=WAIT)
        return not codes[0].is_failure

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> None:
        """Publish and wait for the broker's PUBACK (a broker acks a refused PUBLISH too)."""
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(WAIT)

    def received_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        """Every message up to and including ``marker``, then whatever arrives in QUIET s."""
        got: list[tuple[str, bytes]] = []
        while not got or got[-1][1] != marker:
            m = self.messages.get(timeout=WAIT)
            got.append((m.topic, bytes(m.payload)))
        try:
            while True:
                m = self.messages.get(timeout=QUIET)
                got.append((m.topic, bytes(m.payload)))
        except queue.Empty:
            pass
        return got

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subacks.put(reason_codes)


@pytest.fixture(params=["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, BrokerEndpoint]]:
    """Each broker with the production rules: accounts hub, dev-a, dev-b; no fleet."""
    if request.param == "amqtt":
        with AmqttBroker(tmp_path / "amqtt", users=SECRETS, log_level="info") as amqtt:
            yield "amqtt", amqtt.endpoint(HUB_USER)
        return
    require_mosquitto()
    with Mosquitto(
        tmp_path / "mosquitto",
        users=SECRETS,
        rules=BrokerRules(),
        username_as_clientid=True,
        verbose_log=True,
    ) as mosquitto:
        yield "mosquitto", mosquitto.endpoint(HUB_USER)


class Peers:
    def __init__(
        self, kind: str, broker: BrokerEndpoint, secrets: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.broker = broker
        self.secrets = SECRETS if secrets is None else secrets
        self.open: list[Peer] = []

    def connect(self, username: str, **kwargs: object) -> Peer:
        kwargs.setdefault("password", self.secrets.get(username))
        peer = Peer(self.broker, username, **kwargs)  # type: ignore[arg-type]
        self.open.append(peer)
        code = peer.connect()
        assert not code.is_failure, f"{username} could not connect: {code}"
        return peer

    def refused(self, username: str, **kwargs: object) -> ReasonCode:
        peer = Peer(self.broker, username, **kwargs)  # type: ignore[arg-type]
        self.open.append(peer)
        return peer.connect()


@pytest.fixture
def peers(guarded: tuple[str, BrokerEndpoint]) -> Iterator[Peers]:
    made = Peers(*guarded)
    try:
        yield made
    finally:
        for peer in made.open:
            peer.close()


def test_a_device_cannot_read_other_devices(peers: Peers) -> None:
    hub, a, b = peers.connect(HUB_USER), peers.connect(A), peers.connect(B)
    for topic_filter in (
        "#",
        "edgeloop/v1/#",
        "edgeloop/v1/dev/+/telemetry",
        "edgeloop/v1/dev/+/desired",
        T.topic(B, Kind.DESIRED),
        T.topic(B, Kind.ACK),
        T.topic(B, Kind.TELEMETRY),
    ):
        granted = a.subscribe(topic_filter)
        # amqtt refuses the SUBSCRIBE (0x80); Mosquitto 2.0 grants it and checks each
        # message against the device's read rights: either way nothing of B's arrives.
        assert not granted or peers.kind == "mosquitto", f"{A} subscribed to {topic_filter!r}"
    assert a.subscribe(T.topic(A, Kind.ACK))
    for kind in (Kind.DESIRED, Kind.ACK):
        hub.publish(T.topic(B, kind), b"for-b")
    b.publish(T.topic(B, Kind.TELEMETRY), b"b-telemetry")
    hub.publish(T.topic(A, Kind.ACK), b"marker")
    assert a.received_until(b"marker") == [(T.topic(A, Kind.ACK), b"marker")]


def test_a_device_cannot_publish_as_another_or_invent_devices(peers: Peers) -> None:
    hub, a = peers.connect(HUB_USER, client_id="hub-probe"), peers.connect(A)
    for kind in sorted(EDGE_TO_HUB):
        assert hub.subscribe(T.device_filter(kind))
    for kind in (Kind.TELEMETRY, Kind.EVENTS, Kind.STATUS, Kind.HEALTH, Kind.OTA):
        a.publish(T.topic(B, kind), b"forged")
    for n in range(5):
        a.publish(T.topic(f"ghost-{n}", Kind.STATUS), b"invented", retain=True)
    a.publish(T.topic(A, Kind.TELEMETRY), b"marker")
    assert hub.received_until(b"marker") == [(T.topic(A, Kind.TELEMETRY), b"marker")]


def test_retained_desired_or_ack_from_a_device_never_reaches_anyone(peers: Peers) -> None:
    a = peers.connect(A)
    for device in (A, B):
        for kind in (Kind.DESIRED, Kind.ACK):
            a.publish(T.topic(device, kind), b"forged-retained", retain=True)
    hub = peers.connect(HUB_USER, client_id="hub-probe")
    b = peers.connect(B)
    assert b.subscribe(T.topic(B, Kind.DESIRED)) and b.subscribe(T.topic(B, Kind.ACK))
    hub.publish(T.topic(B, Kind.ACK), b"marker")
    assert b.received_until(b"marker") == [(T.topic(B, Kind.ACK), b"marker")]


def test_retained_status_of_one_device_does_not_reach_another(peers: Peers) -> None:
    hub = peers.connect(HUB_USER, client_id="hub-probe")
    assert hub.subscribe(T.device_filter(Kind.STATUS))  # amqtt used to replay this to everyone
    b = peers.connect(B)
    b.publish(T.topic(B, Kind.STATUS), b"b-online", retain=True)
    a = peers.connect(A)
    assert a.subscribe(T.topic(A, Kind.DESIRED))
    hub.publish(T.topic(A, Kind.DESIRED), b"marker")
    assert a.received_until(b"marker") == [(T.topic(A, Kind.DESIRED), b"marker")]


@pytest.mark.parametrize("clean_session", [False, True])
def test_no_device_takes_over_the_hubs_session(peers: Peers, clean_session: bool) -> None:
    hub = peers.connect(HUB_USER, client_id=HUB_CLIENT_ID, clean_session=False)
    assert hub.subscribe(T.device_filter(Kind.TELEMETRY))
    attacker = Peer(peers.broker, A, client_id=HUB_CLIENT_ID, clean_session=clean_session)
    peers.open.append(attacker)
    code = attacker.connect()
    # amqtt refuses the client id; Mosquitto renames the client to its user name.
    assert code.is_failure == (peers.kind == "amqtt"), code
    if not code.is_failure:
        attacker.subscribe(T.device_filter(Kind.TELEMETRY))
    assert not hub.disconnected.wait(QUIET), "the hub's connection was dropped"
    b = peers.connect(B)
    b.publish(T.topic(B, Kind.TELEMETRY), b"still-ingested")
    assert hub.received_until(b"still-ingested") == [
        (T.topic(B, Kind.TELEMETRY), b"still-ingested")
    ]
    assert attacker.messages.empty(), "the attacker received the hub's data"


@pytest.mark.parametrize("clean_session", [False, True])
def test_a_wrong_password_with_a_devices_client_id_changes_nothing(
    peers: Peers, clean_session: bool
) -> None:
    hub = peers.connect(HUB_USER, client_id="hub-probe")
    assert hub.subscribe(T.device_filter(Kind.STATUS))
    b = peers.connect(B, clean_session=False)
    assert b.subscribe(T.topic(B, Kind.DESIRED))
    code = peers.refused(
        B,
        password="not-b-secret",
        clean_session=clean_session,
        will=(T.topic(B, Kind.STATUS), b"forged-offline"),
    )
    assert code.is_failure
    assert not b.disconnected.wait(QUIET), "the device was disconnected by a refused client"
    hub.publish(T.topic(B, Kind.DESIRED), b"desired-after")
    assert b.received_until(b"desired-after") == [(T.topic(B, Kind.DESIRED), b"desired-after")]
    b.publish(T.topic(B, Kind.STATUS), b"marker")
    assert hub.received_until(b"marker") == [(T.topic(B, Kind.STATUS), b"marker")]


@pytest.mark.parametrize("clean_session", [False, True])
def test_a_device_cannot_use_another_devices_client_id(peers: Peers, clean_session: bool) -> None:
    hub = peers.connect(HUB_USER, client_id="hub-probe")
    b = peers.connect(B, clean_session=False)
    assert b.subscribe(T.topic(B, Kind.DESIRED))
    attacker = Peer(peers.broker, A, client_id=B, clean_session=clean_session)
    peers.open.append(attacker)
    code = attacker.connect()
    # amqtt refuses; Mosquitto gives the attacker its own user name as client id.
    assert code.is_failure == (peers.kind == "amqtt"), code
    assert not b.disconnected.wait(QUIET), f"{B} was disconnected by {A} using its client id"
    hub.publish(T.topic(B, Kind.DESIRED), b"marker")
    assert b.received_until(b"marker") == [(T.topic(B, Kind.DESIRED), b"marker")]


def test_unique_roots_are_not_confused() -> None:
    # The fixture's default rules allow only the default root.
    assert not BrokerRules().may_publish(A, f"edgeloop-test/{uuid.uuid4().hex}/dev/{A}/status")


# -- with a real hub: what a hostile device gets stored -------------------------------


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def hub_and_devices(
    request: pytest.FixtureRequest, tmp_path: Path, model_packages: ModelPaths
) -> Iterator[tuple[HubProcess, Peers]]:
    """``edgeloop-hub serve`` with devices dev-a and dev-b: on its embedded broker,
    provisioned in its password file as ``devices add`` does; or on Mosquitto with
    the rules' ACL."""
    models = model_packages.edge.parent.parent
    if request.param == "embedded":
        hub = HubProcess(tmp_path / "hub", models, log_level="INFO")
        assert hub.broker_port is not None
        where = BrokerEndpoint("127.0.0.1", hub.broker_port)
        secrets = {
            device: provision_device(
                device, broker=where, topics=T, password_file=hub.data_dir / "broker-passwd"
            ).secret
            for device in (A, B)
        }
        with hub:
            assert hub.broker_port is not None
            yield hub, Peers("amqtt", BrokerEndpoint("127.0.0.1", hub.broker_port), secrets)
        return
    require_mosquitto()
    with Mosquitto(
        tmp_path / "mosquitto", users=SECRETS, rules=BrokerRules(), username_as_clientid=True
    ) as mq:
        hub = HubProcess(tmp_path / "hub", models, broker=mq.endpoint(HUB_USER), log_level="INFO")
        with hub:
            yield hub, Peers("mosquitto", mq.endpoint(HUB_USER), SECRETS)


def _stored(hub: HubProcess, device: str) -> int:
    try:
        detail = hub.api.get_json(f"/v1/devices/{device}")
    except ApiError as exc:
        if exc.status == 404:
            return 0
        raise
    return int(detail["counters"].get("stored_readings", 0))


@pytest.mark.timeout(240)
def test_the_hub_stores_nothing_a_device_forges(
    hub_and_devices: tuple[HubProcess, Peers],
) -> None:
    hub, peers = hub_and_devices
    try:
        a = peers.connect(A)
        for kind in (Kind.EVENTS, Kind.HEALTH, Kind.OTA):
            a.publish(T.topic(B, kind), b"{}")
        a.publish(T.topic(B, Kind.TELEMETRY), encode(telemetry(B, 1)))
        for n in range(5):
            a.publish(T.topic(f"ghost-{n}", Kind.STATUS), b"{}", retain=True)
        a.publish(T.topic(A, Kind.TELEMETRY), encode(telemetry(A, 1)))
        hub.wait_until(
            "dev-a's own telemetry stored", lambda: _stored(hub, A) == 5, timeout=WAIT * 3
        )
        listed = {d["device"] for d in hub.api.get_json("/v1/devices")["devices"]}
        assert not any(d.startswith("ghost-") for d in listed), listed
        assert _stored(hub, B) == 0

        # The hub's client id from dev-a: refused (amqtt) or renamed (Mosquitto).
        attacker = Peer(
            peers.broker,
            A,
            client_id=HUB_CLIENT_ID,
            clean_session=False,
            password=peers.secrets[A],
        )
        peers.open.append(attacker)
        attacker.connect()
        attacker.close()
        b = peers.connect(B)
        b.publish(T.topic(B, Kind.TELEMETRY), encode(telemetry(B, 1)))
        hub.wait_until("dev-b's telemetry stored", lambda: _stored(hub, B) == 5, timeout=WAIT * 3)
    finally:
        for peer in peers.open:
            peer.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_embedded_broker_logs_refusals_in_either_format_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    # As a program's --log-format sets it; debug: the chattiest the broker gets.
    monkeypatch.setenv(LOG_FORMAT_ENV, log_format)
    wrong = "not-dev-b-but-close-7f3e"
    with AmqttBroker(tmp_path / "amqtt", users=SECRETS, log_level="debug") as broker:
        peers = Peers("amqtt", broker.endpoint(HUB_USER))
        try:
            a = peers.connect(A)
            assert not a.subscribe("#") and not a.subscribe("edgeloop/v1/#")
            a.publish(T.topic(B, Kind.TELEMETRY), b"forged")
            assert peers.refused(B, password=wrong).is_failure
            wanted = (
                "refused subscribe '#' by account 'dev-a' (client 'dev-a'), refusal 1 of this kind",
                "refused subscribe 'edgeloop/v1/#' by account 'dev-a'",
                "refused publish 'edgeloop/v1/dev/dev-b/telemetry' by account 'dev-a'",
                "device 'dev-a' may publish only its own topics",
                "refused CONNECT from 127.0.0.1",
            )
            broker.broker.stop()  # flush the log
            log = broker.log_path.read_text()
            password_file = broker.password_file.read_text()
        finally:
            for peer in peers.open:
                peer.close()
    lines = log.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records), log
        messages = "\n".join(r["message"] for r in records)
    else:
        assert not any(line.startswith("{") for line in lines), log[-3000:]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ", lines[0])
        messages = log
    for line in wanted:
        assert line in messages, log[-3000:]
    hashes = [line.partition(":")[2] for line in password_file.splitlines() if ":" in line]
    for secret in (*SECRETS.values(), wrong, *hashes, *(h.split("$")[-1] for h in hashes)):
        assert secret not in log, f"a secret reached the broker's log: {secret[:4]}..."


def test_the_broker_process_refuses_bad_rules_in_one_line(tmp_path: Path) -> None:
    from cloud_hub.broker.auth import add_user  # noqa: PLC0415

    add_user(tmp_path / "passwd", HUB_USER, "x" * 20)
    for bad, says in ((["--root", "a/#"], "topic root"), (["--fleet", HUB_USER], "fleet")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cloud_hub.broker",
                "--password-file",
                str(tmp_path / "passwd"),
                *bad,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "bad topic rules" in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.timeout(90)
def test_the_hubs_embedded_broker_logs_as_the_hub_does(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    """``serve --log-format json``: broker.log (the child's stderr) is JSON lines too."""
    wrong = "not-a-device-secret-0b9d"
    hub = HubProcess(
        tmp_path / "hub", model_packages.edge.parent.parent, args=["--log-format", "json"]
    )
    with hub:
        assert hub.broker_port is not None
        stranger = Peers("amqtt", BrokerEndpoint("127.0.0.1", hub.broker_port), {})
        try:
            assert stranger.refused(A, password=wrong).is_failure
        finally:
            for peer in stranger.open:
                peer.close()
        broker_log = hub.data_dir / "broker.log"
        hub.wait_until(
            "the refusal in broker.log",
            lambda: "refused CONNECT" in broker_log.read_text(),
            timeout=WAIT,
        )
    lines = broker_log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records), lines
    assert any(r["logger"] == "cloud_hub.broker.rules" for r in records), lines
    assert wrong not in broker_log.read_text()
