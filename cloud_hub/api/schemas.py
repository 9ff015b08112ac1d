"""The API's pydantic models: what a request may send and what a response shows.

Three kinds of model, kept apart on purpose:

- *request* models (``...In``) validate what a client sends;
- *stored* models are the store's records (:mod:`cloud_hub.store.base`:
  :class:`~cloud_hub.store.base.DeviceRecord`, ``TelemetryRows``,
  ``EventRecord``, ``ModelRecord``, ``DeadLetter``, ``Gap``), never sent as they are;
- *public* models (``...Out``) are what responses show, built from records by
  their ``from_record`` constructors, so a new column in the store never leaks
  into the API by accident.

Times are Unix seconds (floats), as on the wire.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Final, Literal

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, model_validator

from cloud_hub.devices.states import State, shown
from cloud_hub.store.base import (
    DeadLetter,
    DesiredRecord,
    DeviceRecord,
    EventRecord,
    Gap,
    ModelRecord,
)
from shared.baseline import FORMAT as BASELINE_FORMAT
from shared.baseline import Baseline
from shared.signing import signature_key_id

__all__ = [
    "BaselineOut",
    "DeadLetterOut",
    "DeadLettersOut",
    "DeviceDetailOut",
    "DeviceListOut",
    "DeviceOut",
    "DeviceState",
    "ErrorOut",
    "EventOut",
    "EventPageOut",
    "GapOut",
    "GapsOut",
    "HealthOut",
    "IngestStatsOut",
    "ModelListOut",
    "ModelOut",
    "PredictIn",
    "PredictOut",
    "PredictionOut",
    "ReadingOut",
    "TelemetryPageOut",
    "ValidationErrorOut",
]

DeviceState = State

FiniteNumber = Annotated[float, Strict(), AllowInfNan(False)]
"""A JSON number that is finite: no strings, no true/false, no NaN or Infinity."""


# --------------------------------------------------------------------------- errors


class ErrorOut(BaseModel):
    """Every error response: ``detail`` says what is wrong and how to fix it."""

    detail: str


class ValidationIssueOut(BaseModel):
    loc: list[str | int]
    """Where: ``["query", "limit"]``, ``["body", "rows", 3, "temperature_last"]``."""
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """A request that did not validate (422): a one-line ``detail``, then every issue."""

    detail: str
    errors: list[ValidationIssueOut]


# --------------------------------------------------------------------------- health


class PartHealthOut(BaseModel):
    """One part the hub depends on (its broker link, the embedded broker's process)."""

    up: bool
    since: float
    """When it last came up or went down (Unix seconds)."""
    reason: str | None = None
    """Why it is down, or, when up, why it last went down (null if it never did)."""
    check: str | None = None
    """What to check while it is down."""
    counts: dict[str, int] = {}
    """Its outage counters since the hub started: ``disconnects``, ``reconnects``, ``restarts``."""


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unreachable"]
    detail: str | None = None
    """Why the store is unreachable, when it is."""
    down: list[str] = []
    """What is down, sorted: ``store``, ``broker_link``, ``embedded_broker``; empty when all is up."""
    parts: dict[str, PartHealthOut] = {}
    """The hub's parts by name: ``broker_link`` (its MQTT session, up once subscribed) and,
    when the hub runs its embedded broker, ``embedded_broker`` (the broker's process)."""
    version: str
    uptime_s: float
    auth: Literal["tokens", "open"]
    """``open``: the hub runs with --insecure-dev and some routes need no token."""


# --------------------------------------------------------------------------- devices


NO_LIVE_EPOCH: Final = (
    "no live agent start of this device seen yet (a live epoch comes with its birth or "
    "heartbeat); the epochs of recordings replayed as this device are listed in 'replays' "
    "of GET /v1/devices/{device}"
)
"""Why a device's ``epoch`` is null."""


class DeviceOut(BaseModel):
    device: str
    state: DeviceState
    """online, degraded, buffering, offline, stale or never_seen, derived by the hub
    (:mod:`cloud_hub.devices.states`)."""
    state_reason: str
    """Why it is in that state, e.g. ``latency p99 41 ms over the 5 ms budget (model
    machine-edge 1.0.1's manifest)``."""
    state_since: float | None
    """When it entered that state (Unix seconds; null: not known)."""
    epoch: int | None
    """The epoch of the device's live agent (the unix time of its first start plus its
    restarts); null when the hub has seen none: a device never seen, or one that only
    sent replayed recordings, whose epochs (in [2**52, 2**53), :mod:`shared.epochs`) are
    the recordings', not the device's."""
    epoch_note: str | None = None
    """Why ``epoch`` is null (None when it is not)."""
    agent_version: str | None
    model: str | None
    """The name of the model the device's last birth said it runs (older agents do not say)."""
    model_version: str | None
    first_seen: float | None
    last_seen: float | None
    silent_for_s: float | None
    """Seconds since the device's last message (None if never seen)."""

    @classmethod
    def from_record(cls, record: DeviceRecord, now: float, stale_after_s: float) -> DeviceOut:
        state = shown(record, now, stale_after_s)
        return cls(
            device=record.device,
            state=state.state,
            state_reason=state.reason,
            state_since=state.since,
            # The store keeps 0 until a live agent's epoch arrives (replays count as 0).
            epoch=record.epoch or None,
            epoch_note=None if record.epoch else NO_LIVE_EPOCH,
            agent_version=record.agent_version,
            model=record.model,
            model_version=record.model_version,
            first_seen=record.first_seen,
            last_seen=record.last_seen,
            silent_for_s=None if record.last_seen is None else max(now - record.last_seen, 0.0),
        )


class DeviceListOut(BaseModel):
    count: int
    stale_after_s: float
    states: dict[str, int]
    """How many devices are in each state."""
    devices: list[DeviceOut]


class GapOut(BaseModel):
    """Seqs ``first_seq`` to ``last_seq`` of a device's epoch not (yet) received."""

    device: str
    epoch: int
    first_seq: int
    last_seq: int
    missing: int

    @classmethod
    def from_record(cls, gap: Gap) -> GapOut:
        return cls(
            device=gap.device,
            epoch=gap.epoch,
            first_seq=gap.first_seq,
            last_seq=gap.last_seq,
            missing=gap.last_seq - gap.first_seq + 1,
        )


class SensorInputsOut(BaseModel):
    """One sensor's input counters since the agent started, from its last heartbeat."""

    missing: int = 0
    """Values that did not arrive (carried forward)."""
    out_of_range: int = 0
    """Values outside the sensor's valid range in the manifest (treated as missing)."""
    out_of_distribution: int = 0
    """Valid values far outside the model's training range (see docs/architecture.md)."""

    @staticmethod
    def from_health(
        health: Mapping[str, Any] | None, sensors: tuple[str, ...] = ()
    ) -> dict[str, SensorInputsOut]:
        """Per sensor, from the heartbeat's ``invalid`` counters named ``<kind>:<sensor>``;
        every one of ``sensors`` (the device's model's, when known) is listed, zeros too."""
        invalid = (health or {}).get("invalid")
        out: dict[str, SensorInputsOut] = {name: SensorInputsOut() for name in sensors}
        if not isinstance(invalid, dict):
            return out
        kinds = set(SensorInputsOut.model_fields)
        for key, count in invalid.items():
            kind, sep, sensor = str(key).partition(":")
            if sep and kind in kinds and isinstance(count, int):
                setattr(out.setdefault(sensor, SensorInputsOut()), kind, count)
        return out


class ReplayOut(BaseModel):
    """A recording replayed as the device (``edgeloop-sim replay``, ``--source csv``)."""

    epoch: int
    """The recording's epoch (:mod:`edge_agent.replay_identity`): the same on every replay."""
    acked_seq: int
    """Highest seq of the recording stored with every seq before it."""


class DeviceDetailOut(DeviceOut):
    inputs: dict[str, SensorInputsOut]
    """Per sensor: missing, out-of-range and out-of-distribution values (last heartbeat)."""
    acked_seq: int
    """Highest seq of the current (live) epoch stored with every seq before it; 0 when
    ``epoch`` is null."""
    replays: list[ReplayOut]
    """The recordings replayed as this device whose messages the hub stored, by epoch."""
    counters: dict[str, int]
    last_health: dict[str, Any] | None
    """The device's last heartbeat, as it sent it."""
    gaps: list[GapOut]
    """The device's first missing seq ranges (at most 100)."""


class SensorBaselineOut(BaseModel):
    location: float
    scale: float


class BaselineOut(BaseModel):
    """A device's baseline, exactly the file ``edgeloop-agent --baseline`` reads
    (:mod:`shared.baseline`): per sensor the location and scale of its normal."""

    format: int = BASELINE_FORMAT
    device: str
    model: str
    """The model whose sensors (and reference) it is for."""
    sensors: dict[str, SensorBaselineOut]
    since: float
    """Timestamp of the first reading it was computed from."""
    until: float
    """Timestamp of the last reading it was computed from."""
    readings: int
    created: str

    @classmethod
    def from_record(cls, baseline: Baseline) -> BaselineOut:
        return cls.model_validate(baseline.to_dict())


# --------------------------------------------------------------------------- telemetry


class ReadingOut(BaseModel):
    ts: float
    epoch: int
    seq: int
    """Seq of the telemetry message that carried the reading (several readings share one)."""
    edge_model_version: str
    heavy_model_version: str
    features: list[float]
    edge_scores: list[float]
    heavy_scores: list[float]
    received_at: float


class TelemetryPageOut(BaseModel):
    device: str
    since: float
    until: float | None
    count: int
    next_cursor: str | None
    """Pass as ``cursor`` (with the same since/until) for the next page; None on the last."""
    feature_names: list[str] | None
    """Names of the ``features`` columns, when the edge model's manifest is registered."""
    classes: list[str] | None
    """Names of the score columns, when the edge model's manifest is registered."""
    readings: list[ReadingOut]


# --------------------------------------------------------------------------- events


class EventOut(BaseModel):
    device: str
    epoch: int
    seq: int
    ts: float
    model_version: str
    rule: str
    """``score`` (model score over threshold) or ``hard_limit`` (raw sensor value)."""
    score: float
    sensor: str | None
    value: float | None
    action: str
    action_ok: bool
    detail: str
    received_at: float

    @classmethod
    def from_record(cls, record: EventRecord) -> EventOut:
        e = record.event
        return cls(
            device=e.device,
            epoch=e.epoch,
            seq=e.seq,
            ts=e.ts,
            model_version=e.model_version,
            rule=e.rule,
            score=e.score,
            sensor=e.sensor,
            value=e.value,
            action=e.action,
            action_ok=e.action_ok,
            detail=e.detail,
            received_at=record.received_at,
        )


class EventPageOut(BaseModel):
    count: int
    next_cursor: str | None
    events: list[EventOut]


# --------------------------------------------------------------------------- models


class ModelOut(BaseModel):
    name: str
    version: str
    variant: str
    created: str
    registered_at: float
    quantization: str
    size: int
    sha256: str
    features: list[str]
    classes: list[str]
    urgent_class: str
    urgent_threshold: float
    metrics: dict[str, float]
    parent: str | None
    lineage: dict[str, str | None]
    """Where it came from: ``parent``, ``data_window``, ``data_hash``, ``pipeline_run``."""
    stage: str
    """The registry's stage: candidate, canary, production or archived."""
    stage_changed_at: float | None
    registered_by: str
    signed_by: str | None
    """The key id of ``manifest.sig`` (None: unsigned)."""
    manifest_url: str
    signature_url: str
    artifact_url: str
    files_url: str
    """Each listed file is at ``files_url/PATH`` (Range supported)."""

    @classmethod
    def from_record(cls, record: ModelRecord) -> ModelOut:
        m = record.manifest
        base = f"/v1/models/{record.name}/{record.version}"
        return cls(
            name=record.name,
            version=record.version,
            variant=record.variant,
            created=m.created,
            registered_at=record.registered_at,
            quantization=m.model.quantization,
            size=m.model.size,
            sha256=m.model.sha256,
            features=list(m.input.features),
            classes=list(m.output.classes),
            urgent_class=m.output.urgent_class,
            urgent_threshold=m.urgent.score_threshold,
            metrics=dict(m.metrics),
            parent=m.lineage.parent,
            lineage=asdict(m.lineage),
            stage=record.stage.value,
            stage_changed_at=record.stage_changed_at,
            registered_by=record.registered_by,
            signed_by=signature_key_id(record.signature),
            manifest_url=base,
            signature_url=f"{base}/signature",
            artifact_url=f"{base}/artifact",
            files_url=f"{base}/files",
        )


class ModelListOut(BaseModel):
    count: int
    models: list[ModelOut]


class StageIn(BaseModel):
    """A stage change: the rules are in ``edgeloop-hub models promote --help``."""

    model_config = ConfigDict(extra="forbid")
    stage: Literal["candidate", "canary", "production", "archived"]
    reason: str = Field("changed through the API", max_length=500)


class StageChangeOut(BaseModel):
    version: str
    from_stage: str
    to_stage: str
    reason: str


class StageHistoryOut(BaseModel):
    at: float
    from_stage: str | None
    to_stage: str
    by: str
    reason: str


class ModelRecordOut(BaseModel):
    """One version as the registry holds it, with its stage history."""

    model: ModelOut
    min_agent_version: str
    lineage: dict[str, str | None]
    files: list[dict[str, str | int]]
    history: list[StageHistoryOut]


class DesiredIn(BaseModel):
    """What one device should run: a registered, signed edge model version."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    allow_downgrade: bool = False
    """A rollback to a lower (or archived) version, on purpose."""


class DesiredOut(BaseModel):
    device: str
    model: str
    version: str
    manifest_sha256: str
    size: int
    rollout: str
    allow_downgrade: bool
    set_at: float
    running_model: str | None
    """What the device last said it runs (birth or heartbeat)."""
    running_version: str | None
    converged: bool
    """True once the device reports the desired model and version."""

    @classmethod
    def from_record(cls, d: DesiredRecord, device: DeviceRecord | None) -> DesiredOut:
        model = None if device is None else device.model
        version = None if device is None else device.model_version
        return cls(
            device=d.device,
            model=d.model,
            version=d.version,
            manifest_sha256=d.manifest_sha256,
            size=d.size,
            rollout=d.rollout,
            allow_downgrade=d.allow_downgrade,
            set_at=d.set_at,
            running_model=model,
            running_version=version,
            converged=(model, version) == (d.model, d.version),
        )


class RegisteredOut(BaseModel):
    new: bool
    """False when this content was registered already (nothing changed)."""
    model: ModelOut


class StageChangedOut(BaseModel):
    changes: list[StageChangeOut]
    model: ModelOut


# --------------------------------------------------------------------------- stats


class GapsOut(BaseModel):
    count: int
    """Open gaps (ranges of missing seqs) over every device."""
    count_is_lower_bound: bool
    """True when there are more gaps than the API counts (it counts up to a cap)."""
    missing_seqs: int
    """Seqs missing in the counted gaps."""
    ranges: list[GapOut]
    """The first 100 gaps."""


class IngestStatsOut(BaseModel):
    received: int
    """MQTT messages the ingest worker took in (every kind, valid or not)."""
    stored_messages: int
    stored_readings: int
    duplicates: int
    invalid: dict[str, int]
    """Invalid messages by reason slug (``not_json``, ``wrong_type``, ...)."""
    invalid_total: int
    dropped: dict[str, int]
    """Valid messages lost at the hub, by reason (``store_error``, ``shutdown_unprocessed``, ...)."""
    ingest_errors: int
    lost_at_edge_readings: dict[str, int]
    """Readings devices dropped and declared, by reason (``outbox_full``, ``expired``, ...)."""
    lost_at_edge_messages: dict[str, int]
    """The stream messages behind ``lost_at_edge_readings``."""
    lost_unexplained_messages: int
    """Stream messages that never arrived and were never declared, given up on after the
    gap retention. Must be 0: anything else is a bug or a device that lost its disk."""
    refused_readings: dict[str, int]
    """Readings the hub kept aside as dead letters (bad timestamps, ...), by reason; their
    seqs are closed so devices stop sending them."""
    gaps: GapsOut
    counters: dict[str, int]
    """Every counter the store keeps, summed over the hub and its devices."""
    live: dict[str, Any] | None
    """The running ingest worker's own figures (queue depth, rates), when it runs in this process."""


class DeadLetterOut(BaseModel):
    received_at: float
    topic: str
    device: str | None
    reason: str
    error: str
    payload_size: int
    payload_head: str
    """The first bytes of the payload as text (undecodable bytes as \\x escapes)."""
    payload_head_base64: str
    """The same bytes, exactly, in base64."""

    @classmethod
    def from_record(cls, letter: DeadLetter) -> DeadLetterOut:
        return cls(
            received_at=letter.received_at,
            topic=letter.topic,
            device=letter.device,
            reason=letter.reason,
            error=letter.error,
            payload_size=letter.payload_size,
            payload_head=letter.payload_head.decode("utf-8", errors="backslashreplace"),
            payload_head_base64=base64.b64encode(letter.payload_head).decode("ascii"),
        )


class DeadLettersOut(BaseModel):
    count: int
    dead_letters: list[DeadLetterOut]


# --------------------------------------------------------------------------- predict


class PredictIn(BaseModel):
    """Rows to score with one registered model.

    Give ``rows`` (objects keyed by the manifest's feature names) or
    ``features`` (arrays in the manifest's feature order), not both.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "machine-heavy",
                    "version": None,
                    "rows": [{"temperature_last": 65.0, "vibration_last": 2.5}],
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=64, description="A registered model's name.")
    version: str | None = Field(
        default=None, max_length=32, description="MAJOR.MINOR.PATCH; null: the latest version."
    )
    rows: list[dict[str, FiniteNumber]] | None = Field(
        default=None, min_length=1, description="One object per row, keyed by feature name."
    )
    features: list[list[FiniteNumber]] | None = Field(
        default=None, min_length=1, description="One array per row, in the manifest's order."
    )

    @model_validator(mode="after")
    def _one_input(self) -> PredictIn:
        if (self.rows is None) == (self.features is None):
            raise ValueError(
                "give exactly one of 'rows' (objects keyed by feature name) or 'features' "
                "(arrays in the manifest's feature order)"
            )
        return self

    @property
    def n_rows(self) -> int:
        return len(self.rows if self.rows is not None else self.features or [])


class PredictionOut(BaseModel):
    probabilities: dict[str, float]
    """Probability of each class."""
    predicted_class: str
    urgent_score: float
    """Probability of the manifest's urgent class."""
    above_urgent_threshold: bool
    """urgent_score >= the manifest's threshold. A device acts only after the manifest's
    ``consecutive`` such readings; one row cannot tell that."""


class PredictOut(BaseModel):
    model: str
    version: str
    variant: str
    quantization: str
    scored_row_by_row: bool
    """True for an int8 model: each row scored alone, exactly as a device scores it."""
    classes: list[str]
    urgent_class: str
    urgent_threshold: float
    count: int
    predictions: list[PredictionOut]
