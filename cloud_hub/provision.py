"""Provisioning a device: broker credentials, the store's record, the agent's settings.

``edgeloop-hub devices add NAME`` creates a random secret for the device. With
the embedded broker it adds the account to the broker's password file (the
broker re-reads it, so no restart). With an external Mosquitto it writes the
line for Mosquitto's ``password_file`` (the ``$7$`` PBKDF2-SHA512 format that
``mosquitto_passwd`` writes) and the ACL lines that confine the device to its
own topics. Either way it prints the settings to copy onto the device.

A device that already has credentials is refused (:class:`DeviceExistsError`):
a second ``devices add`` would silently lock its agent out. ``--rotate`` makes
a new secret on purpose, and the printed notes say when the old one stops
working: the embedded broker checks passwords only at CONNECT, so a connected
agent keeps its session until it reconnects; Mosquitto 2 re-checks connected
clients when it reloads its password file and disconnects the device at once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.endpoint import BrokerEndpoint
from shared.errors import EdgeloopError
from shared.topics import Kind, Topics, validate_device_id

__all__ = [
    "DeviceExistsError",
    "Provisioned",
    "add_device",
    "mosquitto_acl",
    "mosquitto_password_line",
    "provision_device",
]

if TYPE_CHECKING:
    from cloud_hub.settings import HubSettings

_MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default for $7$ hashes


class DeviceExistsError(EdgeloopError):
    """The device already has broker credentials and ``rotate`` was not asked for."""


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
    secret: str = field(repr=False)
    agent_env: dict[str, str] = field(repr=False)  # its broker URL holds the secret
    mosquitto_password_line: str | None = None
    mosquitto_acl: str | None = None
    rotated: bool = False
    """The device had a secret before; this one replaces it."""

    def render(self) -> str:
        """What ``devices add`` prints: the agent settings and, for Mosquitto, the broker lines."""
        if not self.rotated:
            out = [f"# device {self.device!r} provisioned."]
        elif self.mosquitto_password_line:
            out = [
                f"# device {self.device!r}: new secret. The old one works until Mosquitto reloads",
                "# the password_file with the line below; on reload Mosquitto 2 disconnects the",
                "# device's current session (its password no longer matches) and refuses the old",
                "# password, so the agent stays offline until it runs with the settings below.",
            ]
        else:
            out = [
                f"# device {self.device!r}: new secret, in force now for new connections. The",
                "# embedded broker checks passwords only when a client connects: an agent",
                "# connected now keeps its session, but from its next reconnect (agent restart,",
                "# network drop, broker restart) it is refused until it runs with the settings below.",
            ]
        out += [
            "# On the device, put these in the agent's environment (e.g. /etc/edgeloop/agent.env,",
            "# mode 0600), then restart the agent:" if self.rotated else "# mode 0600):",
            *(f"{k}={v}" for k, v in self.agent_env.items()),
        ]
        if self.mosquitto_password_line:
            if self.rotated:
                out += [
                    "",
                    f"# Mosquitto: in the password_file, replace the line that starts with "
                    f"'{self.device}:' by this one (do not add a second), then reload (kill -HUP):",
                    self.mosquitto_password_line,
                    "",
                    "# Mosquitto: the acl_file lines for the device are unchanged.",
                ]
            else:
                out += [
                    "",
                    "# Mosquitto: append to the password_file, then reload (kill -HUP):",
                    self.mosquitto_password_line,
                    "",
                    "# Mosquitto: append to the acl_file (the hub's own user needs 'topic readwrite #'):",
                    self.mosquitto_acl or "",
                ]
        return "\n".join(out)


def _exists(device: str, where: str) -> DeviceExistsError:
    return DeviceExistsError(
        f"device {device!r} already exists ({where}); adding it again would replace its secret "
        "and lock out the agent that uses the current one. To give it a new secret on purpose, "
        f"run 'edgeloop-hub devices add {device} --rotate': it prints the new agent settings "
        "and when the old password stops working"
    )


def provision_device(
    device: str,
    *,
    broker: BrokerEndpoint,
    topics: Topics,
    password_file: Path | None,
    rotate: bool = False,
    known: bool = False,
) -> Provisioned:
    """Create ``device``'s secret; add it to ``password_file`` for the embedded broker
    (None for an external Mosquitto, which gets its lines printed instead).

    A device that has an account in ``password_file``, or is ``known`` otherwise, is
    refused with :class:`DeviceExistsError` unless ``rotate``.
    """
    validate_device_id(device)
    rotated = known
    if password_file is not None and password_file.exists():
        from cloud_hub.broker.auth import read_password_file  # noqa: PLC0415

        if device in read_password_file(password_file):
            if not rotate:
                raise _exists(device, f"it has an account in {password_file}")
            rotated = True
    elif known and not rotate:
        raise _exists(device, "this hub's store knows it: provisioned, or heard from")
    secret = secrets.token_urlsafe(32)
    endpoint = dataclasses.replace(broker, username=device, password=secret)
    env = {
        "EDGELOOP_AGENT_DEVICE": device,
        "EDGELOOP_AGENT_BROKER": endpoint.url,
        "EDGELOOP_AGENT_ROOT": topics.root,
    }
    if password_file is not None:
        from cloud_hub.broker.auth import add_user  # noqa: PLC0415 - loads amqtt's plugin base

        add_user(password_file, device, secret)
        return Provisioned(device, secret, env, rotated=rotated)
    return Provisioned(
        device,
        secret,
        env,
        mosquitto_password_line(device, secret),
        mosquitto_acl(device, topics),
        rotated=rotated,
    )


def add_device(settings: HubSettings, device: str, *, rotate: bool = False) -> Provisioned:
    """What ``edgeloop-hub devices add`` does: credentials for the hub's broker, and
    the device in the store as never seen. The simulator provisions its agents here too.

    A device that already has credentials is refused unless ``rotate`` (see
    :func:`provision_device`). With an external broker the hub cannot see its
    password file, so a device the store knows counts as having credentials.
    """
    from cloud_hub.store import open_store  # noqa: PLC0415

    validate_device_id(device)
    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        broker = BrokerEndpoint(settings.broker_host, settings.broker_port)
        password_file: Path | None = settings.password_file
    else:
        external = settings.external_broker()
        broker = dataclasses.replace(external, username=None, password=None)  # keeps mqtts
        password_file = None
    store = open_store(settings.store)
    try:
        known = password_file is None and store.device(device) is not None
        done = provision_device(
            device,
            broker=broker,
            topics=Topics(settings.root),
            password_file=password_file,
            rotate=rotate,
            known=known,
        )
        store.add_device(device)
    finally:
        store.close()
    return done
