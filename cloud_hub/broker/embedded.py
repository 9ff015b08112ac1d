"""Run the embedded amqtt broker as a child process, from the hub, the simulators or tests.

amqtt costs about a core at a few thousand messages/s, so it never shares an
event loop (or a GIL) with the hub: :class:`EmbeddedBroker` starts
``python -m cloud_hub.broker`` as a subprocess and owns its lifetime. Tests use it
to kill the broker for real (:meth:`EmbeddedBroker.kill` is SIGKILL) and to start
it again on the same port.

Readiness is the child's own word: it prints one line, :data:`READY_PREFIX` plus
its URL, on stdout once its listener accepts connections. Probing the port would
also work, but amqtt logs every probe (a connection that sends no CONNECT) as an
error, and a probe cannot tell our child from another process on the same port.
The child's stderr goes to a log file, never to a pipe nobody reads (a full pipe
would stall the broker); its tail is quoted when the child fails to start.
The child writes that log in the format of the program that starts it (its
``--log-format``, through ``EDGELOOP_LOG_FORMAT``; see :mod:`shared.logformat`),
and :meth:`EmbeddedBroker.log_tail` quotes JSON lines as text.

This module does not import amqtt: only the child process does.

Errors::

    RuntimeError
     └── BrokerStartError   command, returncode (None if it was still running), log_tail
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from cloud_hub.broker.rules import BrokerRules
from shared.endpoint import BrokerEndpoint
from shared.logformat import LOG_FORMATS, default_log_format, log_tail

__all__ = [
    "READY_PREFIX",
    "BrokerExit",
    "BrokerStartError",
    "EmbeddedBroker",
    "TlsListener",
    "amqtt_config",
]

logger = logging.getLogger(__name__)

#: First line the child prints on stdout once it accepts connections, then its URL.
READY_PREFIX = "edgeloop broker ready on "

_AUTH_PLUGIN = "cloud_hub.broker.auth.PasswordFileAuthPlugin"
_TOPIC_PLUGIN = "cloud_hub.broker.topic_check.TopicRulesPlugin"
_GATE_PLUGIN = "cloud_hub.broker.gate.HubFirstGate"
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


class BrokerExit(enum.IntEnum):
    """Exit codes of ``python -m cloud_hub.broker``."""

    OK = 0
    FAILED = 1
    USAGE = 2
    ADDRESS_IN_USE = 3
    PASSWORD_FILE = 4


class BrokerStartError(RuntimeError):
    """The broker child process did not become ready."""

    def __init__(
        self, message: str, *, command: list[str], returncode: int | None, log_tail: str
    ) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.log_tail = log_tail


@dataclass(frozen=True, slots=True)
class TlsListener:
    """A second listener, MQTT over TLS, on ``port`` with a server certificate and key."""

    port: int
    certfile: Path
    keyfile: Path

    def argv(self) -> list[str]:
        """The broker child's flags for it."""
        return [
            "--tls-port",
            str(self.port),
            "--certfile",
            str(self.certfile),
            "--keyfile",
            str(self.keyfile),
        ]


def amqtt_config(
    host: str,
    port: int,
    password_file: Path,
    cache_size: int = 100_000,
    *,
    hold_devices_for: str | None = None,
    rules: BrokerRules | None = None,
    tls: TlsListener | None = None,
) -> dict[str, Any]:
    """The amqtt ``BrokerConfig`` dict the child runs with.

    Our plugins are loaded: the password plugin and the topic rules
    (:mod:`cloud_hub.broker.rules`: roots, the hub's account and client id, the
    fleet accounts; the defaults when ``rules`` is None). Nothing else: amqtt's
    default plugin set includes ``AnonymousAuthPlugin`` with anonymous access on,
    and an anonymous session gets no offline queue in amqtt 0.12. Also left out: the ``$SYS`` plugin (a periodic
    publish nobody reads) and the packet/event loggers (a log call per packet).
    With ``hold_devices_for`` (the hub's user), :mod:`cloud_hub.broker.gate` holds
    other clients' CONNECTs until that user has subscribed. With ``tls``, a second
    listener serves MQTT over TLS with the same accounts and rules.
    """
    rules = rules if rules is not None else BrokerRules()
    plugins: dict[str, Any] = {
        _AUTH_PLUGIN: {"password_file": str(password_file), "cache_size": cache_size},
        _TOPIC_PLUGIN: {
            "roots": list(rules.roots),
            "hub_user": rules.hub_user,
            "hub_client_id": rules.hub_client_id,
            "fleet": sorted(rules.fleet),
        },
    }
    if hold_devices_for:
        plugins[_GATE_PLUGIN] = {"hub_user": hold_devices_for}
    listeners: dict[str, Any] = {
        "default": {"type": "tcp", "bind": f"{_bind_host(host)}:{port}"},
    }
    if tls is not None:
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"{_bind_host(host)}:{tls.port}",
            "ssl": True,
            "certfile": str(tls.certfile),
            "keyfile": str(tls.keyfile),
        }
    return {"listeners": listeners, "plugins": plugins}


class EmbeddedBroker:
    """The amqtt broker in its own process; a context manager.

    >>> with EmbeddedBroker(password_file=Path("passwd")) as broker:  # doctest: +SKIP
    ...     endpoint = broker.endpoint("edgeloop", "edgeloop-test-secret")

    ``port=0`` picks a free port at the first :meth:`start`; later starts reuse
    it, so clients reconnect to the same URL after :meth:`kill` and :meth:`start`.
    ``log_format`` (``text`` or ``json``) is the child's log format; by default
    the running program's (:func:`shared.logformat.default_log_format`, which
    ``--log-format`` sets), so the hub's broker logs as the hub does.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        password_file: Path,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        log_path: Path | None = None,
        log_level: str = "warning",
        log_format: str | None = None,
        hold_devices_for: str | None = None,
        rules: BrokerRules | None = None,
        tls: TlsListener | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"EmbeddedBroker: port {port} is out of range 0-65535 (0 = pick one)")
        if log_format is not None and log_format not in LOG_FORMATS:
            raise ValueError(
                f"EmbeddedBroker: log_format {log_format!r} must be one of {', '.join(LOG_FORMATS)}"
            )
        self._host = host
        self._port = port
        self._password_file = Path(password_file)
        self._rules = rules if rules is not None else BrokerRules()
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._log_level = log_level
        self._log_format = log_format or default_log_format()
        self._hold_devices_for = hold_devices_for
        self.tls = tls
        self._own_log = log_path is None
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The listening port; chosen by :meth:`start` when constructed with ``port=0``."""
        if self._port == 0:
            raise RuntimeError("EmbeddedBroker: the port is chosen by start(); call it first")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``, without credentials."""
        return BrokerEndpoint(self._host, self.port).url

    def endpoint(self, username: str, password: str) -> BrokerEndpoint:
        """This broker's address with the given credentials."""
        return BrokerEndpoint(self._host, self.port, username, password)

    # -- process state -----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id, or None before the first start."""
        return None if self._proc is None else self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child (negative: killed by that signal), None while it runs."""
        return None if self._proc is None else self._proc.poll()

    @property
    def password_file(self) -> Path:
        """The password file the broker reads (and re-reads when it changes)."""
        return self._password_file

    @property
    def log_path(self) -> Path | None:
        """Where the child's stderr goes (a temporary file unless one was given)."""
        return self._log_path

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        """Start the child and wait until it accepts connections.

        Raises :class:`BrokerStartError` (with the child's log tail) if it exits or
        is not ready within ``startup_timeout`` seconds.
        """
        if self.is_running:
            raise RuntimeError(f"EmbeddedBroker: already running as pid {self.pid} on {self.url}")
        self._close_pipes()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="edgeloop-broker-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        pick = self._port == 0
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if pick:
                self._port = _free_port(self._host)
            try:
                self._spawn_and_wait()
            except BrokerStartError as exc:
                # Another process may take the port we picked before the child binds it.
                if (
                    pick
                    and exc.returncode == BrokerExit.ADDRESS_IN_USE
                    and attempt < _PORT_ATTEMPTS
                ):
                    logger.info(
                        "port %d was taken before the broker bound it; picking another", self._port
                    )
                    continue
                if pick:
                    self._port = 0
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout`` s, then SIGKILL. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "broker pid %d ignored SIGTERM for %.1f s; killing it",
                    proc.pid,
                    self._stop_timeout,
                )
                proc.kill()
                proc.wait()
        self._close_pipes()
        self._remove_own_log()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the child, as a crash would: no clean shutdown, sessions lost."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pipes()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"EmbeddedBroker({self._host}:{self._port or '?'}, {state})"

    # -- internals ---------------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cloud_hub.broker",
            "--host",
            self._host,
            "--port",
            str(self._port),
            "--password-file",
            str(self._password_file),
            "--log-level",
            self._log_level,
            "--log-format",
            self._log_format,
            *_rules_args(self._rules),
            # The child exits when our end of its stdin closes, i.e. when this
            # process dies without stopping it: no orphan brokers holding ports.
            "--stop-on-stdin-eof",
        ] + (
            (["--hold-devices-for", self._hold_devices_for] if self._hold_devices_for else [])
            + (self.tls.argv() if self.tls is not None else [])
        )

    def _spawn_and_wait(self) -> None:
        command = self._command()
        assert self._log_path is not None
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_child_env(),
                close_fds=True,
                # Its own session: a Ctrl-C at the terminal (SIGINT to the foreground
                # process group) reaches the hub, which stops the broker itself; were
                # the broker to get it too, it would exit first and be "restarted".
                start_new_session=True,
            )
        try:
            self._wait_ready(command)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, command: list[str]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        started = time.monotonic()
        deadline = started + self._startup_timeout
        fd = proc.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise self._start_error(
                        f"broker on {self._host}:{self._port} not ready after "
                        f"{self._startup_timeout:.1f} s; raise startup_timeout if the machine "
                        "is loaded, or read the log",
                        command,
                    )
                if selector.select(min(remaining, 0.5)):
                    chunk = os.read(fd, 4096)
                    buffer += chunk
                    if READY_PREFIX.encode() in buffer:
                        logger.info(
                            "broker pid %d ready on %s in %.2f s",
                            proc.pid,
                            self.url,
                            time.monotonic() - started,
                        )
                        return
                    if not chunk:  # stdout closed: the child is exiting
                        self._reap(min(remaining, self._stop_timeout))
                if proc.poll() is not None:
                    raise self._start_error(
                        f"broker on {self._host}:{self._port} exited with status "
                        f"{proc.returncode} before it was ready",
                        command,
                    )

    def _reap(self, timeout: float) -> None:
        assert self._proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)

    def _start_error(self, message: str, command: list[str]) -> BrokerStartError:
        tail = self.log_tail()
        detail = f"\n--- broker log {self._log_path} (last lines) ---\n{tail}" if tail else ""
        return BrokerStartError(
            message + detail,
            command=command,
            returncode=None if self._proc is None else self._proc.poll(),
            log_tail=tail,
        )

    def log_tail(self) -> str:
        """The last lines of the broker's log ("" if there is none), JSON lines as text."""
        return "" if self._log_path is None else log_tail(self._log_path, _LOG_TAIL_LINES)

    def _close_pipes(self) -> None:
        if self._proc is None:
            return
        streams: tuple[IO[bytes] | None, ...] = (self._proc.stdin, self._proc.stdout)
        for stream in streams:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _remove_own_log(self) -> None:
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None


def _rules_args(rules: BrokerRules) -> list[str]:
    """The child's options for ``rules`` (names only, never a secret)."""
    args = ["--hub-user", rules.hub_user, "--hub-client-id", rules.hub_client_id]
    for root in rules.roots:
        args += ["--root", root]
    for name in sorted(rules.fleet):
        args += ["--fleet", name]
    return args


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_CHILD_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "TZ",
        "LANG",
        "LANGUAGE",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "VIRTUAL_ENV",
    }
)
"""What the broker child keeps of our environment: where Python and its packages are,
locale and time zone. Nothing else: the hub's environment may hold its API tokens."""


def _child_env() -> dict[str, str]:
    """A minimal environment for the child (:data:`_CHILD_ENV_NAMES` and ``LC_*``), plus the
    project root on PYTHONPATH when not installed."""
    env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV_NAMES or k.startswith("LC_")}
    root = str(Path(__file__).resolve().parents[2])
    installed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    if root not in installed:
        current = env.get("PYTHONPATH", "")
        if root not in current.split(os.pathsep):
            env["PYTHONPATH"] = root + (os.pathsep + current if current else "")
    return env
