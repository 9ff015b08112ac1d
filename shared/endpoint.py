"""Where a broker is and how to log in to it, as one validated value.

Every process in edgeloop (hub, simulators, tests) is told about its broker with
one URL, ``mqtt://user:secret@host:port``, or ``mqtts://`` for MQTT over TLS
(port 8883 by default; the client verifies the broker's certificate). Parsing it once, here, into a frozen
:class:`BrokerEndpoint` means a typo fails at start-up with a message naming the
bad part, not later as an opaque connection error. This module imports no MQTT
library, so anything may use it cheaply.

Errors: :func:`parse_broker_url` and :class:`BrokerEndpoint` raise ``ValueError``.
Messages never echo the password.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "BrokerEndpoint",
    "parse_broker_url",
    "redact_url",
    "with_password",
]

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
_SCHEMES = {"mqtt": False, "mqtts": True}


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """A broker address plus the credentials to use there.

    >>> ep = BrokerEndpoint("127.0.0.1", 1883, "edgeloop", "s3cret")
    >>> ep.url
    'mqtt://edgeloop:s3cret@127.0.0.1:1883'
    >>> ep
    BrokerEndpoint(host='127.0.0.1', port=1883, username='edgeloop', password='***')
    """

    host: str
    port: int = DEFAULT_MQTT_PORT
    username: str | None = None
    # repr=False and a hand-written __repr__: pytest and logs print endpoints.
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    """MQTT over TLS (``mqtts://``): the client verifies the broker's certificate."""

    def __post_init__(self) -> None:
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ValueError(f"broker endpoint: host {self.host!r} is empty or contains spaces")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"broker endpoint {self.host}: port {self.port!r} is not an integer")
        if not 1 <= self.port <= 65535:
            raise ValueError(
                f"broker endpoint {self.host}: port {self.port} is out of range 1-65535"
            )
        if self.password is not None and self.username is None:
            raise ValueError(
                f"broker endpoint {self.host}:{self.port}: a password without a username; "
                "MQTT 3.1.1 sends a password only together with a username"
            )
        if self.username == "":
            raise ValueError(
                f"broker endpoint {self.host}:{self.port}: username is empty; "
                "leave it out (None) to connect without credentials"
            )

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        tls = ", tls=True" if self.tls else ""
        return (
            f"BrokerEndpoint(host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, password={password!r}{tls})"
        )

    @property
    def url(self) -> str:
        """``mqtt[s]://user:pass@host:port`` (credentials percent-encoded); round-trips."""
        return self._url(self.password)

    @property
    def redacted_url(self) -> str:
        """The URL with the password replaced by ``***``, for logs and error messages."""
        return self._url(None if self.password is None else "***")

    def _url(self, password: str | None) -> str:
        host = f"[{self.host}]" if _is_ipv6(self.host) else self.host
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if password is not None:
                userinfo += ":" + (password if password == "***" else quote(password, safe=""))
            userinfo += "@"
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{userinfo}{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerEndpoint:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]`` into a :class:`BrokerEndpoint`.

    The port defaults to 1883 (``mqtts``: 8883). User name and password are
    percent-decoded.

    >>> parse_broker_url("mqtt://hub:p%40ss@broker.local:1884")
    BrokerEndpoint(host='broker.local', port=1884, username='hub', password='***')
    >>> parse_broker_url("http://broker.local")
    Traceback (most recent call last):
    ...
    ValueError: broker URL 'http://broker.local': scheme 'http' is not supported; use mqtt://host:port (or mqtts:// for TLS)
    """
    shown = redact_url(url)
    if not isinstance(url, str) or not url.strip():
        raise ValueError("broker URL is empty; expected mqtt://[user:password@]host:port")
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise ValueError(f"broker URL {shown!r} does not parse: {exc}") from None
    tls = _SCHEMES.get(parts.scheme.lower())
    if tls is None:
        scheme = parts.scheme or "(none)"
        raise ValueError(
            f"broker URL {shown!r}: scheme {scheme!r} is not supported; use mqtt://host:port "
            "(or mqtts:// for TLS)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"broker URL {shown!r}: unexpected path, query or fragment; "
            "expected only mqtt://[user:password@]host:port"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"broker URL {shown!r}: no host; expected mqtt://host:port")
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(
            f"broker URL {shown!r}: port {raw!r} is not a number in range 1-65535"
        ) from None
    if port is None:
        port = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT
    if port == 0:
        raise ValueError(f"broker URL {shown!r}: port 0 is not a connectable port; use 1-65535")
    username = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    try:
        return BrokerEndpoint(host=host, port=port, username=username, password=password, tls=tls)
    except ValueError as exc:
        raise ValueError(f"broker URL {shown!r}: {exc}") from None


def with_password(endpoint: BrokerEndpoint, password: str | None) -> BrokerEndpoint:
    """``endpoint`` with ``password``, given apart from its URL (from a file, say).

    ``ValueError`` (never showing either password) if the URL has a password too
    or names no user.

    >>> with_password(parse_broker_url("mqtt://pi-07@hub.local"), "s3cret")
    BrokerEndpoint(host='hub.local', port=1883, username='pi-07', password='***')
    """
    if password is None:
        return endpoint
    if endpoint.password is not None:
        raise ValueError("is given, but the broker URL has a password too; keep one (the file)")
    if endpoint.username is None:
        raise ValueError(
            f"is given, but the broker URL {endpoint.url} names no user; "
            "write it as mqtt://USER@host:port"
        )
    return dataclasses.replace(endpoint, password=password)


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def redact_url(url: object) -> str:
    """``url`` with its password (if any) replaced by ``***``; best effort, even for a URL
    that does not parse.

    >>> redact_url("mqtt://pi-07:s3cret@hub.local:1883")
    'mqtt://pi-07:***@hub.local:1883'
    >>> redact_url("mqtt://pi-07@hub.local")
    'mqtt://pi-07@hub.local'
    """
    text = str(url)
    scheme, sep, rest = text.rpartition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"
