"""The agent's MQTT link (paho-mqtt): the only agent module that imports it.

paho's network thread does only this: keep the connection, hand incoming
messages to a bounded inbox (dropping and counting when it is full), and wake
the agent's link thread. Birth is published retained on every connect, the
last will ``offline`` is registered with the broker, and reconnects wait an
exponential, jittered delay (:class:`~shared.backoff.Backoff`).

Memory stays bounded whatever the broker does: paho holds at most
``mqtt_queue`` QoS 1 messages (``publish`` refuses beyond that and the
message stays in the agent's outbox), and the inbox at most ``inbox_max``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.settings import AgentSettings
from edge_agent.stats import Counters
from shared.backoff import Backoff
from shared.topics import topic_matches

__all__ = ["MqttLink"]

log = logging.getLogger(__name__)


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
        self._closing = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.device,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        broker = settings.broker
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
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
            log.error(
                "device %r: broker %s refused the connection: %s; check the device's broker "
                "credentials (edgeloop-hub devices add prints them)",
                self.device,
                self.settings.broker.redacted_url,
                rc,
            )
            self._schedule_reconnect()
            return
        self._backoff.reset()
        self.connects += 1
        if self.birth is not None:
            topic, payload = self.birth()
            client.publish(topic, payload, qos=1, retain=True)
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.connected.set()
        self.wake.set()
        log.info("device %r: connected to %s", self.device, self.settings.broker.redacted_url)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self.counters.add("connect_failed")
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
        if qos:
            with self._lock:
                self._pending.append(info)
        return True

    @property
    def outstanding(self) -> int:
        """QoS 1 messages handed to paho and not yet acknowledged by the broker."""
        with self._lock:
            while self._pending and self._pending[0].is_published():
                self._pending.popleft()
            return sum(not info.is_published() for info in self._pending)

    def close(self, offline: tuple[str, bytes] | None, timeout: float) -> None:
        """Publish ``offline`` (retained), wait for it up to ``timeout``, disconnect."""
        if offline is not None and self.connected.is_set():
            info = self._client.publish(offline[0], offline[1], qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while (
                not info.is_published() and self.connected.is_set() and time.monotonic() < deadline
            ):
                info.wait_for_publish(0.1)
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
