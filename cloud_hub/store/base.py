"""The hub's store interface: what ingest writes and the API reads.

One interface, several backends (SQLite now, PostgreSQL later); the contract
tests in ``tests/cloud_hub/store/`` run against every backend, never against a
class. A backend is used from one writer thread (the ingest worker) and any
number of reader threads (the API); each method is one transaction.

Durability rule: :meth:`Store.write_stream` returns only after its
transaction is committed durably; the ack watermarks it returns are what the
hub may acknowledge to devices. Nothing acknowledged is lost if the hub is
killed with SIGKILL right after the ack.

Idempotency: a stream message is identified by ``(device, epoch, seq)``.
Writing one that is already stored stores nothing and is reported as a
duplicate. Which seqs are settled is kept per (device, epoch) as a
:class:`~cloud_hub.store.ledger.Ledger` (a watermark and ranges: O(gaps)); the
missing ranges are the device's *gaps*, until a replay fills them, the device
declares them dropped, or the hub gives up on them after a retention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from cloud_hub.registry.stages import Stage, StageChange
from shared.baseline import Baseline
from shared.manifest import ModelManifest
from shared.messages import Event, Health, Ota, Status

__all__ = [
    "DEFAULT_MAX_AHEAD",
    "AckWatermark",
    "BatchJob",
    "ClosedSeqs",
    "DeadLetter",
    "DesiredRecord",
    "DeviceRecord",
    "DeviceStateRow",
    "DriftEventRow",
    "DriftStateRow",
    "DriftWindowRow",
    "EventRecord",
    "Gap",
    "LabelRecord",
    "ModelRecord",
    "NewestTelemetry",
    "OtaRecord",
    "Page",
    "PipelineRunRow",
    "RolloutCommand",
    "RolloutRow",
    "StageLogEntry",
    "Store",
    "StreamItem",
    "TelemetryRows",
    "WriteResult",
]

T = TypeVar("T")
DEFAULT_MAX_AHEAD = 1_000_000
"""A seq further than this beyond a device's watermark is refused, not recorded as a gap."""
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class TelemetryRows:
    """One telemetry message ready to store: edge and heavy predictions side by side."""

    device: str
    epoch: int
    seq: int
    edge_model_version: str
    heavy_model_version: str
    ts: F64
    features: F32
    edge_scores: F32
    heavy_scores: F32
    received_at: float

    def __len__(self) -> int:
        return int(self.ts.shape[0])


StreamItem = TelemetryRows | Event | Ota
"""What :meth:`Store.write_stream` takes: every stream message kind."""


@dataclass(frozen=True, slots=True)
class NewestTelemetry:
    """What :meth:`Store.newest_telemetry` gives."""

    rows: list[TelemetryRows]
    """The newest messages' readings in the range, oldest first."""
    readings: int
    """Every reading of the device in the range (also those not in ``rows``)."""


@dataclass(frozen=True, slots=True)
class AckWatermark:
    device: str
    epoch: int
    seq: int
    """Highest seq such that every seq 1..seq of this epoch is stored."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int
    """Stream messages newly stored."""
    readings: int
    """Telemetry readings newly stored."""
    duplicates: list[tuple[str, int, int]]
    """(device, epoch, seq) that were already stored; nothing was written for them."""
    watermarks: list[AckWatermark]
    """New contiguous watermark of every (device, epoch) this write touched."""
    too_far: list[tuple[str, int, int]] = field(default_factory=list)
    """(device, epoch, seq) refused: more than ``max_ahead`` beyond the watermark."""


@dataclass(frozen=True, slots=True)
class ClosedSeqs:
    """Seqs of one (device, epoch) settled without being stored, and the new watermark."""

    device: str
    epoch: int
    ranges: list[tuple[int, int]]
    watermark: int

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


@dataclass(frozen=True, slots=True)
class Gap:
    device: str
    epoch: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that did not parse or validate, kept (bounded) for operators."""

    received_at: float
    topic: str
    device: str | None
    reason: str
    error: str
    payload_head: bytes
    """The first bytes of the payload (at most 1 KiB), never the whole of a huge one."""
    payload_size: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device: str
    state: Literal["online", "offline", "never_seen"]
    epoch: int
    agent_version: str | None
    model_version: str | None
    first_seen: float | None
    last_seen: float | None
    """Last time any message of the device arrived (the API derives 'stale' from it)."""
    last_health: dict[str, object] | None
    counters: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    """The name of the model the device's last birth said it runs (None: not said)."""
    judged_state: str | None = None
    """The state the ingest worker last recorded (:mod:`cloud_hub.devices.states`):
    online, degraded, buffering, offline or stale; None: never judged. Read it through
    :func:`cloud_hub.devices.states.shown`, which applies the stale rule now."""
    state_reason: str | None = None
    """Why the device is in ``judged_state``: kept current while the state holds."""
    state_since: float | None = None
    """When it entered ``judged_state``."""


@dataclass(frozen=True, slots=True)
class DeviceStateRow:
    """A change of a device's state (:mod:`cloud_hub.devices.states`), with its reason."""

    id: int
    """Rises in the order the hub stored them (0 on a row not stored yet)."""
    at: float
    device: str
    state: str
    previous: str
    reason: str

    @property
    def is_change(self) -> bool:
        """False for a row that only updates the reason of a state that holds
        (``previous`` is ``state``); such rows are never events."""
        return self.state != self.previous


@dataclass(frozen=True, slots=True)
class EventRecord:
    event: Event
    received_at: float


@dataclass(frozen=True, slots=True)
class ModelRecord:
    name: str
    version: str
    variant: str
    path: str
    registered_at: float
    manifest: ModelManifest
    manifest_bytes: bytes = b""
    """``manifest.json`` byte for byte as registered (what its ``manifest.sig`` signs)."""
    stage: Stage = Stage.CANDIDATE
    """The registry's stage (:mod:`cloud_hub.registry.stages`)."""
    stage_changed_at: float | None = None
    """When the version entered ``stage`` (its registration time if it never moved)."""
    registered_by: str = ""
    """Who or what registered it: ``cli:USER``, ``api``, ``hub:default-build``, ``train:RUN``."""
    signature: bytes | None = None
    """``manifest.sig`` as registered (None: unsigned); served byte for byte."""
    source: str = ""
    """The directory the package was registered from (for the record; never read again)."""


@dataclass(frozen=True, slots=True)
class StageLogEntry:
    """One recorded stage change of a model version (the registry's audit trail)."""

    name: str
    version: str
    at: float
    from_stage: Stage | None
    """None for the registration itself."""
    to_stage: Stage
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class DesiredRecord:
    """The model version a device should run (OTA desired state, DESIGN.md section 5)."""

    device: str
    model: str
    version: str
    manifest_sha256: str
    """sha256 of the registered ``manifest.json`` bytes the device must fetch."""
    size: int
    """Bytes of every file the manifest lists: the most the device may download."""
    rollout: str
    """The rollout that set it ("manual" for one set by hand)."""
    allow_downgrade: bool
    """True when this is a signed rollback to a lower version."""
    set_at: float


@dataclass(frozen=True, slots=True)
class OtaRecord:
    """One stored OTA report; ``id`` rises in the order the hub stored them."""

    id: int
    ota: Ota
    received_at: float


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """A rollout as stored: its state as JSON (:class:`cloud_hub.ota.rollout.Rollout`) and
    the manager's own marks (counter snapshots), also JSON."""

    id: str
    state: str
    body: str
    marks: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """A ground-truth label an operator posted (``POST /v1/labels``): every reading of
    ``device`` with ``since <= ts < until`` is of class ``label`` of model ``model``."""

    id: int
    """Set by the store (0 before it is stored)."""
    device: str
    model: str
    since: float
    until: float
    label: str
    created_at: float
    by: str = ""


@dataclass(frozen=True, slots=True)
class PipelineRunRow:
    """A retraining pipeline run as stored: its record as JSON
    (:class:`cloud_hub.retrain.runs.PipelineRun`), with the fields the store filters on."""

    id: str
    model: str
    state: str
    """``running`` until it ends ``succeeded``, ``rejected`` or ``failed``."""
    body: str
    created_at: float
    deadline: float
    """When a run still ``running`` is taken for dead (its process was lost)."""


@dataclass(frozen=True, slots=True)
class RolloutCommand:
    """A request to the hub's rollout manager (from the CLI or the API)."""

    id: int
    rollout: str
    command: str
    """``start``, ``pause``, ``resume`` or ``abort``."""
    args: str
    """JSON: the start's model, version, cohorts, gates, devices; a reason."""
    at: float


@dataclass(frozen=True, slots=True)
class DriftStateRow:
    """A device's drift state on one model version (:mod:`cloud_hub.drift.states`)."""

    device: str
    model: str
    version: str
    state: str
    """``ok``, ``drifting`` or ``recovered``."""
    since: float | None
    """When the state began (None: ok from the start)."""
    streams: dict[str, float]
    """The drifting streams (features, or ``score``) and when each started."""
    readings: int
    """Readings counted on this model version since the hub started counting."""
    last_reading_at: float
    """When the hub last stored a reading of the device on this version."""


DriftScope = Literal["device", "fleet"]


@dataclass(frozen=True, slots=True)
class DriftEventRow:
    """A change of drift state of a device, or of the fleet on one model version."""

    id: int
    """Rises in the order the hub stored them (0 on a row not stored yet)."""
    at: float
    scope: DriftScope
    device: str | None
    """None for the fleet."""
    model: str
    version: str
    state: str
    previous: str
    streams: tuple[str, ...]
    detail: dict[str, object]


@dataclass(frozen=True, slots=True)
class DriftWindowRow:
    """One closed counting window of a device on one model version: PSI per stream
    against the manifest's reference, the detector statistic at the window's end and
    the edge/heavy disagreement rate (None: no heavy scores)."""

    device: str
    model: str
    version: str
    start_at: float
    end_at: float
    readings: int
    psi: dict[str, float]
    statistic: dict[str, float]
    disagreement: float | None


BatchJobState = Literal["queued", "running", "done", "failed"]


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A batch scoring job over stored telemetry (``POST /v1/batch/jobs``).

    Progress: ``devices_done`` of ``devices`` scored, ``rows_done`` readings
    scored; ``rows_total`` is set when the job is done. ``result_path`` is the
    result's path without its suffix (``.csv``, ``.jsonl``: one file each) once
    done; ``error`` says why a failed job failed.
    """

    id: str
    state: BatchJobState
    devices: tuple[str, ...]
    since: float
    until: float
    model: str
    version: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    rows_total: int | None = None
    rows_done: int = 0
    devices_done: int = 0
    urgent_rows: int = 0
    result_path: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None
    """Opaque; pass it back to get the next page. None on the last page."""


class Store(Protocol):
    """Everything the hub keeps. See the module docstring for the rules."""

    # -- life cycle
    def close(self) -> None: ...

    # -- the stream (ingest's writer thread)
    def write_stream(
        self, items: Sequence[StreamItem], *, max_ahead: int = DEFAULT_MAX_AHEAD
    ) -> WriteResult: ...

    def close_seqs(
        self, device: str, epoch: int, first: int, last: int, *, max_ahead: int = DEFAULT_MAX_AHEAD
    ) -> ClosedSeqs | None:
        """Settle first..last without storing (declared dropped, or refused); None when
        ``last`` is more than ``max_ahead`` beyond the watermark (nothing settled)."""
        ...

    def note_issued(self, device: str, epoch: int, seq: int, at: float) -> None:
        """The device says it issued up to ``seq``: a missing tail is a gap from ``at``."""
        ...

    def expire_gaps(self, before: float) -> list[ClosedSeqs]:
        """Close gaps first seen before ``before`` (lost, unexplained)."""
        ...

    def gaps(self, device: str | None = None, limit: int = 1000) -> list[Gap]: ...

    def watermark(self, device: str, epoch: int) -> int: ...

    def watermarks(self, device: str) -> dict[int, int]:
        """Every epoch of ``device`` the hub stored a message of, with its watermark
        (:meth:`watermark`), by epoch; empty for an unknown device."""
        ...

    # -- devices
    def record_status(self, status: Status, received_at: float) -> None: ...

    def record_health(self, health: Health, received_at: float) -> None: ...

    def touch(self, device: str, received_at: float) -> None:
        """Any message from ``device`` arrived: update last_seen (creates the device)."""
        ...

    def add_device(self, device: str) -> None:
        """Provisioned but not yet seen (state ``never_seen``); no-op if it exists."""
        ...

    def devices(self) -> list[DeviceRecord]: ...

    def device(self, device: str) -> DeviceRecord | None: ...

    # -- counters: per device (None for hub-wide) and name, e.g. invalid:not_json
    def add_counters(self, counts: dict[tuple[str | None, str], int]) -> None: ...

    def counters(self, device: str | None = None) -> dict[str, int]:
        """Totals by name: one device's, or summed over the hub and every device."""
        ...

    def device_counters(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per device, its counters of these ``names`` (devices with none left out)."""
        ...

    def readings_received_since(self, since: float) -> dict[str, int]:
        """Per device, the readings of telemetry the hub received at or after ``since``
        (devices with none left out): the dashboard's readings per second."""
        ...

    # -- dead letters (bounded: the oldest go beyond ``keep``)
    def add_dead_letters(self, letters: Sequence[DeadLetter], keep: int) -> None: ...

    def dead_letters(self, limit: int = 100, device: str | None = None) -> list[DeadLetter]: ...

    # -- reads for the API
    def telemetry(
        self, device: str, since: float, until: float, limit: int, cursor: str | None = None
    ) -> Page[TelemetryRows]:
        """Readings of ``device`` with since <= ts < until, oldest first, at most
        ``limit`` readings per page (a stored message may be split across pages)."""
        ...

    def newest_telemetry(
        self, device: str, since: float, until: float, limit: int
    ) -> NewestTelemetry:
        """The newest readings of ``device`` with since <= ts < until: whole messages,
        newest first, until at least ``limit`` readings (returned oldest first), and the
        count of every reading in the range."""
        ...

    def events(
        self,
        device: str | None,
        since: float,
        until: float,
        limit: int,
        cursor: str | None = None,
        *,
        newest_first: bool = False,
    ) -> Page[EventRecord]:
        """Events with since <= ts < until (of one device, or all), oldest first (or
        newest first)."""
        ...

    # -- models
    def register_model(
        self,
        manifest: ModelManifest,
        path: str,
        registered_at: float,
        *,
        replace: bool = False,
        manifest_bytes: bytes | None = None,
        stage: Stage = Stage.CANDIDATE,
        registered_by: str = "",
        signature: bytes | None = None,
        source: str = "",
    ) -> ModelRecord:
        """Idempotent for the same (name, version, manifest); a different manifest
        under an existing (name, version) raises ValueError, or replaces the
        record when ``replace`` (``models train --force``). ``manifest_bytes``
        (the package's ``manifest.json``, which must hold ``manifest``) are kept
        and served byte for byte; without them, ``manifest_file_bytes(manifest)``.
        ``stage``, ``registered_by`` and ``source`` apply to a new record only (a
        registration is logged as its first stage change); ``signature`` is kept
        when given (an unsigned record may gain one, never loses one)."""
        ...

    def change_model_stages(
        self, name: str, changes: Sequence[StageChange], at: float, by: str
    ) -> None:
        """Apply ``changes`` (:func:`cloud_hub.registry.stages.plan_stage_change`) in
        one transaction, logging each; ValueError, and nothing changed, when a
        version is missing or no longer in the change's ``from_stage`` (another
        writer moved it)."""
        ...

    def stage_log(self, name: str, version: str | None = None) -> list[StageLogEntry]:
        """The recorded stage changes of model ``name`` (one version's, or all), oldest first."""
        ...

    def models(self) -> list[ModelRecord]: ...

    def model(self, name: str, version: str) -> ModelRecord | None: ...

    # -- batch jobs
    def save_batch_job(self, job: BatchJob) -> None:
        """Insert ``job``, or replace the stored job of the same id."""
        ...

    def batch_job(self, job_id: str) -> BatchJob | None: ...

    def batch_jobs(self, limit: int = 100) -> list[BatchJob]:
        """The newest ``limit`` jobs, newest first."""
        ...

    def fail_unfinished_batch_jobs(self, reason: str, at: float) -> list[str]:
        """Mark every queued or running job failed with ``reason`` (a hub that
        starts: nothing runs them any more); returns their ids."""
        ...

    # -- per-device baselines (shared.baseline); also each device's drift reference
    def put_baseline(self, baseline: Baseline, recorded_at: float) -> None:
        """Record ``baseline`` as its device's, replacing an earlier one (creates the device)."""
        ...

    def baseline(self, device: str) -> Baseline | None: ...

    def baselines(self) -> list[Baseline]:
        """Every device's baseline, by device."""
        ...

    # -- desired state (OTA)
    def set_desired(self, records: Sequence[DesiredRecord]) -> None:
        """Record each device's desired model, replacing an earlier one (creates the device)."""
        ...

    def desired(self, device: str) -> DesiredRecord | None: ...

    def desired_all(self) -> list[DesiredRecord]:
        """Every device's desired model, by device."""
        ...

    def clear_desired(self, device: str) -> bool:
        """Forget ``device``'s desired model; False when it had none."""
        ...

    # -- OTA reports and rollouts
    def ota_reports(self, after_id: int, limit: int = 10_000) -> list[OtaRecord]:
        """Stored OTA reports with an id above ``after_id``, oldest first."""
        ...

    def device_ota_reports(self, device: str, limit: int) -> list[OtaRecord]:
        """``device``'s newest ``limit`` OTA reports, newest first (by id)."""
        ...

    def last_ota_id(self) -> int:
        """The highest OTA report id (0 when none)."""
        ...

    def save_rollout(self, row: RolloutRow) -> None:
        """Insert or replace the rollout of ``row.id``."""
        ...

    def rollouts(self) -> list[RolloutRow]:
        """Every rollout, newest first."""
        ...

    def rollout(self, rollout_id: str) -> RolloutRow | None: ...

    def add_rollout_command(self, rollout: str, command: str, args: str, at: float) -> int:
        """Queue a command for the hub's rollout manager; returns its id."""
        ...

    def take_rollout_commands(self) -> list[RolloutCommand]:
        """The commands not carried out yet, oldest first."""
        ...

    def finish_rollout_command(self, command_id: int, error: str | None, at: float) -> None:
        """Mark a command carried out (``error`` None) or refused (why)."""
        ...

    def rollout_command_result(self, command_id: int) -> tuple[bool, str | None]:
        """(done, error) of a queued command: (False, None) while it waits."""
        ...

    # -- labels and retraining pipeline runs
    def add_label(self, label: LabelRecord) -> LabelRecord:
        """Store ``label``; returns it with its ``id``."""
        ...

    def labels(
        self, device: str | None = None, since: float = -math.inf, until: float = math.inf
    ) -> list[LabelRecord]:
        """Labels (one device's, or all) whose range overlaps ``[since, until)``, oldest first."""
        ...

    def start_pipeline_run(self, row: PipelineRunRow, now: float) -> str | None:
        """Insert ``row`` (state ``running``) unless another run of ``row.model`` is
        still running with its deadline after ``now``; returns that run's id (nothing
        inserted) or None (inserted). One transaction: two callers never both start."""
        ...

    def save_pipeline_run(self, row: PipelineRunRow) -> None:
        """Replace the stored run of ``row.id``."""
        ...

    def pipeline_run(self, run_id: str) -> PipelineRunRow | None: ...

    def pipeline_runs(self, model: str | None = None, limit: int = 100) -> list[PipelineRunRow]:
        """The newest ``limit`` runs (of one model, or all), newest first."""

    # -- drift
    def record_drift(
        self,
        states: Sequence[DriftStateRow],
        events: Sequence[DriftEventRow],
        windows: Sequence[DriftWindowRow],
    ) -> None:
        """Insert or replace ``states`` (by device, model, version), add ``events``
        (their ``id`` is ignored) and ``windows``, in one transaction."""
        ...

    def drift_states(self, device: str | None = None) -> list[DriftStateRow]:
        """Every device's (or one device's) drift state on every model version it is
        counted on."""
        ...

    def drift_events(
        self,
        device: str | None,
        since: float,
        until: float,
        limit: int,
        *,
        cursor: str | None = None,
        scope: DriftScope | None = None,
    ) -> Page[DriftEventRow]:
        """Drift events with since <= at < until, oldest first (of one device; of the
        fleet with ``scope='fleet'``; all when both are None)."""
        ...

    def save_drift_detectors(
        self, states: Sequence[tuple[str, str, str, bytes]], at: float
    ) -> None:
        """Insert or replace (device, model, version, saved detector bytes) rows."""
        ...

    def drift_detector(self, device: str, model: str, version: str) -> bytes | None:
        """The detector saved for (device, model, version), if any."""
        ...

    def forget_drift(self, device: str, model: str, version: str) -> None:
        """Drop the state and saved detector of a device on a version it left
        (its events and windows stay)."""
        ...

    def latest_drift_windows(self, model: str, version: str) -> list[DriftWindowRow]:
        """Each device's newest closed window on (model, version), by device."""
        ...

    def drift_windows(self, device: str, since: float, limit: int) -> list[DriftWindowRow]:
        """The device's closed windows ending at or after ``since``, newest first."""
        ...

    # -- device states
    def record_device_states(self, changes: Sequence[DeviceStateRow]) -> None:
        """Set each changed device's state, reason and since (its ``at``), and add the
        changes as events (their ``id`` is ignored), in one transaction. A row that is
        not a change (:attr:`DeviceStateRow.is_change`) sets only the device's reason."""
        ...

    def device_state_events(
        self,
        device: str | None,
        since: float,
        until: float,
        limit: int,
        *,
        cursor: str | None = None,
    ) -> Page[DeviceStateRow]:
        """Device state changes with since <= at < until, oldest first (of one device,
        or all when None)."""
        ...

    # -- retention
    def prune_telemetry(self, received_before: float) -> int:
        """Delete the readings received (``received_at``) before ``received_before``,
        whatever their own timestamps, and the drift windows and device state changes
        before it; returns how many readings. Never touches the dedupe record, so a
        late replay of a pruned message is still a duplicate."""
        ...
