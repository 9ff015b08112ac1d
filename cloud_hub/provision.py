"""Provisioning a device: broker credentials, the store's record, the agent's settings.

``edgeloop-hub devices add NAME`` creates a random secret for the device. With
the embedded broker it adds the account to the broker's password file (the
broker re-reads it, so no restart). With an external Mosquitto it writes the
line for Mosquitto's ``password_file`` (the ``$7$`` PBKDF2-SHA512 format that
``mosquitto_passwd`` writes) and the ACL lines that confine the device to its
own topics. Either way it prints the settings to copy onto the device.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.endpoint import BrokerEndpoint
from shared.topics import Kind, Topics, validate_device_id

__all__ = [
    "Provisioned",
    "add_device",
    "mosquitto_acl",
    "mosquitto_password_line",
    "provision_device",
]

if TYPE_CHECKING:
    from cloud_hub.settings import HubSettings

_MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default for $7$ hashes


def mosquitto_password_line(username: str, secret: str, *, salt: bytes | None = None) -> str:
    """A line for Mosquitto's ``password_file``, as ``mosquitto_passwd -b`` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, _MOSQUITTO_ITERATIONS)
    return (
        f"{username}:$7${_MOSQUITTO_ITERATIONS}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def mosquitto_acl(device: str, topics: Topics) -> str:
    """ACL lines that let ``device`` write only its own edge topics and read its own hub topics."""
    lines = [f"user {device}"]
    lines += [
        f"topic write {topics.topic(device, kind)}"
        for kind in sorted(Kind)
        if kind not in (Kind.DESIRED, Kind.ACK)
    ]
    lines += [f"topic read {topics.topic(device, kind)}" for kind in (Kind.DESIRED, Kind.ACK)]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Provisioned:
    device: str
    secret: str
    agent_env: dict[str, str]
    mosquitto_password_line: str | None = None
    mosquitto_acl: str | None = None

    def render(self) -> str:
        """What ``devices add`` prints: the agent settings and, for Mosquitto, the broker lines."""
        out = [
            f"# device {self.device!r} provisioned. On the device, put these in the agent's",
            "# environment (e.g. /etc/edgeloop/agent.env, mode 0600):",
            *(f"{k}={v}" for k, v in self.agent_env.items()),
        ]
        if self.mosquitto_password_line:
            out += [
                "",
                "# Mosquitto: append to the password_file, then reload (kill -HUP):",
                self.mosquitto_password_line,
                "",
                "# Mosquitto: append to the acl_file (the hub's own user needs 'topic readwrite #'):",
                self.mosquitto_acl or "",
            ]
        return "\n".join(out)


def provision_device(
    device: str,
    *,
    broker: BrokerEndpoint,
    topics: Topics,
    password_file: Path | None,
) -> Provisioned:
    """Create ``device``'s secret; add it to ``password_file`` for the embedded broker
    (None for an external Mosquitto, which gets its lines printed instead)."""
    validate_device_id(device)
    secret = secrets.token_urlsafe(32)
    endpoint = BrokerEndpoint(broker.host, broker.port, device, secret)
    env = {
        "EDGELOOP_AGENT_DEVICE": device,
        "EDGELOOP_AGENT_BROKER": endpoint.url,
        "EDGELOOP_AGENT_ROOT": topics.root,
    }
    if password_file is not None:
        from cloud_hub.broker.auth import add_user  # noqa: PLC0415 - loads amqtt's plugin base

        add_user(password_file, device, secret)
        return Provisioned(device, secret, env)
    return Provisioned(
        device, secret, env, mosquitto_password_line(device, secret), mosquitto_acl(device, topics)
    )


def add_device(settings: HubSettings, device: str) -> Provisioned:
    """What ``edgeloop-hub devices add`` does: credentials for the hub's broker, and
    the device in the store as never seen. The simulator provisions its agents here too."""
    from cloud_hub.store import open_store  # noqa: PLC0415

    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        broker = BrokerEndpoint(settings.broker_host, settings.broker_port)
        password_file: Path | None = settings.password_file
    else:
        external = settings.external_broker()
        broker, password_file = BrokerEndpoint(external.host, external.port), None
    done = provision_device(
        device, broker=broker, topics=Topics(settings.root), password_file=password_file
    )
    store = open_store(settings.store)
    try:
        store.add_device(device)
    finally:
        store.close()
    return done
