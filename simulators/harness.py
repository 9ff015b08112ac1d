"""Start, wait for, stop, kill and restart the parts of an edgeloop system on this machine.

The demo, every benchmark and the tests bring up the same parts; this is the one
place that knows how:

- :func:`free_port`, :func:`wait_for_port`, :func:`wait_for_port_closed` and
  :func:`wait_until`, every wait bounded in time and in attempts;
- :class:`ManagedProcess`: a child process with a log file. ``start`` spawns it
  and waits (bounded) until it is ready; ``stop`` sends SIGTERM once, waits up
  to ``stop_timeout`` and then sends SIGKILL; ``kill`` is SIGKILL, for fault
  injection; ``restart`` starts the same command again, on the same ports and
  data directories; as a context manager it stops on exit. Children the process
  started itself (the hub's embedded broker) are waited for, and killed if they
  outlive it, so a restart finds its ports free;
- :class:`Mosquitto` and :class:`AmqttBroker`: the two brokers, each with
  password authentication on, as in production (:class:`Broker` is what they
  share). Mosquitto runs with :data:`MOSQUITTO_HUB_LIMITS`;
- :class:`HubProcess`: ``edgeloop-hub serve`` with fresh API tokens, ready once
  ``/healthz`` answers; it provisions devices as ``edgeloop-hub devices add`` does;
- :class:`AgentProcess`: ``edgeloop-agent``;
- :class:`HubApi`: a small client for the hub's JSON routes.

Everything listens on :data:`HOST` (loopback) only. Secrets (API tokens, broker
passwords) go to children in files of mode 0600 (``--read-token-file``,
``--broker-password-file``) in a ``*.secrets`` directory (mode 0700) beside
the child's data or state directory, never on a command line or in an
environment other users or other children can read; children get an
environment without stray ``EDGELOOP_HUB_*`` or ``EDGELOOP_AGENT_*`` settings
of the caller's.

Nothing runs at import, and nothing heavy is imported: ``cloud_hub`` parts and
psutil are imported by the methods that need them. The edge agent never
imports this module. Objects here are not thread-safe; one owner drives each.

Errors::

    EdgeloopError
     └── HarnessError
          ├── StartError         a part exited during start-up or was not ready in time
          ├── WaitTimeoutError   a bounded wait ran out (also a TimeoutError)
          ├── CancelledError     a wait was cancelled by its ``cancel`` event
          └── ApiError           the hub's API answered with an error status
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, Self
from urllib.parse import urlsplit

from shared.endpoint import BrokerEndpoint, parse_broker_url
from shared.errors import EdgeloopError
from shared.logformat import log_tail as shared_log_tail
from shared.secret_file import write_private
from shared.topics import DEFAULT_ROOT

if TYPE_CHECKING:
    from cloud_hub.broker.rules import BrokerRules
    from cloud_hub.provision import Provisioned
    from cloud_hub.settings import HubSettings

__all__ = [
    "HOST",
    "HUB_USER",
    "MOSQUITTO_HUB_LIMITS",
    "MOSQUITTO_MAX_PACKET_SIZE",
    "AgentProcess",
    "AmqttBroker",
    "ApiError",
    "Broker",
    "CancelledError",
    "HarnessError",
    "HubApi",
    "HubProcess",
    "ManagedProcess",
    "Mosquitto",
    "Reply",
    "StartError",
    "WaitTimeoutError",
    "child_env",
    "find_mosquitto",
    "free_port",
    "log_tail",
    "secrets_dir",
    "wait_for_port",
    "wait_for_port_closed",
    "wait_until",
]

HOST: Final = "127.0.0.1"
"""Every listener started here binds this address, and only this one."""

HUB_USER: Final = "hub"
"""The hub's broker account: its embedded broker makes it; give it to Mosquitto yourself."""

MOSQUITTO_HUB_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "max_queued_messages": 200_000,
        "max_queued_bytes": 0,
        "max_inflight_messages": 200,
    }
)
"""Mosquitto's per-client queue limits, sized for the hub as ``deploy/mosquitto/mosquitto.conf``
sizes them (a test keeps the two equal).

Mosquitto applies them to every client alike, and the hub's subscription must
never be the one that drops: at 50,000 readings/s in batches of 50 the hub
receives ~1,000 messages/s, and a minute's hub restart must fit in its queue.
200,000 is also the hub's own ``--ingest-queue-max``. The in-flight window is
bounded (0 would be unlimited) so slow consumers still get flow control.
"""

MOSQUITTO_MAX_PACKET_SIZE: Final = 1_048_576 + 4096
"""Packets over the payload limit a device may send (1 MiB, the hub's ``--max-payload-bytes``
default) plus 4 KiB for the topic and headers are refused at the broker before they are
read (the client is disconnected), as in ``deploy/mosquitto/mosquitto.conf``. Tests of the
hub's own defences turn it off (0)."""

_MOSQUITTO_FALLBACK: Final = "/usr/sbin/mosquitto"
_PORT_ATTEMPTS: Final = 3
_KILL_WAIT_S: Final = 10.0
"""How long a SIGKILLed process may take to be reaped before we give up on it."""
_LOG_TAIL_LINES: Final = 20
_ENV_PREFIXES: Final = ("EDGELOOP_HUB_", "EDGELOOP_AGENT_")


class HarnessError(EdgeloopError):
    """Something the harness started did not behave; the message says what and where its log is."""


class StartError(HarnessError):
    """A part exited during start-up or was not ready in time."""


class WaitTimeoutError(HarnessError, TimeoutError):
    """A bounded wait ran out of time."""


class CancelledError(HarnessError):
    """A wait was cancelled: its ``cancel`` event was set (Ctrl-C in the demo, say)."""


# --------------------------------------------------------------------------- small parts


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
    ignore: tuple[type[Exception], ...] = (),
    cancel: threading.Event | None = None,
) -> None:
    """Return once ``check()`` is true; :class:`WaitTimeoutError` after ``timeout`` s.

    Bounded in time and in attempts (one per ``interval``). ``alive`` is called
    between attempts and should raise when waiting is pointless (the process
    that was to become ready has exited). Exceptions of the ``ignore`` types
    from ``check`` count as "not yet". A set ``cancel`` event raises
    :class:`CancelledError`; the pause between attempts waits on it, so cancelling
    takes effect at once.
    """
    if timeout < 0 or interval <= 0:
        raise ValueError(f"wait_until: timeout {timeout} must be >= 0 and interval {interval} > 0")
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 2):
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"cancelled while waiting for {what}")
        try:
            if check():
                return
        except ignore:
            pass
        if alive is not None:
            alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        pause = min(interval, remaining)
        if cancel is not None:
            cancel.wait(pause)
        else:
            time.sleep(pause)
    raise WaitTimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, timeout: float, alive: Callable[[], None] | None = None
) -> None:
    """Return once ``host:port`` accepts TCP connections; :class:`WaitTimeoutError` otherwise."""
    wait_until(
        f"{host}:{port} to accept connections",
        lambda: _accepts(host, port),
        timeout=timeout,
        interval=0.05,
        alive=alive,
    )


def wait_for_port_closed(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` refuses connections; :class:`WaitTimeoutError` otherwise."""
    wait_until(
        f"{host}:{port} to refuse connections",
        lambda: not _accepts(host, port),
        timeout=timeout,
        interval=0.05,
    )


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, JSON lines (``--log-format json``) as text
    ("" if it cannot be read)."""
    return shared_log_tail(path, lines)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without ``EDGELOOP_HUB_*``/``EDGELOOP_AGENT_*``
    settings, unbuffered Python output (its log is complete even after SIGKILL), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def secrets_dir(beside: Path) -> Path:
    """``BESIDE.secrets``, made with mode 0700: where a child's secret files go."""
    path = beside.with_name(beside.name + ".secrets")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary (on PATH, or in /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return _MOSQUITTO_FALLBACK if os.access(_MOSQUITTO_FALLBACK, os.X_OK) else None


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """One child process, its log file, and its lifecycle: start, stop, kill, restart.

    Output (stdout and stderr, or only stderr with ``stdout_pipe``) is appended to
    ``log_path`` across restarts. ``ready_marker``, if given, is a text the
    process writes to its log once it is ready; otherwise it is ready once spawned.
    ``new_session`` puts it in its own session, so a Ctrl-C in the terminal
    reaches only the caller, which then stops its children in order.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin_pipe: bool = False,
        stdout_pipe: bool = False,
        new_session: bool = False,
        ready_marker: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env) if env is not None else child_env()
        self.stdin_pipe = stdin_pipe
        self.stdout_pipe = stdout_pipe
        self.new_session = new_session
        self.ready_marker = ready_marker
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.starts = 0
        """How many times the process has been spawned."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._terminated = False
        self._children: list[Any] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise HarnessError(f"{self.name}: not started yet")
        return self._proc

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last run (negative: killed by that signal); None while running."""
        return None if self._proc is None else self._proc.poll()

    @property
    def stdin(self) -> IO[bytes]:
        if self.popen.stdin is None:
            raise HarnessError(f"{self.name}: started without stdin_pipe")
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes]:
        if self.popen.stdout is None:
            raise HarnessError(f"{self.name}: started without stdout_pipe")
        return self.popen.stdout

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the process to exit; ``subprocess.TimeoutExpired`` if not."""
        return self.popen.wait(timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def output(self, *, this_run: bool = False) -> str:
        """Everything in the log; with ``this_run``, only what the current (or last) run wrote."""
        try:
            with self.log_path.open("rb") as fh:
                if this_run:
                    fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise :class:`StartError` (with the log's tail) if the process has exited."""
        code = self.returncode
        if code is not None:
            raise StartError(
                f"{self.name} (pid {self.pid}) exited with status {code}; "
                f"its log {self.log_path} ends:\n{self.log_tail()}"
            )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, wait: bool = True, cancel: threading.Event | None = None) -> Self:
        """Spawn the process and (unless ``wait`` is false) wait until it is ready.

        If it does not become ready (or the wait is cancelled) it is stopped and
        :class:`StartError` (or :class:`CancelledError`) raised.
        """
        self._spawn()
        if wait:
            try:
                self.wait_ready(cancel=cancel)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> Self:
        """Wait until the process is ready, at most ``timeout`` s (default ``start_timeout``)."""
        limit = self.start_timeout if timeout is None else timeout
        try:
            wait_until(
                f"{self.name} to be ready",
                self._is_ready,
                timeout=limit,
                interval=self._ready_interval(),
                alive=self.check_alive,
                cancel=cancel,
            )
        except WaitTimeoutError:
            raise StartError(
                f"{self.name} (pid {self.pid}) was not ready within {limit:g} s; "
                f"its log {self.log_path} ends:\n{self.log_tail()}"
            ) from None
        return self

    def wait_until(
        self,
        what: str,
        check: Callable[[], bool],
        *,
        timeout: float,
        interval: float = 0.2,
        ignore: tuple[type[Exception], ...] = (),
    ) -> None:
        """:func:`wait_until`, failing early (:class:`StartError`) if this process exits."""
        wait_until(
            what, check, timeout=timeout, interval=interval, alive=self.check_alive, ignore=ignore
        )

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process if it still runs."""
        proc = self.popen
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def terminate(self) -> None:
        """Send SIGTERM, once per run: a second one could interrupt a clean shutdown."""
        if self._proc is None or self._proc.poll() is not None or self._terminated:
            return
        self._remember_children()
        self._terminated = True
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (once), wait up to ``timeout`` s (default ``stop_timeout``), then SIGKILL.

        Returns the exit status (None if never started).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.terminate()
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._sigkill(proc)
        self._finish(self.stop_timeout if timeout is None else timeout)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash would: no clean shutdown. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._remember_children()
            self._sigkill(proc)
        self._finish(self.stop_timeout)
        return proc.returncode

    def restart(self, *, wait: bool = True, cancel: threading.Event | None = None) -> Self:
        """Stop the process (if it runs) and start the same command again."""
        self.stop()
        return self.start(wait=wait, cancel=cancel)

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else f"exit {self.returncode}"
        return f"{type(self).__name__}({self.name}, {state})"

    # -- hooks for subclasses ----------------------------------------------------------------

    def _before_spawn(self) -> None:
        """Write config files and the like; called before every spawn."""

    def _is_ready(self) -> bool:
        if self.ready_marker is None:
            return True
        return self.ready_marker in self.output(this_run=True)

    def _ready_interval(self) -> float:
        return 0.1

    # -- internals ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self.is_running:
            raise HarnessError(f"{self.name}: already running as pid {self.pid}")
        self._finish(self.stop_timeout)  # leftovers of a previous run hold its ports
        self._before_spawn()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.stdout_pipe else log,
                stderr=log if self.stdout_pipe else subprocess.STDOUT,
                start_new_session=self.new_session,
                close_fds=True,
            )
        self._terminated = False
        self.starts += 1

    def _sigkill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            proc.wait(_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"{self.name} (pid {proc.pid}) did not exit {_KILL_WAIT_S:g} s after SIGKILL"
            ) from None

    def _remember_children(self) -> None:
        """Note the process's own children before it goes: they may outlive it."""
        import psutil  # noqa: PLC0415

        if self._proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self._children = psutil.Process(self._proc.pid).children(recursive=True)

    def _finish(self, timeout: float) -> None:
        """After the process exited: close its stdin, wait for its children, kill stragglers."""
        import psutil  # noqa: PLC0415

        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        children, self._children = self._children, []
        if not children:
            return
        _, alive = psutil.wait_procs(children, timeout=timeout)
        for child in alive:  # started by our child, so ours to stop
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=_KILL_WAIT_S)


# --------------------------------------------------------------------------- brokers


class Broker(Protocol):
    """What both brokers offer: an address, accounts, and a lifecycle."""

    @property
    def kind(self) -> str:
        """``mosquitto`` or ``embedded``."""
        ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def version(self) -> str: ...

    def endpoint(self, username: str, password: str | None = None) -> BrokerEndpoint: ...

    def start(self) -> Broker: ...

    def stop(self) -> int | None: ...

    def kill(self) -> int | None: ...

    def restart(self) -> Broker: ...


class Mosquitto(ManagedProcess):
    """Mosquitto 2.x from a config written here, with accounts and the hub's queue limits.

    Files live in ``directory``: ``mosquitto.conf``, ``passwd`` (mode 0600),
    ``acl`` (if an ACL is given), ``mosquitto.log``, and with ``persistent``
    the session store (``persistence true``, as in production; without it a
    restart loses sessions and retained messages). ``users`` maps names to
    secrets; ``password_lines`` are lines as ``edgeloop-hub devices add``
    prints them; ``acl`` is acl_file text (None: no ACL, every user may use
    every topic); ``rules`` (:class:`~cloud_hub.broker.rules.BrokerRules`) adds
    the block of every account in ``users`` to the ACL, as ``edgeloop-hub devices
    add`` writes them; ``username_as_clientid`` binds client ids to user names as
    the shipped config does (off by default: a fleet account connects as many
    clients). ``max_packet_size=0`` lets any payload through, for tests
    of the hub's and the agent's own limits. ``port=0`` picks a free port; if
    that port turns out busy at the first start, another is picked, unless
    :attr:`port` was read already.
    """

    kind: Final = "mosquitto"

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        password_lines: Sequence[str] = (),
        acl: str | None = None,
        rules: BrokerRules | None = None,
        username_as_clientid: bool = False,
        extra_conf: Sequence[str] = (),
        port: int = 0,
        persistent: bool = False,
        max_packet_size: int = MOSQUITTO_MAX_PACKET_SIZE,
        verbose_log: bool = False,
        binary: str | None = None,
        new_session: bool = False,
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise HarnessError(
                "mosquitto is not installed (apt-get install mosquitto); or use the embedded broker"
            )
        self.directory = Path(directory).resolve()
        self.host = HOST
        self.users = dict(users or {})
        self.password_lines = list(password_lines)
        self.acl_blocks = [] if acl is None else [acl]
        self.rules = rules
        """With rules, the acl_file gives every account in ``users`` its block
        (:meth:`BrokerRules.mosquitto_acl`), as ``edgeloop-hub devices add`` does."""
        self.use_acl = acl is not None or rules is not None
        self.username_as_clientid = username_as_clientid
        self.extra_conf = list(extra_conf)
        self.persistent = persistent
        self.max_packet_size = max_packet_size
        self.verbose_log = verbose_log
        self._port = port or free_port()
        self._port_pinned = bool(port)
        self._version: str | None = None
        super().__init__(
            [found, "-c", str(self.conf_path)],
            log_path=self.directory / "mosquitto.log",
            name="mosquitto",
            new_session=new_session,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    @property
    def port(self) -> int:
        """The listening port; fixed from now on (restarts reuse it)."""
        self._port_pinned = True
        return self._port

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def version(self) -> str:
        """``mosquitto -h``'s version, e.g. ``2.0.18``."""
        if self._version is None:
            done = subprocess.run(
                [self.argv[0], "-h"], capture_output=True, text=True, timeout=10, check=False
            )
            first = done.stdout.split("\n", 1)[0]
            self._version = first.removeprefix("mosquitto version ").strip() or "unknown"
        return self._version

    def endpoint(self, username: str, password: str | None = None) -> BrokerEndpoint:
        """This broker's address with ``username`` and its secret (known ones by default)."""
        secret = password if password is not None else self.users.get(username)
        return BrokerEndpoint(self.host, self.port, username, secret)

    def add_accounts(
        self,
        *,
        users: Mapping[str, str] | None = None,
        password_lines: Iterable[str] = (),
        acl_blocks: Iterable[str] = (),
    ) -> None:
        """Add accounts (and ACL blocks); a running broker re-reads its files (SIGHUP)."""
        self.users.update(users or {})
        self.password_lines.extend(password_lines)
        blocks = list(acl_blocks)
        if blocks and not self.use_acl:
            raise HarnessError("mosquitto: ACL blocks for a broker started without an ACL")
        self.acl_blocks.extend(blocks)
        if self.is_running:
            self._write_files()
            self.send_signal(signal.SIGHUP)

    def start(self, *, wait: bool = True, cancel: threading.Event | None = None) -> Self:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                return super().start(wait=wait, cancel=cancel)
            except StartError:
                busy = "Address already in use" in self.output(this_run=True)
                if busy and not self._port_pinned and attempt < _PORT_ATTEMPTS:
                    self._port = free_port()  # taken between picking and binding: pick again
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def config(self) -> str:
        """The config text this broker runs with."""
        lines = [
            f"listener {self._port} {self.host}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
        ]
        if self.use_acl:
            lines.append(f"acl_file {self.acl_file}")
        if self.username_as_clientid:
            lines.append("use_username_as_clientid true")
        lines += [f"{key} {value}" for key, value in MOSQUITTO_HUB_LIMITS.items()]
        if self.max_packet_size:
            lines.append(f"max_packet_size {self.max_packet_size}")
        lines.append("set_tcp_nodelay true")
        if self.persistent:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                # As deploy/mosquitto/mosquitto.conf ships it.
                "autosave_interval 5",
                "autosave_on_changes false",
            ]
        else:
            lines.append("persistence false")
        lines += [
            # Started as root, mosquitto switches to this user (by default 'mosquitto',
            # who could not read our files); as anyone else the line has no effect.
            f"user {_user_name()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.verbose_log:
            lines += ["log_type information", "connection_messages true"]
        else:
            lines.append("connection_messages false")
        return "\n".join([*lines, *self.extra_conf]) + "\n"

    def _before_spawn(self) -> None:
        self._write_files()

    def _is_ready(self) -> bool:
        return self.is_running and _accepts(self.host, self._port)

    def _ready_interval(self) -> float:
        return 0.05

    def _write_files(self) -> None:
        from cloud_hub.provision import mosquitto_password_line  # noqa: PLC0415

        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [mosquitto_password_line(name, secret) for name, secret in self.users.items()]
        lines += self.password_lines
        _write_private(self.password_file, "".join(line + "\n" for line in lines))
        if self.use_acl:
            blocks = list(self.acl_blocks)
            if self.rules is not None:
                blocks.insert(0, self.rules.mosquitto_acl_file(self.users))
            _write_private(self.acl_file, "\n\n".join(blocks) + "\n")
        self.conf_path.write_text(self.config(), encoding="utf-8")


class AmqttBroker:
    """The embedded amqtt broker (:class:`cloud_hub.broker.embedded.EmbeddedBroker`) with accounts.

    Files live in ``directory``: ``passwd`` and ``amqtt.log``. ``port=0`` picks
    a free port at the first start; restarts reuse it.
    """

    kind: Final = "embedded"

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        port: int = 0,
        log_level: str = "warning",
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        fleet: Iterable[str] = (),
        roots: Sequence[str] = (DEFAULT_ROOT,),
    ) -> None:
        from cloud_hub.broker.embedded import EmbeddedBroker  # noqa: PLC0415
        from cloud_hub.broker.rules import BrokerRules  # noqa: PLC0415

        self.directory = Path(directory).resolve()
        self.users = dict(users or {})
        self._written = False
        self.rules = BrokerRules(roots=tuple(roots), hub_user=HUB_USER, fleet=frozenset(fleet))
        """Who may say what (:mod:`cloud_hub.broker.rules`); ``fleet`` accounts act as any device."""
        self.broker = EmbeddedBroker(
            HOST,
            port,
            password_file=self.directory / "passwd",
            startup_timeout=start_timeout,
            stop_timeout=stop_timeout,
            log_path=self.directory / "amqtt.log",
            log_level=log_level,
            rules=self.rules,
        )

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    @property
    def is_running(self) -> bool:
        return self.broker.is_running

    @property
    def returncode(self) -> int | None:
        return self.broker.returncode

    @property
    def password_file(self) -> Path:
        return self.broker.password_file

    @property
    def log_path(self) -> Path:
        return self.directory / "amqtt.log"

    @property
    def version(self) -> str:
        from importlib.metadata import version  # noqa: PLC0415

        return f"amqtt {version('amqtt')}"

    def endpoint(self, username: str, password: str | None = None) -> BrokerEndpoint:
        """This broker's address with ``username`` and its secret (known ones by default)."""
        secret = password if password is not None else self.users.get(username)
        return BrokerEndpoint(self.host, self.port, username, secret)

    def add_user(self, username: str, secret: str) -> None:
        """Add an account; a running broker picks it up by itself."""
        from cloud_hub.broker.auth import add_user  # noqa: PLC0415

        self.users[username] = secret
        add_user(self.password_file, username, secret)

    def start(self) -> Self:
        from cloud_hub.broker.embedded import BrokerStartError  # noqa: PLC0415

        if not self._written:
            for username, secret in self.users.items():
                self.add_user(username, secret)
            self._written = True
        try:
            self.broker.start()
        except BrokerStartError as exc:
            raise StartError(f"the embedded broker did not start: {exc}") from None
        return self

    def stop(self) -> int | None:
        return self.broker.stop()

    def kill(self) -> int | None:
        self.broker.kill()
        return self.broker.returncode

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- the hub


_DEVICES_ADD_FLAGS: Final = frozenset(
    {"--data-dir", "--store", "--broker", "--broker-host", "--broker-port", "--root"}
)


class HubProcess(ManagedProcess):
    """``edgeloop-hub serve`` (as ``python -m cloud_hub serve``), ready once ``/healthz`` says 200.

    ``broker=None`` runs the hub's embedded broker on ``broker_port``; otherwise
    the hub logs in to ``broker`` (give Mosquitto the :data:`HUB_USER` account).
    Free ports are picked here for 0, once, so restarts (and agents provisioned
    before the first start) keep them. Tokens default to fresh random ones. They,
    and the password of an external broker, go to the hub in files of mode 0600
    under :attr:`secrets_dir` (``DATA_DIR.secrets``), named by ``--*-file`` flags.
    ``args`` are more ``serve`` flags (``--ingest-batch-max 200``, say).
    ``https_ca``: the API is served over HTTPS (``args`` hold ``--http-tls true``)
    and its clients here verify it with this CA certificate.
    """

    def __init__(
        self,
        data_dir: Path,
        models_dir: Path,
        *,
        broker: BrokerEndpoint | None = None,
        https_ca: Path | None = None,
        root: str = DEFAULT_ROOT,
        http_port: int = 0,
        broker_port: int = 0,
        read_token: str | None = None,
        admin_token: str | None = None,
        args: Sequence[str] = (),
        log_path: Path | None = None,
        log_level: str = "WARNING",
        new_session: bool = False,
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        import secrets  # noqa: PLC0415

        self.data_dir = Path(data_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.external_broker = broker
        self.https_ca = https_ca
        self.root = root
        self.http_port = http_port or free_port()
        self.broker_port: int | None = None if broker else (broker_port or free_port())
        self.read_token = read_token or secrets.token_urlsafe(24)
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.secrets_dir = secrets_dir(self.data_dir)
        write_private(self.secrets_dir / "read-token", self.read_token + "\n")
        write_private(self.secrets_dir / "admin-token", self.admin_token + "\n")
        # ``serve`` flags, secrets only as the files that hold them (``devices_add_flags``
        # are the ones ``devices add`` takes of them).
        self.flags = [
            "--data-dir",
            str(self.data_dir),
            "--models-dir",
            str(self.models_dir),
            "--http-host",
            HOST,
            "--http-port",
            str(self.http_port),
            "--root",
            root,
            "--log-level",
            log_level,
        ]
        self.flags += ["--read-token-file", str(self.secrets_dir / "read-token")]
        self.flags += ["--admin-token-file", str(self.secrets_dir / "admin-token")]
        if self.broker_port is not None:
            self.flags += ["--broker-host", HOST, "--broker-port", str(self.broker_port)]
        if broker is not None:
            self.flags += [
                "--broker",
                dataclasses.replace(broker, password=None).url,
            ]
            if broker.password is not None:
                password_file = self.secrets_dir / "broker-password"
                write_private(password_file, broker.password + "\n")
                self.flags += ["--broker-password-file", str(password_file)]
        self.flags += list(args)
        super().__init__(
            [sys.executable, "-m", "cloud_hub", "serve", *self.flags],
            log_path=log_path or self.data_dir.with_name(self.data_dir.name + ".log"),
            name="the hub",
            env=child_env(),
            new_session=new_session,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    @property
    def devices_add_flags(self) -> list[str]:
        """The flags of :attr:`flags` that ``edgeloop-hub devices add`` takes."""
        out: list[str] = []
        for i, flag in enumerate(self.flags[:-1]):
            if flag in _DEVICES_ADD_FLAGS:
                out += [flag, self.flags[i + 1]]
        return out

    @property
    def base_url(self) -> str:
        scheme = "http" if self.https_ca is None else "https"
        return f"{scheme}://{HOST}:{self.http_port}"

    @property
    def api(self) -> HubApi:
        """The API with the read token."""
        return HubApi(self.base_url, self.read_token, ca_file=self.https_ca)

    @property
    def admin_api(self) -> HubApi:
        return HubApi(self.base_url, self.admin_token, ca_file=self.https_ca)

    @property
    def db_path(self) -> Path:
        """The SQLite store (the default ``--store``)."""
        return self.data_dir / "hub.db"

    def broker_endpoint(self) -> BrokerEndpoint:
        """Where the hub's broker listens (no credentials)."""
        if self.external_broker is not None:
            return dataclasses.replace(self.external_broker, username=None, password=None)
        assert self.broker_port is not None
        return BrokerEndpoint(HOST, self.broker_port)

    def settings(self) -> HubSettings:
        """The hub's :class:`~cloud_hub.settings.HubSettings`, as ``serve`` resolves them."""
        import argparse  # noqa: PLC0415

        from cloud_hub.settings import OPTIONS, resolve_settings  # noqa: PLC0415

        parsed = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(self.flags)
        return resolve_settings(parsed, env={}, serving=True)

    def provision(self, device: str) -> Provisioned:
        """Provision ``device`` as ``edgeloop-hub devices add`` does; returns its
        :class:`~cloud_hub.provision.Provisioned` (``agent_env`` for the agent; for
        an external Mosquitto, the password and ACL lines to give it)."""
        from cloud_hub.provision import add_device  # noqa: PLC0415

        return add_device(self.settings(), device)

    def _is_ready(self) -> bool:
        try:
            return self.api.get("/healthz", timeout=2.0).status == 200
        except OSError:
            return False

    def _ready_interval(self) -> float:
        return 0.2


# --------------------------------------------------------------------------- agents

_CONNECTED_MARKER: Final = "connected to"
"""What the agent logs (at INFO) once it is connected to its broker."""


class AgentProcess(ManagedProcess):
    """``edgeloop-agent`` (as ``python -m edge_agent``) with its state directory and log.

    Its settings come from ``env`` (``EDGELOOP_AGENT_*``, e.g. a provisioned
    device's ``agent_env``), ``broker``/``device``/``root``, and ``args`` (more
    flags). The broker's password (from ``broker`` or the URL in ``env``) goes
    in a file of mode 0600 under :attr:`secrets_dir` (``STATE_DIR.secrets``),
    named by ``--broker-password-file``; the URL without it goes by environment. Logging at
    INFO or DEBUG, it is ready once it says it is connected; at WARNING and
    above it says nothing, so it is ready once spawned (ask the hub instead).
    The log defaults to ``STATE_DIR.log`` beside the state directory.
    """

    def __init__(
        self,
        model: Path,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        broker: BrokerEndpoint | None = None,
        device: str | None = None,
        root: str | None = None,
        args: Sequence[str] = (),
        log_path: Path | None = None,
        log_level: str = "WARNING",
        stdin_pipe: bool = False,
        new_session: bool = False,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        settings = dict(env or {})
        if broker is not None:
            settings["EDGELOOP_AGENT_BROKER"] = broker.url
        self.secrets_dir = secrets_dir(self.state_dir)
        password_flags: list[str] = []
        password = settings.pop("EDGELOOP_AGENT_BROKER_PASSWORD", None)
        if "EDGELOOP_AGENT_BROKER" in settings:
            endpoint = parse_broker_url(settings["EDGELOOP_AGENT_BROKER"])
            settings["EDGELOOP_AGENT_BROKER"] = dataclasses.replace(endpoint, password=None).url
            password = endpoint.password if endpoint.password is not None else password
        if password is not None:
            write_private(self.secrets_dir / "broker-password", password + "\n")
            password_flags = ["--broker-password-file", str(self.secrets_dir / "broker-password")]
        self.device = device or settings.get("EDGELOOP_AGENT_DEVICE") or self.state_dir.name
        argv = [
            sys.executable,
            "-m",
            "edge_agent",
            "--model",
            str(model),
            "--state-dir",
            str(self.state_dir),
        ]
        if device is not None:
            argv += ["--device", device]
        if root is not None:
            argv += ["--root", root]
        argv += [*password_flags, "--log-level", log_level, *args]
        super().__init__(
            argv,
            log_path=log_path or self.state_dir.with_name(self.state_dir.name + ".log"),
            name=f"agent {self.device}",
            env=child_env(settings),
            stdin_pipe=stdin_pipe,
            new_session=new_session,
            ready_marker=_CONNECTED_MARKER if log_level in ("DEBUG", "INFO") else None,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )


# --------------------------------------------------------------------------- the hub's API


class ApiError(HarnessError):
    """The hub's API answered with an error status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer; header names are lower-case."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def detail(self) -> str:
        """The error body's ``detail`` text."""
        detail = self.json().get("detail")
        if not isinstance(detail, str):
            raise ValueError(f"no detail text in the reply: {self.body[:200]!r}")
        return detail


@dataclasses.dataclass(frozen=True, slots=True)
class HubApi:
    """A small client for the hub's HTTP API (standard library only, no redirects);
    an ``https://`` base URL is verified with ``ca_file`` (default: the system's CAs).

    ``request``/``get``/``post`` return every :class:`Reply`, error statuses
    included; :meth:`get_json` returns the parsed body of a 2xx answer and raises
    :class:`ApiError` otherwise. An unreachable hub raises ``OSError``.
    """

    base_url: str
    token: str | None = None
    timeout: float = 20.0
    ca_file: Path | None = None

    def with_token(self, token: str | None) -> HubApi:
        return dataclasses.replace(self, token=token)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or HOST

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        wait = self.timeout if timeout is None else timeout
        conn: http.client.HTTPConnection
        if urlsplit(self.base_url).scheme == "https":
            context = ssl.create_default_context(
                cafile=None if self.ca_file is None else str(self.ca_file)
            )
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=wait, context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=wait)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def get_json(self, path: str, *, timeout: float | None = None) -> Any:
        reply = self.get(path, timeout=timeout)
        if not 200 <= reply.status < 300:
            raise ApiError(
                f"GET {self.base_url}{path}: HTTP {reply.status} {reply.body[:300]!r}",
                status=reply.status,
            )
        return reply.json()


# --------------------------------------------------------------------------- helpers


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds secrets or their hashes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)


def _user_name() -> str:
    import getpass  # noqa: PLC0415

    return getpass.getuser()
