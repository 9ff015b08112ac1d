"""The agent's MQTT link (paho-mqtt): the only agent module that imports it.

paho's network thread does only this: keep the connection, hand incoming
messages to a bounded inbox (dropping and counting when it is full), and wake
the agent's link thread. Birth is published retained on every connect, the
last will ``offline`` is registered with the broker, and reconnects wait an
exponential, jittered delay (:class:`~shared.backoff.Backoff`).

Memory stays bounded whatever the broker does: paho holds at most
``mqtt_queue`` QoS 1 messages (``publish`` refuses beyond that and the
message stays in the agent's outbox), and the inbox at most ``inbox_max``.

When the broker cannot be reached (nothing listens, the name does not
resolve, the port is not MQTT, the credentials are refused), paho's thread
only records the failure in a :class:`ConnectReport` and wakes the link
thread, which logs it (address tried, what happened, what to check) at the
first failure and then at most every ``connect_report_s`` seconds.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.settings import AgentSettings
from edge_agent.stats import Counters
from shared.backoff import Backoff
from shared.topics import topic_matches

__all__ = ["ConnectFailure", "ConnectReport", "MqttLink", "session_failure", "socket_failure"]

log = logging.getLogger(__name__)

_CHECK_ADDRESS = (
    "that the broker runs and that the broker URL (--broker or EDGELOOP_AGENT_BROKER) names "
    "its host and MQTT port (the hub's embedded broker listens on 1883 unless the hub was "
    "started with --broker-port; the hub's HTTP API, 8080 by default, is not MQTT)"
)


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """One failed attempt to reach the broker: what happened, and what to check."""

    what: str
    check: str


def socket_failure(
    exc: BaseException | None, host: str, port: int, *, tls: bool = False
) -> ConnectFailure:
    """The failure of a TCP (or, with ``tls``, TLS) connection to ``host:port`` that raised
    ``exc``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectFailure(
            f"the TLS certificate of {host} port {port} is not trusted "
            f"({exc.verify_message or exc})",
            "that --broker-ca-file names the CA that signed the broker's certificate (for the "
            "hub: its DATA_DIR/tls/ca.pem, from edgeloop-hub certs init) and that the "
            f"certificate names {host} (edgeloop-hub certs server --host {host})",
        )
    if isinstance(exc, ssl.SSLError) or (tls and isinstance(exc, ConnectionResetError)):
        # A plain MQTT port answers a TLS hello by closing the connection.
        reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
        return ConnectFailure(
            f"TLS with {host} port {port} failed ({reason or exc})",
            f"that port {port} is the broker's TLS port (8883 by default) for an mqtts:// URL; "
            "a plain MQTT port needs mqtt://",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure(
            f"connection refused: nothing listens on port {port} of {host}", _CHECK_ADDRESS
        )
    if isinstance(exc, socket.gaierror):
        return ConnectFailure(
            f"the host name {host!r} does not resolve ({exc.strerror})",
            "the host name in the broker URL (--broker) and the device's DNS settings",
        )
    if tls and isinstance(exc, TimeoutError):
        return ConnectFailure(
            f"no TLS answer from {host} port {port} (timed out)",
            f"that port {port} is the broker's TLS port (8883 by default) for an mqtts:// URL "
            "(a plain MQTT port waits for MQTT, not TLS: use mqtt:// there), then the address, "
            "the route and any firewall",
        )
    if isinstance(exc, TimeoutError):
        return ConnectFailure(
            f"no answer from {host} port {port} (timed out)",
            "the host address in the broker URL (--broker), the network route to it and any "
            "firewall on the way",
        )
    if isinstance(exc, OSError):
        return ConnectFailure(
            f"{exc.strerror or exc} (errno {exc.errno}) connecting to {host} port {port}",
            _CHECK_ADDRESS + ", and the device's network",
        )
    return ConnectFailure(f"the connection to {host} port {port} failed ({exc!r})", _CHECK_ADDRESS)


def session_failure(rc: ReasonCode, host: str, port: int) -> ConnectFailure:
    """A TCP connection that ended before the broker accepted the MQTT session."""
    if rc.getName() == "Protocol error":
        what = f"{host} port {port} accepted the connection but did not answer as an MQTT broker"
    else:
        what = f"{host} port {port} closed the connection before answering the MQTT CONNECT"
    return ConnectFailure(
        f"{what} ({rc})",
        f"that port {port} is the broker's MQTT port (1883 by default), not an HTTP port "
        "such as the hub's API (8080 by default) or another service; if it is the broker, "
        "its log says why it dropped this client",
    )


class ConnectReport:
    """Failed attempts to reach the broker, to be said at the first one and then at most
    once every ``every_s`` seconds while they go on.

    paho's thread calls :meth:`failed` (it records, never logs); the agent's link thread
    calls :meth:`due` and logs what it returns. Times are ``time.monotonic()`` seconds.

    >>> report = ConnectReport(30.0)
    >>> report.failed(ConnectFailure("refused", "the port"))
    >>> report.due(100.0)
    (ConnectFailure(what='refused', check='the port'), 1, 1)
    >>> report.failed(ConnectFailure("refused", "the port"))
    >>> report.due(110.0) is None, report.next_due(110.0)
    (True, 20.0)
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._latest: ConnectFailure | None = None
        self._unreported = 0
        self._attempts = 0
        self._reported_at: float | None = None

    def failed(self, failure: ConnectFailure) -> None:
        """Record a failed attempt (paho's thread)."""
        with self._lock:
            self._latest = failure
            self._unreported += 1
            self._attempts += 1

    def connected(self) -> int:
        """The broker was reached: forget the failures, so the next one is said at once.
        Returns how many attempts had failed."""
        with self._lock:
            attempts = self._attempts
            self._latest, self._unreported, self._attempts, self._reported_at = None, 0, 0, None
            return attempts

    def latest(self) -> tuple[ConnectFailure, int] | None:
        """The latest failure and the failures since the broker was last reached
        (None: none since then)."""
        with self._lock:
            return None if self._latest is None else (self._latest, self._attempts)

    def due(self, now: float) -> tuple[ConnectFailure, int, int] | None:
        """The latest failure, the failures since the last report and those since the
        broker was last reached, if a report is due at ``now``; else None."""
        with self._lock:
            if self._latest is None or not self._unreported:
                return None
            if self._reported_at is not None and now - self._reported_at < self.every_s:
                return None
            self._reported_at = now
            unreported, self._unreported = self._unreported, 0
            return self._latest, unreported, self._attempts

    def next_due(self, now: float) -> float | None:
        """Seconds until an unreported failure may be said (None: none is waiting)."""
        with self._lock:
            if not self._unreported:
                return None
            if self._reported_at is None:
                return 0.0
            return max(0.0, self._reported_at + self.every_s - now)


class MqttLink:
    """One device's connection to the broker."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        subscriptions: list[str],
        will: tuple[str, bytes],
        inbox: queue.Queue[tuple[str, bytes]],
        wake: threading.Event,
        counters: Counters,
    ) -> None:
        self.settings = settings
        self.device = settings.device
        self.subscriptions = subscriptions
        self.inbox = inbox
        self.wake = wake
        self.counters = counters
        self.connected = threading.Event()
        self.birth: Callable[[], tuple[str, bytes]] | None = None
        """Builds the retained birth message afresh at every connect."""
        self.will: Callable[[], tuple[str, bytes]] | None = None
        """Builds the last will afresh before every reconnect (it carries the last seq)."""
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        # Infos of QoS 1 messages handed to paho; pruned once published. Bounded
        # because paho refuses more than mqtt_queue messages.
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._lock = threading.Lock()
        self.connects = 0
        self.failures = ConnectReport(settings.connect_report_s)
        self._closing = False
        self._refused = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.device,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        broker = settings.broker
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:  # the certificate and its host name are verified (paho's default)
            ca = settings.broker_ca_file
            client.tls_set(ca_certs=None if ca is None else str(ca), cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(settings.inflight)
        client.max_queued_messages_set(settings.mqtt_queue)
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_min_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    # -- paho thread ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self.counters.add("connect_refused")
            self._refused = True  # the broker now closes the connection: not another failure
            check = (
                "the device's user name and password in the broker URL (edgeloop-hub "
                "devices add prints them), and that the device is provisioned on this broker"
            )
            user = self.settings.broker.username
            if user is not None and user != self.device:
                check += (
                    f"; and the device id: it is {self.device!r} (--device) but the broker "
                    f"account is {user!r}, and edgeloop's brokers let a device account connect "
                    "only with its own name as client id"
                )
            self._failed(ConnectFailure(f"the broker refused the session: {rc}", check))
            self._schedule_reconnect()
            return
        self._backoff.reset()
        self.connects += 1
        failed = self.failures.connected()
        if self.birth is not None:
            topic, payload = self.birth()
            client.publish(topic, payload, qos=1, retain=True)
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.connected.set()
        self.wake.set()
        log.info(
            "device %r: connected to %s%s",
            self.device,
            self.settings.broker.redacted_url,
            f" after {failed} failed attempts" if failed else "",
        )

    def _failed(self, failure: ConnectFailure) -> None:
        self.failures.failed(failure)
        self.wake.set()  # the link thread says it

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this from the except clause around its socket connect.
        self.counters.add("connect_failed")
        self._refused = False
        broker = self.settings.broker
        self._failed(socket_failure(sys.exception(), broker.host, broker.port, tls=broker.tls))
        self._schedule_reconnect()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing:
            return
        if was:
            log.warning(
                "device %r: disconnected from %s (%s)",
                self.device,
                self.settings.broker.redacted_url,
                rc,
            )
        elif self._refused:
            self._refused = False
        else:  # connected over TCP, but no MQTT session came of it
            broker = self.settings.broker
            self._failed(session_failure(rc, broker.host, broker.port))
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self.will is not None:
            # The broker takes the will at connect time: give the next connect the
            # newest last seq, so a will tells the hub how far this epoch went.
            topic, payload = self.will()
            self._client.will_set(topic, payload, qos=1, retain=True)
        delay = self._backoff.next()
        self._client.reconnect_delay_set(delay, delay)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        # amqtt hands a new client retained messages of other clients' subscriptions.
        if not any(topic_matches(f, topic) for f in self.subscriptions):
            self.counters.add("invalid:foreign_topic")
            return
        try:
            self.inbox.put_nowait((topic, bytes(message.payload)))
        except queue.Full:
            self.counters.add("dropped:inbox_full")
            return
        self.wake.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        # Called under paho's own message lock: take no lock of ours here.
        self.wake.set()

    # -- link thread ---------------------------------------------------------------------------

    def start(self) -> None:
        broker = self.settings.broker
        self._client.connect_async(broker.host, broker.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to paho; False if paho's bounded queue is full (try later)."""
        # Never hold our lock around a paho call: paho calls back under its own.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return False
        # MQTT_ERR_NO_CONN: the connection went between our check and paho's write;
        # paho keeps the message for the next connection, and its info's
        # is_published() raises from now on: not kept (the outbox resends unacked ones).
        if qos and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            with self._lock:
                self._prune()
                self._pending.append(info)
        return True

    def report_failures(self, now: float) -> float | None:
        """Log why the broker cannot be reached, if a report is due (link thread).

        Returns the seconds until a failure not yet said may be (None: none waits).
        """
        due = self.failures.due(now)
        if due is not None:
            failure, _since_last, attempts = due
            s = self.settings
            if attempts == 1:
                tail = (
                    f"Retrying (delays {s.reconnect_min_s}-{s.reconnect_max_s} s); said again "
                    f"at most every {s.connect_report_s:g} s (--connect-report-s) while it fails"
                )
            else:
                tail = f"{attempts} attempts failed so far; still retrying"
            log.error(
                "device %r: cannot connect to the broker at %s: %s; check %s. %s",
                self.device,
                s.broker.redacted_url,
                failure.what,
                failure.check,
                tail,
            )
        return self.failures.next_due(now)

    @property
    def outstanding(self) -> int:
        """QoS 1 messages handed to paho and not yet acknowledged by the broker."""
        with self._lock:
            self._prune()
            return sum(not info.is_published() for info in self._pending)

    def _prune(self) -> None:
        """Forget the infos of the oldest messages the broker has acknowledged (under the lock).

        Pruned at every publish, so a running agent keeps about as many as paho holds,
        not one per message sent since it started.
        """
        while self._pending and self._pending[0].is_published():
            self._pending.popleft()

    def close(self, offline: tuple[str, bytes] | None, timeout: float) -> None:
        """Publish ``offline`` (retained), wait for it up to ``timeout``, disconnect.

        Never raises for a status that could not be sent: while paho's queue is full
        (``mqtt_queue`` messages still wait for the broker), it tries again until
        ``timeout``; a status not sent by then is logged as a warning.
        """
        if offline is not None and self.connected.is_set():
            deadline = time.monotonic() + timeout
            rc = self._publish_and_wait(offline, deadline)
            if rc is not None:
                log.warning(
                    "device %r: the retained offline status (%s) was not sent before "
                    "disconnecting (%s, after %g s); the hub shows the device online until "
                    "it next connects",
                    self.device,
                    offline[0],
                    rc,
                    timeout,
                )
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def _publish_and_wait(self, message: tuple[str, bytes], deadline: float) -> str | None:
        """Publish ``message`` (QoS 1, retained) and wait until the broker took it or
        ``deadline``; None once taken, else why not. A full paho queue is tried again."""
        while True:
            info = self._client.publish(message[0], message[1], qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                return f"paho refused it: {mqtt.error_string(info.rc)}"
            if time.monotonic() >= deadline or not self.connected.is_set():
                return (
                    f"paho's send queue stayed full: {self.settings.mqtt_queue} messages "
                    "(--mqtt-queue) waited for the broker"
                )
            time.sleep(0.05)
        while not info.is_published():
            if not self.connected.is_set():
                return "the connection was lost"
            if time.monotonic() >= deadline:
                return "the broker did not acknowledge it in time"
            info.wait_for_publish(0.1)
        return None
