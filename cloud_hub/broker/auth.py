"""Password-file authentication for the embedded broker, fast enough for fleets.

Why not amqtt's own ``FileAuthPlugin``: it hashes with argon2, about 50 ms of CPU
per CONNECT. When a broker restarts, a thousand devices reconnect at once, and
50 s of hashing on the broker's only core is an outage of its own.

Why a fast hash is safe here: device secrets are random 32-byte tokens (256 bits),
not passwords a person chose. Slow hashes defend low-entropy secrets against
offline guessing; nobody can enumerate 2**256 candidates, however cheap each one
is. The file still stores salted PBKDF2-SHA256 so a leaked file does not leak
secrets, with a low default iteration count (:data:`DEFAULT_ITERATIONS`). Do not
use this file format for secrets people choose.

Password file, one user per line, ``#`` comments and blank lines allowed::

    username:pbkdf2_sha256$<iterations>$<salt_hex>$<hash_hex>

The plugin re-reads the file when it changes (checked with one ``stat`` per
CONNECT), so the hub can provision a device with :func:`add_user` while the broker
runs. A file that fails to parse on reload is logged and the previous users stay
in force. Successful checks are cached per (username, stored hash, presented
secret digest), so reconnect storms cost a dictionary lookup each.

Errors::

    ValueError
     └── PasswordFileError   path, line_number (None when not about one line)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import BaseContext
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from cloud_hub.broker.files import replace_file

__all__ = [
    "DEFAULT_ITERATIONS",
    "PasswordFileAuthPlugin",
    "PasswordFileError",
    "add_user",
    "hash_password",
    "read_password_file",
    "verify_password",
]

logger = logging.getLogger(__name__)

_ALGORITHM = "pbkdf2_sha256"
#: Low on purpose (≈0.3 ms per check): secrets are random 32-byte tokens, see above.
DEFAULT_ITERATIONS = 1_000
_SALT_BYTES = 16
_MAX_ITERATIONS = 10_000_000


class PasswordFileError(ValueError):
    """A password file is missing, unreadable or has a malformed line."""

    def __init__(self, message: str, *, path: Path, line_number: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line_number = line_number


def hash_password(secret: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash a secret into ``pbkdf2_sha256$<iterations>$<salt_hex>$<hash_hex>``.

    >>> encoded = hash_password("edgeloop-test-secret")
    >>> encoded.startswith("pbkdf2_sha256$1000$")
    True
    >>> verify_password("edgeloop-test-secret", encoded)
    True
    """
    if not secret:
        raise ValueError(
            "hash_password: the secret is empty; generate one with secrets.token_hex(32)"
        )
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"hash_password: iterations={iterations} is outside 1-{_MAX_ITERATIONS}")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return f"{_ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(secret: str, encoded: str) -> bool:
    """Check ``secret`` against an encoded hash; constant-time, False on any malformed hash."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    iterations, salt, expected = parsed
    actual = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(actual, expected)


def read_password_file(path: Path) -> dict[str, str]:
    """Read ``username -> encoded hash`` from a password file.

    Raises :class:`PasswordFileError` naming the file, and the line number for a
    malformed line or a duplicate user.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PasswordFileError(
            f"password file {path} does not exist; create it with "
            "cloud_hub.broker.auth.add_user(path, username, secret)",
            path=path,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PasswordFileError(
            f"password file {path} cannot be read ({reason}); check its permissions and "
            "that it is UTF-8 text",
            path=path,
        ) from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, encoded = line.partition(":")
        problem = None
        if not sep or not username:
            problem = "expected 'username:pbkdf2_sha256$<iterations>$<salt_hex>$<hash_hex>'"
        elif _parse_hash(encoded) is None:
            problem = (
                f"user {username!r}: hash is not 'pbkdf2_sha256$<iterations>$<salt_hex>$<hash_hex>'"
            )
        elif username in users:
            problem = f"user {username!r} is listed twice"
        if problem is not None:
            raise PasswordFileError(
                f"password file {path}, line {number}: {problem}; fix or delete the line "
                "(add_user() writes well-formed lines)",
                path=path,
                line_number=number,
            )
        users[username] = encoded
    return users


def add_user(path: Path, username: str, secret: str, iterations: int = DEFAULT_ITERATIONS) -> None:
    """Add a user to a password file, or replace its secret; creates the file (mode 0600).

    The file is rewritten atomically (write a temporary file, then rename), so a
    running broker never reads half a file. One writer at a time: concurrent
    callers may lose each other's update.
    """
    path = Path(path)
    _check_username(username)
    encoded = hash_password(secret, iterations)
    users = read_password_file(path) if path.exists() else {}
    users[username] = encoded
    body = "".join(f"{name}:{value}\n" for name, value in users.items())
    replace_file(path, body, mode=0o600)


def _check_username(username: str) -> None:
    if not username or ":" in username or any(ch.isspace() for ch in username):
        raise ValueError(
            f"username {username!r} is not allowed in a password file: it must be non-empty "
            "with no ':' and no whitespace"
        )
    if username.startswith("#"):
        raise ValueError(f"username {username!r} would read as a comment; do not start it with '#'")


def _parse_hash(encoded: str) -> tuple[int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _ALGORITHM:
        return None
    iterations_text, salt_hex, hash_hex = parts[1:]
    if not iterations_text.isdigit():
        return None
    iterations = int(iterations_text)
    if not 1 <= iterations <= _MAX_ITERATIONS:
        return None
    try:
        salt = bytes.fromhex(salt_hex)
        digest = bytes.fromhex(hash_hex)
    except ValueError:
        return None
    if not salt or len(digest) != hashlib.sha256().digest_size:
        return None
    return iterations, salt, digest


# Checked against when the user is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = f"{_ALGORITHM}${DEFAULT_ITERATIONS}${'00' * _SALT_BYTES}${'00' * 32}"


# amqtt ships no type information (no py.typed), so its base class is Any to mypy.
class PasswordFileAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt auth plugin: ``username:password`` against a PBKDF2 password file.

    Configured through the broker config's ``plugins`` dict::

        {"cloud_hub.broker.auth.PasswordFileAuthPlugin": {"password_file": "/etc/edgeloop/passwd"}}

    Clients without a username are refused, so anonymous access is off as long as
    this is the only auth plugin (amqtt requires every auth plugin to agree).
    """

    @dataclass
    class Config:
        """Options read from the plugin's entry in the broker's ``plugins`` dict."""

        password_file: str = ""
        """Path of the password file (required)."""
        cache_size: int = 100_000
        """Successful checks remembered, least recently used dropped first."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config = context.config
        if not isinstance(config, PasswordFileAuthPlugin.Config) or not config.password_file:
            raise PasswordFileError(
                "PasswordFileAuthPlugin needs 'password_file' in its plugin config",
                path=Path(),
            )
        self._path = Path(config.password_file)
        self._cache_size = max(0, config.cache_size)
        self._cache: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._users = read_password_file(self._path)
        self._signature = self._stat_signature()
        logger.info("%d broker user(s) loaded from %s", len(self._users), self._path)

    async def authenticate(self, *, session: Session) -> bool | None:
        """Return True only for a known user presenting the right secret."""
        username = session.username
        if not username:
            logger.info(
                "refused client %r: no username (anonymous access is off)", session.client_id
            )
            return False
        self._reload_if_changed()
        password = session.password or ""
        encoded = self._users.get(username)
        key = (username, encoded or "", hashlib.sha256(password.encode("utf-8")).digest())
        if encoded is not None and key in self._cache:
            self._cache.move_to_end(key)
            return True
        ok = verify_password(password, encoded or _DUMMY_HASH) and encoded is not None
        if not ok:
            logger.info(
                "refused client %r: wrong password or unknown user %r", session.client_id, username
            )
            return False
        if self._cache_size:
            self._cache[key] = None
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload_if_changed(self) -> None:
        signature = self._stat_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            users = read_password_file(self._path)
        except PasswordFileError as exc:
            logger.error("keeping the %d user(s) loaded before: %s", len(self._users), exc)
            return
        self._users = users
        # Entries for changed hashes can never match again; drop them all, they refill.
        self._cache.clear()
        logger.info("%d broker user(s) reloaded from %s", len(users), self._path)
