"""Devices' own credentials over HTTP: the secret a device logs in to the broker with.

A device fetches its model packages from the hub's API with HTTP Basic
``device:secret``, the same secret ``edgeloop-hub devices add`` gave it for
MQTT, checked against the hub's device password file (salted PBKDF2, the
format of :mod:`cloud_hub.broker.auth`): the embedded broker's own file, or,
with an external Mosquitto, ``DATA_DIR/device-passwd``, which ``devices add``
writes beside the Mosquitto lines. The file is re-read when it changes (one
``stat`` per check), so a device added or rotated while the hub runs is known
at once. Successful checks are cached per (device, stored hash, secret digest).

The hub's own broker account is not a device: its name is refused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from cloud_hub.broker.auth import PasswordFileError, read_password_file, verify_password
from shared.errors import TopicError
from shared.topics import validate_device_id

__all__ = ["DeviceCredentials"]

log = logging.getLogger(__name__)
_CACHE_MAX = 4096


class DeviceCredentials:
    """Checks ``device:secret`` pairs against a device password file."""

    def __init__(self, path: Path, *, not_devices: frozenset[str] = frozenset()) -> None:
        self.path = path
        self._not_devices = not_devices
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._users: dict[str, str] = {}
        self._ok: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()

    def _reload(self) -> dict[str, str]:
        try:
            st = self.path.stat()
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        with self._lock:
            if signature == self._signature:
                return self._users
        users: dict[str, str] = {}
        if signature is not None:
            try:
                users = read_password_file(self.path)
            except PasswordFileError as exc:
                log.error("device credentials: %s; keeping the accounts read before", exc)
                with self._lock:
                    return self._users
        with self._lock:
            self._signature, self._users = signature, users
            self._ok.clear()
            return users

    def check(self, device: str, secret: str) -> bool:
        """True when ``secret`` is ``device``'s."""
        try:
            validate_device_id(device)
        except TopicError:
            return False
        if device in self._not_devices:
            return False
        encoded = self._reload().get(device)
        if encoded is None:
            return False
        key = (device, encoded, hashlib.sha256(secret.encode()).digest())
        with self._lock:
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
        if not verify_password(secret, encoded):
            return False
        with self._lock:
            self._ok[key] = None
            while len(self._ok) > _CACHE_MAX:
                self._ok.popitem(last=False)
        return True
