"""The agent's outbox: every stream message is kept until the hub has stored it.

Stream messages (telemetry, events, ota) pass through here on their way to the
broker. The *reading loop* only stages a message (:meth:`Outbox.emit`, no I/O,
no seq yet); the *link thread* gives staged messages their seq, writes them to
the outbox database and commits (:meth:`Outbox.flush`), and only then sends
them. A message leaves the outbox when the hub's ``ack`` of its epoch covers
its seq, never when the broker took it: a broker or hub that loses a message
after taking it is covered by a resend (:meth:`Outbox.rewind`, called on every
reconnect and when acks stop coming), with the original epoch and seq.

The database is SQLite in WAL mode (a file under the state directory, or
``:memory:`` for ``--outbox memory``). SQLite because it gives atomic, ordered
appends and deletes by range with crash recovery for free, is in the standard
library, and a Pi's SD card handles its small sequential WAL writes well.

Durability: a committed write is in the operating system's page cache at once,
so it survives the agent being killed (SIGKILL) whatever ``fsync_ms`` is; the
WAL is fsynced at most ``fsync_ms`` after a commit (0: at every commit), so a
power cut loses at most that much of what was written. The seq and epoch of a
message lost that way are never reused (the epoch file is fsynced at start).

Bounds: ``max_bytes`` of payload, ``max_messages`` and ``max_age_s``. When a
bound is exceeded the oldest *telemetry* goes first (events and OTA transitions
are kept while telemetry is left), and every dropped seq is *declared*: a
:class:`~shared.messages.Dropped` message naming the epoch, the seq range, the
readings per seq and the reason, sent (and resent) until the hub's ack passes
it, so the hub closes that gap as lost at the edge instead of waiting.

The disk: the outbox never grows its file into the last ``min_free_bytes`` of
its filesystem. Below that much free space it stops growing: it keeps a little
room free inside its own file (SQLite reuses the pages of deleted messages) by
dropping the oldest telemetry, declared as ``disk_full``. The reserve is what
SQLite needs to go on working at all: applying an ack (a delete) and
checkpointing the WAL both write, so an outbox that filled its disk to the
last byte could never shrink again. The WAL is checkpointed every
``_WAL_CHECKPOINT_PAGES`` pages (SQLite's default, 1,000 pages or 4 MiB of
mostly superseded pages, would itself fill a small disk) and truncated back to
``_WAL_SIZE_LIMIT``. When the disk fills anyway (another program filled it),
new messages wait in memory (``staging_max``) and writes are retried.

Payloads are kept encoded. An outbox left by an agent of an older wire schema
(the hub reads the current one only) is rewritten at open: each v1 message in
the current form (:func:`shared.messages.upgrade_v1`, naming the model the
agent runs in v1 telemetry that named none but has its version); one that
cannot be is dropped and declared as ``schema_upgrade``.

Send order: unacked events first, then everything else, each oldest first by
``(epoch, seq)``.

A replay (``replay=True``, an agent replaying a recording: its epoch is the
recording's, see ``edge_agent.replay_identity``) numbers its messages from 1
again at every run, so that message k of the recording is always seq k. The
epoch may then already be in this outbox, from an earlier or interrupted
replay of the same recording: a message whose seq the hub has acked is not
written again (the hub has it), one still in the outbox is kept as it is (it
is the same message), and only the others are written. The ``epochs`` row of a
replay records the highest seq ever issued, and an ack of a replay's epoch
beyond what this run has issued is applied (the hub holds that much of the
recording from an earlier run), not refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.epochs import is_replay_epoch
from shared.errors import DecodeError
from shared.messages import SCHEMA_VERSION, Dropped, Event, Ota, Telemetry, encode, upgrade_v1
from shared.topics import Kind

__all__ = ["AckVerdict", "Outbox", "OutboxCorruptError", "Outgoing", "StreamMessage"]

log = logging.getLogger(__name__)

StreamMessage = Telemetry | Event | Ota
Maker = Callable[[int], StreamMessage]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " epoch INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
    " readings INTEGER NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL,"
    " payload BLOB NOT NULL, PRIMARY KEY (epoch, seq)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, epoch, seq)",
    "CREATE TABLE IF NOT EXISTS declared ("
    " epoch INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,"
    " reason TEXT NOT NULL, readings TEXT NOT NULL, due INTEGER NOT NULL,"
    " PRIMARY KEY (epoch, first))",
    "CREATE TABLE IF NOT EXISTS epochs ("
    " epoch INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, acked_seq INTEGER NOT NULL,"
    " readings INTEGER NOT NULL)",
)
_DECLARE_MAX: Final = 1000
"""Seqs per declaration at most (the hub's decoder limit on a batch)."""
_WAL_CHECKPOINT_PAGES: Final = 32
"""Checkpoint the WAL every this many pages (128 KiB at 4 KiB pages)."""
_WAL_SIZE_LIMIT: Final = 256 * 1024
"""Truncate the WAL back to this size after a checkpoint."""
_DISK_FLOOR_BYTES: Final = 256 * 1024
"""Below the free-space reserve the outbox may still fill this much of its file (its
working set while the hub acks), or what it held when the disk got there if more."""
_DISK_ROUNDS: Final = 50


class OutboxCorruptError(Exception):
    """The outbox file could not be read; it was moved aside to ``moved_to``."""

    def __init__(self, message: str, *, moved_to: Path) -> None:
        super().__init__(message)
        self.moved_to = moved_to


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for the wire: its topic kind, identity and payload."""

    kind: Kind
    epoch: int
    seq: int
    payload: bytes


class AckVerdict:
    """Why an ack was not applied (the agent counts these as ``invalid:<reason>``)."""

    FUTURE_EPOCH: Final = "ack_future_epoch"
    UNKNOWN_EPOCH: Final = "ack_unknown_epoch"
    BEYOND_SENT: Final = "ack_beyond_issued"


class Outbox:
    """One device's durable outbox. See the module docstring for the rules.

    ``path`` None keeps the database in memory (lost at exit: ``--outbox memory``).

    >>> import numpy as np
    >>> box = Outbox(None, epoch=1)
    >>> box.emit(lambda seq: Event("pi-07", 1, seq, 1.0, "1.0.0", "score", 0.9,
    ...                            None, None, "log", True, ""))
    >>> box.flush(now=10.0)
    1
    >>> [(m.kind.value, m.seq) for m in box.unsent(10)]
    [('events', 1)]
    >>> box.ack(1, 1) is None, box.depth
    (True, 0)
    """

    def __init__(
        self,
        path: Path | None,
        epoch: int,
        *,
        max_bytes: int = 64 * 2**20,
        max_messages: int = 1_000_000,
        max_age_s: float = 7 * 86400.0,
        min_free_bytes: int = 4 * 2**20,
        fsync_ms: int = 1000,
        write_delay_ms: int = 20,
        staging_max: int = 10_000,
        wake: threading.Event | None = None,
        replay: bool = False,
        model: tuple[str, str] | None = None,
    ) -> None:
        if max_bytes < 1 or max_messages < 1 or staging_max < 1:
            raise ValueError("outbox bounds must be >= 1")
        if min_free_bytes < 0:
            raise ValueError("outbox min_free_bytes must be >= 0")
        self.path = path
        self.epoch = epoch
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.min_free_bytes = min_free_bytes
        self.fsync_ms = fsync_ms
        self.staging_max = staging_max
        self.write_delay_ms = write_delay_ms
        self._wake = wake
        self._staged: deque[tuple[Maker, bool]] = deque()
        self._staged_at: float | None = None
        """Monotonic time the oldest staged message was staged (None: nothing staged)."""
        self._urgent_staged = False
        self._stage_lock = threading.Lock()
        self.dropped: dict[str, int] = {}
        """Losses no declaration can describe (staged messages that never got a seq)."""
        self.declared: dict[str, int] = {}
        """Readings and messages dropped and declared, by ``<reason>_readings|_messages``."""
        self.recovered: int = 0
        """Unacked messages found in the outbox at start (they are sent again)."""
        self.recovered_readings: int = 0
        """The readings in the telemetry messages of :attr:`recovered`."""
        self.replay = replay
        self.replay_known: int = 0
        """Replay only: messages not written because the hub acked them or the outbox
        already held them (from an earlier run of the same recording)."""
        self.readings_written: int = 0
        """Readings in the telemetry messages written (to be sent) since this outbox opened."""
        self.corrupt: OutboxCorruptError | None = None
        self._disk_cap: int | None = None
        """Pages in use allowed while the disk is below the reserve (None: it is not)."""
        self._db = self._open()
        self._next_seq = 1
        self._last_fsync = time.monotonic()
        self._next_age_check = 0.0
        self._dirty = False
        self._cursor_events = (0, 0)
        self._cursor_other = (0, 0)
        self._declarations_due = True
        self._declare_all = True
        db = self._db
        db.execute(
            "INSERT OR IGNORE INTO epochs (epoch, last_seq, acked_seq, readings) VALUES (?, 0, 0, 0)",
            (epoch,),
        )
        row = db.execute(
            "SELECT last_seq, acked_seq FROM epochs WHERE epoch = ?",
            (epoch,),
        ).fetchone()
        self._next_seq = 1 if replay else int(row[0]) + 1
        self._issued_before = int(row[0]) if replay else 0
        """Replay only: the highest seq of this epoch issued by earlier runs."""
        self._acked = int(row[1]) if replay else 0
        self._depth = self._bytes = 0
        if model is not None:
            self._upgrade_stored(model)
        count, size, readings = db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(readings), 0) FROM messages"
        ).fetchone()
        self._depth, self._bytes = int(count), int(size)
        self.recovered = self._depth
        self.recovered_readings = int(readings)
        db.commit()

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._connect(":memory:")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect(str(self.path))
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check says {check}")
            for sql in _SCHEMA:
                db.execute(sql)
            db.execute("SELECT count(*) FROM messages").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            unread = self._count_unacked()
            with contextlib.suppress(NameError, sqlite3.Error):
                db.close()
            moved = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{moved}{suffix}")
            held = "an unknown number of" if unread is None else f"{unread}"
            self.corrupt = OutboxCorruptError(
                f"outbox {self.path} cannot be read ({exc}); moved it to {moved} and started a "
                f"new one. It held {held} messages the hub had not acked; they cannot be "
                "sent, and the hub will count them as lost once its gap retention passes. "
                "Keep the moved file for inspection, or delete it.",
                moved_to=moved,
            )
            self.dropped["outbox_corrupt_files"] = 1
            if unread:
                self.dropped["outbox_corrupt_messages"] = unread
            log.error("%s", self.corrupt)
            return self._connect(str(self.path))

    def _upgrade_stored(self, model: tuple[str, str]) -> None:
        """Rewrite, in the current wire schema, the messages an agent of an older one left
        here (the hub refuses any other version); declare dropped, as ``schema_upgrade``,
        those that cannot be (:func:`shared.messages.upgrade_v1`)."""
        db = self._db
        current = b'{"v":%d,' % SCHEMA_VERSION
        rows = db.execute(
            "SELECT epoch, seq, kind, readings, size, payload FROM messages "
            "WHERE substr(payload, 1, ?) != ? ORDER BY epoch, seq",
            (len(current), current),
        ).fetchall()
        if not rows:
            return
        rewritten: list[tuple[bytes, int, int, int]] = []
        victims: list[tuple[int, int, int, int]] = []
        for epoch, seq, kind, n, size, payload in rows:
            try:
                new = upgrade_v1(Kind(kind), bytes(payload), model)
            except (DecodeError, ValueError) as exc:
                log.warning("outbox: epoch %d seq %d cannot be upgraded: %s", epoch, seq, exc)
                victims.append((int(epoch), int(seq), int(n), int(size)))
                continue
            rewritten.append((new, len(new), int(epoch), int(seq)))
        with db:
            db.executemany(
                "UPDATE messages SET payload = ?, size = ? WHERE epoch = ? AND seq = ?", rewritten
            )
        if victims:
            self._drop(victims, "schema_upgrade")
        log.info(
            "outbox: %d messages of an older wire schema rewritten in v%d, %d dropped "
            "(declared to the hub as schema_upgrade)",
            len(rewritten),
            SCHEMA_VERSION,
            len(victims),
        )

    def _count_unacked(self) -> int | None:
        """How many messages a damaged outbox file still shows, if SQLite can say."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            return None

    def _connect(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 2000")
        if target != ":memory:":
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        # The WAL is synced by flush() on the fsync_ms schedule, not by SQLite.
        db.execute("PRAGMA synchronous = OFF" if self.fsync_ms else "PRAGMA synchronous = FULL")
        db.isolation_level = "DEFERRED"
        for sql in _SCHEMA:
            db.execute(sql)
        return db

    def close(self) -> None:
        """Sync and close the database."""
        with contextlib.suppress(sqlite3.Error):
            self._fsync()
            self._db.close()

    # -- the reading loop ----------------------------------------------------------------------

    def emit(self, make: Maker, *, urgent: bool = False) -> None:
        """Stage a message; :meth:`flush` gives it a seq and writes it. Never touches the disk.

        Beyond ``staging_max`` staged messages (the link thread stalled), the
        oldest staged telemetry is dropped and counted in :attr:`dropped`.
        """
        with self._stage_lock:
            if len(self._staged) >= self.staging_max:
                self._drop_staged()
            first = self._staged_at is None
            if first:
                self._staged_at = time.monotonic()
            self._staged.append((make, urgent))
            wake = first or (urgent and not self._urgent_staged)
            self._urgent_staged = self._urgent_staged or urgent
        # The link thread learns of the first staged message (it then knows when
        # to write) and of the first urgent one (written at once); not of each one.
        if wake and self._wake is not None:
            self._wake.set()

    def _drop_staged(self) -> None:
        """Drop the oldest staged telemetry (an urgent one only if none is left); under the lock."""
        for i, (_, is_urgent) in enumerate(self._staged):
            if not is_urgent:
                del self._staged[i]
                break
        else:
            self._staged.popleft()
        self.dropped["staging_full_messages"] = self.dropped.get("staging_full_messages", 0) + 1

    # -- the link thread -----------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The last seq written in this epoch (0 before the first)."""
        return self._next_seq - 1

    @property
    def depth(self) -> int:
        """Messages kept and not yet acked by the hub (all epochs)."""
        return self._depth

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def staged(self) -> int:
        with self._stage_lock:
            return len(self._staged)

    def __len__(self) -> int:
        return self._depth + self.staged

    def write_due(self) -> float | None:
        """Monotonic time at which staged messages must be written (None: none staged).

        At once for an urgent message; else ``write_delay_ms`` after the oldest
        was staged, so that a fast reading loop's messages share a transaction
        (a commit per message cost the link thread twice the CPU at 1,000
        messages/s, which the reading loop then lacked).
        """
        with self._stage_lock:
            if self._staged_at is None or self._urgent_staged:
                return self._staged_at
            return self._staged_at + self.write_delay_ms / 1000

    def flush(self, now: float | None = None) -> int:
        """Give staged messages their seqs, write and commit them; enforce the bounds.

        Returns how many messages were written. Unencodable messages (a bug)
        are logged and counted ``unencodable_<kind>``, and take no seq. When
        the write fails (a full or failing disk) the error is raised and
        nothing is lost: the messages stay staged, in order, and their seqs
        are not spent, so the next flush tries them again.
        """
        now = time.time() if now is None else now
        with self._stage_lock:
            staged = list(self._staged)
            staged_at = self._staged_at
            self._staged.clear()
            self._staged_at, self._urgent_staged = None, False
        try:
            written = self._write(staged, now)
        except sqlite3.Error:
            with self._stage_lock:
                self._staged.extendleft(reversed(staged))
                while len(self._staged) > self.staging_max:
                    self._drop_staged()
                if self._staged:
                    self._staged_at = min(t for t in (staged_at, self._staged_at) if t is not None)
                    self._urgent_staged = any(urgent for _, urgent in self._staged)
            raise
        # The messages are written and have their seqs: whatever fails from here
        # on must not stage them again (that would issue their readings twice).
        self._enforce_bounds(now)
        if self._dirty and (
            not self.fsync_ms or (time.monotonic() - self._last_fsync) * 1000 >= self.fsync_ms
        ):
            self._fsync()
        return written

    def _write(self, staged: list[tuple[Maker, bool]], now: float) -> int:
        rows = []
        readings = 0
        first_seq = self._next_seq
        known = self._known_seqs(first_seq, first_seq + len(staged) - 1) if self.replay else set()
        skipped = 0
        for make, _ in staged:
            msg = make(self._next_seq)
            try:
                payload = encode(msg)
            except ValueError as exc:
                key = f"unencodable_{msg.kind.value}"
                self.dropped[key] = self.dropped.get(key, 0) + 1
                log.error("device %r: %s not sent: %s", msg.device, msg.kind.value, exc)
                continue
            n = len(msg) if isinstance(msg, Telemetry) else 0
            self._next_seq += 1
            if msg.seq in known:
                skipped += 1
                continue
            if msg.seq > self._issued_before:
                readings += n
            rows.append((msg.epoch, msg.seq, msg.kind.value, n, now, len(payload), payload))
        if rows or self._next_seq != first_seq:
            try:
                self._insert(rows, readings)
            except sqlite3.Error:
                self._next_seq = first_seq
                raise
            self.replay_known += skipped
            self.readings_written += sum(r[3] for r in rows)
            self._depth += len(rows)
            self._bytes += sum(r[5] for r in rows)
            self._dirty = True
        return len(rows)

    def _known_seqs(self, first: int, last: int) -> set[int]:
        """Replay: seqs of first..last the hub has acked or the outbox holds already."""
        known = set(range(first, min(last, self._acked) + 1))
        top = min(last, self._issued_before)
        if top >= first:
            known.update(
                int(r[0])
                for r in self._db.execute(
                    "SELECT seq FROM messages WHERE epoch = ? AND seq BETWEEN ? AND ?",
                    (self.epoch, first, top),
                )
            )
        return known

    def _insert(
        self, rows: list[tuple[int, int, str, int, float, int, bytes]], readings: int
    ) -> None:
        """One transaction: the rows and the epoch's counters (the disk seam of the outbox)."""
        db = self._db
        with db:
            db.executemany(
                "INSERT INTO messages (epoch, seq, kind, readings, created, size, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "UPDATE epochs SET last_seq = max(last_seq, ?), readings = readings + ? "
                "WHERE epoch = ?",
                (self.last_seq, readings, self.epoch),
            )

    def fsync_due(self) -> float | None:
        """Monotonic time at which written data must be synced (None: nothing pending)."""
        return self._last_fsync + self.fsync_ms / 1000 if self._dirty else None

    def sync_if_due(self) -> None:
        due = self.fsync_due()
        if due is not None and time.monotonic() >= due:
            self._fsync()

    def _fsync(self) -> None:
        self._last_fsync = time.monotonic()
        if not self._dirty or self.path is None:
            self._dirty = False
            return
        self._dirty = False
        wal = Path(f"{self.path}-wal")
        for target in (wal, self.path):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _enforce_bounds(self, now: float) -> None:
        db = self._db
        # The age bound is days; checking it once a minute spares a table scan per flush.
        if self.max_age_s > 0 and now >= self._next_age_check:
            self._next_age_check = now + min(60.0, self.max_age_s / 10)
            old = db.execute(
                "SELECT epoch, seq, readings, size FROM messages WHERE created < ? "
                "ORDER BY epoch, seq",
                (now - self.max_age_s,),
            ).fetchall()
            if old:
                self._drop(old, "expired")
        while self._bytes > self.max_bytes or self._depth > self.max_messages:
            victims = self._oldest(self._bytes - self.max_bytes, self._depth - self.max_messages)
            if not victims:
                return
            self._drop(victims, "outbox_full")
        self._keep_disk_reserve()

    def _oldest(self, over_bytes: int, over_count: int) -> list[tuple[int, int, int, int]]:
        """The oldest telemetry (events only when none is left) that frees ``over_bytes``
        of payload and ``over_count`` messages, up to 500 at a time."""
        victims: list[tuple[int, int, int, int]] = []
        for kind_clause in ("kind != 'events'", "1"):
            freed = 0
            for row in self._db.execute(
                f"SELECT epoch, seq, readings, size FROM messages WHERE {kind_clause} "
                "ORDER BY epoch, seq LIMIT 500"
            ):
                victims.append((int(row[0]), int(row[1]), int(row[2]), int(row[3])))
                freed += int(row[3])
                if freed >= over_bytes and len(victims) >= over_count:
                    break
            if victims:
                break
        return victims

    def _disk_free(self) -> int:
        """Bytes free (to us) on the outbox's filesystem; the outbox's view of the disk."""
        assert self.path is not None
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def _pages(self) -> int:
        """Pages in the database (its file's size once the WAL is checkpointed)."""
        return int(self._db.execute("PRAGMA page_count").fetchone()[0])

    def _used_pages(self) -> int:
        """Pages holding data: the file's pages less those free for reuse."""
        return self._pages() - int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def _keep_disk_reserve(self) -> None:
        """Below ``min_free_bytes`` free on the disk, hold the pages in use to what they
        were when it got there (at least ``_DISK_FLOOR_BYTES``), dropping the oldest
        telemetry as ``disk_full``: new messages reuse the freed pages, the file stops growing."""
        if self.path is None or not self.min_free_bytes:
            return
        if self._disk_free() >= self.min_free_bytes:
            self._disk_cap = None
            return
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        used = self._used_pages()
        if self._disk_cap is None:
            self._disk_cap = max(used, _DISK_FLOOR_BYTES // page_size)
        for _ in range(_DISK_ROUNDS):
            if used <= self._disk_cap or not self._depth:
                return
            victims = self._oldest((used - self._disk_cap) * page_size, 0)
            if not victims:
                return
            self._drop(victims, "disk_full")
            used = self._used_pages()

    def _drop(self, victims: list[tuple[int, int, int, int]], reason: str) -> None:
        """Delete ``victims`` (epoch, seq, readings, size), sorted, and declare them."""
        db = self._db
        ranges: list[tuple[int, int, list[int]]] = []
        # Extend the newest declaration of the same epoch and reason when this
        # drop continues it, so a long outage makes few declarations, not one a drop.
        last = db.execute(
            "SELECT epoch, first, readings FROM declared WHERE reason = ? "
            "ORDER BY epoch DESC, first DESC LIMIT 1",
            (reason,),
        ).fetchone()
        if last is not None:
            ranges.append((int(last[0]), int(last[1]), [int(c) for c in last[2].split(",")]))
        for epoch, seq, n, _ in victims:
            if (
                ranges
                and ranges[-1][0] == epoch
                and ranges[-1][1] + len(ranges[-1][2]) == seq
                and len(ranges[-1][2]) < _DECLARE_MAX
            ):
                ranges[-1][2].append(int(n))
                continue
            ranges.append((int(epoch), int(seq), [int(n)]))
        if last is not None and len(ranges[0][2]) == len(last[2].split(",")):
            ranges.pop(0)  # the newest declaration was not extended: leave it as it is
        with db:
            db.executemany(
                "DELETE FROM messages WHERE epoch = ? AND seq = ?",
                [(v[0], v[1]) for v in victims],
            )
            db.executemany(
                "INSERT OR REPLACE INTO declared (epoch, first, last, reason, readings, due) "
                "VALUES (?, ?, ?, ?, ?, 1)",
                [
                    (e, first, first + len(c) - 1, reason, ",".join(map(str, c)))
                    for e, first, c in ranges
                ],
            )
        self._depth -= len(victims)
        self._bytes -= sum(int(v[3]) for v in victims)
        readings = sum(int(v[2]) for v in victims)
        for key, n in ((f"{reason}_messages", len(victims)), (f"{reason}_readings", readings)):
            self.declared[key] = self.declared.get(key, 0) + n
        self._declarations_due = True
        self._dirty = True
        log.warning(
            "outbox: dropped %d messages (%d readings), reason %s; declared to the hub",
            len(victims),
            readings,
            reason,
        )

    # -- sending -------------------------------------------------------------------------------

    def unsent(self, limit: int) -> list[Outgoing]:
        """Up to ``limit`` messages not yet sent since the last :meth:`rewind`, events first.

        Call :meth:`sent` for each one handed to the MQTT client, in order.
        """
        out: list[Outgoing] = []
        db = self._db
        for clause, cursor in (
            ("kind = 'events'", self._cursor_events),
            ("kind != 'events'", self._cursor_other),
        ):
            if len(out) >= limit:
                break
            for kind, epoch, seq, payload in db.execute(
                f"SELECT kind, epoch, seq, payload FROM messages WHERE {clause} "
                "AND (epoch, seq) > (?, ?) ORDER BY epoch, seq LIMIT ?",
                (*cursor, limit - len(out)),
            ):
                out.append(Outgoing(Kind(kind), int(epoch), int(seq), bytes(payload)))
        return out

    def sent(self, msg: Outgoing) -> None:
        key = (msg.epoch, msg.seq)
        if msg.kind is Kind.EVENTS:
            self._cursor_events = max(self._cursor_events, key)
        else:
            self._cursor_other = max(self._cursor_other, key)

    def rewind(self) -> None:
        """Send everything unacked again, from the oldest (a reconnect, or acks stopped)."""
        self._cursor_events = (0, 0)
        self._cursor_other = (0, 0)
        self._declarations_due = True
        self._declare_all = True

    def declarations(self, device: str) -> list[Dropped]:
        """Declarations to send now: new or extended ones, or all after a :meth:`rewind`."""
        if not self._declarations_due:
            return []
        self._declarations_due = False
        db = self._db
        where = "" if self._declare_all else "WHERE due = 1"
        self._declare_all = False
        rows = db.execute(
            f"SELECT epoch, first, last, reason, readings FROM declared {where} "
            "ORDER BY epoch, first"
        ).fetchall()
        if rows:
            try:
                with db:
                    db.execute("UPDATE declared SET due = 0 WHERE due = 1")
            except sqlite3.Error as exc:  # a full disk: they stay due, and go again next time
                log.debug("outbox: declarations sent but not marked sent: %s", exc)
        return [
            Dropped(device, int(e), int(last), int(first), reason, tuple(map(int, c.split(","))))
            for e, first, last, reason, c in rows
        ]

    def redeclare(self) -> None:
        """The last declarations could not all be handed over: offer them all again."""
        self._declarations_due = True
        self._declare_all = True

    def drop_all(self, reason: str) -> int:
        """Drop and declare every message kept (a memory outbox at shutdown); returns how many."""
        self.flush()
        victims = [
            (int(e), int(s), int(n), int(z))
            for e, s, n, z in self._db.execute(
                "SELECT epoch, seq, readings, size FROM messages ORDER BY epoch, seq"
            )
        ]
        if victims:
            self._drop(victims, reason)
        return len(victims)

    @property
    def pending_declarations(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM declared").fetchone()[0])

    # -- acks ----------------------------------------------------------------------------------

    def ack(self, epoch: int, seq: int) -> str | None:
        """The hub has stored (or closed) every seq of ``epoch`` up to ``seq``.

        Returns None when applied (or already known), else the reason it was
        ignored (an :class:`AckVerdict` value): an epoch this device never had,
        or a seq it never issued.
        """
        if epoch > self.epoch and not is_replay_epoch(epoch):
            return AckVerdict.FUTURE_EPOCH
        row = self._db.execute(
            "SELECT last_seq, acked_seq FROM epochs WHERE epoch = ?", (epoch,)
        ).fetchone()
        if row is None:
            return AckVerdict.UNKNOWN_EPOCH
        issued, acked = int(row[0]), int(row[1])
        if epoch == self.epoch:
            issued = self.last_seq
        if seq > issued and not (self.replay and epoch == self.epoch):
            return AckVerdict.BEYOND_SENT
        if seq <= acked:
            return None
        db = self._db
        count, size = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE epoch = ? AND seq <= ?",
            (epoch, seq),
        ).fetchone()
        with db:
            db.execute("DELETE FROM messages WHERE epoch = ? AND seq <= ?", (epoch, seq))
            db.execute("DELETE FROM declared WHERE epoch = ? AND last <= ?", (epoch, seq))
            # Epoch rows stay (one per agent start): they are the device's record
            # of what it produced, and what lets it judge acks of old epochs.
            db.execute("UPDATE epochs SET acked_seq = ? WHERE epoch = ?", (seq, epoch))
        if epoch == self.epoch:
            self._acked = seq
        self._depth -= int(count)
        self._bytes -= int(size)
        self._dirty = True
        return None

    def acked_seq(self) -> int:
        """The highest seq of this epoch the hub has acked (readable after :meth:`close`)."""
        return self._acked

    def issued(self) -> dict[int, tuple[int, int]]:
        """Per epoch still tracked: (last seq issued, readings issued)."""
        return {
            int(e): (int(s), int(r))
            for e, s, r in self._db.execute("SELECT epoch, last_seq, readings FROM epochs")
        }
