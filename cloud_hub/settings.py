"""Hub settings: flags, environment ``EDGELOOP_HUB_*`` and TOML, from one table.

Built once in the entry point and passed down. The hub refuses to serve
without API tokens unless ``--insecure-dev`` is given, and refuses tokens that
are placeholders or too short to be secrets.

Secrets (the API tokens, the password of the hub's account on an external
broker) never come from command-line flags, which every local user can read
through ``ps``: they come from files (``--read-token-file``,
``--admin-token-file``, ``--broker-password-file``; mode 0600, checked), the
hub's own environment, or a ``--config`` TOML file of mode 0600 (checked).
``repr`` of :class:`HubSettings` shows them as ``***``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from shared.endpoint import BrokerEndpoint, parse_broker_url, with_password
from shared.errors import ConfigError
from shared.messages import DEFAULT_LIMITS
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
)
from shared.secret_file import check_private
from shared.topics import DEFAULT_ROOT, Topics

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "PIPELINE_OPTIONS",
    "PROVISION_OPTIONS",
    "HubSettings",
    "cohort_percents",
    "resolve_settings",
]

ENV_PREFIX: Final = "EDGELOOP_HUB_"
EMBEDDED: Final = "embedded"
_PLACEHOLDERS: Final = frozenset(
    {"changeme", "change-me", "secret", "token", "admin", "read", "password"}
)
_MIN_TOKEN_LENGTH: Final = 16
# Hex, not token_urlsafe: a token that starts with '-' is awkward in shells and files.
TOKEN_RECIPE: Final = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535 (0: pick a free one)")
    return value


def _tls_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 1-65535, or 0 for no TLS listener")
    return value


def _arl0(text: str) -> float:
    value = float(text)
    if not value >= 100:
        raise ValueError("must be at least 100 readings (1e6: one false alarm per million)")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be a share in (0, 1], e.g. 0.2 for a fifth of the devices")
    return value


def _metrics_allow(text: str) -> tuple[str, ...]:
    """``"127.0.0.1,10.0.0.0/24"`` -> the addresses and networks, each checked."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(
                f"{part!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/24); "
                "give the scraper's address as the hub sees it"
            ) from None
    return tuple(out)


def _root(text: str) -> str:
    return Topics(text).root


def cohort_percents(text: str) -> tuple[float, ...]:
    """``"1,10,50,100"`` -> ``(1.0, 10.0, 50.0, 100.0)``; ValueError unless they rise to 100."""
    values = tuple(float(p) for p in text.split(",") if p.strip())
    if not values or list(values) != sorted(set(values)) or values[-1] != 100 or values[0] <= 0:
        raise ValueError("give cumulative percentages rising to 100, e.g. 1,10,50,100")
    return values


def _cohorts(text: str) -> str:
    return ",".join(f"{p:g}" for p in cohort_percents(text))


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


OPTIONS: Final = OptionTable(
    ENV_PREFIX,
    [
        Option(
            "data_dir",
            Path,
            Path("var/hub"),
            "directory for the hub's database, broker accounts and secrets",
            "DIR",
        ),
        Option(
            "models_dir",
            Path,
            Path("var/models"),
            "model directory; the default models are built there at first start",
            "DIR",
        ),
        Option(
            "signing_key",
            Path,
            None,
            "Ed25519 private key (PEM, mode 0600) that signs the model packages the hub builds "
            "(default: DATA_DIR/keys/signing.key if it exists, from edgeloop-hub keys init; "
            "without a key, packages stay unsigned)",
            "FILE",
        ),
        Option("store", str, None, "store URL (default: sqlite:///DATA_DIR/hub.db)", "URL"),
        *broker_options(
            ENV_PREFIX,
            EMBEDDED,
            "'embedded' to run amqtt in its own process, or an external broker URL "
            "mqtt://user@host:port (its password in --broker-password-file)",
            "password of the hub's account on the external broker",
        ),
        Option("broker_host", str, "127.0.0.1", "interface the embedded broker listens on", "HOST"),
        Option(
            "broker_port", _port, 1883, "port of the embedded broker (0: pick a free one)", "PORT"
        ),
        Option(
            "broker_ca_file",
            Path,
            None,
            "CA certificate (PEM) to verify an external mqtts:// broker with (default: the system's CAs)",
            "FILE",
        ),
        Option(
            "mqtt_tls_port",
            _tls_port,
            0,
            "port of the embedded broker's MQTT-over-TLS listener, e.g. 8883, beside the plain one (0: none); it serves --tls-cert",
            "PORT",
        ),
        Option(
            "tls_cert",
            Path,
            None,
            "server certificate (PEM) for --mqtt-tls-port and --http-tls (default: DATA_DIR/tls/server.pem, from edgeloop-hub certs init)",
            "FILE",
        ),
        Option(
            "tls_key",
            Path,
            None,
            "its private key, mode 0600 (default: DATA_DIR/tls/server.key)",
            "FILE",
        ),
        Option("root", _root, DEFAULT_ROOT, "MQTT topic root", "ROOT"),
        Option(
            "http_tls",
            boolean,
            False,
            "serve the HTTP API over HTTPS with --tls-cert and --tls-key",
            "BOOL",
        ),
        Option("http_host", str, "127.0.0.1", "interface the HTTP API listens on", "HOST"),
        Option("http_port", _port, 8080, "port of the HTTP API (0: pick a free one)", "PORT"),
        Option(
            "read_token",
            str,
            None,
            "bearer token for read routes (at least 16 characters)",
            "TOKEN",
            secret=True,
        ),
        Option(
            "admin_token",
            str,
            None,
            "bearer token for every route, writes included (at least 16 characters)",
            "TOKEN",
            secret=True,
        ),
        Option(
            "metrics_token",
            str,
            None,
            "bearer token that reads GET /metrics and nothing else, for a Prometheus server "
            "(at least 16 characters; the read and admin tokens read /metrics too)",
            "TOKEN",
            secret=True,
        ),
        Option(
            "metrics_allow",
            _metrics_allow,
            (),
            "addresses or networks that may read GET /metrics without a token, e.g. "
            "127.0.0.1,10.0.0.5 (the scraper's address as the hub sees it; none by default)",
            "ADDR,ADDR,...",
        ),
        Option("insecure_dev", boolean, False, "serve without tokens (development only)", "BOOL"),
        Option(
            "predict_max_body_bytes",
            positive_int,
            None,
            "largest POST /v1/predict body (default: 4 KiB per row it may score plus 64 KiB, ~41 MB); checked after the token, before the body is read",
            "BYTES",
        ),
        Option(
            "http_max_body_bytes",
            non_negative_int,
            65_536,
            "largest body of any other HTTP request (no other route reads one)",
            "BYTES",
        ),
        Option(
            "desired_resend_s",
            positive_float,
            10.0,
            "send a device its desired model again when its birth or heartbeat shows another, at most this often",
            "S",
        ),
        Option(
            "rollout_tick_s",
            positive_float,
            1.0,
            "how often the rollout manager looks at running rollouts and queued commands",
            "S",
        ),
        Option(
            "model_upload_max_bytes",
            positive_int,
            256 * 1024 * 1024,
            "largest zipped model package POST /v1/models takes (admin), and most it may unpack to (256 MiB)",
            "BYTES",
        ),
        Option(
            "max_payload_bytes",
            positive_int,
            DEFAULT_LIMITS.max_payload_bytes,
            "largest MQTT payload a device may send (1 MiB); a larger one is counted as invalid:too_large and dropped before it is queued or decoded",
            "BYTES",
        ),
        Option(
            "stale_after_s", positive_float, 30.0, "a device silent this long shows as stale", "S"
        ),
        Option(
            "buffering_outbox_messages",
            non_negative_int,
            1000,
            "a device whose heartbeat shows more messages than this in its outbox shows as buffering",
            "N",
        ),
        Option(
            "latency_budget_ms",
            positive_float,
            20.0,
            "the fallback latency budget: a device whose heartbeat shows a latency p99 per reading over this shows as degraded, when the manifest of the model version it runs declares no latency_budget_ms of its own (older packages)",
            "MS",
        ),
        Option(
            "degraded_clear_heartbeats",
            positive_int,
            3,
            "a degraded or buffering device shows online again only after this many clean heartbeats in a row (1: the first)",
            "N",
        ),
        Option(
            "retention_days",
            non_negative_float,
            7.0,
            "keep telemetry this many days after the hub received it, whatever its own timestamps (0: forever), and drift windows and device state changes as long; events are kept",
            "DAYS",
        ),
        Option(
            "max_future_s",
            non_negative_float,
            300.0,
            "a stream message stamped more than this many seconds after the hub's clock is refused: counted invalid:ts_in_future, kept as a dead letter and acked, never stored",
            "S",
        ),
        Option(
            "baseline_readings",
            non_negative_int,
            10_000,
            "commission each device's baseline from its first N stored readings (0: never; "
            "edgeloop-hub devices baseline makes one over any range); 10000 is ~17 minutes at "
            "10 Hz: the window must show every operating regime of the machine for at least a "
            "twentieth of it, not only the one it started in",
            "N",
        ),
        Option(
            "baseline_check_s",
            positive_float,
            10.0,
            "how often the hub looks for devices whose first --baseline-readings readings are stored",
            "S",
        ),
        Option(
            "ingest_queue_max",
            positive_int,
            200_000,
            "messages queued between the MQTT client and the ingest worker; when full, the hub stops reading from the broker until the worker catches up",
            "N",
        ),
        Option(
            "ingest_queue_max_bytes",
            positive_int,
            256 * 2**20,
            "payload bytes (256 MiB) queued between the MQTT client and the ingest worker; when full, the hub stops reading from the broker until the worker catches up",
            "BYTES",
        ),
        Option(
            "ingest_batch_max",
            positive_int,
            500,
            "messages the ingest worker handles per batch",
            "N",
        ),
        Option(
            "ingest_batch_wait_ms",
            positive_int,
            50,
            "how long the ingest worker waits to fill a batch",
            "MS",
        ),
        Option(
            "dead_letter_keep",
            positive_int,
            10_000,
            "invalid messages kept for operators (oldest dropped)",
            "N",
        ),
        Option(
            "pipeline_max_s",
            positive_float,
            1800.0,
            "a retraining pipeline run taking longer is stopped and recorded as failed",
            "S",
        ),
        Option(
            "pipeline_window_s",
            positive_float,
            86_400.0,
            "scheduled and drift-triggered pipeline runs train on the telemetry of the last S seconds",
            "S",
        ),
        Option(
            "pipeline_schedule_s",
            non_negative_float,
            0.0,
            "start a pipeline run of the hub's edge model every S seconds (0: no schedule)",
            "S",
        ),
        Option(
            "pipeline_on_drift",
            boolean,
            False,
            "let a fleet drift alarm start a pipeline run of the drifting model",
            "BOOL",
        ),
        Option(
            "pipeline_drift_wait_s",
            non_negative_float,
            3600.0,
            "after a fleet drift alarm, wait this long before the run starts, so that its data "
            "holds readings from after the drift to train on (the held-out slice is the newest "
            "fifth of each device's readings)",
            "S",
        ),
        Option(
            "pipeline_canary",
            boolean,
            False,
            "let an automatic pipeline run (schedule, drift) start a canary rollout of the "
            "candidate it registered; admin runs never do",
            "BOOL",
        ),
        Option(
            "pipeline_cohorts",
            _cohorts,
            "1,10,50,100",
            "cohorts of the canary rollouts pipeline runs start: cumulative percentages of the "
            "model's devices, the first being the canary",
            "P,P,...",
        ),
        Option(
            "pipeline_f1_tolerance",
            _fraction,
            0.01,
            "a candidate passes the gate when its macro-F1 on the held-out slice is at least "
            "the production model's minus this",
            "X",
        ),
        Option(
            "pipeline_min_agreement",
            _fraction,
            0.99,
            "a candidate's int8 model must pick its fp32 twin's class on this share of the "
            "held-out slice",
            "X",
        ),
        Option(
            "pipeline_max_latency_us",
            positive_float,
            5000.0,
            "a candidate's p99 latency per reading (int8, one reading at a time, on the hub) "
            "must be within this",
            "US",
        ),
        Option(
            "pipeline_max_model_bytes",
            positive_int,
            1_048_576,
            "a candidate's model.onnx must be at most this large",
            "BYTES",
        ),
        Option(
            "pipeline_heavy_min_train_labels",
            positive_int,
            200,
            "a pipeline run retrains the heavy model only with at least this many "
            "operator-labelled readings of every class in its training part",
            "N",
        ),
        Option(
            "pipeline_heavy_min_holdout_labels",
            positive_int,
            50,
            "a pipeline run retrains the heavy model only with at least this many "
            "operator-labelled readings of every class in its held-out part (the heavy gate's)",
            "N",
        ),
        Option(
            "drift_window_readings",
            positive_int,
            300,
            "readings per device in a drift window: each closed window stores PSI per feature, the detector statistics and the edge/heavy disagreement (GET /v1/devices/NAME/drift)",
            "N",
        ),
        Option(
            "drift_arl0",
            _arl0,
            1e6,
            "drift detectors' false-alarm budget: the average run length, in stationary readings, between false alarms of one device's detector, all its channels together (1e6: about one false alarm per million readings)",
            "READINGS",
        ),
        Option(
            "drift_fit_readings",
            positive_int,
            20_000,
            "readings of each device on a model version its drift detector learns the sensors' couplings from, before it can alarm (shared.drift.detector; the detector starts again when the hub restarts)",
            "N",
        ),
        Option(
            "drift_scale_readings",
            positive_int,
            10_000,
            "readings after --drift-fit-readings the detector takes each channel's in-control centre and spread from",
            "N",
        ),
        Option(
            "drift_threshold",
            positive_float,
            None,
            "the detectors' CUSUM threshold h itself, instead of the one --drift-arl0 calibrates; needed when --drift-fit-readings or --drift-scale-readings differ from their defaults, since the calibration holds for those only",
            "H",
        ),
        Option(
            "drift_min_readings",
            non_negative_int,
            200,
            "readings a device must send on a model version before its drift verdicts count",
            "N",
        ),
        Option(
            "drift_recovery_readings",
            positive_int,
            3000,
            "a drifting channel clears after this many readings in a row with its detector statistic under a quarter of the alarm threshold; a device with none left is 'recovered'",
            "N",
        ),
        Option(
            "fleet_drift_share",
            _share,
            0.2,
            "the fleet drifts when at least this share of the devices on one model version drift on the same detector channel within --fleet-drift-window-s; the alarm closes when under half this share still drift",
            "SHARE",
        ),
        Option(
            "fleet_drift_window_s",
            positive_float,
            3600.0,
            "the window the fleet rule looks at: devices that sent readings, and drifts that started, within it",
            "S",
        ),
        Option(
            "fleet_drift_min_devices",
            positive_int,
            2,
            "a fleet alarm needs at least this many drifting devices, whatever the share",
            "N",
        ),
        Option(
            "log_level", choice(("DEBUG", "INFO", "WARNING", "ERROR")), "INFO", "log level", "LEVEL"
        ),
    ],
)


PROVISION_OPTIONS: Final = (
    "data_dir",
    "store",
    "broker",
    "broker_host",
    "broker_port",
    "mqtt_tls_port",
    "root",
)
"""The options ``devices add`` takes: where the broker, its accounts and the store are."""

PIPELINE_OPTIONS: Final = (
    "data_dir",
    "store",
    "signing_key",
    "pipeline_max_s",
    "pipeline_f1_tolerance",
    "pipeline_min_agreement",
    "pipeline_max_latency_us",
    "pipeline_max_model_bytes",
    "pipeline_heavy_min_train_labels",
    "pipeline_heavy_min_holdout_labels",
)
"""The options ``pipeline run`` takes: where the store and the key are, and the gates."""


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Validated settings of one hub process."""

    data_dir: Path
    models_dir: Path
    signing_key: Path | None
    store: str
    broker: str
    broker_password: str | None
    broker_host: str
    broker_port: int
    broker_ca_file: Path | None
    mqtt_tls_port: int
    tls_cert: Path | None
    tls_key: Path | None
    root: str
    http_tls: bool
    http_host: str
    http_port: int
    read_token: str | None
    admin_token: str | None
    metrics_token: str | None
    metrics_allow: tuple[str, ...]
    insecure_dev: bool
    predict_max_body_bytes: int | None
    http_max_body_bytes: int
    model_upload_max_bytes: int
    desired_resend_s: float
    rollout_tick_s: float
    max_payload_bytes: int
    stale_after_s: float
    buffering_outbox_messages: int
    latency_budget_ms: float
    degraded_clear_heartbeats: int
    retention_days: float
    max_future_s: float
    baseline_readings: int
    baseline_check_s: float
    ingest_queue_max: int
    ingest_queue_max_bytes: int
    ingest_batch_max: int
    ingest_batch_wait_ms: int
    dead_letter_keep: int
    pipeline_max_s: float
    pipeline_window_s: float
    pipeline_schedule_s: float
    pipeline_on_drift: bool
    pipeline_drift_wait_s: float
    pipeline_canary: bool
    pipeline_cohorts: str
    pipeline_f1_tolerance: float
    pipeline_min_agreement: float
    pipeline_max_latency_us: float
    pipeline_max_model_bytes: int
    pipeline_heavy_min_train_labels: int
    pipeline_heavy_min_holdout_labels: int
    drift_window_readings: int
    drift_arl0: float
    drift_fit_readings: int
    drift_scale_readings: int
    drift_threshold: float | None
    drift_min_readings: int
    drift_recovery_readings: int
    fleet_drift_share: float
    fleet_drift_window_s: float
    fleet_drift_min_devices: int
    log_level: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return OPTIONS.redacted_repr(self)

    @property
    def embedded_broker(self) -> bool:
        return self.broker == EMBEDDED

    @property
    def password_file(self) -> Path:
        """The embedded broker's accounts (``edgeloop-hub devices add`` writes here)."""
        return self.data_dir / "broker-passwd"

    @property
    def device_credentials_file(self) -> Path:
        """Devices' secrets for HTTP (model downloads): the embedded broker's own accounts,
        or, with an external broker, ``DATA_DIR/device-passwd`` (``devices add`` writes it)."""
        return self.password_file if self.embedded_broker else self.data_dir / "device-passwd"

    @property
    def tls_files(self) -> tuple[Path, Path]:
        """The server certificate and key for TLS listeners (defaults under ``DATA_DIR/tls``)."""
        tls = self.data_dir / "tls"
        return (self.tls_cert or tls / "server.pem", self.tls_key or tls / "server.key")

    def external_broker(self) -> BrokerEndpoint:
        """The external broker's endpoint, with the password from ``broker_password`` if given."""
        return with_password(parse_broker_url(self.broker), self.broker_password)


def _check_tls_files(values: dict[str, Any], fail: Callable[[str, str], ConfigError]) -> None:
    """The certificate and key a TLS listener needs: present, the key private and matching."""
    tls = values["data_dir"] / "tls"
    cert = values["tls_cert"] or tls / "server.pem"
    key = values["tls_key"] or tls / "server.key"
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not path.is_file():
            raise fail(
                name,
                f"= {path} does not exist; --mqtt-tls-port and --http-tls need a server "
                f"certificate and key: make them with 'edgeloop-hub certs init --data-dir "
                f"{values['data_dir']} --host NAME' (NAME: how devices reach this hub), or "
                "give your own with --tls-cert and --tls-key",
            )
    check_private(key, what="the TLS server key", setting="tls_key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise fail("tls_cert", f"= {cert} with key {key} cannot be used for TLS ({exc})") from None


def resolve_settings(
    args: argparse.Namespace, env: Mapping[str, str] | None = None, *, serving: bool
) -> HubSettings:
    """Settings from parsed flags, environment and TOML; :class:`ConfigError` says what to fix.

    ``serving`` adds the checks only the server needs (tokens).
    """
    values, origin = OPTIONS.resolve(args, os.environ if env is None else env)
    fail = OPTIONS.fail
    if values["store"] is None:
        values["store"] = f"sqlite:///{values['data_dir'] / 'hub.db'}"
    if values["broker"] != EMBEDDED:
        try:
            endpoint = parse_broker_url(values["broker"])
        except ValueError as exc:
            raise fail("broker", f"is neither 'embedded' nor a usable broker URL: {exc}") from None
        try:
            with_password(endpoint, values["broker_password"])
        except ValueError as exc:
            raise fail("broker_password", str(exc)) from None
    elif values["broker_password"] is not None:
        raise fail(
            "broker_password",
            "applies only to an external --broker URL; the embedded broker makes the hub's own "
            "account (DATA_DIR/hub-broker-secret)",
        )
    if values["broker_ca_file"] is not None and (
        values["broker"] == EMBEDDED or not parse_broker_url(values["broker"]).tls
    ):
        raise fail(
            "broker_ca_file",
            "applies only to an external mqtts:// broker (--broker mqtts://hub@host:8883)",
        )
    if serving and (values["mqtt_tls_port"] or values["http_tls"]):
        _check_tls_files(values, fail)
    if serving and not values["insecure_dev"]:
        for name in ("read_token", "admin_token"):
            token: Any = values[name]
            if not token:
                raise fail(
                    name,
                    "is required to serve the API; give both tokens, or --insecure-dev true for development",
                )
            if token.lower() in _PLACEHOLDERS or len(token) < _MIN_TOKEN_LENGTH:
                raise fail(
                    name,
                    f"looks like a placeholder or is shorter than {_MIN_TOKEN_LENGTH} characters; use a random secret, e.g. {TOKEN_RECIPE}",
                )
        token = values["metrics_token"]
        if token is not None and (token.lower() in _PLACEHOLDERS or len(token) < _MIN_TOKEN_LENGTH):
            raise fail(
                "metrics_token",
                f"looks like a placeholder or is shorter than {_MIN_TOKEN_LENGTH} characters; use a random secret, e.g. {TOKEN_RECIPE}",
            )
        if token is not None and token in (values["read_token"], values["admin_token"]):
            raise fail(
                "metrics_token",
                "equals the read or admin token; give Prometheus a token of its own",
            )
        if values["read_token"] == values["admin_token"]:
            raise fail(
                "read_token",
                "equals the admin token; they must differ or read access is admin access",
            )
    _check_drift(values, fail)
    names = {f.name for f in fields(HubSettings)} - {"sources"}
    return HubSettings(**{k: values[k] for k in names}, sources=origin)


def _check_drift(values: dict[str, Any], fail: Callable[[str, str], ConfigError]) -> None:
    """The detector settings together: the calibration holds for its defaults only."""
    from shared.drift.detector import DetectorSettings  # noqa: PLC0415

    calibrated = DetectorSettings()
    if values["drift_threshold"] is None:
        for name, default in (
            ("drift_fit_readings", calibrated.fit_readings),
            ("drift_scale_readings", calibrated.scale_readings),
        ):
            if values[name] != default:
                raise fail(
                    name,
                    f"= {values[name]} is not the calibrated {default}, so --drift-arl0 cannot "
                    "set the detectors' threshold: give --drift-threshold H too (measure one "
                    "with edgeloop-sim bench drift --calibrate), or keep the default",
                )
    try:
        DetectorSettings(
            arl0=values["drift_arl0"],
            fit_readings=values["drift_fit_readings"],
            scale_readings=values["drift_scale_readings"],
            threshold=values["drift_threshold"],
        )
    except ValueError as exc:
        raise fail(
            "drift_fit_readings",
            f"{exc} (with --drift-fit-readings, --drift-scale-readings, --drift-threshold)",
        ) from None
