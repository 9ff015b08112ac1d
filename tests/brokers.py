"""Real MQTT brokers for tests: the embedded amqtt broker and, where installed, Mosquitto.

Tests talk to real brokers (STYLE.md), each on an ephemeral loopback port with
password authentication on, as in production. Fixtures in ``conftest.py`` wrap the
context managers here; use these directly when a test needs its own broker.

Mosquitto is optional on a laptop (tests needing it are skipped) and mandatory in
CI: with ``CI=true`` a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloud_hub.broker.auth import add_user
from cloud_hub.broker.embedded import EmbeddedBroker
from shared.endpoint import BrokerEndpoint

HOST = "127.0.0.1"
EDGELOOP_USER = "edgeloop"
EDGELOOP_SECRET = "edgeloop-test-secret"
HUB_USER = "hub"
HUB_SECRET = "hub-test-secret"
USERS = {EDGELOOP_USER: EDGELOOP_SECRET, HUB_USER: HUB_SECRET}

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 3


def free_port(host: str = HOST) -> int:
    """A TCP port free right now on ``host`` (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once ``host:port`` accepts a TCP connection; TimeoutError after ``timeout`` s.

    With ``process``, also stop waiting (RuntimeError) as soon as it has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with status {process.returncode} before "
                f"{host}:{port} accepted connections"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.1f} s")
        time.sleep(0.05)


def wait_for_port_closed(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` refuses connections; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still accepts connections after {timeout:.1f} s")
        time.sleep(0.05)


# -- amqtt ---------------------------------------------------------------------------


@contextmanager
def running_amqtt(directory: Path) -> Iterator[EmbeddedBroker]:
    """The embedded broker with users ``edgeloop`` and ``hub``; files kept in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "passwd"
    for username, secret in USERS.items():
        add_user(password_file, username, secret)
    broker = EmbeddedBroker(
        HOST,
        password_file=password_file,
        startup_timeout=_START_TIMEOUT,
        stop_timeout=_STOP_TIMEOUT,
        log_path=directory / "broker.log",
        log_level="info",
    )
    with broker:
        yield broker


# -- Mosquitto -----------------------------------------------------------------------


def require_mosquitto() -> str:
    """Path of the ``mosquitto`` binary; skip the test without it, or fail it under CI."""
    binary = shutil.which("mosquitto") or _first_existing("/usr/sbin/mosquitto")
    passwd = shutil.which("mosquitto_passwd")
    if binary and passwd:
        return binary
    message = (
        "mosquitto and mosquitto_passwd are not installed "
        "(apt-get install mosquitto mosquitto-clients)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run the Mosquitto tests, not skip them")
    pytest.skip(message)


def mosquitto_conf(port: int, password_file: Path) -> str:
    """A Mosquitto 2.x config for tests, sized like production (DESIGN.md section 7)."""
    return "\n".join(
        [
            f"listener {port} {HOST}",
            "allow_anonymous false",
            f"password_file {password_file}",
            "persistence false",
            # Per-client queue behind the in-flight window. The hub's subscription
            # must never be the one that drops; the default (1000) is too small.
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            # Bounded, unlike 0 (unlimited), so slow consumers still get flow control.
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            # Root would otherwise switch to user 'mosquitto', who cannot read tmp_path.
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "",
        ]
    )


@contextmanager
def running_mosquitto(
    directory: Path, *, extra_conf: Sequence[str] = (), extra_users: Sequence[str] = ()
) -> Iterator[BrokerEndpoint]:
    """Mosquitto with users ``edgeloop`` and ``hub``; yields the ``edgeloop`` endpoint.

    ``extra_users`` are password-file lines to append (as provisioning writes
    them); ``extra_conf`` lines go at the end of the config (an acl_file, say).
    """
    binary = require_mosquitto()
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "passwd"
    create = ["-c"]
    for username, secret in USERS.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(password_file), username, secret],
            check=True,
            capture_output=True,
            timeout=30,
        )
        create = []
    if extra_users:
        with password_file.open("a", encoding="utf-8") as fh:
            fh.writelines(line + "\n" for line in extra_users)
    password_file.chmod(0o600)
    log_path = directory / "mosquitto.log"
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(
            mosquitto_conf(port, password_file) + "\n".join(extra_conf) + "\n", encoding="utf-8"
        )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            wait_for_port(HOST, port, _START_TIMEOUT, process)
        except (RuntimeError, TimeoutError) as exc:
            _terminate(process)
            if attempt < _PORT_ATTEMPTS and "Address already in use" in _tail(log_path):
                continue
            raise RuntimeError(f"mosquitto did not start: {exc}\n{_tail(log_path)}") from None
        try:
            yield BrokerEndpoint(HOST, port, EDGELOOP_USER, EDGELOOP_SECRET)
        finally:
            _terminate(process)
        return


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _first_existing(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else None
