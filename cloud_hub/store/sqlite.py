"""The SQLite backend of the hub's store (one machine; DESIGN.md section 7).

:class:`SQLiteStore` implements :class:`~cloud_hub.store.base.Store` on one
database file in WAL mode.

Concurrency. One *writer* connection, used only under ``_write_lock``, takes
every write (ingest's worker thread, and the odd write from the API or CLI).
Each reading thread gets its own *reader* connection (``query_only``), created
on first use and kept in a thread-local; FastAPI's thread pool therefore never
shares a connection between threads. WAL lets readers read while the writer
writes. All connections are opened with ``check_same_thread=False`` for one
reason only: :meth:`SQLiteStore.close` (and the sweep of readers whose thread
has ended) closes connections from another thread. The rule that makes that
safe is ours, not sqlite3's: the writer is touched only under the lock, a reader
only by its own thread, and ``close()`` is called once readers are done.

Access. The database holds every device's data, so only its owner may read it:
a new database file is created with mode 0600 (SQLite gives its ``-wal`` and
``-shm`` files the database's mode), and one that its group or others may
read, left by an older version, is narrowed to 0600 with a warning.

Durability. :meth:`SQLiteStore.write_stream` commits with ``synchronous=FULL``
(the WAL is fsynced before it returns): what it acks survives SIGKILL and power
loss. Other writes (status, health, counters, dead letters, pruning) commit
with ``synchronous=NORMAL``, which survives SIGKILL; the next stream commit
fsyncs them too.

Schema (version 12; :data:`SCHEMA_VERSION`), created on open by
:func:`_migrate_to_1` to :func:`_migrate_to_12`, recorded in ``schema_version``:

- ``devices`` - one row per device (``id`` is what the other tables refer to);
  ``model`` (version 6) is the name of the model its birth said it runs.
- ``watermarks`` - per (device, epoch) the settled watermark (every seq
  1..watermark is stored or closed: what the hub acks) and the ``ledger``: a
  :class:`~cloud_hub.store.ledger.Ledger` as JSON, the settled ranges above
  the watermark and the last seq the device said it issued. That is the whole
  dedupe record, O(open gaps) however long the stream runs, and pruning
  telemetry never touches it. Version 2 replaced version 1's ``pending``
  table (a row per seq above the watermark) with it.
- ``telemetry`` - one row per stored message: ``first_ts``/``last_ts``/``n``
  plus each array as little-endian bytes (``ts`` float64; ``features``,
  ``edge_scores``, ``heavy_scores`` float32 with their column counts), and
  ``received_at``, when the hub received it, which retention counts from
  (indexed since version 3).
- ``events``, ``ota`` - one row per message, one column per field.
- ``counters`` - (device, name) -> count; ``''`` is the hub-wide device.
- ``dead_letters`` - bounded; the oldest rows go first.
- ``models`` - (name, version) -> manifest JSON (the package's ``manifest.json``,
  byte for byte as registered), path, registered_at; since version 7 also the
  registry's ``stage`` and when it was entered, ``registered_by``, the
  ``signature`` (``manifest.sig`` bytes, NULL: unsigned) and ``source``.
- ``model_stages`` - every stage change of a model version (version 7),
  registrations included: the registry's audit trail.
- ``batch_jobs`` - one row per batch scoring job (version 4): its request
  (devices as JSON, time range, model), state, progress, result file, error.
- ``baselines`` - per device its baseline (:mod:`shared.baseline`) as the
  JSON the agent reads, the model it is for and when it was recorded
  (version 5).
- ``desired`` - per device the model version it should run (version 8): model,
  version, the manifest's sha256, the download size, the rollout that set it,
  whether it is a rollback, when it was set.
- ``rollouts`` - each staged rollout's state as JSON, and the rollout manager's
  marks (version 9); ``rollout_commands`` - start/pause/resume/abort requests
  queued for the hub's manager by the CLI and the API.
- ``labels`` - ground-truth labels operators posted (version 10): device, model,
  time range ``[since, until)``, class, when and by whom.
- ``pipeline_runs`` - each retraining pipeline run (version 10): its record as
  JSON (inputs, steps, metrics, decision), with its model, state and deadline
  as columns so that "is a run of this model still running" is one query.
- ``drift_states`` - per (device, model, version) its drift state (version 11):
  ok / drifting / recovered, since when, the drifting streams with their
  starts, readings counted, last reading; ``drift_events`` - every change of a
  device's or the fleet's drift state; ``drift_windows`` - each closed counting
  window: PSI per stream, detector statistics, edge/heavy disagreement (pruned
  with the telemetry they were counted from); ``drift_detectors`` - each
  device's detector as saved (``.npz`` bytes), so a restarted hub goes on.
- ``devices.judged_state``, ``state_reason``, ``state_since`` (version 12): the
  state the ingest worker last recorded (:mod:`cloud_hub.devices.states`), why
  (kept current while the state holds) and since when; ``device_states`` -
  every change of a device's state, with its reason (pruned with the telemetry
  of its time).

Errors::

    EdgeloopError
     └── StoreError   the database cannot be opened or used (path, fix)
    ValueError        a bad argument: cursor, limit, model conflict, malformed rows
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import logging
import math
import os
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, cast

import numpy as np

from cloud_hub.registry.stages import Stage, StageChange
from cloud_hub.store.base import (
    DEFAULT_MAX_AHEAD,
    F32,
    F64,
    AckWatermark,
    BatchJob,
    ClosedSeqs,
    DeadLetter,
    DesiredRecord,
    DeviceRecord,
    DeviceStateRow,
    DriftEventRow,
    DriftScope,
    DriftStateRow,
    DriftWindowRow,
    EventRecord,
    Gap,
    LabelRecord,
    ModelRecord,
    NewestTelemetry,
    OtaRecord,
    Page,
    PipelineRunRow,
    RolloutCommand,
    RolloutRow,
    StageLogEntry,
    StreamItem,
    TelemetryRows,
    WriteResult,
)
from cloud_hub.store.ledger import Ledger
from shared.baseline import Baseline
from shared.epochs import is_replay_epoch
from shared.errors import EdgeloopError, ManifestError
from shared.manifest import ModelManifest, manifest_file_bytes
from shared.messages import Event, Health, Ota, Status

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "StoreError"]

logger = logging.getLogger(__name__)
_SIDE_FILES: Final = ("-wal", "-shm")

SCHEMA_VERSION: Final = 12
"""The schema version this build creates and reads."""

_HUB: Final = ""
"""The ``counters.device`` of hub-wide counters (device ids are never empty)."""
_PAYLOAD_HEAD: Final = 1024
_PRUNE_CHUNK: Final = 2000
"""Telemetry messages deleted per prune transaction: ingest waits at most one chunk."""
_T_CURSOR: Final = struct.Struct("<2sdqq")
_E_CURSOR: Final = struct.Struct("<2sdq")
_MIN_SQLITE: Final = (3, 25, 0)
_F4: Final = np.dtype("<f4")
_F8: Final = np.dtype("<f8")


class StoreError(EdgeloopError):
    """The store's database cannot be opened or used; ``path`` names the file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------- schema


def _live_epoch(epoch: int) -> int:
    """The epoch a device record keeps: a replay's counts as 0 (below every live one)."""
    return 0 if is_replay_epoch(epoch) else epoch


def _migrate_to_1(db: sqlite3.Connection) -> None:
    statements = [
        """CREATE TABLE devices (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL DEFAULT 'never_seen'
                CHECK (state IN ('online', 'offline', 'never_seen')),
            epoch INTEGER NOT NULL DEFAULT 0,
            agent_version TEXT,
            model_version TEXT,
            first_seen REAL,
            last_seen REAL,
            last_health TEXT,
            telemetry_span REAL NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE watermarks (
            device_id INTEGER NOT NULL REFERENCES devices (id),
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (device_id, epoch)
        ) WITHOUT ROWID""",
        """CREATE TABLE pending (
            device_id INTEGER NOT NULL REFERENCES devices (id),
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (device_id, epoch, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE telemetry (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices (id),
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            first_ts REAL NOT NULL,
            last_ts REAL NOT NULL,
            n INTEGER NOT NULL,
            received_at REAL NOT NULL,
            edge_model_version TEXT NOT NULL,
            heavy_model_version TEXT NOT NULL,
            n_features INTEGER NOT NULL,
            n_edge INTEGER NOT NULL,
            n_heavy INTEGER NOT NULL,
            ts BLOB NOT NULL,
            features BLOB NOT NULL,
            edge_scores BLOB NOT NULL,
            heavy_scores BLOB NOT NULL
        )""",
        "CREATE INDEX telemetry_by_time ON telemetry (device_id, first_ts)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices (id),
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            model_version TEXT NOT NULL,
            rule TEXT NOT NULL,
            score REAL NOT NULL,
            sensor TEXT,
            value REAL,
            action TEXT NOT NULL,
            action_ok INTEGER NOT NULL,
            detail TEXT NOT NULL,
            received_at REAL NOT NULL
        )""",
        "CREATE INDEX events_by_time ON events (ts)",
        "CREATE INDEX events_by_device_time ON events (device_id, ts)",
        """CREATE TABLE ota (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES devices (id),
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            from_version TEXT,
            to_version TEXT,
            detail TEXT NOT NULL,
            received_at REAL NOT NULL
        )""",
        "CREATE INDEX ota_by_device_time ON ota (device_id, ts)",
        """CREATE TABLE counters (
            device TEXT NOT NULL,
            name TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (device, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY,
            received_at REAL NOT NULL,
            topic TEXT NOT NULL,
            device TEXT,
            reason TEXT NOT NULL,
            error TEXT NOT NULL,
            payload_head BLOB NOT NULL,
            payload_size INTEGER NOT NULL
        )""",
        "CREATE INDEX dead_letters_by_device ON dead_letters (device)",
        """CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            variant TEXT NOT NULL,
            path TEXT NOT NULL,
            registered_at REAL NOT NULL,
            manifest TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Seqs above the watermark as a ledger of ranges (O(gaps)), not a row per message."""
    db.execute("ALTER TABLE watermarks ADD COLUMN ledger TEXT")
    pending: dict[tuple[int, int], list[int]] = {}
    for device_id, epoch, seq in db.execute(
        "SELECT device_id, epoch, seq FROM pending ORDER BY device_id, epoch, seq"
    ):
        pending.setdefault((int(device_id), int(epoch)), []).append(int(seq))
    now = time.time()
    for (device_id, epoch), seqs in pending.items():
        row = db.execute(
            "SELECT seq FROM watermarks WHERE device_id = ? AND epoch = ?", (device_id, epoch)
        ).fetchone()
        ledger = Ledger(0 if row is None else int(row[0]))
        for seq in seqs:
            ledger.claim(seq, now=now, max_ahead=2**62)
        db.execute(
            "INSERT INTO watermarks (device_id, epoch, seq, ledger) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (device_id, epoch) DO UPDATE SET seq = excluded.seq, "
            "ledger = excluded.ledger",
            (device_id, epoch, ledger.wm, ledger.dumps()),
        )
    db.execute("DROP TABLE pending")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Retention counts from arrival, not from the readings' own timestamps."""
    db.execute("CREATE INDEX telemetry_by_arrival ON telemetry (received_at)")


def _migrate_to_4(db: sqlite3.Connection) -> None:
    """Batch scoring jobs over stored telemetry (``POST /v1/batch/jobs``)."""
    db.execute(
        """CREATE TABLE batch_jobs (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            devices TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            rows_total INTEGER,
            rows_done INTEGER NOT NULL,
            devices_done INTEGER NOT NULL,
            urgent_rows INTEGER NOT NULL,
            result_path TEXT,
            error TEXT
        )"""
    )
    db.execute("CREATE INDEX batch_jobs_by_time ON batch_jobs (created_at)")


def _migrate_to_5(db: sqlite3.Connection) -> None:
    """Per-device baselines: one per device, replaced when a new one is recorded."""
    db.execute(
        """CREATE TABLE baselines (
            device_id INTEGER PRIMARY KEY REFERENCES devices (id),
            model TEXT NOT NULL,
            recorded_at REAL NOT NULL,
            baseline TEXT NOT NULL
        )"""
    )


def _migrate_to_6(db: sqlite3.Connection) -> None:
    """The name of each device's model, from its birth: versions alone do not tell
    ``machine-edge 1.1.0`` from ``rig-edge 1.0.0``."""
    db.execute("ALTER TABLE devices ADD COLUMN model TEXT")


def _migrate_to_7(db: sqlite3.Connection) -> None:
    """The registry: a stage per model version, who registered it, its signature,
    and the log of stage changes. Versions registered before are candidates."""
    for column in (
        "stage TEXT NOT NULL DEFAULT 'candidate'",
        "stage_changed_at REAL",
        "registered_by TEXT NOT NULL DEFAULT ''",
        "signature BLOB",
        "source TEXT NOT NULL DEFAULT ''",
    ):
        db.execute(f"ALTER TABLE models ADD COLUMN {column}")
    db.execute(
        """CREATE TABLE model_stages (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            at REAL NOT NULL,
            from_stage TEXT,
            to_stage TEXT NOT NULL,
            by TEXT NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX model_stages_by_model ON model_stages (name, version)")


def _migrate_to_8(db: sqlite3.Connection) -> None:
    """OTA desired state: one row per device."""
    db.execute(
        """CREATE TABLE desired (
            device_id INTEGER PRIMARY KEY REFERENCES devices (id),
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            rollout TEXT NOT NULL,
            allow_downgrade INTEGER NOT NULL,
            set_at REAL NOT NULL
        )"""
    )


def _migrate_to_9(db: sqlite3.Connection) -> None:
    """Rollouts and the commands queued for the hub's rollout manager."""
    db.execute(
        """CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            body TEXT NOT NULL,
            marks TEXT NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE rollout_commands (
            id INTEGER PRIMARY KEY,
            rollout TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            at REAL NOT NULL,
            done_at REAL,
            error TEXT
        )"""
    )


def _migrate_to_10(db: sqlite3.Connection) -> None:
    """Ground-truth labels, and the retraining pipeline's recorded runs."""
    db.execute(
        """CREATE TABLE labels (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            model TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL NOT NULL,
            label TEXT NOT NULL,
            created_at REAL NOT NULL,
            by TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX labels_by_device ON labels (device, since)")
    db.execute(
        """CREATE TABLE pipeline_runs (
            id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            state TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            deadline REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX pipeline_runs_by_model ON pipeline_runs (model, state)")


def _migrate_to_11(db: sqlite3.Connection) -> None:
    """Drift: each device's state per model version, state changes, closed windows."""
    db.execute(
        """CREATE TABLE drift_states (
            device TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ok', 'drifting', 'recovered')),
            since REAL,
            streams TEXT NOT NULL,
            readings INTEGER NOT NULL,
            last_reading_at REAL NOT NULL,
            PRIMARY KEY (device, model, version)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE drift_events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('device', 'fleet')),
            device TEXT,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            state TEXT NOT NULL,
            previous TEXT NOT NULL,
            streams TEXT NOT NULL,
            detail TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX drift_events_by_time ON drift_events (at)")
    db.execute(
        """CREATE TABLE drift_windows (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            start_at REAL NOT NULL,
            end_at REAL NOT NULL,
            readings INTEGER NOT NULL,
            psi TEXT NOT NULL,
            statistic TEXT NOT NULL,
            disagreement REAL
        )"""
    )
    db.execute("CREATE INDEX drift_windows_by_device ON drift_windows (device, end_at)")
    db.execute(
        "CREATE INDEX drift_windows_by_version ON drift_windows (model, version, device, end_at)"
    )
    db.execute(
        """CREATE TABLE drift_detectors (
            device TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            state BLOB NOT NULL,
            saved_at REAL NOT NULL,
            PRIMARY KEY (device, model, version)
        ) WITHOUT ROWID"""
    )


def _migrate_to_12(db: sqlite3.Connection) -> None:
    """Device states: each device's judged state, reason and since; every change."""
    db.execute("ALTER TABLE devices ADD COLUMN judged_state TEXT")
    db.execute("ALTER TABLE devices ADD COLUMN state_reason TEXT")
    db.execute("ALTER TABLE devices ADD COLUMN state_since REAL")
    db.execute(
        """CREATE TABLE device_states (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            device TEXT NOT NULL,
            state TEXT NOT NULL,
            previous TEXT NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX device_states_by_time ON device_states (at)")
    db.execute("CREATE INDEX device_states_by_device ON device_states (device, at)")


_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
    6: _migrate_to_6,
    7: _migrate_to_7,
    8: _migrate_to_8,
    9: _migrate_to_9,
    10: _migrate_to_10,
    11: _migrate_to_11,
    12: _migrate_to_12,
}
"""Version -> the function that brings the schema from version-1 to it."""


# --------------------------------------------------------------------------- helpers


def _f32_bytes(arr: F32 | F64) -> bytes:
    return np.ascontiguousarray(arr, dtype=_F4).tobytes()


def _f32(blob: bytes, n: int, cols: int) -> F32:
    return np.frombuffer(blob, dtype=_F4).reshape(n, cols).astype(np.float32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(cursor: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{what} cursor {cursor[:40]!r} is not valid; pass back next_cursor exactly as returned"
        ) from None


_MESSAGE_COLUMNS: Final = (
    "epoch, seq, n, received_at, edge_model_version, heavy_model_version, n_features, "
    "n_edge, n_heavy, ts, features, edge_scores, heavy_scores"
)
"""The columns of a stored telemetry message :func:`_telemetry_rows` reads, in order."""


def _telemetry_rows(
    device: str, message: Sequence[Any], ts: F64, take: np.ndarray
) -> TelemetryRows:
    """The readings ``take`` of a stored message (``message``: :data:`_MESSAGE_COLUMNS`;
    ``ts``: its decoded ts)."""
    epoch, seq, n, received_at, edge_v, heavy_v, n_features, n_edge, n_heavy = message[:9]
    f_blob, e_blob, h_blob = message[10:13]
    return TelemetryRows(
        device=device,
        epoch=int(epoch),
        seq=int(seq),
        edge_model_version=edge_v,
        heavy_model_version=heavy_v,
        ts=ts[take].astype(np.float64),
        features=_f32(f_blob, n, n_features)[take],
        edge_scores=_f32(e_blob, n, n_edge)[take],
        heavy_scores=_f32(h_blob, n, n_heavy)[take],
        received_at=float(received_at),
    )


def _ota_record(r: Any) -> OtaRecord:
    """An :class:`OtaRecord` from a row of id, device name, the report's fields, received_at."""
    return OtaRecord(int(r[0]), Ota(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]), r[10])


def _check_limit(limit: int, what: str) -> None:
    if limit < 1:
        raise ValueError(f"{what}: limit must be at least 1, got {limit}")


def _check_rows(item: TelemetryRows) -> None:
    """Reject a malformed TelemetryRows before anything is written (a bug in the caller)."""
    where = f"telemetry of {item.device!r} epoch {item.epoch} seq {item.seq}"
    if item.ts.ndim != 1 or item.ts.shape[0] == 0:
        raise ValueError(f"{where}: ts must be a non-empty 1-d array, has shape {item.ts.shape}")
    n = item.ts.shape[0]
    for name in ("features", "edge_scores", "heavy_scores"):
        arr: F32 = getattr(item, name)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"{where}: {name} must be {n} x k, has shape {arr.shape}")
    if not np.isfinite(item.ts).all():
        raise ValueError(f"{where}: ts holds NaN or infinite values")


@dataclass(slots=True)
class _Pair:
    """One (device, epoch) during a write transaction."""

    device_id: int
    ledger: Ledger
    before: str
    """The ledger as stored before this transaction (unchanged: no write)."""


# --------------------------------------------------------------------------- the store


class SQLiteStore:
    """The hub's store in one SQLite file, WAL mode. See the module docstring.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp, SQLiteStore(pathlib.Path(tmp) / "hub.db") as s:
    ...     s.add_device("pi-07")
    ...     s.device("pi-07").state
    'never_seen'
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._closed = False
        self._write_lock = threading.Lock()
        self._sync_full: bool | None = None
        self._device_ids: dict[str, int] = {}
        self._local = threading.local()
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"store {str(self.path)!r}: cannot create its directory ({exc.strerror}); "
                "check the path and permissions",
                path=str(self.path),
            ) from None
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"store {str(self.path)!r}: SQLite {sqlite3.sqlite_version} is too old; the "
                f"store needs {'.'.join(map(str, _MIN_SQLITE))} or newer (upsert, window functions)",
                path=str(self.path),
            )
        self._make_private()
        self._writer = self._connect()
        try:
            self._setup_writer()
        except sqlite3.Error as exc:
            self._writer.close()
            raise StoreError(
                f"store {str(self.path)!r}: cannot set up the database ({exc}); "
                "check the file, its permissions and free space",
                path=str(self.path),
            ) from exc
        except BaseException:
            self._writer.close()
            raise

    # -- life cycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection. Call it once readers are done; idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers.values():
                conn.close()
            self._readers.clear()

    def _make_private(self) -> None:
        """Create the database file 0600, or narrow an existing one (and its WAL and SHM)
        that others may read; see "Access" in the module docstring."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(
                f"store {str(self.path)!r}: cannot create the database ({exc.strerror}); "
                "check the path and permissions",
                path=str(self.path),
            ) from None
        else:
            os.close(fd)
            return
        for path in (self.path, *(self.path.with_name(self.path.name + s) for s in _SIDE_FILES)):
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    path.chmod(mode & stat.S_IRWXU)
                    logger.warning(
                        "store %s: mode %04o let other users read it; narrowed to %04o",
                        path,
                        mode,
                        mode & stat.S_IRWXU,
                    )
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning(
                    "store %s: other users may read it and it cannot be narrowed (%s); "
                    "run 'chmod 600 %s'",
                    path,
                    exc.strerror,
                    path,
                )

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # we BEGIN and COMMIT ourselves
                check_same_thread=False,  # see the module docstring
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {str(self.path)!r}: cannot open the database ({exc}); "
                "check the path, its permissions and free space",
                path=str(self.path),
            ) from None
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _setup_writer(self) -> None:
        db = self._writer
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"store {str(self.path)!r}: not a usable SQLite database ({exc}); "
                "point the hub at another file or remove this one",
                path=str(self.path),
            ) from None
        if str(mode).lower() != "wal":
            raise StoreError(
                f"store {str(self.path)!r}: SQLite refused WAL mode (journal_mode is {mode!r}); "
                "put the database on a local file system",
                path=str(self.path),
            )
        db.execute("PRAGMA journal_size_limit = 67108864")
        self._set_sync(full=True)
        with self._write(full=True) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = int(row[0] or 0)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"store {str(self.path)!r}: schema version {current} is newer than this "
                    f"build reads ({SCHEMA_VERSION}); upgrade edgeloop",
                    path=str(self.path),
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                logger.info("store %s: migrating schema to version %d", self.path, version)
                _MIGRATIONS[version](db)
                db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )

    def _set_sync(self, *, full: bool) -> None:
        if self._sync_full is not full:
            self._writer.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    @contextmanager
    def _write(self, *, full: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection, under the lock."""
        with self._write_lock:
            if self._closed:
                raise StoreError(f"store {str(self.path)!r} is closed", path=str(self.path))
            db = self._writer
            self._set_sync(full=full)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        if self._closed:
            raise StoreError(f"store {str(self.path)!r} is closed", path=str(self.path))
        with self._readers_lock:
            if self._closed:  # close() ran while we waited: do not leak a connection
                raise StoreError(f"store {str(self.path)!r} is closed", path=str(self.path))
            for thread in [t for t in self._readers if not t.is_alive()]:
                self._readers.pop(thread).close()
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._readers[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction (a consistent snapshot) on this thread's reader."""
        db = self._reader()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    # -- the stream

    def write_stream(
        self, items: Sequence[StreamItem], *, max_ahead: int = DEFAULT_MAX_AHEAD
    ) -> WriteResult:
        """Store every new message of ``items`` in one transaction, durably.

        Duplicates (already stored, or repeated within ``items``) are reported
        and nothing is written for them. A seq below 1 (the stream starts at 1)
        is reported as a duplicate too: it can never be new. Events and OTA
        transitions are stamped ``received_at`` = now; telemetry carries its own.
        """
        if not items:
            return WriteResult(0, 0, [], [], [])
        for item in items:
            if isinstance(item, TelemetryRows):
                _check_rows(item)
            elif not isinstance(item, Event | Ota):
                raise TypeError(
                    f"write_stream takes TelemetryRows, Event or Ota, got {type(item).__name__}"
                )
        now = time.time()
        new_ids: dict[str, int] = {}
        with self._write(full=True) as db:
            seen: dict[str, tuple[float, float]] = {}  # device -> (last_seen, telemetry span)
            for item in items:
                at = item.received_at if isinstance(item, TelemetryRows) else now
                span = (
                    float(item.ts.max() - item.ts.min()) if isinstance(item, TelemetryRows) else 0.0
                )
                last, old_span = seen.get(item.device, (at, 0.0))
                seen[item.device] = (max(last, at), max(old_span, span))
            ids: dict[str, int] = {}
            for name, (last_seen, span) in seen.items():
                db.execute(
                    "INSERT INTO devices (name, state, first_seen, last_seen, telemetry_span) "
                    "VALUES (?, 'online', ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen), "
                    "first_seen = coalesce(first_seen, excluded.first_seen), "
                    "state = CASE state WHEN 'never_seen' THEN 'online' ELSE state END, "
                    "telemetry_span = max(telemetry_span, excluded.telemetry_span)",
                    (name, last_seen, last_seen, span),
                )
                ids[name] = self._device_ids.get(name) or self._lookup_id(db, name, new_ids)

            pairs: dict[tuple[str, int], _Pair] = {}
            duplicates: list[tuple[str, int, int]] = []
            too_far: list[tuple[str, int, int]] = []
            telemetry: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            otas: list[tuple[Any, ...]] = []
            readings = 0
            for item in items:
                key = (item.device, item.epoch)
                pair = pairs.get(key)
                if pair is None:
                    pair = pairs[key] = self._load_pair(db, ids[item.device], item.epoch)
                claim = pair.ledger.claim(item.seq, now=now, max_ahead=max_ahead)
                if claim == "duplicate":
                    duplicates.append((item.device, item.epoch, item.seq))
                    continue
                if claim == "too_far":
                    too_far.append((item.device, item.epoch, item.seq))
                    continue
                dev = pair.device_id
                if isinstance(item, TelemetryRows):
                    readings += len(item)
                    telemetry.append(
                        (
                            dev,
                            item.epoch,
                            item.seq,
                            float(item.ts.min()),
                            float(item.ts.max()),
                            len(item),
                            item.received_at,
                            item.edge_model_version,
                            item.heavy_model_version,
                            item.features.shape[1],
                            item.edge_scores.shape[1],
                            item.heavy_scores.shape[1],
                            np.ascontiguousarray(item.ts, dtype=_F8).tobytes(),
                            _f32_bytes(item.features),
                            _f32_bytes(item.edge_scores),
                            _f32_bytes(item.heavy_scores),
                        )
                    )
                elif isinstance(item, Event):
                    events.append(
                        (
                            dev,
                            item.epoch,
                            item.seq,
                            item.ts,
                            item.model_version,
                            item.rule,
                            item.score,
                            item.sensor,
                            item.value,
                            item.action,
                            item.action_ok,
                            item.detail,
                            now,
                        )
                    )
                else:
                    otas.append(
                        (
                            dev,
                            item.epoch,
                            item.seq,
                            item.ts,
                            item.state,
                            item.reason,
                            item.from_version,
                            item.to_version,
                            item.detail,
                            now,
                        )
                    )
            if telemetry:
                db.executemany(
                    "INSERT INTO telemetry (device_id, epoch, seq, first_ts, last_ts, n, "
                    "received_at, edge_model_version, heavy_model_version, n_features, n_edge, "
                    "n_heavy, ts, features, edge_scores, heavy_scores) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    telemetry,
                )
            if events:
                db.executemany(
                    "INSERT INTO events (device_id, epoch, seq, ts, model_version, rule, score, "
                    "sensor, value, action, action_ok, detail, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    events,
                )
            if otas:
                db.executemany(
                    "INSERT INTO ota (device_id, epoch, seq, ts, state, reason, from_version, "
                    "to_version, detail, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    otas,
                )
            watermarks = [
                AckWatermark(device, epoch, self._save_pair(db, epoch, pair))
                for (device, epoch), pair in pairs.items()
            ]
        # Only now is the transaction committed: ids of devices it created are real.
        self._device_ids.update(new_ids)
        return WriteResult(
            stored=len(telemetry) + len(events) + len(otas),
            readings=readings,
            duplicates=duplicates,
            watermarks=watermarks,
            too_far=too_far,
        )

    def _lookup_id(self, db: sqlite3.Connection, name: str, new_ids: dict[str, int]) -> int:
        device_id = int(db.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()[0])
        new_ids[name] = device_id
        return device_id

    @staticmethod
    def _load_pair(db: sqlite3.Connection, device_id: int, epoch: int) -> _Pair:
        row = db.execute(
            "SELECT seq, ledger FROM watermarks WHERE device_id = ? AND epoch = ?",
            (device_id, epoch),
        ).fetchone()
        if row is None:
            return _Pair(device_id, Ledger(), "")
        ledger = Ledger.loads(int(row[0]), row[1])
        return _Pair(device_id, ledger, ledger.dumps() + str(ledger.wm))

    @staticmethod
    def _save_pair(db: sqlite3.Connection, epoch: int, pair: _Pair) -> int:
        """Store the pair's ledger if it changed; returns its watermark."""
        ledger = pair.ledger
        text = ledger.dumps()
        if text + str(ledger.wm) != pair.before:
            db.execute(
                "INSERT INTO watermarks (device_id, epoch, seq, ledger) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id, epoch) DO UPDATE SET seq = excluded.seq, "
                "ledger = excluded.ledger",
                (pair.device_id, epoch, ledger.wm, text),
            )
        return ledger.wm

    def _pairs_write(
        self, device: str, epoch: int, change: Callable[[Ledger], list[tuple[int, int]] | None]
    ) -> tuple[list[tuple[int, int]] | None, int]:
        """Apply ``change`` to one (device, epoch)'s ledger in one transaction."""
        with self._write(full=True) as db:
            db.execute(
                "INSERT INTO devices (name, state) VALUES (?, 'online') ON CONFLICT (name) DO NOTHING",
                (device,),
            )
            device_id = int(
                db.execute("SELECT id FROM devices WHERE name = ?", (device,)).fetchone()[0]
            )
            pair = self._load_pair(db, device_id, epoch)
            changed = change(pair.ledger)
            return changed, self._save_pair(db, epoch, pair)

    def close_seqs(
        self, device: str, epoch: int, first: int, last: int, *, max_ahead: int = DEFAULT_MAX_AHEAD
    ) -> ClosedSeqs | None:
        """Settle the unsettled seqs of first..last without storing anything (declared
        dropped at the edge, or refused by the hub); durable when it returns. None when
        ``last`` is more than ``max_ahead`` beyond the watermark."""
        closed, wm = self._pairs_write(
            device,
            epoch,
            lambda led: led.close(first, last, now=time.time(), max_ahead=max_ahead),
        )
        return None if closed is None else ClosedSeqs(device, epoch, closed, wm)

    def note_issued(self, device: str, epoch: int, seq: int, at: float) -> None:
        """The device says it issued seqs up to ``seq`` of ``epoch`` (birth, will, heartbeat)."""

        def change(led: Ledger) -> list[tuple[int, int]]:
            led.note_issued(seq, now=at)
            return []

        self._pairs_write(device, epoch, change)

    def expire_gaps(self, before: float) -> list[ClosedSeqs]:
        """Close every gap first seen before ``before`` (lost, unexplained)."""
        out: list[ClosedSeqs] = []
        with self._write(full=True) as db:
            rows = db.execute(
                "SELECT d.name, w.device_id, w.epoch, w.seq, w.ledger FROM watermarks w "
                "JOIN devices d ON d.id = w.device_id WHERE w.ledger IS NOT NULL "
                'AND w.ledger != \'{"r":[],"i":0,"t":0.0}\''
            ).fetchall()
            for name, device_id, epoch, wm, text in rows:
                pair = _Pair(int(device_id), Ledger.loads(int(wm), text), "")
                closed = pair.ledger.expire(before=before)
                if closed:
                    new_wm = self._save_pair(db, int(epoch), pair)
                    out.append(ClosedSeqs(str(name), int(epoch), closed, new_wm))
        return out

    def gaps(self, device: str | None = None, limit: int = 1000) -> list[Gap]:
        """Missing seq ranges (below stored ones, or up to the last seq a device said
        it issued), by device, epoch and seq. Reads one row per (device, epoch)."""
        _check_limit(limit, "gaps")
        sql = (
            "SELECT d.name, w.epoch, w.seq, w.ledger FROM watermarks w "
            "JOIN devices d ON d.id = w.device_id WHERE w.ledger IS NOT NULL {where} "
            "ORDER BY d.name, w.epoch"
        )
        with self._read() as db:
            if device is None:
                rows = db.execute(sql.format(where="")).fetchall()
            else:
                rows = db.execute(sql.format(where="AND d.name = ?"), (device,)).fetchall()
        out: list[Gap] = []
        for name, epoch, wm, text in rows:
            for first, last, _seen in Ledger.loads(int(wm), text).gaps():
                out.append(Gap(str(name), int(epoch), first, last))
                if len(out) >= limit:
                    return out
        return out

    def watermark(self, device: str, epoch: int) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT w.seq FROM watermarks w JOIN devices d ON d.id = w.device_id "
                "WHERE d.name = ? AND w.epoch = ?",
                (device, epoch),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def watermarks(self, device: str) -> dict[int, int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT w.epoch, w.seq FROM watermarks w JOIN devices d ON d.id = w.device_id "
                "WHERE d.name = ? ORDER BY w.epoch",
                (device,),
            ).fetchall()
        return {int(epoch): int(seq) for epoch, seq in rows}

    # -- devices

    def record_status(self, status: Status, received_at: float) -> None:
        """Birth or will. A status of an older epoch than the device's is stale:
        it updates last_seen only (a late will must not mark a restarted agent offline).
        The model (name and version) is taken from a birth, not from a will: the agent
        composes its will at connect, so the will may name a model it has since left.
        A replay's epoch (:mod:`shared.epochs`) is never the device's: it counts as 0, so a
        replay moves the state of a device that has no live agent, and leaves a live one's."""
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (name, state, epoch, agent_version, model_version, "
                "first_seen, last_seen, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "state = CASE WHEN excluded.epoch >= epoch THEN excluded.state ELSE state END, "
                "agent_version = CASE WHEN excluded.epoch >= epoch THEN excluded.agent_version ELSE agent_version END, "
                "model_version = CASE WHEN excluded.epoch >= epoch AND excluded.state = 'online' "
                "THEN excluded.model_version ELSE model_version END, "
                "model = CASE WHEN excluded.epoch >= epoch AND excluded.state = 'online' "
                "THEN excluded.model ELSE model END, "
                "epoch = max(epoch, excluded.epoch), "
                "first_seen = coalesce(first_seen, excluded.first_seen), "
                "last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen)",
                (
                    status.device,
                    status.state,
                    _live_epoch(status.epoch),
                    status.agent_version,
                    status.model_version,
                    received_at,
                    received_at,
                    status.model,
                ),
            )

    def record_health(self, health: Health, received_at: float) -> None:
        """A heartbeat: kept as ``last_health``; its model (name and version, together)
        is the device's when it is of the device's current epoch."""
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (name, state, epoch, model_version, model, first_seen, "
                "last_seen, last_health) VALUES (?, 'online', ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "state = CASE state WHEN 'never_seen' THEN 'online' ELSE state END, "
                "epoch = CASE WHEN state = 'never_seen' THEN excluded.epoch ELSE epoch END, "
                "model_version = CASE WHEN state = 'never_seen' OR excluded.epoch = epoch THEN "
                "excluded.model_version ELSE model_version END, "
                "model = CASE WHEN state = 'never_seen' OR excluded.epoch = epoch THEN "
                "excluded.model ELSE model END, "
                "first_seen = coalesce(first_seen, excluded.first_seen), "
                "last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen), "
                "last_health = excluded.last_health",
                (
                    health.device,
                    _live_epoch(health.epoch),
                    health.model_version,
                    health.model,
                    received_at,
                    received_at,
                    json.dumps(health.to_dict()),
                ),
            )

    def touch(self, device: str, received_at: float) -> None:
        """Any message from ``device`` arrived: update last_seen (creates the device).
        A ``never_seen`` device becomes ``online``."""
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (name, state, first_seen, last_seen) "
                "VALUES (?, 'online', ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "state = CASE state WHEN 'never_seen' THEN 'online' ELSE state END, "
                "first_seen = coalesce(first_seen, excluded.first_seen), "
                "last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen)",
                (device, received_at, received_at),
            )

    def add_device(self, device: str) -> None:
        """Provisioned but not yet seen (state ``never_seen``); no-op if it exists."""
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (device,)
            )

    def devices(self) -> list[DeviceRecord]:
        """Every device, by name, each with its counters."""
        with self._read() as db:
            counts: dict[str, dict[str, int]] = {}
            for dev, name, count in db.execute(
                "SELECT device, name, count FROM counters WHERE device != ?", (_HUB,)
            ):
                counts.setdefault(dev, {})[name] = int(count)
            rows = db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY name").fetchall()
        return [_device_record(row, counts.get(row[0], {})) for row in rows]

    def device(self, device: str) -> DeviceRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE name = ?", (device,)
            ).fetchone()
            if row is None:
                return None
            counts = {
                name: int(count)
                for name, count in db.execute(
                    "SELECT name, count FROM counters WHERE device = ?", (device,)
                )
            }
        return _device_record(row, counts)

    # -- counters

    def add_counters(self, counts: dict[tuple[str | None, str], int]) -> None:
        """Add to counters; a device of None is hub-wide. Counters of devices the
        store does not know are kept too (they do not create a device)."""
        rows = []
        for (device, name), count in counts.items():
            if device == _HUB:
                raise ValueError(f"counter {name!r}: device must be a device id or None, not ''")
            if count:
                rows.append((_HUB if device is None else device, name, count))
        if not rows:
            return
        with self._write() as db:
            db.executemany(
                "INSERT INTO counters (device, name, count) VALUES (?, ?, ?) "
                "ON CONFLICT (device, name) DO UPDATE SET count = count + excluded.count",
                rows,
            )

    def counters(self, device: str | None = None) -> dict[str, int]:
        """Totals by name: one device's, or summed over the hub and every device."""
        with self._read() as db:
            if device is None:
                rows = db.execute("SELECT name, sum(count) FROM counters GROUP BY name").fetchall()
            else:
                rows = db.execute(
                    "SELECT name, count FROM counters WHERE device = ?", (device,)
                ).fetchall()
        return {name: int(count) for name, count in rows}

    def readings_received_since(self, since: float) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT d.name, sum(t.n) FROM telemetry t JOIN devices d ON d.id = t.device_id "
                "WHERE t.received_at >= ? GROUP BY t.device_id",
                (since,),
            ).fetchall()
        return {name: int(n) for name, n in rows}

    def device_counters(self, names: Sequence[str]) -> dict[str, dict[str, int]]:
        if not names:
            return {}
        marks = ", ".join("?" * len(names))
        with self._read() as db:
            rows = db.execute(
                f"SELECT device, name, count FROM counters WHERE device != '' AND name IN ({marks})",
                tuple(names),
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for device, name, count in rows:
            out.setdefault(device, {})[name] = int(count)
        return out

    # -- dead letters

    def add_dead_letters(self, letters: Sequence[DeadLetter], keep: int) -> None:
        """Keep ``letters`` (payload heads cut to 1 KiB), then drop all but the newest ``keep``."""
        if keep < 0:
            raise ValueError(f"dead letters: keep must be >= 0, got {keep}")
        with self._write() as db:
            if letters:
                db.executemany(
                    "INSERT INTO dead_letters (received_at, topic, device, reason, error, "
                    "payload_head, payload_size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            d.received_at,
                            d.topic,
                            d.device,
                            d.reason,
                            d.error,
                            bytes(d.payload_head[:_PAYLOAD_HEAD]),
                            d.payload_size,
                        )
                        for d in letters
                    ],
                )
            db.execute(
                "DELETE FROM dead_letters WHERE id <= "
                "(SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (keep,),
            )

    def dead_letters(self, limit: int = 100, device: str | None = None) -> list[DeadLetter]:
        """The newest dead letters first."""
        _check_limit(limit, "dead_letters")
        cols = "received_at, topic, device, reason, error, payload_head, payload_size"
        with self._read() as db:
            if device is None:
                rows = db.execute(
                    f"SELECT {cols} FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {cols} FROM dead_letters WHERE device = ? ORDER BY id DESC LIMIT ?",
                    (device, limit),
                ).fetchall()
        return [
            DeadLetter(float(at), topic, dev, reason, error, bytes(head), int(size))
            for at, topic, dev, reason, error, head, size in rows
        ]

    # -- reads for the API

    def telemetry(
        self, device: str, since: float, until: float, limit: int, cursor: str | None = None
    ) -> Page[TelemetryRows]:
        """Readings of ``device`` with since <= ts < until, oldest first, at most
        ``limit`` readings per page (a stored message may be split across pages).

        Messages come in order of their first reading; readings within a message
        in their stored order.
        """
        _check_limit(limit, "telemetry")
        start = _decode_telemetry_cursor(cursor) if cursor is not None else None
        items: list[TelemetryRows] = []
        remaining = limit
        next_cursor: str | None = None
        with self._read() as db:
            dev = db.execute(
                "SELECT id, telemetry_span FROM devices WHERE name = ?", (device,)
            ).fetchone()
            if dev is None or not since < until:
                return Page([], None)
            device_id, span = int(dev[0]), float(dev[1])
            # A message holding a reading >= since starts at most `span` before it.
            lowest = since - span * 1.001 - 1.0
            sql = (
                f"SELECT id, first_ts, {_MESSAGE_COLUMNS} FROM telemetry WHERE device_id = ? "
                "AND first_ts >= ? AND first_ts < ? AND last_ts >= ? {after} "
                "ORDER BY first_ts, id"
            )
            if start is None:
                rows = db.execute(sql.format(after=""), (device_id, lowest, until, since))
            else:
                rows = db.execute(
                    sql.format(after="AND (first_ts, id) >= (?, ?)"),
                    (device_id, lowest, until, since, start[0], start[1]),
                )
            try:
                for row in rows:
                    row_id, first_ts = row[:2]
                    ts = np.frombuffer(row[11], dtype=_F8)
                    keep = np.flatnonzero((ts >= since) & (ts < until))
                    if start is not None and row_id == start[1]:
                        keep = keep[keep >= start[2]]
                    if keep.size == 0:
                        continue
                    if remaining == 0:
                        next_cursor = _encode_telemetry_cursor(first_ts, row_id, int(keep[0]))
                        break
                    take = keep[:remaining]
                    items.append(_telemetry_rows(device, row[2:], ts, take))
                    remaining -= take.size
                    if take.size < keep.size:
                        next_cursor = _encode_telemetry_cursor(
                            first_ts, row_id, int(keep[take.size])
                        )
                        break
            finally:
                rows.close()  # a page may stop mid-result; release it before COMMIT
        return Page(items, next_cursor)

    def newest_telemetry(
        self, device: str, since: float, until: float, limit: int
    ) -> NewestTelemetry:
        """Whole messages, newest first (by first reading), until ``limit`` readings;
        the count: stored ``n`` of messages wholly inside, readings counted in the
        messages crossing an end."""
        _check_limit(limit, "telemetry")
        taken: list[TelemetryRows] = []
        with self._read() as db:
            dev = db.execute(
                "SELECT id, telemetry_span FROM devices WHERE name = ?", (device,)
            ).fetchone()
            if dev is None or not since < until:
                return NewestTelemetry([], 0)
            device_id, span = int(dev[0]), float(dev[1])
            lowest = since - span * 1.001 - 1.0
            inside = db.execute(
                "SELECT coalesce(sum(n), 0) FROM telemetry WHERE device_id = ? "
                "AND first_ts >= ? AND last_ts < ?",
                (device_id, since, until),
            ).fetchone()
            readings = int(inside[0])
            for (ts_blob,) in db.execute(
                "SELECT ts FROM telemetry WHERE device_id = ? AND first_ts >= ? "
                "AND first_ts < ? AND last_ts >= ? AND (first_ts < ? OR last_ts >= ?)",
                (device_id, lowest, until, since, since, until),
            ):
                ts = np.frombuffer(ts_blob, dtype=_F8)
                readings += int(np.count_nonzero((ts >= since) & (ts < until)))
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} "
                "FROM telemetry WHERE device_id = ? AND first_ts >= ? AND first_ts < ? "
                "AND last_ts >= ? ORDER BY first_ts DESC, id DESC",
                (device_id, lowest, until, since),
            )
            try:
                kept = 0
                for row in rows:
                    ts = np.frombuffer(row[9], dtype=_F8)
                    keep = np.flatnonzero((ts >= since) & (ts < until))
                    if keep.size == 0:
                        continue
                    taken.append(_telemetry_rows(device, row, ts, keep))
                    kept += keep.size
                    if kept >= limit:
                        break
            finally:
                rows.close()
        taken.reverse()
        return NewestTelemetry(taken, readings)

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
        _check_limit(limit, "events")
        where = ["e.ts >= ?", "e.ts < ?"]
        args: list[Any] = [since, until]
        if device is not None:
            where.append("e.device_id = (SELECT id FROM devices WHERE name = ?)")
            args.append(device)
        if cursor is not None:
            where.append(f"(e.ts, e.id) {'<' if newest_first else '>'} (?, ?)")
            args.extend(_decode_event_cursor(cursor))
        order = "e.ts DESC, e.id DESC" if newest_first else "e.ts, e.id"
        args.append(limit + 1)
        with self._read() as db:
            rows = db.execute(
                "SELECT e.id, d.name, e.epoch, e.seq, e.ts, e.model_version, e.rule, e.score, "
                "e.sensor, e.value, e.action, e.action_ok, e.detail, e.received_at "
                "FROM events e JOIN devices d ON d.id = e.device_id "
                f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
                args,
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            EventRecord(
                Event(
                    device=name,
                    epoch=int(epoch),
                    seq=int(seq),
                    ts=float(ts),
                    model_version=model_version,
                    rule=rule,
                    score=float(score),
                    sensor=sensor,
                    value=None if value is None else float(value),
                    action=action,
                    action_ok=bool(action_ok),
                    detail=detail,
                ),
                float(received_at),
            )
            for (
                _,
                name,
                epoch,
                seq,
                ts,
                model_version,
                rule,
                score,
                sensor,
                value,
                action,
                action_ok,
                detail,
                received_at,
            ) in rows
        ]
        next_cursor = _encode_event_cursor(rows[-1][4], rows[-1][0]) if more else None
        return Page(items, next_cursor)

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
        under an existing (name, version) raises ValueError, or, when ``replace``
        (a version rebuilt on purpose: ``models train --force``), takes the new
        manifest, path and time.

        ``manifest_bytes`` (the package's ``manifest.json``; they must hold
        ``manifest``) are stored as they are and served byte for byte: a
        signature covers them. Without them, the record keeps the bytes it has,
        or :func:`~shared.manifest.manifest_file_bytes` for a new one.
        Registering the same manifest again with other bytes (a record of an
        older build, which kept a re-serialization) takes the new bytes.

        Registering the same manifest again at another ``path`` moves the record
        there (the manifest's sha256 vouches that it is the same artifact) and
        keeps the first ``registered_at``, stage and ``registered_by``. A
        ``signature`` given is kept (a record never loses one by registering
        the package again unsigned).
        """
        if manifest_bytes is not None:
            try:
                held = ModelManifest.from_dict(json.loads(manifest_bytes))
            except (ManifestError, ValueError):
                held = None
            if held != manifest:
                raise ValueError(
                    f"model {manifest.name} {manifest.version}: the manifest bytes given do not "
                    "hold the manifest registered with them"
                )
        data = manifest_file_bytes(manifest) if manifest_bytes is None else manifest_bytes
        text = data.decode("utf-8")
        name, version = manifest.name, manifest.version
        where = "WHERE name = ? AND version = ?"

        with self._write() as db:
            row = db.execute(
                f"SELECT manifest, path, signature FROM models {where}", (name, version)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO models (name, version, variant, path, registered_at, manifest, "
                    "stage, stage_changed_at, registered_by, signature, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        manifest.variant,
                        path,
                        registered_at,
                        text,
                        stage.value,
                        registered_at,
                        registered_by,
                        signature,
                        source,
                    ),
                )
                entry = StageLogEntry(
                    name, version, registered_at, None, stage, registered_by, "registered"
                )
                _log_stage(db, entry)
            else:
                stored, old_path, old_sig = row
                old = _parse_manifest(name, version, stored)
                keep_sig = signature if signature is not None else old_sig
                if old is None or old.manifest != manifest:
                    if old is not None and not replace:
                        raise ValueError(
                            f"model {name} {version} is already registered (from "
                            f"{old_path}) with a different manifest; a changed model needs a new "
                            "version"
                        )
                    if old is None:
                        # A record of a manifest format this build no longer reads (the
                        # sensors moved into the manifest in format 2): the package was
                        # rebuilt; take it.
                        logger.warning(
                            "model %s %s: replacing its record of an older manifest format",
                            name,
                            version,
                        )
                    # A rebuilt version: its old signature is over other bytes.
                    db.execute(
                        "UPDATE models SET variant = ?, path = ?, registered_at = ?, manifest = ?, "
                        f"signature = ? {where}",
                        (manifest.variant, path, registered_at, text, signature, name, version),
                    )
                else:
                    keep = text if manifest_bytes is not None else stored
                    if old_path != path or keep != stored or keep_sig != old_sig:
                        db.execute(
                            f"UPDATE models SET path = ?, manifest = ?, signature = ? {where}",
                            (path, keep, keep_sig, name, version),
                        )
            got = db.execute(f"SELECT {_MODEL_COLUMNS} FROM models {where}", (name, version))
            record = _model_record(got.fetchone())
        assert record is not None  # it holds ``manifest``, which this build reads
        return record

    def change_model_stages(
        self, name: str, changes: Sequence[StageChange], at: float, by: str
    ) -> None:
        with self._write() as db:
            for change in changes:
                row = db.execute(
                    "SELECT stage FROM models WHERE name = ? AND version = ?",
                    (name, change.version),
                ).fetchone()
                if row is None:
                    raise ValueError(f"model {name} has no version {change.version}")
                if row[0] != change.from_stage.value:
                    raise ValueError(
                        f"model {name} {change.version} is {row[0]} now, not "
                        f"{change.from_stage.value}: another change came first; look again"
                    )
                db.execute(
                    "UPDATE models SET stage = ?, stage_changed_at = ? WHERE name = ? AND version = ?",
                    (change.to_stage.value, at, name, change.version),
                )
                entry = StageLogEntry(
                    name, change.version, at, change.from_stage, change.to_stage, by, change.reason
                )
                _log_stage(db, entry)

    def stage_log(self, name: str, version: str | None = None) -> list[StageLogEntry]:
        sql = "SELECT name, version, at, from_stage, to_stage, by, reason FROM model_stages WHERE name = ?"
        args: tuple[str, ...] = (name,)
        if version is not None:
            sql += " AND version = ?"
            args += (version,)
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            StageLogEntry(n, v, float(at), None if f is None else Stage(f), Stage(t), b, r)
            for n, v, at, f, t, b, r in rows
        ]

    def models(self) -> list[ModelRecord]:
        """Every registered model, by name, then version (oldest first)."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_MODEL_COLUMNS} FROM models").fetchall()
        records = [r for r in map(_model_record, rows) if r is not None]
        return sorted(records, key=lambda r: (r.name, r.manifest.version_key))

    def model(self, name: str, version: str) -> ModelRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        return None if row is None else _model_record(row)  # None too if unreadable

    # -- batch jobs

    def save_batch_job(self, job: BatchJob) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT OR REPLACE INTO batch_jobs ({_JOB_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.state,
                    json.dumps(list(job.devices)),
                    job.since,
                    # SQLite keeps inf as a REAL; json would not, so it goes as it is.
                    job.until,
                    job.model,
                    job.version,
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.rows_total,
                    job.rows_done,
                    job.devices_done,
                    job.urgent_rows,
                    job.result_path,
                    job.error,
                ),
            )

    def batch_job(self, job_id: str) -> BatchJob | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else _batch_job(row)

    def batch_jobs(self, limit: int = 100) -> list[BatchJob]:
        _check_limit(limit, "batch_jobs")
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM batch_jobs ORDER BY created_at DESC, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_batch_job(r) for r in rows]

    def fail_unfinished_batch_jobs(self, reason: str, at: float) -> list[str]:
        with self._write() as db:
            ids = [
                str(r[0])
                for r in db.execute(
                    "SELECT id FROM batch_jobs WHERE state IN ('queued', 'running') ORDER BY id"
                )
            ]
            db.execute(
                "UPDATE batch_jobs SET state = 'failed', error = ?, finished_at = ? "
                "WHERE state IN ('queued', 'running')",
                (reason, at),
            )
        return ids

    # -- baselines

    def put_baseline(self, baseline: Baseline, recorded_at: float) -> None:
        """Record ``baseline`` as its device's, replacing an earlier one (creates the device)."""
        text = json.dumps(baseline.to_dict(), separators=(",", ":"))
        with self._write() as db:
            db.execute(
                "INSERT INTO devices (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                (baseline.device,),
            )
            db.execute(
                "INSERT INTO baselines (device_id, model, recorded_at, baseline) "
                "VALUES ((SELECT id FROM devices WHERE name = ?), ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET model = excluded.model, "
                "recorded_at = excluded.recorded_at, baseline = excluded.baseline",
                (baseline.device, baseline.model, recorded_at, text),
            )

    def baseline(self, device: str) -> Baseline | None:
        with self._read() as db:
            row = db.execute(
                "SELECT b.baseline FROM baselines b JOIN devices d ON d.id = b.device_id "
                "WHERE d.name = ?",
                (device,),
            ).fetchone()
        return None if row is None else Baseline.from_dict(json.loads(row[0]), "stored baseline")

    def baselines(self) -> list[Baseline]:
        """Every device's baseline, by device."""
        with self._read() as db:
            rows = db.execute(
                "SELECT b.baseline FROM baselines b JOIN devices d ON d.id = b.device_id "
                "ORDER BY d.name"
            ).fetchall()
        return [Baseline.from_dict(json.loads(r[0]), "stored baseline") for r in rows]

    # -- desired state

    def set_desired(self, records: Sequence[DesiredRecord]) -> None:
        with self._write() as db:
            for r in records:
                db.execute(
                    "INSERT INTO devices (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                    (r.device,),
                )
                db.execute(
                    "INSERT OR REPLACE INTO desired (device_id, model, version, manifest_sha256, size, "
                    "rollout, allow_downgrade, set_at) "
                    "VALUES ((SELECT id FROM devices WHERE name = ?), ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.device,
                        r.model,
                        r.version,
                        r.manifest_sha256,
                        r.size,
                        r.rollout,
                        int(r.allow_downgrade),
                        r.set_at,
                    ),
                )

    def desired(self, device: str) -> DesiredRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_DESIRED_COLUMNS} FROM desired x JOIN devices d ON d.id = x.device_id "
                "WHERE d.name = ?",
                (device,),
            ).fetchone()
        return None if row is None else _desired_record(row)

    def desired_all(self) -> list[DesiredRecord]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_DESIRED_COLUMNS} FROM desired x JOIN devices d ON d.id = x.device_id "
                "ORDER BY d.name"
            ).fetchall()
        return [_desired_record(r) for r in rows]

    def clear_desired(self, device: str) -> bool:
        with self._write() as db:
            cur = db.execute(
                "DELETE FROM desired WHERE device_id = (SELECT id FROM devices WHERE name = ?)",
                (device,),
            )
            return cur.rowcount > 0

    # -- OTA reports and rollouts

    def ota_reports(self, after_id: int, limit: int = 10_000) -> list[OtaRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT o.id, d.name, o.epoch, o.seq, o.ts, o.state, o.reason, o.from_version, "
                "o.to_version, o.detail, o.received_at FROM ota o JOIN devices d "
                "ON d.id = o.device_id WHERE o.id > ? ORDER BY o.id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [_ota_record(r) for r in rows]

    def device_ota_reports(self, device: str, limit: int) -> list[OtaRecord]:
        _check_limit(limit, "OTA reports")
        with self._read() as db:
            rows = db.execute(
                "SELECT o.id, d.name, o.epoch, o.seq, o.ts, o.state, o.reason, o.from_version, "
                "o.to_version, o.detail, o.received_at FROM ota o JOIN devices d "
                "ON d.id = o.device_id WHERE d.name = ? ORDER BY o.id DESC LIMIT ?",
                (device, limit),
            ).fetchall()
        return [_ota_record(r) for r in rows]

    def last_ota_id(self) -> int:
        with self._read() as db:
            row = db.execute("SELECT max(id) FROM ota").fetchone()
        return int(row[0] or 0)

    def save_rollout(self, row: RolloutRow) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO rollouts (id, state, body, marks, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (row.id, row.state, row.body, row.marks, row.updated_at),
            )

    def rollouts(self) -> list[RolloutRow]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, state, body, marks, updated_at FROM rollouts "
                "ORDER BY json_extract(body, '$.created_at') DESC, id"
            ).fetchall()
        return [RolloutRow(*r) for r in rows]

    def rollout(self, rollout_id: str) -> RolloutRow | None:
        with self._read() as db:
            row = db.execute(
                "SELECT id, state, body, marks, updated_at FROM rollouts WHERE id = ?",
                (rollout_id,),
            ).fetchone()
        return None if row is None else RolloutRow(*row)

    def add_rollout_command(self, rollout: str, command: str, args: str, at: float) -> int:
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO rollout_commands (rollout, command, args, at) VALUES (?, ?, ?, ?)",
                (rollout, command, args, at),
            )
            return int(cur.lastrowid or 0)

    def take_rollout_commands(self) -> list[RolloutCommand]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, rollout, command, args, at FROM rollout_commands "
                "WHERE done_at IS NULL ORDER BY id"
            ).fetchall()
        return [RolloutCommand(*r) for r in rows]

    def finish_rollout_command(self, command_id: int, error: str | None, at: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE rollout_commands SET done_at = ?, error = ? WHERE id = ?",
                (at, error, command_id),
            )
            # Keep the outcome of the last 1000 for 'rollout' commands to read back.
            db.execute(
                "DELETE FROM rollout_commands WHERE done_at IS NOT NULL AND id <= "
                "(SELECT max(id) FROM rollout_commands) - 1000"
            )

    def rollout_command_result(self, command_id: int) -> tuple[bool, str | None]:
        with self._read() as db:
            row = db.execute(
                "SELECT done_at, error FROM rollout_commands WHERE id = ?", (command_id,)
            ).fetchone()
        return (False, None) if row is None or row[0] is None else (True, row[1])

    # -- labels and pipeline runs

    def add_label(self, label: LabelRecord) -> LabelRecord:
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO labels (device, model, since, until, label, created_at, by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    label.device,
                    label.model,
                    label.since,
                    label.until,
                    label.label,
                    label.created_at,
                    label.by,
                ),
            )
            return dataclasses.replace(label, id=int(cur.lastrowid or 0))

    def labels(
        self, device: str | None = None, since: float = -math.inf, until: float = math.inf
    ) -> list[LabelRecord]:
        where = "until > ? AND since < ?" + ("" if device is None else " AND device = ?")
        params: tuple[Any, ...] = (since, until) + (() if device is None else (device,))
        with self._read() as db:
            rows = db.execute(
                "SELECT id, device, model, since, until, label, created_at, by FROM labels "
                f"WHERE {where} ORDER BY id",
                params,
            ).fetchall()
        return [
            LabelRecord(int(r[0]), r[1], r[2], float(r[3]), float(r[4]), r[5], float(r[6]), r[7])
            for r in rows
        ]

    def start_pipeline_run(self, row: PipelineRunRow, now: float) -> str | None:
        with self._write() as db:
            busy = db.execute(
                "SELECT id FROM pipeline_runs WHERE model = ? AND state = 'running' "
                "AND deadline > ? ORDER BY created_at LIMIT 1",
                (row.model, now),
            ).fetchone()
            if busy is not None:
                return str(busy[0])
            db.execute(
                f"INSERT INTO pipeline_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, row.model, row.state, row.body, row.created_at, row.deadline),
            )
        return None

    def save_pipeline_run(self, row: PipelineRunRow) -> None:
        with self._write() as db:
            db.execute(
                f"INSERT OR REPLACE INTO pipeline_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, row.model, row.state, row.body, row.created_at, row.deadline),
            )

    def pipeline_run(self, run_id: str) -> PipelineRunRow | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id = ?", (run_id,)
            ).fetchone()
        return None if row is None else _run_row(row)

    def pipeline_runs(self, model: str | None = None, limit: int = 100) -> list[PipelineRunRow]:
        _check_limit(limit, "pipeline_runs")
        where = "" if model is None else "WHERE model = ? "
        params: tuple[Any, ...] = (() if model is None else (model,)) + (limit,)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM pipeline_runs {where}"
                "ORDER BY created_at DESC, id LIMIT ?",
                params,
            ).fetchall()
        return [_run_row(r) for r in rows]

    # -- retention

    # -- drift

    def record_drift(
        self,
        states: Sequence[DriftStateRow],
        events: Sequence[DriftEventRow],
        windows: Sequence[DriftWindowRow],
    ) -> None:
        if not (states or events or windows):
            return
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO drift_states (device, model, version, state, since, "
                "streams, readings, last_reading_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.device,
                        r.model,
                        r.version,
                        r.state,
                        r.since,
                        json.dumps(r.streams, sort_keys=True),
                        r.readings,
                        r.last_reading_at,
                    )
                    for r in states
                ],
            )
            db.executemany(
                "INSERT INTO drift_events (at, scope, device, model, version, state, previous, "
                "streams, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.at,
                        e.scope,
                        e.device,
                        e.model,
                        e.version,
                        e.state,
                        e.previous,
                        json.dumps(list(e.streams)),
                        json.dumps(e.detail, sort_keys=True),
                    )
                    for e in events
                ],
            )
            db.executemany(
                "INSERT INTO drift_windows (device, model, version, start_at, end_at, readings, "
                "psi, statistic, disagreement) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        w.device,
                        w.model,
                        w.version,
                        w.start_at,
                        w.end_at,
                        w.readings,
                        json.dumps(w.psi, sort_keys=True),
                        json.dumps(w.statistic, sort_keys=True),
                        w.disagreement,
                    )
                    for w in windows
                ],
            )

    def drift_states(self, device: str | None = None) -> list[DriftStateRow]:
        where, args = ("WHERE device = ? ", (device,)) if device is not None else ("", ())
        with self._read() as db:
            rows = db.execute(
                "SELECT device, model, version, state, since, streams, readings, "
                f"last_reading_at FROM drift_states {where}ORDER BY device, model, version",
                args,
            ).fetchall()
        return [
            DriftStateRow(
                device=r[0],
                model=r[1],
                version=r[2],
                state=r[3],
                since=None if r[4] is None else float(r[4]),
                streams={str(k): float(v) for k, v in json.loads(r[5]).items()},
                readings=int(r[6]),
                last_reading_at=float(r[7]),
            )
            for r in rows
        ]

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
        _check_limit(limit, "drift events")
        rows, next_cursor = self._page_by_at(
            "drift_events",
            "id, at, scope, device, model, version, state, previous, streams, detail",
            (since, until, limit, cursor),
            device=device,
            scope=scope,
        )
        items = [
            DriftEventRow(
                id=int(r[0]),
                at=float(r[1]),
                scope=cast(DriftScope, r[2]),
                device=r[3],
                model=r[4],
                version=r[5],
                state=r[6],
                previous=r[7],
                streams=tuple(json.loads(r[8])),
                detail=dict(json.loads(r[9])),
            )
            for r in rows
        ]
        return Page(items, next_cursor)

    def save_drift_detectors(
        self, states: Sequence[tuple[str, str, str, bytes]], at: float
    ) -> None:
        if not states:
            return
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO drift_detectors (device, model, version, state, saved_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(d, m, v, sqlite3.Binary(state), at) for d, m, v, state in states],
            )

    def drift_detector(self, device: str, model: str, version: str) -> bytes | None:
        with self._read() as db:
            row = db.execute(
                "SELECT state FROM drift_detectors WHERE device = ? AND model = ? AND version = ?",
                (device, model, version),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def forget_drift(self, device: str, model: str, version: str) -> None:
        with self._write() as db:
            for table in ("drift_states", "drift_detectors"):
                db.execute(
                    f"DELETE FROM {table} WHERE device = ? AND model = ? AND version = ?",
                    (device, model, version),
                )

    def latest_drift_windows(self, model: str, version: str) -> list[DriftWindowRow]:
        with self._read() as db:
            rows = db.execute(
                "SELECT w.device, w.model, w.version, w.start_at, w.end_at, w.readings, w.psi, "
                "w.statistic, w.disagreement FROM drift_windows w "
                "WHERE w.model = ? AND w.version = ? AND w.id = ("
                " SELECT x.id FROM drift_windows x WHERE x.model = w.model "
                " AND x.version = w.version AND x.device = w.device "
                " ORDER BY x.end_at DESC, x.id DESC LIMIT 1) ORDER BY w.device",
                (model, version),
            ).fetchall()
        return [_drift_window(r) for r in rows]

    def drift_windows(self, device: str, since: float, limit: int) -> list[DriftWindowRow]:
        _check_limit(limit, "drift windows")
        with self._read() as db:
            rows = db.execute(
                "SELECT device, model, version, start_at, end_at, readings, psi, statistic, "
                "disagreement FROM drift_windows WHERE device = ? AND end_at >= ? "
                "ORDER BY end_at DESC, id DESC LIMIT ?",
                (device, since, limit),
            ).fetchall()
        return [_drift_window(r) for r in rows]

    # -- device states

    def record_device_states(self, changes: Sequence[DeviceStateRow]) -> None:
        if not changes:
            return
        moved = [c for c in changes if c.is_change]
        with self._write() as db:
            db.executemany(
                "UPDATE devices SET judged_state = ?, state_reason = ?, state_since = ? "
                "WHERE name = ?",
                [(c.state, c.reason, c.at, c.device) for c in moved],
            )
            # The same state, a newer reason (a device judged before schema 12 has
            # no judged state yet: it gets the one the tracker holds).
            db.executemany(
                "UPDATE devices SET state_reason = ?, judged_state = COALESCE(judged_state, ?) "
                "WHERE name = ?",
                [(c.reason, c.state, c.device) for c in changes if not c.is_change],
            )
            db.executemany(
                "INSERT INTO device_states (at, device, state, previous, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                [(c.at, c.device, c.state, c.previous, c.reason) for c in moved],
            )

    def device_state_events(
        self,
        device: str | None,
        since: float,
        until: float,
        limit: int,
        *,
        cursor: str | None = None,
    ) -> Page[DeviceStateRow]:
        _check_limit(limit, "device state events")
        rows, next_cursor = self._page_by_at(
            "device_states",
            "id, at, device, state, previous, reason",
            (since, until, limit, cursor),
            device=device,
        )
        items = [DeviceStateRow(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5]) for r in rows]
        return Page(items, next_cursor)

    def _page_by_at(
        self,
        table: str,
        columns: str,
        window: tuple[float, float, int, str | None],
        **equal: str | None,
    ) -> tuple[list[Any], str | None]:
        """One page of ``table``'s rows (``columns``, the first two ``id, at``) with
        since <= at < until after ``cursor``, oldest first, where each of ``equal``
        that is not None matches its column; and the next page's cursor."""
        since, until, limit, cursor = window
        where = ["at >= ?", "at < ?"]
        args: list[Any] = [since, until]
        for column, value in equal.items():
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if cursor is not None:
            where.append("(at, id) > (?, ?)")
            args.extend(_decode_event_cursor(cursor))
        args.append(limit + 1)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} "
                "ORDER BY at, id LIMIT ?",
                args,
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (_encode_event_cursor(rows[-1][1], rows[-1][0]) if more else None)

    def prune_telemetry(self, received_before: float) -> int:
        """Delete the readings the hub received before ``received_before``; returns how
        many. A reading's own timestamp does not count: a recording from last year,
        replayed today, is kept for the retention like a reading of today. Never touches
        the dedupe record, so a late replay of a pruned message is still a duplicate.

        Works in transactions of a few thousand messages, so that ingest waits for
        one chunk at most, never for the whole prune; each chunk is consistent.
        """
        removed = 0
        while True:
            with self._write() as db:
                rows = db.execute(
                    "SELECT id, n FROM telemetry WHERE received_at < ? ORDER BY received_at "
                    "LIMIT ?",
                    (received_before, _PRUNE_CHUNK),
                ).fetchall()
                db.executemany("DELETE FROM telemetry WHERE id = ?", [(r[0],) for r in rows])
                removed += sum(int(r[1]) for r in rows)
            if len(rows) < _PRUNE_CHUNK:
                break
        with self._write() as db:
            # Drift windows are counted from the same readings: they go with them.
            db.execute("DELETE FROM drift_windows WHERE end_at < ?", (received_before,))
            # Device state changes are kept as long as the readings of their time.
            db.execute("DELETE FROM device_states WHERE at < ?", (received_before,))
        return removed


# --------------------------------------------------------------------------- rows and cursors

_DEVICE_COLUMNS: Final = (
    "name, state, epoch, agent_version, model_version, first_seen, last_seen, last_health, model, "
    "judged_state, state_reason, state_since"
)


def _drift_window(r: tuple[Any, ...]) -> DriftWindowRow:
    return DriftWindowRow(
        device=r[0],
        model=r[1],
        version=r[2],
        start_at=float(r[3]),
        end_at=float(r[4]),
        readings=int(r[5]),
        psi={str(k): float(v) for k, v in json.loads(r[6]).items()},
        statistic={str(k): float(v) for k, v in json.loads(r[7]).items()},
        disagreement=None if r[8] is None else float(r[8]),
    )


def _device_record(row: tuple[Any, ...], counts: dict[str, int]) -> DeviceRecord:
    name, state, epoch, agent_version, model_version, first_seen, last_seen, health, model = row[:9]
    judged, reason, since = row[9:]
    return DeviceRecord(
        device=name,
        state=cast(Literal["online", "offline", "never_seen"], state),
        epoch=int(epoch),
        agent_version=agent_version,
        model_version=model_version,
        first_seen=None if first_seen is None else float(first_seen),
        last_seen=None if last_seen is None else float(last_seen),
        last_health=None if health is None else cast(dict[str, object], json.loads(health)),
        counters=counts,
        model=model,
        judged_state=judged,
        state_reason=reason,
        state_since=None if since is None else float(since),
    )


_JOB_COLUMNS: Final = (
    "id, state, devices, since, until, model, version, created_at, started_at, finished_at, "
    "rows_total, rows_done, devices_done, urgent_rows, result_path, error"
)


def _batch_job(row: tuple[Any, ...]) -> BatchJob:
    (job_id, state, devices, since, until, model, version, created, started, finished) = row[:10]
    rows_total, rows_done, devices_done, urgent_rows, result_path, error = row[10:]
    return BatchJob(
        id=job_id,
        state=state,
        devices=tuple(json.loads(devices)),
        since=float(since),
        until=float(until),
        model=model,
        version=version,
        created_at=float(created),
        started_at=None if started is None else float(started),
        finished_at=None if finished is None else float(finished),
        rows_total=None if rows_total is None else int(rows_total),
        rows_done=int(rows_done),
        devices_done=int(devices_done),
        urgent_rows=int(urgent_rows),
        result_path=result_path,
        error=error,
    )


_MODEL_COLUMNS: Final = (
    "name, version, variant, path, registered_at, manifest, stage, stage_changed_at, "
    "registered_by, signature, source"
)


_RUN_COLUMNS: Final = "id, model, state, body, created_at, deadline"


def _run_row(row: tuple[Any, ...]) -> PipelineRunRow:
    run_id, model, state, body, created_at, deadline = row
    return PipelineRunRow(run_id, model, state, body, float(created_at), float(deadline))


_DESIRED_COLUMNS: Final = (
    "d.name, x.model, x.version, x.manifest_sha256, x.size, x.rollout, x.allow_downgrade, x.set_at"
)


def _desired_record(row: tuple[Any, ...]) -> DesiredRecord:
    device, model, version, sha, size, rollout, downgrade, set_at = row
    return DesiredRecord(
        device, model, version, sha, int(size), rollout, bool(downgrade), float(set_at)
    )


def _log_stage(db: sqlite3.Connection, entry: StageLogEntry) -> None:
    db.execute(
        "INSERT INTO model_stages (name, version, at, from_stage, to_stage, by, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            entry.name,
            entry.version,
            entry.at,
            None if entry.from_stage is None else entry.from_stage.value,
            entry.to_stage.value,
            entry.by,
            entry.reason,
        ),
    )


def _parse_manifest(name: str, version: str, text: str) -> ModelRecord | None:
    """A bare record holding the parsed manifest, or None for one this build cannot read."""
    return _model_record((name, version, "", "", 0.0, text, "candidate", None, "", None, ""))


@functools.lru_cache(maxsize=64)
def _parsed_manifest(text: str) -> ModelManifest:
    """A registered manifest, parsed once per text (they never change; the parse takes about
    a millisecond, and every download asks for the record: three requests a device)."""
    return ModelManifest.from_dict(json.loads(text))


def _model_record(row: tuple[Any, ...]) -> ModelRecord | None:
    """The record, or None for a manifest this build cannot read (an older format):
    such a model is left out until it is rebuilt and registered again."""
    name, version, variant, path, registered_at, text, stage, changed, by, sig, source = row
    try:
        manifest = _parsed_manifest(text)
    except (ManifestError, ValueError) as exc:
        logger.warning("model %s %s: its registered manifest is unreadable: %s", name, version, exc)
        return None
    return ModelRecord(
        name,
        version,
        variant,
        path,
        float(registered_at),
        manifest,
        text.encode("utf-8"),
        Stage(stage),
        float(registered_at) if changed is None else float(changed),
        by,
        None if sig is None else bytes(sig),
        source,
    )


def _encode_telemetry_cursor(first_ts: float, row_id: int, offset: int) -> str:
    return _b64(_T_CURSOR.pack(b"T1", first_ts, row_id, offset))


def _decode_telemetry_cursor(cursor: str) -> tuple[float, int, int]:
    raw = _unb64(cursor, "telemetry")
    if len(raw) == _T_CURSOR.size:
        tag, first_ts, row_id, offset = _T_CURSOR.unpack(raw)
        if tag == b"T1" and math.isfinite(first_ts) and offset >= 0:
            return first_ts, row_id, offset
    raise ValueError(
        f"telemetry cursor {cursor[:40]!r} is not valid; pass back next_cursor exactly as returned"
    )


def _encode_event_cursor(ts: float, row_id: int) -> str:
    return _b64(_E_CURSOR.pack(b"E1", ts, row_id))


def _decode_event_cursor(cursor: str) -> tuple[float, int]:
    raw = _unb64(cursor, "events")
    if len(raw) == _E_CURSOR.size:
        tag, ts, row_id = _E_CURSOR.unpack(raw)
        if tag == b"E1" and math.isfinite(ts):
            return ts, row_id
    raise ValueError(
        f"events cursor {cursor[:40]!r} is not valid; pass back next_cursor exactly as returned"
    )
