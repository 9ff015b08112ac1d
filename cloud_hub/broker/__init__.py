"""The embedded MQTT broker: amqtt in its own process, password authentication and
topic rules on.

Where things are:

- :mod:`shared.endpoint` (re-exported): :class:`BrokerEndpoint` and :func:`parse_broker_url`, the one way
  every process names its broker (``mqtt://user:secret@host:port``).
- ``embedded``: :class:`EmbeddedBroker`, which starts, stops and kills
  ``python -m cloud_hub.broker`` as a child process.
- ``auth``: the password file (:func:`add_user`, :func:`hash_password`, ...) and
  the amqtt plugin that checks CONNECTs against it.
- ``rules``: who may publish, subscribe and receive what (:class:`BrokerRules`),
  pure logic shared with Mosquitto's ACL lines.
- ``topic_check``: the amqtt side of the rules: a topic-check plugin and the
  broker subclass that checks credentials before amqtt touches a session.
- ``files``: atomic rewrites of account files.
- ``gate``: the amqtt plugin that holds devices' CONNECTs until the hub has subscribed.
- ``restart`` (pure) and ``supervisor``: the hub's thread that restarts a broker
  child that died, with growing delays.
- ``__main__``: the child process itself, one asyncio loop running amqtt.

Concurrency: the parent side is synchronous (``subprocess``); the broker process
is amqtt's single asyncio loop. Only ``auth``, ``gate`` and ``__main__`` import amqtt
(≈0.2 s); the names from ``auth`` are loaded here on first use, so a process that
only starts a broker or parses a URL does not pay for it.

Errors::

    ValueError
     ├── (invalid broker URL or endpoint)      endpoint
     └── PasswordFileError                      auth
    RuntimeError
     └── BrokerStartError                       embedded
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloud_hub.broker.embedded import BrokerExit, BrokerStartError, EmbeddedBroker
from shared.endpoint import BrokerEndpoint, parse_broker_url

if TYPE_CHECKING:
    from cloud_hub.broker.auth import (
        PasswordFileAuthPlugin,
        PasswordFileError,
        add_user,
        hash_password,
        read_password_file,
        verify_password,
    )

__all__ = [
    "BrokerEndpoint",
    "BrokerExit",
    "BrokerStartError",
    "EmbeddedBroker",
    "PasswordFileAuthPlugin",
    "PasswordFileError",
    "add_user",
    "hash_password",
    "parse_broker_url",
    "read_password_file",
    "verify_password",
]

_FROM_AUTH = frozenset(
    {
        "PasswordFileAuthPlugin",
        "PasswordFileError",
        "add_user",
        "hash_password",
        "read_password_file",
        "verify_password",
    }
)


def __getattr__(name: str) -> Any:
    if name in _FROM_AUTH:
        return getattr(importlib.import_module("cloud_hub.broker.auth"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
