"""The broker rules (:mod:`cloud_hub.broker.rules`) inside amqtt: a topic plugin and a broker.

Two pieces, both needed:

- :class:`TopicRulesPlugin`, an amqtt topic-check plugin: amqtt asks it at every
  SUBSCRIBE (a refusal is SUBACK 0x80 for that filter), every PUBLISH (a refused
  message is dropped, retained or not, so a device's retained ``desired`` never
  reaches anyone) and every delivery (RECEIVE). Each refusal is logged with the
  account, the action and the topic, and counted; after the first
  :data:`LOG_FIRST` refusals of an account and action only every
  :data:`LOG_EVERY`-th is logged, with the running count, so a hostile client
  cannot flood the log.
- :class:`RulesBroker`, amqtt's ``Broker`` with two gaps of amqtt 0.12 closed:

  * amqtt looks up, deletes (clean session) or takes over the session of the
    CONNECT's client id *before* it checks the password, and copies the new
    CONNECT's will into the old session. So a client with a wrong password
    could knock a connected device (or the hub) off and have its will
    published. :class:`RulesBroker` checks the password and the client-id rule
    (only the hub's account may use the hub's client id; a device's client id is
    its name) on the CONNECT first and refuses with CONNACK 5 before amqtt
    touches any session. amqtt checks the password again before its CONNACK;
    that second check of a CONNECT that passed is answered from memory, so the
    gate plugin (:mod:`cloud_hub.broker.gate`) holds a device at most once.
  * amqtt sends a new client the retained messages matching *every* client's
    subscriptions, without asking the topic plugins. :class:`RulesBroker` sends
    only those of filters the client itself may subscribe to.

These override private methods of amqtt 0.12's ``Broker`` (the dependency is
pinned below 0.13); tests/test_broker_rules.py fails if they change.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.errors import AMQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from cloud_hub.broker.rules import HUB_CLIENT_ID, HUB_USER, BrokerRules, Decision
from shared.topics import DEFAULT_ROOT

__all__ = [
    "DECISION_CACHE",
    "LOG_EVERY",
    "LOG_FIRST",
    "RulesBroker",
    "TopicRulesPlugin",
]

logger = logging.getLogger("cloud_hub.broker.rules")

#: Refusals logged per (account, action) before only every LOG_EVERY-th is.
LOG_FIRST = 20
LOG_EVERY = 1000
#: Decisions remembered by the plugin before it starts over.
DECISION_CACHE = 100_000


class _Refusals:
    """Counts refusals and logs them without letting one client flood the log."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, username: str, client_id: str, action: str, reason: str) -> None:
        key = (username, action)
        self.counts[key] += 1
        n = self.counts[key]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            logger.warning(
                "refused %s by account %r (client %r), refusal %d of this kind: %s",
                action,
                username,
                client_id,
                n,
                reason,
            )


# amqtt ships no type information (no py.typed), so its base classes are Any to mypy.
class TopicRulesPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic plugin enforcing :class:`~cloud_hub.broker.rules.BrokerRules`.

    Configured through the broker config's ``plugins`` dict::

        {"cloud_hub.broker.topic_check.TopicRulesPlugin":
            {"roots": ["edgeloop/v1"], "hub_user": "hub", "hub_client_id": "edgeloop-hub",
             "fleet": []}}
    """

    @dataclass
    class Config:
        """Options read from the plugin's entry in the broker's ``plugins`` dict."""

        roots: list[str] = field(default_factory=lambda: [DEFAULT_ROOT])
        hub_user: str = HUB_USER
        hub_client_id: str = HUB_CLIENT_ID
        fleet: list[str] = field(default_factory=list)
        """Simulator accounts that may act as any device (never for production)."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config = context.config
        if not isinstance(config, TopicRulesPlugin.Config):
            raise ValueError("TopicRulesPlugin needs its Config in the broker's plugins dict")
        self.rules = BrokerRules(
            roots=tuple(config.roots),
            hub_user=config.hub_user,
            hub_client_id=config.hub_client_id,
            fleet=frozenset(config.fleet),
        )
        self.refusals = _Refusals()
        # Every delivery is checked: remember answers (accounts and topics are few).
        self._decided: dict[tuple[str, str, str], Decision] = {}
        logger.info(
            "topic rules: roots %s, hub account %r, fleet accounts %s",
            ", ".join(self.rules.roots),
            self.rules.hub_user,
            sorted(self.rules.fleet) or "none",
        )

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        username = (session.username if session is not None else None) or ""
        client_id = (session.client_id if session is not None else None) or ""
        if not username or topic is None:
            self.refusals.record(username, client_id, str(action), "no account or no topic")
            return False
        name = {Action.PUBLISH: "publish", Action.SUBSCRIBE: "subscribe"}.get(action, "receive")
        key = (username, name, topic)
        decision = self._decided.get(key)
        if decision is None:
            if name == "publish":
                decision = self.rules.may_publish(username, topic)
            elif name == "subscribe":
                decision = self.rules.may_subscribe(username, topic)
            else:
                decision = self.rules.may_receive(username, topic)
            if len(self._decided) >= DECISION_CACHE:
                self._decided.clear()  # a client inventing topics only costs recomputing
            self._decided[key] = decision
        if not decision:
            self.refusals.record(username, client_id, f"{name} {topic!r}", decision.reason)
        return decision.allowed


class _RecordingReader(ReaderAdapter):  # type: ignore[misc]
    """Reads from ``inner`` and keeps what it read, to hand to amqtt again."""

    def __init__(self, inner: ReaderAdapter) -> None:
        self.inner = inner
        self.seen = bytearray()

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self.inner.read(n)
        self.seen += data
        return data

    def feed_eof(self) -> None:
        self.inner.feed_eof()


class _ReplayReader(ReaderAdapter):  # type: ignore[misc]
    """Serves ``first`` before reading on from ``inner``."""

    def __init__(self, first: bytes, inner: ReaderAdapter) -> None:
        self.first = first
        self.inner = inner

    async def read(self, n: int = -1) -> bytes:
        if not self.first:
            data: bytes = await self.inner.read(n)
            return data
        if n < 0 or n >= len(self.first):
            head, self.first = self.first, b""
            more = b"" if n == len(head) else await self.inner.read(n if n < 0 else n - len(head))
            return head + more
        head, self.first = self.first[:n], self.first[n:]
        return head

    def feed_eof(self) -> None:
        self.inner.feed_eof()


def _connect_key(session: Session) -> tuple[str, str, str]:
    return (session.client_id or "", session.username or "", session.password or "")


class RulesBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, checking credentials and client ids before any session is touched,
    and sending retained messages only for filters the client may subscribe to."""

    def __init__(self, config: dict[str, Any], rules: BrokerRules) -> None:
        super().__init__(config)
        self.rules = rules
        self.connect_refusals = _Refusals()
        self._passed: set[tuple[str, str, str]] = set()

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        recorder = _RecordingReader(reader)
        # Parses and validates the CONNECT (and answers malformed ones) without
        # looking at any existing session.
        _, incoming = await BrokerProtocolHandler.init_from_connect(
            recorder, writer, self.plugins_manager
        )
        username = incoming.username or ""
        client_id = incoming.client_id or ""
        reason = ""
        if not await super()._authenticate(incoming, None):
            reason = "wrong password, unknown or missing account"
        else:
            decision = self.rules.may_connect(username, client_id)
            if not decision:
                reason = decision.reason
        if reason:
            self.connect_refusals.record(
                username, client_id, f"CONNECT from {remote_address}:{remote_port}", reason
            )
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            # amqtt logs this and releases the connection; no session was touched,
            # so no other client is disconnected and this client's will is dropped.
            raise AMQTTError(f"client {client_id!r} refused: {reason}")
        # amqtt authenticates again before CONNACK; this CONNECT passed already (and
        # the gate plugin, if loaded, must not hold it a second time).
        key = _connect_key(incoming)
        self._passed.add(key)
        replay = _ReplayReader(bytes(recorder.seen), reader)
        try:
            result: tuple[
                BrokerProtocolHandler, Session
            ] = await super()._initialize_client_session(
                replay, writer, remote_address, remote_port
            )
        except BaseException:
            self._passed.discard(key)
            raise
        return result

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        key = _connect_key(session)
        if key in self._passed:
            self._passed.discard(key)
            return True
        result: bool = await super()._authenticate(session, listener)
        return result

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        if not self.rules.may_subscribe(session.username or "", subscription[0]):
            return  # another client's filter, which this one may not use
        await super()._publish_retained_messages_for_subscription(subscription, session)
