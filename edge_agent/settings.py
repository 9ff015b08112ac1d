"""Agent settings: one table of typed options, read from flags, environment and TOML.

Precedence, highest first: command-line flag, environment variable
``EDGELOOP_AGENT_<NAME>``, the TOML file (``--config`` or
``EDGELOOP_AGENT_CONFIG``), the default. Every option is declared once in
:data:`OPTIONS`; the argument parser, the environment names and the TOML keys
all come from that table, so they cannot drift apart. Settings are built once,
in the entry point, validated as a whole, and passed down.

The broker password never comes from a command-line flag, which every local
user can read through ``ps``: give it in a file (``--broker-password-file``,
mode 0600, checked), the agent's own environment (``EDGELOOP_AGENT_BROKER``
with the password in the URL, or ``EDGELOOP_AGENT_BROKER_PASSWORD``), or a
``--config`` TOML file of mode 0600 (checked). ``repr`` of
:class:`AgentSettings` never shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge_agent.scheduling import parse_cpu
from shared.columns import parse_column_map
from shared.endpoint import BrokerEndpoint, parse_broker_url, with_password
from shared.errors import ConfigError
from shared.logformat import LOG_FORMAT_ENV, LOG_FORMATS
from shared.options import (
    Option,
    OptionTable,
    boolean,
    broker_options,
    choice,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    str_list,
    unit_float,
)
from shared.topics import DEFAULT_ROOT, Topics, validate_device_id

if TYPE_CHECKING:
    from shared.signing import TrustedKey

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "AgentSettings",
    "build_parser",
    "load_settings",
]

ENV_PREFIX: Final = "EDGELOOP_AGENT_"
SOURCES: Final = ("sim", "csv", "stdin", "plugin")
ACTIONS: Final = ("log", "command", "machine")


def _actions(text: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in names if a not in ACTIONS]
    if bad:
        raise ValueError(f"unknown action {bad[0]!r}; choose from {', '.join(ACTIONS)}")
    return names


def _device(text: str) -> str:
    return validate_device_id(text)


def _root(text: str) -> str:
    return Topics(text).root


def _metrics_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 1-65535 (0: pick a free one)")
    return value


def _default_device() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].lstrip("-_.")
    return name or "device"


OPTIONS: Final = OptionTable(
    ENV_PREFIX,
    [
        Option(
            "device",
            _device,
            None,
            "device id, used in topics and as MQTT client id (default: host name)",
            "ID",
        ),
        *broker_options(
            ENV_PREFIX,
            "mqtt://127.0.0.1:1883",
            "broker URL, mqtt://user@host:port, or mqtts://user@host:8883 for TLS (the password in --broker-password-file)",
            "password of the device's broker account",
        ),
        Option(
            "broker_ca_file",
            Path,
            None,
            "CA certificate (PEM) to verify an mqtts:// broker with, e.g. the hub's DATA_DIR/tls/ca.pem from edgeloop-hub certs init (default: the system's CAs)",
            "FILE",
        ),
        Option("root", _root, DEFAULT_ROOT, "MQTT topic root", "ROOT"),
        Option(
            "model",
            Path,
            None,
            "model package directory (manifest.json + model.onnx); required",
            "DIR",
        ),
        Option(
            "baseline",
            Path,
            None,
            "this device's baseline (JSON from GET /v1/devices/DEVICE/baseline or edgeloop-hub "
            "devices baseline): readings are mapped onto the model's reference with it; a file "
            "for another device or model is refused (default: none, the model's reference)",
            "FILE",
        ),
        Option(
            "state_dir",
            Path,
            Path("var/agent"),
            "directory for the agent's durable state (the epoch counter, the outbox)",
            "DIR",
        ),
        Option(
            "source",
            choice(SOURCES),
            "sim",
            "where readings come from: sim (built-in simulated machine), csv (replay a file), stdin (JSON lines), plugin (an installed sensor driver)",
            "KIND",
        ),
        Option(
            "csv_path",
            Path,
            None,
            "CSV file for --source csv: a header row, a timestamp column and one column per "
            "sensor the model reads (found by name; --csv-map renames)",
            "FILE",
        ),
        Option(
            "csv_ts_column",
            str,
            "ts",
            "name of the CSV timestamp column (ISO 8601, or unix seconds or milliseconds: "
            "--csv-ts-unit)",
            "NAME",
        ),
        Option(
            "csv_ts_unit",
            choice(("auto", "s", "ms")),
            "auto",
            "unit of a numeric CSV timestamp: s, ms, or auto (ms when the first timestamp is "
            "over 1e11, i.e. seconds past the year 5000)",
            "UNIT",
        ),
        Option(
            "csv_map",
            str,
            "",
            "where each sensor is in the CSV when the column has another name: "
            "SENSOR=COLUMN,... (e.g. vibration=vib_rms_g,flow=Flow [l/min])",
            "MAP",
        ),
        Option(
            "csv_delimiter",
            choice(("auto", ",", ";", "tab")),
            "auto",
            "the CSV field separator: ',', ';' or tab; auto takes the one that splits the header into the most fields",
            "SEP",
        ),
        Option(
            "csv_pace",
            choice(("recorded", "fast")),
            "recorded",
            "replay CSV at the recorded pace or as fast as possible",
            "PACE",
        ),
        Option(
            "plugin",
            str,
            None,
            "entry point name in group 'edgeloop.sources' for --source plugin",
            "NAME",
        ),
        Option(
            "rate_hz", positive_float, 10.0, "readings per second of the simulated machine", "HZ"
        ),
        Option(
            "sim_seed",
            non_negative_int,
            1,
            "seed of the simulated machine (same seed, same stream)",
            "N",
        ),
        Option(
            "sim_urgent_rate",
            unit_float,
            None,
            "chance per reading that the simulated machine hits an urgent condition (default: the simulator's)",
            "P",
        ),
        Option(
            "sim_fault_rate",
            unit_float,
            None,
            "chance per reading that a slowly developing fault starts in the simulated machine (default: the simulator's)",
            "P",
        ),
        Option(
            "sim_restart_s",
            non_negative_float,
            0.0,
            "restart the simulated machine this many seconds after a local action stopped it, as an operator would (0: never)",
            "S",
        ),
        Option(
            "sim_drift",
            str_list,
            (),
            "drift to inject into the simulated machine, comma-separated KIND:SENSOR:START:MAGNITUDE (e.g. mean_shift:temperature:500:1.0)",
            "SPECS",
        ),
        Option(
            "readings",
            non_negative_int,
            0,
            "stop after this many readings (0: run until the source ends or a signal)",
            "N",
        ),
        Option(
            "actions",
            _actions,
            ("log",),
            f"local actions on an urgent decision, comma-separated: {', '.join(ACTIONS)}",
            "LIST",
        ),
        Option(
            "action_command",
            str,
            None,
            "command line to run for the 'command' action (from this configuration only, never from a message)",
            "CMD",
        ),
        Option(
            "max_batch",
            positive_int,
            50,
            "readings per telemetry micro-batch (flush when full)",
            "N",
        ),
        Option(
            "max_delay_ms",
            positive_int,
            1000,
            "flush a non-empty telemetry batch after this many milliseconds",
            "MS",
        ),
        Option("heartbeat_s", positive_float, 10.0, "seconds between health heartbeats", "S"),
        Option(
            "outbox",
            choice(("disk", "memory")),
            "disk",
            "where unacked stream messages are kept: disk (STATE_DIR/outbox.db, survives a restart) or memory (lost at exit; for tests and benchmarks)",
            "KIND",
        ),
        Option(
            "outbox_max",
            positive_int,
            1_000_000,
            "messages the outbox keeps unacked at most; beyond it the oldest telemetry is dropped and declared to the hub",
            "N",
        ),
        Option(
            "outbox_max_bytes",
            positive_int,
            64 * 2**20,
            "payload bytes the outbox keeps unacked at most (64 MiB, sized for a Pi's SD card); beyond it the oldest telemetry is dropped and declared to the hub",
            "BYTES",
        ),
        Option(
            "outbox_max_age_s",
            positive_float,
            7 * 86400.0,
            "unacked messages older than this (7 days) are dropped and declared to the hub",
            "S",
        ),
        Option(
            "outbox_min_free_bytes",
            non_negative_int,
            4 * 2**20,
            "keep at least this much free on the state directory's disk (default 4 MiB): below it the outbox stops growing and drops its oldest telemetry instead, declared to the hub as disk_full; SQLite needs the room to apply acks. 0: no reserve",
            "BYTES",
        ),
        Option(
            "outbox_fsync_ms",
            non_negative_int,
            1000,
            "fsync the outbox at most this long after a write; 0 = at every write. Any value survives the agent being killed (the write is in the OS cache at once); a power cut loses at most this much of the newest messages. Lower is safer and costs more SD-card writes",
            "MS",
        ),
        Option(
            "resend_after_s",
            positive_float,
            15.0,
            "send unacked messages again when no ack has come for this long (doubling up to 300 s while none comes); they are also sent again at every reconnect",
            "S",
        ),
        Option(
            "inbox_max",
            positive_int,
            100,
            "incoming messages queued for handling; more are dropped and counted",
            "N",
        ),
        Option("inflight", positive_int, 20, "QoS 1 messages in flight to the broker at once", "N"),
        Option(
            "mqtt_queue",
            positive_int,
            200,
            "QoS 1 messages the MQTT client itself may hold (in flight + waiting)",
            "N",
        ),
        Option("keepalive_s", positive_int, 30, "MQTT keepalive in seconds", "S"),
        Option(
            "reconnect_min_s",
            positive_int,
            1,
            "first reconnect delay, seconds; doubles per failure, with jitter",
            "S",
        ),
        Option("reconnect_max_s", positive_int, 60, "longest reconnect delay, seconds", "S"),
        Option(
            "connect_report_s",
            positive_float,
            30.0,
            "while the broker cannot be reached, log why (address tried, error, what to check) at the first failed attempt, then at most once every S seconds",
            "S",
        ),
        Option(
            "shutdown_timeout_s",
            positive_float,
            5.0,
            "how long to wait for the hub to ack what was sent before exiting: on SIGTERM/SIGINT, at most S seconds; when a finite source ends (csv, stdin, --readings), until no ack came for S seconds",
            "S",
        ),
        Option(
            "cpu",
            parse_cpu,
            "auto",
            "the CPU the agent's threads run on: auto (one of those this process may use, picked by process id, so that agents on one host spread), a CPU number, or any (the OS places them). On one CPU the link thread cannot take the GIL in the middle of a reading; on two, that costs a reading 100 us and more while publishing back to back",
            "CPU",
        ),
        Option(
            "ota",
            boolean,
            True,
            "act on the hub's desired model: download, verify, smoke-test, switch, trial, "
            "commit or revert (false: only log it)",
            "BOOL",
        ),
        Option(
            "hub_url",
            str,
            None,
            "the hub's HTTP API, where model packages are downloaded from with this device's "
            "broker credentials (default: http://BROKER_HOST:8080; https:// is verified with "
            "--broker-ca-file when given)",
            "URL",
        ),
        Option(
            "trust",
            str_list,
            (),
            "a public key file (PEM, the hub's DATA_DIR/keys/signing.pub) that model packages "
            "may be signed by; repeat the flag (or comma-separate) to trust several, e.g. while "
            "the hub rotates its key; without any, every update is refused",
            "FILE",
            repeat=True,
        ),
        Option(
            "ota_trial_readings",
            positive_int,
            100,
            "an update's trial lasts at least this many readings (and --ota-trial-s) before "
            "it commits",
            "N",
        ),
        Option(
            "ota_trial_s",
            positive_float,
            60.0,
            "an update's trial lasts at least this many seconds (and --ota-trial-readings)",
            "S",
        ),
        Option(
            "ota_switch_wait_s",
            positive_float,
            30.0,
            "how long an update's switch waits for an urgent episode to end before it gives "
            "up (urgent_active; tried again later)",
            "S",
        ),
        Option(
            "ota_latency_factor",
            positive_float,
            3.0,
            "an update's trial reverts if its p99 and median reading latency are both over "
            "this many times the previous model's (plus 0.1 ms)",
            "X",
        ),
        Option(
            "ota_smoke_budget_ms",
            positive_float,
            20.0,
            "an update's smoke test fails (smoke_too_slow) if its median latency per test "
            "vector is over this",
            "MS",
        ),
        Option(
            "ota_retry_s",
            positive_float,
            300.0,
            "how long before an update that failed for a passing reason (a download "
            "failure, a deadline, an urgent episode, an interruption) is tried again",
            "S",
        ),
        Option(
            "ota_max_bytes",
            positive_int,
            256 * 2**20,
            "the most bytes one model package may take to download (the desired message's "
            "size lowers it)",
            "BYTES",
        ),
        Option(
            "log_level", choice(("DEBUG", "INFO", "WARNING", "ERROR")), "INFO", "log level", "LEVEL"
        ),
        Option(
            "log_format",
            choice(LOG_FORMATS),
            None,
            "log lines as text, or one JSON object per line with the device and model version "
            f"(default: ${LOG_FORMAT_ENV}, else text)",
            "FORMAT",
        ),
        Option(
            "metrics_port",
            _metrics_port,
            None,
            "serve the agent's figures in Prometheus text format on "
            "http://127.0.0.1:PORT/metrics (localhost only; 0: pick a free port, logged); "
            "off by default, which keeps the agent's memory small",
            "PORT",
        ),
    ],
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Validated settings of one agent process."""

    device: str
    broker: BrokerEndpoint
    broker_ca_file: Path | None
    root: str
    model: Path
    baseline: Path | None
    state_dir: Path
    source: str
    csv_path: Path | None
    csv_ts_column: str
    csv_ts_unit: str
    csv_map: dict[str, str]
    csv_delimiter: str
    csv_pace: str
    plugin: str | None
    rate_hz: float
    sim_seed: int
    sim_urgent_rate: float | None
    sim_fault_rate: float | None
    sim_restart_s: float
    sim_drift: tuple[str, ...]
    readings: int
    actions: tuple[str, ...]
    action_command: str | None
    max_batch: int
    max_delay_ms: int
    heartbeat_s: float
    outbox: str
    outbox_max: int
    outbox_max_bytes: int
    outbox_max_age_s: float
    outbox_min_free_bytes: int
    outbox_fsync_ms: int
    resend_after_s: float
    inbox_max: int
    inflight: int
    mqtt_queue: int
    keepalive_s: int
    reconnect_min_s: int
    reconnect_max_s: int
    connect_report_s: float
    shutdown_timeout_s: float
    cpu: str | int
    ota: bool
    hub_url: str
    trust: tuple[str, ...]
    ota_trial_readings: int
    ota_trial_s: float
    ota_switch_wait_s: float
    ota_latency_factor: float
    ota_smoke_budget_ms: float
    ota_retry_s: float
    ota_max_bytes: int
    log_level: str
    log_format: str | None
    """``text`` or ``json``; None: ``$EDGELOOP_LOG_FORMAT``, else text."""
    metrics_port: int | None
    """The localhost port of the agent's ``/metrics`` (None: off)."""
    trusted: tuple[TrustedKey, ...] = ()
    """The keys of ``trust``, read and checked."""
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    """Where each setting came from (flag, env, toml, default), for the start-up log."""

    def __repr__(self) -> str:
        return OPTIONS.redacted_repr(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop-agent",
        description=(
            "Run an edgeloop edge agent: read a sensor, score each reading with the local int8 "
            "ONNX model, act at once on urgent readings, and publish telemetry, events and "
            "health over MQTT. Every option can also be set as an environment variable "
            f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}MAX_BATCH=100) or as a key in the TOML file."
        ),
    )
    return OPTIONS.add_to(parser)


def _scrub_userinfo(url: str, message: str) -> str:
    """Remove from ``message`` anything of ``url`` that may be a password.

    parse_broker_url redacts the URLs it can split; one too broken to split
    (``user:secret@host``, no ``mqtt://``) may be echoed verbatim.
    """
    userinfo, at, _ = url.strip().rpartition("@")
    if not at:
        return message
    secret = userinfo.rpartition("/")[2].partition(":")[2]
    for part in (userinfo, secret):
        if part:
            message = message.replace(part, "***")
    return message


def _check_ca_file(path: Path, fail: Callable[[str, str], ConfigError]) -> None:
    """Refuse a CA file that is missing or holds no certificate, before any connect."""
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise fail("broker_ca_file", f"= {path} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise fail(
            "broker_ca_file",
            f"= {path} holds no usable PEM certificate ({exc}); copy the hub's ca.pem",
        ) from None


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> AgentSettings:
    """Parse and validate settings; raise :class:`ConfigError` saying what to fix."""
    env = os.environ if env is None else env
    values, origin = OPTIONS.resolve(build_parser().parse_args(argv), env)
    return _validate(values, origin)


def _validate(v: dict[str, Any], origin: dict[str, str]) -> AgentSettings:
    fail = OPTIONS.fail

    if v["device"] is None:
        v["device"] = _default_device()
    if v["model"] is None:
        raise fail(
            "model",
            "is required: the model package directory to run, e.g. var/models/machine-edge/1.1.0",
        )
    try:
        broker = parse_broker_url(v["broker"])
    except ValueError as exc:
        raise fail("broker", f"is not usable: {_scrub_userinfo(v['broker'], str(exc))}") from None
    try:
        broker = with_password(broker, v["broker_password"])
    except ValueError as exc:
        raise fail("broker_password", str(exc)) from None
    if v["source"] == "csv" and v["csv_path"] is None:
        raise fail("csv_path", "is required with --source csv")
    try:
        v["csv_map"] = parse_column_map(v["csv_map"])
    except ValueError as exc:
        raise fail("csv_map", str(exc)) from None
    if v["source"] == "plugin" and not v["plugin"]:
        raise fail("plugin", "is required with --source plugin: the entry point name of the driver")
    if "command" in v["actions"]:
        try:
            argv = shlex.split(v["action_command"] or "")
        except ValueError as exc:
            raise fail("action_command", f"is not a valid command line: {exc}") from None
        if not argv:
            raise fail("action_command", "is required when the actions include 'command'")
    if "machine" in v["actions"] and v["source"] != "sim":
        raise fail(
            "actions",
            "include 'machine', which needs --source sim (it stops the simulated machine)",
        )
    if v["reconnect_max_s"] < v["reconnect_min_s"]:
        raise fail(
            "reconnect_max_s",
            f"= {v['reconnect_max_s']} is below reconnect_min_s = {v['reconnect_min_s']}",
        )
    if v["mqtt_queue"] < v["inflight"]:
        raise fail("mqtt_queue", f"= {v['mqtt_queue']} is below inflight = {v['inflight']}")
    if v["broker_ca_file"] is not None:
        if not broker.tls:
            raise fail(
                "broker_ca_file",
                "is set, but the broker URL is mqtt:// (no TLS); use mqtts://host:8883 to "
                "connect with TLS",
            )
        _check_ca_file(v["broker_ca_file"], fail)
    v["broker"] = broker
    v["hub_url"] = _hub_url(v["hub_url"], broker, fail)
    v["trusted"] = _trusted(v["trust"], fail)
    names = {f.name for f in fields(AgentSettings)} - {"sources"}
    return AgentSettings(**{k: v[k] for k in names}, sources=origin)


def _hub_url(
    text: str | None, broker: BrokerEndpoint, fail: Callable[[str, str], ConfigError]
) -> str:
    """``--hub-url``, checked; by default the broker's host on port 8080."""
    if text is None:
        return f"http://{broker.host}:8080"
    url = urllib.parse.urlsplit(text.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise fail(
            "hub_url",
            f"= {text!r} is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080",
        )
    if url.username or url.password:
        raise fail(
            "hub_url",
            "holds credentials; leave them out: downloads use the device's broker account",
        )
    return text.strip().rstrip("/")


def _trusted(
    paths: tuple[str, ...], fail: Callable[[str, str], ConfigError]
) -> tuple[TrustedKey, ...]:
    """The public keys in the ``--trust`` files, or an error naming the file at fault.

    Read without the ``cryptography`` package, which the agent never loads: the
    signature check runs in a child process (:mod:`edge_agent.ota.sigcheck`)."""
    if not paths:
        return ()
    from shared.signing import load_public_key  # noqa: PLC0415 - only with --trust

    keys: list[TrustedKey] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            raise fail(
                "trust",
                f"names the directory {name}; give the public key file in it, such as "
                f"{path / 'signing.pub'} (the hub's DATA_DIR/keys/signing.pub)",
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise fail("trust", f"names {name}, which cannot be read ({exc.strerror})") from None
        if b"PRIVATE KEY-----" in data:
            raise fail(
                "trust",
                f"names {name}, a private signing key: give the agent the public half "
                "(the hub's DATA_DIR/keys/signing.pub), and never copy the private key to a "
                "device",
            )
        try:
            keys.append(load_public_key(data, name))
        except ValueError as exc:
            raise fail("trust", f"names a file that holds no usable key: {exc}") from None
    return tuple(keys)
