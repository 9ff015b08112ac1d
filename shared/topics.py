"""The MQTT topic grammar (DESIGN.md section 3), built and parsed in one place.

Every topic is ``{root}/dev/{device}/{kind}``. The root is configurable
(default ``edgeloop/v1``); a device id is 1-64 characters of letters, digits,
``_``, ``-`` and ``.``, starting with a letter or digit, so it can never hold a
wildcard or a level separator.

>>> t = Topics()
>>> t.topic("pi-07", Kind.TELEMETRY)
'edgeloop/v1/dev/pi-07/telemetry'
>>> t.parse("edgeloop/v1/dev/pi-07/telemetry")
TopicAddress(device='pi-07', kind=<Kind.TELEMETRY: 'telemetry'>)
>>> t.device_filter(Kind.STATUS)
'edgeloop/v1/dev/+/status'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import TopicError

__all__ = [
    "DEFAULT_ROOT",
    "EDGE_TO_HUB",
    "HUB_TO_EDGE",
    "Kind",
    "TopicAddress",
    "Topics",
    "topic_matches",
    "validate_device_id",
]

DEFAULT_ROOT = "edgeloop/v1"
_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ROOT_LEVEL_RE = re.compile(r"[A-Za-z0-9_.-]+")


class Kind(StrEnum):
    """The last topic level: which message a topic carries."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    HEALTH = "health"
    OTA = "ota"
    DROPPED = "dropped"
    DESIRED = "desired"
    ACK = "ack"


EDGE_TO_HUB: frozenset[Kind] = frozenset(
    {Kind.STATUS, Kind.TELEMETRY, Kind.EVENTS, Kind.HEALTH, Kind.OTA, Kind.DROPPED}
)
HUB_TO_EDGE: frozenset[Kind] = frozenset({Kind.DESIRED, Kind.ACK})
_KINDS = {k.value: k for k in Kind}


def validate_device_id(device: str) -> str:
    """Return ``device`` if it is a valid device id, else raise :class:`TopicError`."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise TopicError(
            f"device id {device!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            topic=str(device),
            reason="bad_device_id",
        )
    return device


@dataclass(frozen=True, slots=True)
class TopicAddress:
    """What a parsed topic names: a device and a message kind."""

    device: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder and parser for one root."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        levels = self.root.split("/")
        if not self.root or not all(_ROOT_LEVEL_RE.fullmatch(level) for level in levels):
            raise TopicError(
                f"topic root {self.root!r} is not valid: use levels of letters, digits, '_', "
                "'-' or '.', separated by '/', with no wildcard and no empty level "
                f"(default {DEFAULT_ROOT!r})",
                topic=self.root,
                reason="bad_root",
            )

    def topic(self, device: str, kind: Kind) -> str:
        """The topic for ``kind`` messages of ``device``."""
        return f"{self.root}/dev/{validate_device_id(device)}/{kind.value}"

    def device_filter(self, kind: Kind) -> str:
        """A subscription filter for ``kind`` messages of every device."""
        return f"{self.root}/dev/+/{kind.value}"

    def parse(self, topic: str) -> TopicAddress:
        """Parse a concrete topic of this root, or raise :class:`TopicError`."""
        prefix = f"{self.root}/dev/"
        if not topic.startswith(prefix):
            raise TopicError(
                f"topic {topic!r} is not under '{prefix}'", topic=topic, reason="foreign_topic"
            )
        rest = topic[len(prefix) :].split("/")
        if len(rest) != 2:
            raise TopicError(
                f"topic {topic!r} does not have the form '{prefix}{{device}}/{{kind}}'",
                topic=topic,
            )
        device, kind_name = rest
        kind = _KINDS.get(kind_name)
        if kind is None:
            raise TopicError(
                f"topic {topic!r} names unknown message kind {kind_name!r}; "
                f"known kinds: {', '.join(sorted(_KINDS))}",
                topic=topic,
                reason="unknown_kind",
            )
        return TopicAddress(validate_device_id(device), kind)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT subscription ``topic_filter`` (``+`` and ``#``).

    Clients check every incoming message with this: amqtt sends a new client
    retained messages that match *other* clients' subscriptions.

    >>> topic_matches("a/+/c", "a/b/c"), topic_matches("a/#", "a"), topic_matches("a/+", "a/b/c")
    (True, True, False)
    >>> topic_matches("#", "$SYS/broker/uptime")  # MQTT 4.7.2: wildcards skip '$' topics
    False
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return i == len(f_levels) - 1
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
