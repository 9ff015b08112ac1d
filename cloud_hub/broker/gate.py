"""Devices wait for the hub: an amqtt plugin that holds device CONNECTs until the hub listens.

A broker that has just (re)started holds no sessions: until the hub has
connected and subscribed again, whatever a device publishes reaches nobody.
The agents would send it again (they keep every reading the hub has not
acked), but only after ``--resend-after-s``; and a device whose CONNACK never
comes publishes nothing at all. So this plugin answers a device's CONNECT only
once the hub's account has subscribed in this broker's life: until then,
``authenticate`` waits (the device's client waits for its CONNACK, as it would
for a slow broker), and returns None, which leaves the decision to the
password plugin.

The hub is the client that logged in as ``hub_user`` and then subscribed (any
filter). Its own CONNECT is never held. A device held ``hold_s`` seconds is let
in anyway, with a warning in the broker's log: a hub that cannot subscribe
must not keep the fleet offline, and what the devices send then is sent again
when the hub acks nothing. Keep ``hold_s`` below the agents' keepalive: a
client gives up on a CONNACK that takes longer.

Configured through the broker config's ``plugins`` dict, next to the password
plugin::

    {"cloud_hub.broker.gate.HubFirstGate": {"hub_user": "hub", "hold_s": 10.0}}

Without ``hub_user`` the plugin holds no one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from amqtt.contexts import BaseContext
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

__all__ = ["HubFirstGate"]

logger = logging.getLogger(__name__)


class HubFirstGate(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt auth plugin: hold device CONNECTs until the hub's account has subscribed."""

    @dataclass
    class Config:
        """Options read from the plugin's entry in the broker's ``plugins`` dict."""

        hub_user: str = ""
        """The hub's broker user name; empty: hold no one."""
        hold_s: float = 10.0
        """Longest a device's CONNECT is held before it is let in without the hub."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config = context.config
        if not isinstance(config, HubFirstGate.Config):
            config = HubFirstGate.Config()
        self._hub_user = config.hub_user
        self._hold_s = max(0.0, config.hold_s)
        self._open = asyncio.Event()
        self._hub_clients: set[str] = set()
        self._held = 0
        if not self._hub_user:
            self._open.set()

    async def authenticate(self, *, session: Session) -> bool | None:
        """Wait (at most ``hold_s``) until the hub has subscribed; never decide."""
        if self._open.is_set() or session.username == self._hub_user:
            return None
        self._held += 1
        if self._held == 1:
            logger.info(
                "holding device connects until the hub (user %r) has subscribed", self._hub_user
            )
        try:
            await asyncio.wait_for(self._open.wait(), self._hold_s)
        except TimeoutError:
            logger.warning(
                "client %r let in after waiting %.1f s: the hub (user %r) has not subscribed "
                "yet, so what it publishes now reaches no one until the hub is back (the agent "
                "sends again what the hub does not ack); check the hub's log",
                session.client_id,
                self._hold_s,
                self._hub_user,
            )
        return None

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        # Fired only for clients the password plugin let in.
        if client_session.username == self._hub_user:
            self._hub_clients.add(client_id)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        if client_id in self._hub_clients and not self._open.is_set():
            self._open.set()
            logger.info(
                "the hub (client %r) subscribed to %s: letting devices in (%d held)",
                client_id,
                topic,
                self._held,
            )
