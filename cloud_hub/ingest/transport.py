"""The hub's MQTT link (paho-mqtt): the only ingest module that imports it.

paho's network thread does only this: keep the connection, check that each
incoming topic is one the hub asked for, and put ``(topic, payload,
received_at)`` on a bounded queue (:class:`IngestQueue`). Everything else
(decoding, scoring, storing, acking) is the ingest worker's, on its own thread.

Backpressure, not drops: the queue is bounded in messages (``queue_max``) and
in payload bytes (``queue_max_bytes``). When it is full, paho's thread waits
for the worker to take a batch (it re-checks every half second, and gives up
only when the link closes) instead of dropping. While it waits it reads
nothing more from the socket, so the broker holds what is left: Mosquitto
queues it in the hub's persistent session up to ``max_queued_messages`` (raise
it for the hub, as ``deploy/mosquitto/mosquitto.conf`` does), and beyond that
drops it. The devices send again what the hub never acked. The wait lasts as
long as the worker takes to finish a batch, far less than the keepalive, so
the connection stays up. What the hub holds is bounded by the queue's two
limits whatever the broker does (amqtt buffers without bound in its own
process).

Size: a payload over ``max_payload_bytes`` (the size a device may send,
:attr:`shared.messages.Limits.max_payload_bytes` by default) is not queued:
its first kilobyte is, as an :class:`OversizedPayload` that the worker counts
(``invalid:too_large`` for its device) and dead-letters without decoding.

The session is persistent (``clean_session=False``, fixed client id): while the
hub restarts, the broker keeps its subscriptions and queues QoS 1 messages for
it. Reconnects wait an exponential, jittered delay
(:class:`~shared.backoff.Backoff`), as the agent's do.

Outages: the link is *up* once the broker has acknowledged its subscriptions
on the current connection, and *down* from the moment the connection is lost
(the broker died or restarted, the network failed, or another client took the
hub's session by connecting with its client id) until it is up again.
:meth:`HubLink.health` says which, since when and why (``/healthz`` reports
it). Each outage is logged once when it starts (with what to check) and once
when it ends, and counted: ``broker_disconnects`` and ``broker_reconnects``
(``/healthz`` shows them at once; they join ingest's stored counters, shown
by ``/v1/stats/ingest``, with the worker's next batch).

Errors::

    EdgeloopError
     └── BrokerConnectError     start() could not connect: endpoint (redacted), reason
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.health import PartHealth
from shared.backoff import Backoff
from shared.endpoint import BrokerEndpoint
from shared.errors import EdgeloopError
from shared.messages import DEFAULT_LIMITS
from shared.topics import EDGE_TO_HUB, Topics, topic_matches

__all__ = [
    "DEFAULT_QUEUE_MAX",
    "DEFAULT_QUEUE_MAX_BYTES",
    "HEAD_BYTES",
    "BrokerConnectError",
    "HubLink",
    "Incoming",
    "IngestQueue",
    "OversizedPayload",
]

log = logging.getLogger(__name__)

Incoming = tuple[str, bytes, float]
"""``(topic, payload, received_at)``; ``received_at`` is wall-clock ``time.time()``."""

HEAD_BYTES: Final = 1024
"""How much of a refused payload is kept (for the dead letter an operator reads)."""


class OversizedPayload(bytes):
    """What is queued in place of a payload over the link's ``max_payload_bytes``.

    Its bytes are the payload's first :data:`HEAD_BYTES`; :attr:`size` is the
    size that arrived and :attr:`limit` the one it is over. The worker counts
    and dead-letters it as ``too_large`` for its device without decoding it, so
    an oversized flood costs the queue a kilobyte a message, not the payloads.

    >>> p = OversizedPayload(b"x" * 5000, limit=4096)
    >>> (len(p), p.size, p.limit)
    (1024, 5000, 4096)
    """

    size: int
    limit: int

    def __new__(cls, payload: bytes | bytearray, *, limit: int) -> OversizedPayload:
        head = super().__new__(cls, payload[:HEAD_BYTES])
        head.size = len(payload)
        head.limit = limit
        return head


DEFAULT_QUEUE_MAX: Final = 200_000
DEFAULT_QUEUE_MAX_BYTES: Final = 256 * 2**20
_WAIT_SLICE_S: Final = 0.5


class IngestQueue(queue.Queue[Incoming]):
    """A FIFO of incoming messages bounded in count (``maxsize``) and payload bytes.

    :meth:`put_waiting` blocks while either bound is reached; one message larger
    than ``max_bytes`` on its own is let in when the queue is empty, so it cannot
    wedge the link.
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"ingest queue: max_bytes must be >= 1, got {max_bytes}")
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0

    def _put(self, item: Incoming) -> None:
        self.queue.append(item)
        self.bytes += len(item[1])

    def _get(self) -> Incoming:
        item: Incoming = self.queue.popleft()
        self.bytes -= len(item[1])
        return item

    def _room_for(self, size: int) -> bool:
        n = self._qsize()
        return n == 0 or (n < self.maxsize and self.bytes + size <= self.max_bytes)

    def put_waiting(
        self, item: Incoming, closing: threading.Event, on_wait: Callable[[], None] | None = None
    ) -> bool:
        """Put ``item``, waiting for room (calling ``on_wait`` once when it must wait);
        False only when ``closing`` is set while waiting."""
        size = len(item[1])
        waited = False
        with self.not_full:
            while not self._room_for(size):
                if closing.is_set():
                    return False
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                self.not_full.wait(_WAIT_SLICE_S)
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()
        return True


# MQTT 3.1.1 CONNACK return codes that mean "these credentials are not accepted".
_CREDENTIALS_REFUSED: Final = frozenset({4, 5, 134, 135})


class BrokerConnectError(EdgeloopError):
    """The hub could not connect to its broker; the message names the cause and the fix.

    ``reason`` is one of ``not_authorized``, ``refused``, ``unreachable``,
    ``unknown_host``, ``timeout``, ``no_connack``, ``subscribe_refused``.
    """

    def __init__(self, message: str, *, endpoint: str, reason: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.reason = reason


class HubLink:
    """The hub's one connection to the broker: subscribe, queue, publish.

    >>> link = HubLink(endpoint, Topics(), client_id="edgeloop-hub")  # doctest: +SKIP
    >>> link.start(timeout=10)  # doctest: +SKIP
    >>> topic, payload, received_at = link.queue.get()  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        topics: Topics,
        *,
        client_id: str = "edgeloop-hub",
        queue_max: int = DEFAULT_QUEUE_MAX,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        keepalive_s: int = 30,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        max_inflight: int = 1000,
        max_queued_out: int = 100_000,
        max_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes,
        ca_file: Path | None = None,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"hub link: queue_max must be >= 1, got {queue_max}")
        if reconnect_max_s < reconnect_min_s or reconnect_min_s < 1:
            raise ValueError(
                f"hub link: reconnect delays must satisfy 1 <= min <= max, got "
                f"{reconnect_min_s} and {reconnect_max_s}"
            )
        self.endpoint = endpoint
        self.topics = topics
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.max_payload_bytes = max_payload_bytes
        self.queue = IngestQueue(queue_max, queue_max_bytes)
        """Messages for the ingest worker; when it is full, paho's thread waits (backpressure)."""
        self.subscriptions: tuple[str, ...] = tuple(
            topics.device_filter(kind) for kind in sorted(EDGE_TO_HUB)
        )
        self.connected = threading.Event()
        self.connects = 0
        self._state_lock = threading.Lock()
        self._up = False
        self._since = time.time()
        self._down_reason: str | None = "not connected yet"
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._counts_lock = threading.Lock()
        self._pending_counts: dict[str, int] = {}
        self._total_counts: dict[str, int] = {}
        self._subscribed = threading.Event()
        self._start_failure: BrokerConnectError | None = None
        self._closing = False
        self._closed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if endpoint.username:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:  # mqtts://: the broker's certificate and host name are verified
            client.tls_set(
                ca_certs=None if ca_file is None else str(ca_file), cert_reqs=ssl.CERT_REQUIRED
            )
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued_out)
        client.reconnect_delay_set(reconnect_min_s, reconnect_min_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    # -- counters (the paho thread counts too; our lock is never held around a paho call)

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._pending_counts[name] = self._pending_counts.get(name, 0) + n
            self._total_counts[name] = self._total_counts.get(name, 0) + n

    def take_counts(self) -> dict[str, int]:
        """Counts (``backpressure_waits``, ``invalid:foreign_topic``, ...) since the last take."""
        with self._counts_lock:
            taken, self._pending_counts = self._pending_counts, {}
            return taken

    def counts(self) -> dict[str, int]:
        """Every count since the link was built."""
        with self._counts_lock:
            return dict(self._total_counts)

    # -- paho thread ---------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        if rc.is_failure:
            self._count("connect_refused")
            failure = self._refusal(rc)
            if self._start_failure is None and not self.connects:
                self._start_failure = failure
                self._subscribed.set()  # wakes start(), which raises the failure
            else:
                log.error("%s", failure)
            self._schedule_reconnect()
            return
        self._backoff.reset()
        self.connects += 1
        client.subscribe([(f, 1) for f in self.subscriptions])
        self.connected.set()
        log.info(
            "hub connected to %s as %r (session %s)",
            self.endpoint.redacted_url,
            self.client_id,
            "resumed" if getattr(flags, "session_present", False) else "new",
        )

    def _refusal(self, rc: ReasonCode) -> BrokerConnectError:
        url = self.endpoint.redacted_url
        why = str(rc).lower()
        if rc.value in _CREDENTIALS_REFUSED:
            return BrokerConnectError(
                f"broker at {url} refused the hub's credentials ({why}): "
                "check --broker user and password",
                endpoint=url,
                reason="not_authorized",
            )
        return BrokerConnectError(
            f"broker at {url} refused the hub's connection ({why}); "
            f"is another hub already connected as client id {self.client_id!r}?",
            endpoint=url,
            reason="refused",
        )

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._count("connect_failed")
        self._schedule_reconnect()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing:
            return
        if was:
            self._went_down(f"the connection to the broker was lost ({rc})")
        self._schedule_reconnect()

    def _went_down(self, reason: str) -> None:
        """Mark the link down and say so, once per outage."""
        with self._state_lock:
            if not self._up:
                return
            self._up = False
            self._since = time.time()
            self._down_reason = reason
        self._count("broker_disconnects")
        log.warning(
            "hub lost its broker link to %s: %s; reconnecting with backoff, and /healthz "
            "answers 503 until it is back. Check that the broker runs; if this repeats while "
            "it runs, another client is connecting with the hub's client id %r (the broker's "
            "log shows a take-over) and must be stopped",
            self.endpoint.redacted_url,
            reason,
            self.client_id,
        )

    def _came_up(self) -> None:
        with self._state_lock:
            if self._up:
                return
            outage = time.time() - self._since
            again = self.connects > 1
            self._up = True
            self._since = time.time()
            if not again:
                self._down_reason = None  # "not connected yet" was no outage
        if again:
            self._count("broker_reconnects")
            log.warning(
                "hub broker link to %s is back after %.1f s (subscribed again as %r)",
                self.endpoint.redacted_url,
                outage,
                self.client_id,
            )

    def health(self) -> PartHealth:
        """Up (connected and subscribed) or down, since when, and why it last went down."""
        counts = self.counts()
        with self._state_lock:
            up, since, reason = self._up, self._since, self._down_reason
        return PartHealth(
            up=up,
            since=since,
            reason=reason,
            check=None
            if up
            else (
                "that the broker runs and accepts the hub's account, and that no other "
                "client uses the hub's client id; the hub's log says more"
            ),
            counts={
                "disconnects": counts.get("broker_disconnects", 0),
                "reconnects": counts.get("broker_reconnects", 0),
            },
        )

    def _schedule_reconnect(self) -> None:
        delay = self._backoff.next()
        self._client.reconnect_delay_set(delay, delay)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        refused = [f for f, code in zip(self.subscriptions, codes, strict=False) if code.is_failure]
        if refused:
            self._count("subscribe_refused", len(refused))
            failure = BrokerConnectError(
                f"broker at {self.endpoint.redacted_url} refused the hub's subscription to "
                f"{', '.join(refused)}: allow the hub's user to read '{self.topics.root}/dev/#' "
                "in the broker's ACL",
                endpoint=self.endpoint.redacted_url,
                reason="subscribe_refused",
            )
            if self._start_failure is None and self.connects <= 1:
                self._start_failure = failure
            else:
                log.error("%s", failure)
                with self._state_lock:
                    self._down_reason = "the broker refused the hub's subscriptions"
        else:
            self._came_up()
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        received_at = time.time()
        topic = message.topic
        # amqtt hands a new client retained messages of other clients' subscriptions.
        if not any(topic_matches(f, topic) for f in self.subscriptions):
            self._count("invalid:foreign_topic")
            return
        payload = message.payload
        if len(payload) > self.max_payload_bytes:
            # Only its head is queued, never decoded; the worker counts it for its device.
            payload = OversizedPayload(payload, limit=self.max_payload_bytes)
        else:
            payload = bytes(payload)
        put = self.queue.put_waiting(
            (topic, payload, received_at),
            self._closed,
            lambda: self._count("backpressure_waits"),
        )
        if not put:  # closing: paho has acked it to the broker; the device will resend
            self._count("dropped:hub_closing")

    # -- any other thread ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, and run paho's network thread; raise :class:`BrokerConnectError`.

        Returns once the broker has acknowledged both the connection and the
        subscriptions, so every message published after it returns reaches the
        queue. From then on, lost connections are retried in the background.
        """
        url = self.endpoint.redacted_url
        self._client.connect_timeout = timeout
        deadline = time.monotonic() + timeout
        try:
            self._client.connect(self.endpoint.host, self.endpoint.port, self.keepalive_s)
        except ConnectionRefusedError:
            raise BrokerConnectError(
                f"cannot reach the broker at {url}: connection refused; is it running?",
                endpoint=url,
                reason="unreachable",
            ) from None
        except socket.gaierror as exc:
            raise BrokerConnectError(
                f"cannot reach the broker at {url}: host {self.endpoint.host!r} not found "
                f"({exc.strerror}); check the --broker host",
                endpoint=url,
                reason="unknown_host",
            ) from None
        except TimeoutError:
            raise BrokerConnectError(
                f"cannot reach the broker at {url}: no answer within {timeout:g} s; "
                "check the host, the port and any firewall between",
                endpoint=url,
                reason="timeout",
            ) from None
        except OSError as exc:
            raise BrokerConnectError(
                f"cannot reach the broker at {url}: {exc.strerror or exc}; is it running?",
                endpoint=url,
                reason="unreachable",
            ) from None
        self._client.loop_start()
        ok = self._subscribed.wait(max(0.0, deadline - time.monotonic()))
        failure = self._start_failure
        if failure is None and not ok:
            failure = BrokerConnectError(
                f"broker at {url} accepted the TCP connection but did not complete the MQTT "
                f"handshake (CONNACK and SUBACK) within {timeout:g} s; is it an MQTT broker, "
                "and is the port the MQTT listener?",
                endpoint=url,
                reason="no_connack",
            )
        if failure is not None:
            self.close()
            raise failure

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to paho (sent now, or at QoS 1 kept for the reconnect); False if not.

        paho holds at most ``max_queued_out`` outgoing messages; beyond that it
        refuses, and the caller decides (an ack is superseded by the next one).
        """
        # Never hold a lock of ours around a paho call: paho calls back under its own.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return qos > 0  # paho keeps a QoS 1 message for the reconnect, drops a QoS 0 one
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def close(self) -> None:
        """Disconnect and stop paho's thread. The broker keeps the session for the next start."""
        self._closing = True
        with self._state_lock:
            self._up = False
            self._since = time.time()
            self._down_reason = "the hub closed its link (shutting down)"
        self._closed.set()
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def __repr__(self) -> str:
        return (
            f"HubLink({self.endpoint.redacted_url!r}, root={self.topics.root!r}, "
            f"client_id={self.client_id!r}, queued={self.queue.qsize()})"
        )
