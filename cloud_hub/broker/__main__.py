"""``python -m cloud_hub.broker``: the embedded amqtt broker, in the foreground.

One process, one asyncio loop, all of it amqtt's: the broker gets a core of its
own instead of competing with the hub (DESIGN.md section 7). It runs until SIGTERM
or SIGINT, then shuts down cleanly and exits 0. Start-up problems (port in use,
unreadable password file) are one line on stderr saying what to do, and an exit
code from :class:`~cloud_hub.broker.embedded.BrokerExit`; never a traceback.

``--log-format json`` writes every line on stderr as one JSON object through
:class:`shared.logformat.JsonFormatter` (the hub's format), the start-up error
line and uncaught exceptions included; text is the default. Only a usage error
found by the argument parser itself is plain text, before the format is known.

Example::

    python -m cloud_hub.broker --host 127.0.0.1 --port 1883 --password-file passwd
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from amqtt.errors import BrokerError, PluginError, PluginLoadError

from cloud_hub.broker.auth import PasswordFileError, read_password_file
from cloud_hub.broker.embedded import READY_PREFIX, BrokerExit, TlsListener, amqtt_config
from cloud_hub.broker.rules import HUB_CLIENT_ID, HUB_USER, BrokerRules
from cloud_hub.broker.topic_check import RulesBroker
from cloud_hub.memory import return_large_blocks
from shared.endpoint import BrokerEndpoint
from shared.errors import TopicError
from shared.logformat import LOG_FORMATS, JsonFormatter
from shared.topics import DEFAULT_ROOT

logger = logging.getLogger("cloud_hub.broker")

_PROG = "python -m cloud_hub.broker"


class _StartupError(Exception):
    def __init__(self, message: str, code: BrokerExit) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the broker until SIGTERM/SIGINT; return the process exit code."""
    args = _parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    # amqtt reads every packet whole: after a flood of large ones, give the blocks back.
    return_large_blocks()
    try:
        # Read once here for a one-line error; the plugin reads it again to serve.
        users = read_password_file(args.password_file)
    except PasswordFileError as exc:
        return _fail(str(exc), BrokerExit.PASSWORD_FILE, args.log_format)
    if not users:
        logger.warning(
            "password file %s lists no users: every client will be refused", args.password_file
        )
    try:
        rules = BrokerRules(
            roots=tuple(args.root or [DEFAULT_ROOT]),
            hub_user=args.hub_user,
            hub_client_id=args.hub_client_id,
            fleet=frozenset(args.fleet),
        )
    except (ValueError, TopicError) as exc:
        return _fail(f"bad topic rules: {exc}", BrokerExit.USAGE, args.log_format)
    try:
        return asyncio.run(
            _serve(
                args.host,
                args.port,
                args.password_file,
                args.stop_on_stdin_eof,
                hold_devices_for=args.hold_devices_for,
                rules=rules,
                tls=_tls(args),
            )
        )
    except _StartupError as exc:
        return _fail(str(exc), exc.code, args.log_format)


async def _serve(
    host: str,
    port: int,
    password_file: Path,
    stop_on_stdin_eof: bool,
    *,
    hold_devices_for: str | None = None,
    rules: BrokerRules,
    tls: TlsListener | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    try:
        broker = RulesBroker(
            amqtt_config(
                host,
                port,
                password_file.resolve(),
                hold_devices_for=hold_devices_for,
                rules=rules,
                tls=tls,
            ),
            rules,
        )
    except (PluginError, PluginLoadError) as exc:
        # The plugin re-reads the password file; it may have changed since main() did.
        cause = exc.__cause__ or exc
        raise _StartupError(
            f"cannot load the broker's plugins: {cause}", BrokerExit.PASSWORD_FILE
        ) from None
    try:
        with _without_amqtt_startup_traceback():
            await broker.start()
    except BrokerError as exc:
        raise _startup_error(exc, host, port) from None

    url = BrokerEndpoint(host, port).url
    print(READY_PREFIX + url, flush=True)
    logger.info("broker listening on %s (users from %s)", url, password_file)
    if tls is not None:
        logger.info(
            "and on %s with TLS (%s)", BrokerEndpoint(host, tls.port, tls=True).url, tls.certfile
        )
    if stop_on_stdin_eof:
        _stop_on_stdin_eof(loop, stop)

    await stop.wait()
    logger.info("stopping broker on %s", url)
    await broker.shutdown()
    return BrokerExit.OK


def _startup_error(exc: BaseException, host: str, port: int) -> _StartupError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    where = f"{host}:{port}"
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
        return _StartupError(
            f"cannot listen on {where}: the address is already in use; stop the other "
            "broker or choose another --port",
            BrokerExit.ADDRESS_IN_USE,
        )
    if isinstance(cause, OSError) and cause.errno == errno.EACCES:
        return _StartupError(
            f"cannot listen on {where}: permission denied; ports below 1024 need privileges, "
            "choose a --port of 1024 or more",
            BrokerExit.FAILED,
        )
    if isinstance(cause, OSError) and cause.errno == errno.EADDRNOTAVAIL:
        return _StartupError(
            f"cannot listen on {where}: no local interface has that address; check --host",
            BrokerExit.FAILED,
        )
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
    return _StartupError(
        f"cannot start the broker on {where}: {reason}; rerun with --log-level debug for details",
        BrokerExit.FAILED,
    )


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches end-of-file (the parent process went away).

    A daemon thread, not the event loop: the loop cannot watch every kind of stdin,
    and a daemon thread never holds up exit. It reads the raw descriptor: a daemon
    thread blocked inside ``sys.stdin.buffer`` holds that object's lock, and the
    interpreter aborts (SIGABRT) when it cannot take the lock at exit.
    """
    fd = sys.stdin.fileno()

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        logger.info("stdin closed: the parent process is gone, stopping")
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-eof-watch", daemon=True).start()


@contextlib.contextmanager
def _without_amqtt_startup_traceback() -> Iterator[None]:
    """Drop amqtt's own "Broker startup failed" log record; we report it in one line."""

    def keep(record: logging.LogRecord) -> bool:
        return record.msg != "Broker startup failed"

    amqtt_logger = logging.getLogger("amqtt.broker")
    amqtt_logger.addFilter(keep)
    try:
        yield
    finally:
        amqtt_logger.removeFilter(keep)


class _OneLineFormatter(logging.Formatter):
    """``inner``'s line (text or :class:`~shared.logformat.JsonFormatter`) with an exception
    as ``Type: message`` at the end of the message; full tracebacks only at debug."""

    def __init__(self, inner: logging.Formatter, *, tracebacks: bool) -> None:
        super().__init__()
        self._inner = inner
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self._tracebacks or not record.exc_info:
            return self._inner.format(record)
        exc = record.exc_info[1]
        saved = record.exc_info, record.exc_text, record.msg, record.args
        record.exc_info, record.exc_text = None, None
        if exc is not None:
            record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", None
        try:
            return self._inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.msg, record.args = saved


def _configure_logging(level_name: str, log_format: str = "text") -> None:
    level = getattr(logging, level_name.upper())
    inner = (
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(inner, tracebacks=level <= logging.DEBUG))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # amqtt's state machine library logs every transition at INFO.
    logging.getLogger("transitions").setLevel(max(level, logging.WARNING))
    if log_format == "json":
        # What would otherwise reach stderr as plain text: warnings, uncaught exceptions.
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    logger.critical("uncaught exception, exiting", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_value is not None:
        logger.critical(
            "uncaught exception in thread %s",
            hook.thread.name if hook.thread is not None else "?",
            exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback),
        )


def _fail(message: str, code: BrokerExit, log_format: str = "text") -> int:
    if log_format == "json":
        logger.error("%s: error: %s", _PROG, message)
    else:
        print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    return int(code)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value} is outside 1-65535 (EmbeddedBroker picks a free port for you)"
        )
    return value


def _tls(args: argparse.Namespace) -> TlsListener | None:
    if args.tls_port is None:
        return None
    if args.certfile is None or args.keyfile is None:
        raise SystemExit(f"{_PROG}: error: --tls-port needs --certfile and --keyfile")
    return TlsListener(args.tls_port, args.certfile, args.keyfile)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Run the embedded amqtt broker with password authentication "
        "(anonymous access off) and edgeloop's topic rules (each device reads and writes "
        "only its own topics) until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=_port, default=1883, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--tls-port", type=_port, default=None, help="also listen with TLS on this port"
    )
    parser.add_argument("--certfile", type=Path, default=None, help="TLS server certificate (PEM)")
    parser.add_argument("--keyfile", type=Path, default=None, help="its private key (PEM)")
    parser.add_argument(
        "--password-file",
        type=Path,
        required=True,
        help="lines of 'user:pbkdf2_sha256$...'; write them with cloud_hub.broker.auth.add_user",
    )
    parser.add_argument(
        "--root",
        action="append",
        help=f"topic root the rules allow, repeatable; a '+' level stands for any one level "
        f"(default: {DEFAULT_ROOT})",
    )
    parser.add_argument(
        "--hub-user",
        default=HUB_USER,
        help="the hub's account: reads every device's edge topics, writes desired/ack "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--hub-client-id",
        default=HUB_CLIENT_ID,
        help="the hub's MQTT client id, refused to every other account (default: %(default)s)",
    )
    parser.add_argument(
        "--fleet",
        action="append",
        default=[],
        metavar="USER",
        help="a simulator account that may act as any device (tests, benches); repeatable, "
        "never for production",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level; debug also prints tracebacks (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="stderr log lines as text, or one JSON object per line as the hub writes them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="shut down when stdin closes (used by EmbeddedBroker so no broker outlives its parent)",
    )
    parser.add_argument(
        "--hold-devices-for",
        metavar="USER",
        help="hold other clients' CONNECTs until USER (the hub) has subscribed, so no device "
        "publishes before the hub listens (cloud_hub.broker.gate)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
