"""Who may say what on the broker: one table of rules for amqtt and Mosquitto alike.

Pure logic, no I/O: the embedded broker's topic plugin asks it at every
SUBSCRIBE, PUBLISH and delivery, and ``devices add`` derives Mosquitto's ACL
lines from it, so both brokers enforce the same rules.

Every account has one role (:class:`Role`):

- ``hub``: the hub's own account. Subscribes to every device's edge-to-hub
  topics, publishes ``desired`` and ``ack`` to any device.
- ``device``: every other account, including names nobody listed. The account
  name *is* the device id: it publishes only ``{root}/dev/NAME/{edge-to-hub kind}``
  and subscribes only to ``{root}/dev/NAME/desired`` and ``.../ack``; its MQTT
  client id must be NAME.
- ``fleet``: a simulator account that acts as many devices (tests, benches,
  chaos): publishes any device's edge-to-hub topics and subscribes to any
  device's hub-to-edge topics; never the hub's rights. Granted only by the
  broker's configuration, never by ``devices add``.

Anything else is refused: other roots, other levels, ``#`` anywhere a rule does
not cover every topic it would match, another device's topics. A filter is
allowed only if every topic it can match is allowed.

The hub's account name and its client id are reserved: no device may be named
like them, and only the hub's account may connect with the hub's client id.

A root is a topic prefix such as ``edgeloop/v1``; a ``+`` level in a configured
root stands for any one level (the test harness uses ``edgeloop-test/+`` so each
test can pick a fresh root). A client must name the root level itself: a
wildcard in a root position of a filter is refused.

>>> r = BrokerRules()
>>> r.may_publish("pi-07", "edgeloop/v1/dev/pi-07/telemetry").allowed
True
>>> r.may_publish("pi-07", "edgeloop/v1/dev/pi-08/telemetry").reason
"device 'pi-07' may publish only its own topics, not device 'pi-08''s"
>>> r.may_subscribe("pi-07", "edgeloop/v1/#").allowed
False
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.topics import DEFAULT_ROOT, EDGE_TO_HUB, HUB_TO_EDGE, Kind, Topics, validate_device_id

__all__ = [
    "HUB_CLIENT_ID",
    "HUB_USER",
    "BrokerRules",
    "Decision",
    "Role",
]

#: The hub's broker account (cloud_hub.service.HUB_USER says the same).
HUB_USER = "hub"
#: The hub's MQTT client id (cloud_hub.ingest.transport.HubLink's default).
HUB_CLIENT_ID = "edgeloop-hub"

_ANY = "+"


class Role(enum.StrEnum):
    HUB = "hub"
    DEVICE = "device"
    FLEET = "fleet"


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer, with the reason when it is a refusal (for the broker's log)."""

    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


_YES = Decision(True)


@dataclass(frozen=True, slots=True)
class _Grant:
    """Topics ``{root}/dev/{device}/{kind}``: device None means any device."""

    device: str | None
    kinds: frozenset[Kind]


@dataclass(frozen=True)
class BrokerRules:
    """The rules of one broker: its roots, the hub's identity and the fleet accounts."""

    roots: tuple[str, ...] = (DEFAULT_ROOT,)
    hub_user: str = HUB_USER
    hub_client_id: str = HUB_CLIENT_ID
    fleet: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("BrokerRules: at least one topic root is needed (e.g. 'edgeloop/v1')")
        for root in self.roots:
            # A '+' level is allowed here; check the rest with the topic grammar.
            Topics(root.replace(_ANY, "x"))
        if not self.hub_user or not self.hub_client_id:
            raise ValueError("BrokerRules: the hub's account name and client id must be non-empty")
        if self.hub_user in self.fleet:
            raise ValueError(
                f"BrokerRules: {self.hub_user!r} is the hub's account; it cannot be a fleet account"
            )

    # -- roles and identities -----------------------------------------------------

    def role(self, username: str) -> Role:
        """The role of an account; unknown and unlisted names are devices."""
        if username == self.hub_user:
            return Role.HUB
        if username in self.fleet:
            return Role.FLEET
        return Role.DEVICE

    def reserved_reason(self, name: str) -> str | None:
        """Why ``name`` cannot be a device's name, or None if it can."""
        if name == self.hub_user:
            return f"{name!r} is the hub's own broker account"
        if name == self.hub_client_id:
            return f"{name!r} is the hub's MQTT client id"
        if name in self.fleet:
            return f"{name!r} is a fleet (simulator) account of this broker"
        return None

    def may_connect(self, username: str, client_id: str) -> Decision:
        """Whether ``username`` may connect with ``client_id`` (passwords are checked elsewhere)."""
        role = self.role(username)
        if client_id == self.hub_client_id and role is not Role.HUB:
            return Decision(
                False, f"client id {client_id!r} is the hub's; account {username!r} may not use it"
            )
        if role is Role.DEVICE and client_id != username:
            return Decision(
                False,
                f"device {username!r} must connect with client id {username!r}, not {client_id!r}",
            )
        return _YES

    # -- topics -------------------------------------------------------------------

    def may_publish(self, username: str, topic: str) -> Decision:
        """Whether ``username`` may publish to the concrete ``topic``."""
        if "+" in topic or "#" in topic:
            return Decision(False, f"topic {topic!r} has a wildcard; publish to a concrete topic")
        return self._check(username, topic, self._publish_grants(username), "publish")

    def may_subscribe(self, username: str, topic_filter: str) -> Decision:
        """Whether ``username`` may subscribe to ``topic_filter`` (every topic it matches)."""
        return self._check(username, topic_filter, self._read_grants(username), "subscribe to")

    def may_receive(self, username: str, topic: str) -> Decision:
        """Whether a message on ``topic`` (or a retained one) may be delivered to ``username``."""
        return self._check(username, topic, self._read_grants(username), "receive")

    def _publish_grants(self, username: str) -> tuple[_Grant, ...]:
        role = self.role(username)
        if role is Role.HUB:
            return (_Grant(None, HUB_TO_EDGE),)
        if role is Role.FLEET:
            return (_Grant(None, EDGE_TO_HUB),)
        return (_Grant(username, EDGE_TO_HUB),)

    def _read_grants(self, username: str) -> tuple[_Grant, ...]:
        role = self.role(username)
        if role is Role.HUB:
            return (_Grant(None, EDGE_TO_HUB),)
        if role is Role.FLEET:
            return (_Grant(None, HUB_TO_EDGE),)
        return (_Grant(username, HUB_TO_EDGE),)

    def _check(
        self, username: str, topic_filter: str, grants: Sequence[_Grant], verb: str
    ) -> Decision:
        levels = topic_filter.split("/")
        for root in self.roots:
            root_levels = root.split("/")
            if not _root_matches(root_levels, levels):
                continue
            rest = levels[len(root_levels) :]
            if len(rest) != 3 or rest[0] != "dev":
                return self._refuse(username, topic_filter, verb)
            device, kind = rest[1], rest[2]
            for grant in grants:
                if _device_covered(grant, device) and _kind_covered(grant, kind):
                    return _YES
            if (
                self.role(username) is Role.DEVICE
                and device not in (username, _ANY, "#")
                and any(_kind_covered(g, kind) for g in grants)
            ):
                return Decision(
                    False,
                    f"device {username!r} may {verb} only its own topics, not device {device!r}'s",
                )
            return self._refuse(username, topic_filter, verb)
        return self._refuse(username, topic_filter, verb)

    def _refuse(self, username: str, topic_filter: str, verb: str) -> Decision:
        role = self.role(username)
        return Decision(False, f"{role.value} {username!r} may not {verb} {topic_filter!r}")

    # -- Mosquitto ----------------------------------------------------------------

    def mosquitto_acl(self, username: str) -> str:
        """The acl_file block for ``username``, from the same table the amqtt plugin uses.

        Mosquitto checks a subscription against these lines as a whole (a filter
        wider than the lines is refused) and every delivery against the read lines.
        """
        lines = [f"user {username}"]
        for root in self.roots:
            for grant in self._publish_grants(username):
                lines += _acl_lines("write", root, grant)
            for grant in self._read_grants(username):
                lines += _acl_lines("read", root, grant)
        return "\n".join(lines)

    def mosquitto_acl_file(self, usernames: Iterable[str]) -> str:
        """A whole acl_file: the hub's block first, then one block per other account."""
        names = [self.hub_user, *sorted(set(usernames) - {self.hub_user})]
        return "\n\n".join(self.mosquitto_acl(name) for name in names) + "\n"


def _acl_lines(access: str, root: str, grant: _Grant) -> list[str]:
    device = _ANY if grant.device is None else validate_device_id(grant.device)
    return [f"topic {access} {root}/dev/{device}/{kind.value}" for kind in sorted(grant.kinds)]


def _root_matches(root_levels: list[str], levels: list[str]) -> bool:
    """Whether the filter's first levels name one concrete root of this pattern."""
    if len(levels) < len(root_levels):
        return False
    for want, got in zip(root_levels, levels, strict=False):
        if got in (_ANY, "#") or not got:
            return False
        if want not in (_ANY, got):
            return False
    return True


def _device_covered(grant: _Grant, level: str) -> bool:
    if level == "#":
        return False
    if grant.device is None:
        return bool(level)
    return level == grant.device


def _kind_covered(grant: _Grant, level: str) -> bool:
    return level in {k.value for k in grant.kinds}
