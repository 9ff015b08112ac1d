"""``edgeloop-sim replay``: a folder of recordings replayed into a running hub, one agent per file.

Each CSV file becomes one real :class:`~edge_agent.agent.Agent` (``--source
csv``), all in this process on threads of their own and sharing one edge model,
as :mod:`simulators.fleet` runs them. The device is named after the file
(:func:`device_for`): its name without the extension, made to fit the device-id
grammar of :mod:`shared.topics`, or the value of ``--device-column`` in the
file's rows (one device per file).

Each device gets broker credentials from the hub, as ``edgeloop-hub devices
add`` makes them (the same ``--data-dir``/``--broker``/... options, for the
hub's embedded broker); they are kept under ``--state-dir``
(``DEVICE.secrets/broker.json``, mode 0600), beside the agent's state directory
``DEVICE/``, so that a second replay uses them again. A device that already has
credentials this replay did not make is refused unless ``--rotate``.

A replayed recording's messages have the recording's identity
(:mod:`edge_agent.replay_identity`): a second replay of the same file stores
nothing twice. After the agents end (each drains its outbox to the hub), the
readings of each file's epoch the hub holds are counted through its API
(``GET /v1/devices/{device}/telemetry`` over the file's time range, read token).

Before any agent starts, the hub's API must answer (``GET /v1/devices`` with
the read token) and its broker must take a TCP connection (within 3 s): else
the replay is refused at once, saying what to check.

Output, on stdout: one line per file (rows read, rows sent, rows stored, urgent
events; ``NOT STORED`` and why when the hub's broker did not ack what the
agent sent; or why the file was refused), a summary line, and last one JSON
object::

    {"files": [{"file": ..., "device": ..., "epoch": ..., "rows_read": ...,
                "rows_sent": ..., "rows_stored": ..., "rows_skipped": ...,
                "urgent_events": ..., "messages_held": ..., "unacked": ...,
                "not_stored": null, "error": null}, ...],
     "replayed": 2, "not_stored": 0, "refused": 0, "rows_read": 1200,
     "rows_sent": 1200, "rows_stored": 1200, "urgent_events": 36, "elapsed_s": 3.1}

"rows sent" counts the readings in messages this run sent: a second replay of
a file the hub holds reads every row and sends none, and an agent that never
connected to the broker sent none.

Concurrency: the main thread provisions, starts one thread per agent, waits for
them (or ``--timeout-s``, or Ctrl-C, which stop every agent: a stopped replay
sends what it sealed, and the next replay of the file the rest; an agent's
drain of its outbox also ends by ``--timeout-s``), then asks the hub.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from shared.endpoint import parse_broker_url, with_password
from shared.errors import ConfigError, EdgeloopError
from shared.secret_file import read_secret_file, write_private
from shared.topics import validate_device_id

if TYPE_CHECKING:
    from cloud_hub.settings import HubSettings
    from edge_agent.agent import Agent
    from edge_agent.sources.base import Reading, Source, StopSignal
    from simulators.harness import HubApi

__all__ = [
    "BrokerUnreachableError",
    "FileResult",
    "ReplayConfig",
    "check_broker",
    "check_hub",
    "device_for",
    "find_recordings",
    "run_replay",
]

log = logging.getLogger(__name__)

_PAGE: Final = 1000
_PAGES_MAX: Final = 100_000
_NOT_DEVICE: Final = re.compile(r"[^A-Za-z0-9_.-]+")


class BrokerUnreachableError(EdgeloopError):
    """The hub's broker takes no connection: no file can be replayed."""


class ReplayFileError(EdgeloopError):
    """One file cannot be replayed; the message names it and says what to do."""


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """One ``edgeloop-sim replay`` run, from its command line."""

    paths: tuple[Path, ...]
    hub: HubApi
    hub_settings: HubSettings
    model: Path
    state_dir: Path = Path("var/replay")
    pace: str = "fast"
    device_column: str | None = None
    rotate: bool = False
    agent_args: tuple[str, ...] = ()
    timeout_s: float = 3600.0


@dataclass(slots=True)
class FileResult:
    """What became of one file."""

    file: str
    device: str | None = None
    epoch: int | None = None
    rows_read: int = 0
    """Rows the agent read and scored."""
    rows_sent: int = 0
    """Readings in the messages this run sent (or left to send); 0 when the hub held them all."""
    rows_stored: int | None = None
    rows_skipped: int = 0
    """The agent's CSV counts (rows skipped for their timestamp, cells not a number, ...)."""
    urgent_events: int = 0
    messages_held: int = 0
    """Messages not made again: the hub had acked them in an earlier replay of the file,
    or the outbox held them from one (those are sent as they are)."""
    unacked: int = 0
    """Messages the hub had not acked when the agent stopped (kept in its outbox)."""
    not_stored: str | None = None
    """Why messages the agent sent are not stored (its broker never acked them, say)."""
    error: str | None = None


@dataclass(slots=True)
class _Run:
    result: FileResult
    agent: Agent | None = None
    source: _TimeRange | None = None
    thread: threading.Thread | None = None


@dataclass(slots=True)
class _TimeRange:
    """A source that passes readings through and notes the range of their timestamps."""

    inner: Source
    first: float = float("inf")
    last: float = float("-inf")
    invalid: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.invalid = self.inner.invalid  # the agent reports the source's own counts

    def readings(self, stop: StopSignal) -> Iterator[Reading]:
        for reading in self.inner.readings(stop):
            self.first = min(self.first, reading.ts)
            self.last = max(self.last, reading.ts)
            yield reading


def find_recordings(paths: Sequence[Path]) -> tuple[list[Path], list[FileResult]]:
    """The CSV files ``paths`` name (a directory: its ``*.csv``, sorted), and an error
    result for each path that is missing or a directory without any."""
    found: list[Path] = []
    errors: list[FileResult] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            if not files:
                errors.append(
                    FileResult(
                        str(path),
                        error=f"directory {path} holds no *.csv file; give a folder of "
                        "recordings or the files themselves",
                    )
                )
            found += files
        elif path.is_file():
            found.append(path)
        else:
            errors.append(FileResult(str(path), error=f"{path} does not exist"))
    return found, errors


def device_for(path: Path, device_column: str | None = None) -> str:
    """The device a recording is replayed as: its file name without the extension,
    each run of other characters than letters, digits, ``_``, ``.``, ``-`` made one
    ``-``, at most 64; or the one value of ``device_column`` in its rows.

    >>> device_for(Path("/data/Press 7 (line B).csv"))
    'Press-7-line-B'
    """
    if device_column is None:
        name = _NOT_DEVICE.sub("-", path.stem).strip("-._")[:64]
        if not name:
            raise ReplayFileError(
                f"{path}: no device name can be made of the file name {path.name!r} (it needs "
                "letters or digits); rename the file, or name the device column with "
                "--device-column"
            )
        return validate_device_id(name)
    return _device_from_column(path, device_column)


def _device_from_column(path: Path, column: str) -> str:
    from shared.columns import detect_delimiter, not_csv  # noqa: PLC0415

    values: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
        if not_csv(first):
            raise ReplayFileError(f"{path}: {not_csv(first)}")
        header = [h.strip() for h in next(csv.reader([first], delimiter=detect_delimiter(first)))]
        if column not in header:
            raise ReplayFileError(
                f"{path}: no column {column!r} (--device-column) in its header: "
                f"{', '.join(header)[:300]}"
            )
        i = header.index(column)
        for row in csv.reader(fh, delimiter=detect_delimiter(first)):
            if len(row) > i and row[i].strip():
                values.add(row[i].strip())
                if len(values) > 1:
                    break
    if len(values) != 1:
        what = "is empty in every row" if not values else f"holds {', '.join(sorted(values))}"
        raise ReplayFileError(
            f"{path}: column {column!r} {what}; one file is one device's recording: split "
            "it into one file per device"
        )
    name = values.pop()
    try:
        return validate_device_id(name)
    except EdgeloopError as exc:
        raise ReplayFileError(f"{path}: column {column!r}: {exc}") from None


def _credentials(config: ReplayConfig, device: str) -> dict[str, str]:
    """The device's agent environment: made by the hub's provisioning, or its secret
    kept from an earlier replay of this state directory (the broker's address is the
    hub's of now: it may have moved since)."""
    import dataclasses  # noqa: PLC0415

    from cloud_hub.provision import DeviceExistsError, add_device, device_broker  # noqa: PLC0415
    from simulators.harness import secrets_dir  # noqa: PLC0415

    kept = secrets_dir(config.state_dir / device) / "broker.json"
    settings = config.hub_settings
    try:
        done = add_device(settings, device, rotate=config.rotate)
    except DeviceExistsError:
        if kept.exists():
            env: dict[str, str] = json.loads(
                read_secret_file(kept, what=f"device {device!r}'s broker credentials")
            )
            old = parse_broker_url(env["EDGELOOP_AGENT_BROKER"])
            now = dataclasses.replace(device_broker(settings), username=device)
            env["EDGELOOP_AGENT_BROKER"] = with_password(now, old.password).url
            return env
        raise ReplayFileError(
            f"device {device!r} already has broker credentials this replay did not make "
            f"(none under {kept.parent}); --rotate gives it new ones (an agent using the old "
            "ones is refused at its next connect), or name the file after another device"
        ) from None
    env = dict(done.agent_env)
    if done.ca_file is not None:  # the agents run here, where the hub's CA file is
        env["EDGELOOP_AGENT_BROKER_CA_FILE"] = str(done.ca_file)
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_private(kept, json.dumps(env, separators=(",", ":")) + "\n")
    return env


def _build(config: ReplayConfig, run: _Run, path: Path, device: str, model: Any) -> None:
    """Provision the device and build its agent; a problem is the file's error."""
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.cli import build_actuators, build_source  # noqa: PLC0415
    from edge_agent.settings import load_settings  # noqa: PLC0415

    env = _credentials(config, device)
    argv = [
        "--shutdown-timeout-s",
        "60",
        *config.agent_args,
        "--model",
        str(config.model),
        "--device",
        device,
        "--root",
        config.hub_settings.root,
        "--state-dir",
        str(config.state_dir / device),
        "--source",
        "csv",
        "--csv-path",
        str(path),
        "--csv-pace",
        config.pace,
    ]
    try:
        settings = load_settings(argv, env=env)
    except SystemExit:  # argparse has said what is wrong, on stderr
        raise ReplayFileError(f"{path}: --agent-args are not edgeloop-agent flags") from None
    source, machine = build_source(settings, model.manifest.input.sensors)
    run.source = _TimeRange(source)
    run.agent = Agent(settings, model, run.source, build_actuators(settings, machine))
    run.result.epoch = run.agent.epoch


def _run_agent(run: _Run, stop: threading.Event) -> None:
    assert run.agent is not None
    try:
        run.agent.run(stop)
    except Exception as exc:  # one agent failing must not take the others down
        run.result.error = f"{run.result.file}: the agent stopped on {type(exc).__name__}: {exc}"
        log.exception("device %r: replay failed", run.result.device)


def _stored(api: HubApi, device: str, epoch: int, first: float, last: float) -> int:
    """Readings of ``epoch`` the hub holds for ``device`` with ``first <= ts <= last``."""
    n, cursor = 0, ""
    for _ in range(_PAGES_MAX):
        page = api.get_json(
            f"/v1/devices/{device}/telemetry?since={first!r}&until={last + 1e-3!r}"
            f"&limit={_PAGE}{cursor}"
        )
        n += sum(1 for r in page["readings"] if r["epoch"] == epoch)
        if not page.get("next_cursor"):
            break
        cursor = f"&cursor={page['next_cursor']}"
    return n


def run_replay(config: ReplayConfig, stop: threading.Event, out: TextIO) -> dict[str, Any]:
    """Replay every file, print a line each and a summary; returns the JSON-able report."""
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415

    started = time.monotonic()
    check_hub(config.hub)
    check_broker(config.hub_settings)
    files, results = find_recordings(config.paths)
    model = load_edge_model(config.model, __version__)
    runs: list[_Run] = []
    devices: dict[str, str] = {}
    for path in files:
        run = _Run(FileResult(str(path)))
        try:
            device = run.result.device = device_for(path, config.device_column)
            if device in devices:
                raise ReplayFileError(
                    f"{path}: device {device!r} is {devices[device]}'s already; one device, "
                    "one file per replay (rename one of them)"
                )
            devices[device] = str(path)
            _build(config, run, path, device, model)
        except (EdgeloopError, ValueError, OSError) as exc:
            run.result.error = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            run.agent = None
        runs.append(run)
    deadline = started + config.timeout_s
    for run in runs:
        if run.agent is not None:
            run.agent.drain_by = deadline  # draining too ends by --timeout-s
            run.thread = threading.Thread(
                target=_run_agent, args=(run, stop), name=f"replay-{run.result.device}"
            )
            run.thread.start()
    for run in runs:
        if run.thread is not None:
            run.thread.join(max(0.0, deadline - time.monotonic()))
            if run.thread.is_alive():
                stop.set()  # the time is up: every agent stops, and reports what it did
                run.thread.join(120.0)
    for run in runs:
        _finish(config, run)
    results = [r.result for r in runs] + results
    return _report(results, time.monotonic() - started, out)


def _finish(config: ReplayConfig, run: _Run) -> None:
    agent, source, result = run.agent, run.source, run.result
    if agent is None or source is None:
        return
    result.rows_read = agent.readings
    # What this run sent: its new messages, and those an earlier run left in the outbox.
    connected = agent.link is not None and bool(agent.link.connects)
    if connected:
        result.rows_sent = agent.outbox.readings_written + agent.outbox.recovered_readings
    result.urgent_events = agent.events
    result.rows_skipped = sum(source.invalid.values())
    result.unacked = agent.outbox.depth
    result.messages_held = agent.outbox.replay_known
    if result.error is None and agent.readings and result.device and result.epoch is not None:
        try:
            result.rows_stored = _stored(
                config.hub, result.device, result.epoch, source.first, source.last
            )
        except (OSError, EdgeloopError, ValueError, KeyError) as exc:
            result.error = f"{result.file}: replayed, but the hub's API did not answer: {exc}"
    elif result.error is None:
        result.rows_stored = 0
    if result.error is None and result.unacked:
        result.not_stored = (
            f"{result.unacked} messages were not acked by the hub's broker at "
            f"{agent.settings.broker.redacted_url}"
        )
        if not connected:
            result.not_stored += (
                ": the agent never connected to it. Check --broker-host/--broker-port (the "
                "hub's embedded broker) and the agent's errors above; the messages stay in "
                f"{config.state_dir / result.device if result.device else config.state_dir} "
                "and are sent at the next replay"
            )
        else:
            result.not_stored += "; replay the file again to send them"


def check_broker(settings: HubSettings, timeout_s: float = 3.0) -> None:
    """Refuse the replay at once when the hub's broker, where the devices connect,
    takes no TCP connection within ``timeout_s`` (else every agent would wait
    for it until ``--timeout-s``)."""
    from cloud_hub.provision import device_broker  # noqa: PLC0415

    broker = device_broker(settings)
    try:
        with socket.create_connection((broker.host, broker.port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise BrokerUnreachableError(
            f"the hub's broker at {broker.host}:{broker.port} does not answer "
            f"({exc.strerror or exc}); nothing was replayed. Is the hub running, and are "
            "--broker-host and --broker-port (--mqtt-tls-port with TLS) the ones it listens on?"
        ) from None


def check_hub(api: HubApi) -> None:
    """Refuse the replay before any agent starts if the hub's API does not answer
    with the read token: the rows could be sent, but not counted."""
    from simulators.harness import ApiError  # noqa: PLC0415

    try:
        api.get_json("/v1/devices")
    except OSError as exc:
        raise ConfigError(
            f"the hub's API at {api.base_url} does not answer ({exc}); nothing was replayed. "
            "Check --hub: the address and --http-port of the running hub",
            setting="hub",
        ) from None
    except ApiError as exc:
        what = (
            "refused the read token: give the hub's own (--read-token-file)"
            if exc.status in (401, 403)
            else f"answered HTTP {exc.status}: is --hub the hub's API?"
        )
        raise ConfigError(
            f"the hub's API at {api.base_url} {what}; nothing was replayed", setting="hub"
        ) from None
    except ValueError as exc:  # not JSON: another server on that port
        raise ConfigError(
            f"{api.base_url} does not answer as an edgeloop hub ({exc}); nothing was replayed. "
            "Check --hub",
            setting="hub",
        ) from None


def _report(results: list[FileResult], elapsed: float, out: TextIO) -> dict[str, Any]:
    for r in results:
        if r.error is not None:
            print(f"{r.file}: REFUSED: {r.error}", file=out)
            continue
        if r.rows_sent == r.rows_read:
            sent = f"{r.rows_sent} rows sent"
        elif r.rows_sent == 0 and r.messages_held:
            sent = f"{r.rows_read} rows read, 0 sent (all held by the hub already)"
        else:
            sent = f"{r.rows_read} rows read, {r.rows_sent} sent"
        extra = f", {r.rows_skipped} rows or cells unreadable" if r.rows_skipped else ""
        if r.messages_held and r.rows_sent:
            extra += f" ({r.messages_held} messages held already, not made again)"
        if r.not_stored is not None:
            print(
                f"{r.file} -> {r.device}: NOT STORED: {r.rows_read} rows read, "
                f"{r.rows_stored} stored; "
                f"{r.not_stored}",
                file=out,
            )
            continue
        if r.unacked:
            extra += f", {r.unacked} messages not yet acked (sent at the next replay)"
        print(
            f"{r.file} -> {r.device}: {sent}, {r.rows_stored} stored, "
            f"{r.urgent_events} urgent events{extra}",
            file=out,
        )
    ok = [r for r in results if r.error is None]
    totals = {
        "replayed": sum(r.not_stored is None for r in ok),
        "not_stored": sum(r.not_stored is not None for r in ok),
        "refused": len(results) - len(ok),
        "rows_read": sum(r.rows_read for r in ok),
        "rows_sent": sum(r.rows_sent for r in ok),
        "rows_stored": sum(r.rows_stored or 0 for r in ok),
        "urgent_events": sum(r.urgent_events for r in ok),
        "elapsed_s": round(elapsed, 3),
    }
    not_stored = f", {totals['not_stored']} not stored" if totals["not_stored"] else ""
    print(
        f"replay: {totals['replayed']} files replayed{not_stored}, {totals['refused']} refused; "
        f"{totals['rows_read']} rows read, {totals['rows_sent']} sent, "
        f"{totals['rows_stored']} stored, {totals['urgent_events']} urgent events in "
        f"{elapsed:.1f} s",
        file=out,
        flush=True,
    )
    return {"files": [asdict(r) for r in results], **totals}


def read_token(path: Path | None, env: dict[str, str]) -> str:
    """The hub's read token: from ``path`` (mode 0600), else ``EDGELOOP_HUB_READ_TOKEN``."""
    if path is not None:
        return read_secret_file(path, what="the hub's read token", setting="read_token_file")
    token = env.get("EDGELOOP_HUB_READ_TOKEN")
    if not token:
        raise ConfigError(
            "the hub's read token is needed to count what it stored: give --read-token-file "
            "FILE (the file the hub's own --read-token-file names) or EDGELOOP_HUB_READ_TOKEN",
            setting="read_token_file",
        )
    return token
