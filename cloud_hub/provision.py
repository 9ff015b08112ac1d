"""Provisioning a device: broker credentials, the store's record, the agent's settings.

``edgeloop-hub devices add NAME`` creates a random secret for the device. With
the embedded broker it adds the account to the broker's password file (the
broker re-reads it, so no restart). With an external Mosquitto it makes the
line for Mosquitto's ``password_file`` (the ``$7$`` PBKDF2-SHA512 format that
``mosquitto_passwd`` writes) and the ACL block that confines the device to its
own topics (from :mod:`cloud_hub.broker.rules`, the table the embedded broker
enforces); given the two files (:class:`MosquittoFiles`) it writes them there,
else it prints them. Either way it prints the settings to copy onto the device.

Names the hub's identity uses (its account ``hub``, its client id
``edgeloop-hub``) are refused (:class:`ReservedNameError`): a device by that name
would replace the hub's broker password or share its session.

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
from typing import TYPE_CHECKING, Final

from cloud_hub.broker.files import replace_file
from cloud_hub.broker.rules import HUB_USER, BrokerRules
from shared.endpoint import BrokerEndpoint
from shared.errors import EdgeloopError
from shared.topics import Topics, validate_device_id

__all__ = [
    "DeviceExistsError",
    "MosquittoFiles",
    "Provisioned",
    "ReservedNameError",
    "add_device",
    "device_broker",
    "mosquitto_acl",
    "mosquitto_password_line",
    "provision_device",
]

if TYPE_CHECKING:
    from cloud_hub.settings import HubSettings

_MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default for $7$ hashes


class DeviceExistsError(EdgeloopError):
    """The device already has broker credentials and ``rotate`` was not asked for."""


class ReservedNameError(EdgeloopError):
    """The name belongs to the hub's identity (its account or its client id)."""


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """The files an external Mosquitto reads: its ``password_file`` and ``acl_file``."""

    password_file: Path
    acl_file: Path

    def write(self, device: str, password_line: str, rules: BrokerRules) -> None:
        """Put ``device``'s password line and ACL block in the files, replacing older ones.

        The ACL file also gets the hub's block if it has none. Existing files keep
        their mode and owner; new ones are created 0600.
        """
        lines = _read_lines(self.password_file)
        kept = [line for line in lines if line.partition(":")[0] != device]
        replace_file(
            self.password_file, "".join(f"{x}\n" for x in [*kept, password_line]), keep_mode=True
        )
        blocks = _acl_blocks(_read_lines(self.acl_file))
        blocks.pop(device, None)
        if rules.hub_user not in blocks:
            blocks[rules.hub_user] = rules.mosquitto_acl(rules.hub_user).splitlines()
        blocks[device] = rules.mosquitto_acl(device).splitlines()
        text = "\n\n".join("\n".join(block).strip("\n") for block in blocks.values())
        replace_file(self.acl_file, text.strip("\n") + "\n", keep_mode=True)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _acl_blocks(lines: list[str]) -> dict[str, list[str]]:
    """An acl_file split at its ``user NAME`` lines; what precedes the first is kept under ""."""
    blocks: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines:
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            current = words[1]
            blocks[current] = []
        blocks[current].append(line)
    if not any(line.strip() for line in blocks[""]):
        del blocks[""]
    return blocks


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
    return BrokerRules(roots=(topics.root,)).mosquitto_acl(device)


DEVICE_CA_FILE: Final = Path("/etc/edgeloop/ca.pem")
"""Where ``devices add`` tells the operator to put the hub's CA certificate on a device."""


@dataclass(frozen=True, slots=True)
class Provisioned:
    device: str
    secret: str = field(repr=False)
    agent_env: dict[str, str] = field(repr=False)  # its broker URL holds the secret
    mosquitto_password_line: str | None = None
    mosquitto_acl: str | None = None
    rotated: bool = False
    """The device had a secret before; this one replaces it."""
    mosquitto_hub_acl: str | None = None
    """The hub's acl_file block, for an acl_file that has none yet."""
    written_to: MosquittoFiles | None = None
    """Where the Mosquitto lines were written (None: printed only)."""
    ca_file: Path | None = None
    """The CA certificate to copy onto the device for an mqtts:// broker (None: no TLS)."""

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
        if self.ca_file is not None:
            out += [
                f"# and copy the hub's {self.ca_file} onto the device as {DEVICE_CA_FILE}: the",
                "# agent verifies the broker's TLS certificate with it.",
            ]
        if self.written_to is not None:
            out += [
                "",
                f"# Mosquitto: the device's password line is in {self.written_to.password_file}",
                f"# and its ACL block in {self.written_to.acl_file} (older ones for it replaced).",
                "# They take effect when Mosquitto reloads them: kill -HUP $(pidof mosquitto)",
                "# (or systemctl reload mosquitto).",
            ]
        elif self.mosquitto_password_line:
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
                    "# Mosquitto: append to the acl_file, then reload (kill -HUP):",
                    self.mosquitto_acl or "",
                    "",
                    "# Mosquitto: and, if the acl_file has no block for the hub's account yet:",
                    self.mosquitto_hub_acl or "",
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
    mosquitto_files: MosquittoFiles | None = None,
    hub_user: str = HUB_USER,
    device_credentials: Path | None = None,
) -> Provisioned:
    """Create ``device``'s secret; add it to ``password_file`` for the embedded broker
    (None for an external Mosquitto, whose lines go to ``mosquitto_files`` if given,
    else are only printed). ``hub_user`` is the hub's broker account. With an
    external broker, ``device_credentials`` (the hub's device password file) gets
    the secret too: the hub checks the device's model downloads with it.

    A name of the hub's identity is refused with :class:`ReservedNameError`. A device
    that has an account in ``password_file`` (or ``mosquitto_files``), or is ``known``
    otherwise, is refused with :class:`DeviceExistsError` unless ``rotate``.
    """
    validate_device_id(device)
    rules = BrokerRules(roots=(topics.root,), hub_user=hub_user)
    reserved = rules.reserved_reason(device)
    if reserved is not None:
        raise ReservedNameError(
            f"device name {device!r} is refused: {reserved}, which no device may share "
            "(a device by that name could replace the hub's broker password or take over its "
            "session); choose another name"
        )
    rotated = known
    if password_file is not None and password_file.exists():
        from cloud_hub.broker.auth import read_password_file  # noqa: PLC0415

        if device in read_password_file(password_file):
            if not rotate:
                raise _exists(device, f"it has an account in {password_file}")
            rotated = True
    elif mosquitto_files is not None and any(
        line.partition(":")[0] == device for line in _read_lines(mosquitto_files.password_file)
    ):
        if not rotate:
            raise _exists(device, f"it has an account in {mosquitto_files.password_file}")
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
    if device_credentials is not None:
        from cloud_hub.broker.auth import add_user  # noqa: PLC0415

        add_user(device_credentials, device, secret)  # the hub checks downloads with it
    line = mosquitto_password_line(device, secret)
    if mosquitto_files is not None:
        mosquitto_files.write(device, line, rules)
    return Provisioned(
        device,
        secret,
        env,
        line,
        rules.mosquitto_acl(device),
        rotated=rotated,
        mosquitto_hub_acl=rules.mosquitto_acl(hub_user),
        written_to=mosquitto_files,
    )


def device_broker(settings: HubSettings) -> BrokerEndpoint:
    """Where the hub's devices reach its broker, without credentials: the embedded
    broker's listener (its TLS one if there is one), or the external broker."""
    if settings.embedded_broker:
        tls_port = settings.mqtt_tls_port
        return BrokerEndpoint(
            settings.broker_host, tls_port or settings.broker_port, tls=bool(tls_port)
        )
    # The hub's own URL, without its account: it keeps mqtts.
    return dataclasses.replace(settings.external_broker(), username=None, password=None)


def add_device(
    settings: HubSettings,
    device: str,
    *,
    rotate: bool = False,
    mosquitto_files: MosquittoFiles | None = None,
) -> Provisioned:
    """What ``edgeloop-hub devices add`` does: credentials for the hub's broker, and
    the device in the store as never seen. The simulator provisions its agents here too.
    With an external Mosquitto and ``mosquitto_files``, its lines are written there.

    A device that already has credentials is refused unless ``rotate`` (see
    :func:`provision_device`). With an external broker the hub cannot see its
    password file, so a device the store knows counts as having credentials.
    """
    from cloud_hub.store import open_store  # noqa: PLC0415

    validate_device_id(device)
    hub_user = HUB_USER
    # With a TLS listener, devices are given it (mqtts://) and the CA to check it.
    broker = device_broker(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.embedded_broker:
        password_file: Path | None = settings.password_file
    else:
        password_file = None
        hub_user = settings.external_broker().username or HUB_USER
    if settings.embedded_broker and mosquitto_files is not None:
        raise ValueError(
            "the Mosquitto files are for an external Mosquitto (--broker mqtt://...); the "
            "embedded broker keeps its accounts in its own password file"
        )
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
            mosquitto_files=mosquitto_files,
            hub_user=hub_user,
            device_credentials=None if password_file else settings.device_credentials_file,
        )
        store.add_device(device)
    finally:
        store.close()
    if broker.tls and settings.embedded_broker:
        env = {**done.agent_env, "EDGELOOP_AGENT_BROKER_CA_FILE": str(DEVICE_CA_FILE)}
        ca = settings.data_dir.resolve() / "tls" / "ca.pem"
        return dataclasses.replace(done, agent_env=env, ca_file=ca)
    return done
