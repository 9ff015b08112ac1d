"""The outbox: seqs, send order, acks of any epoch, resends, bounds and declarations."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.outbox import AckVerdict, Outbox, Outgoing
from shared.messages import Event, Telemetry, decode
from shared.topics import Kind

pytestmark = pytest.mark.timeout(60)

DEVICE = "pi-07"


def telemetry(epoch: int, n: int = 2):  # type: ignore[no-untyped-def]
    def make(seq: int) -> Telemetry:
        return Telemetry(
            DEVICE,
            epoch,
            seq,
            "1.0.0",
            np.arange(n, dtype=np.float64),
            np.zeros((n, 4), dtype=np.float32),
            np.full((n, 3), 1 / 3, dtype=np.float32),
            "machine-edge",
        )

    return make


def event(epoch: int):  # type: ignore[no-untyped-def]
    def make(seq: int) -> Event:
        return Event(DEVICE, epoch, seq, 1.0, "1.0.0", "score", 0.9, None, None, "log", True, "")

    return make


def send_all(box: Outbox) -> list[Outgoing]:
    out: list[Outgoing] = []
    for _ in range(1000):
        chunk = box.unsent(7)
        if not chunk:
            return out
        for msg in chunk:
            box.sent(msg)
        out += chunk
    raise AssertionError("unsent() never ran dry")


def keys(msgs: list[Outgoing]) -> list[tuple[str, int, int]]:
    return [(m.kind.value, m.epoch, m.seq) for m in msgs]


def test_seqs_start_at_one_and_events_go_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=3)
    assert box.last_seq == 0 and box.unsent(10) == []
    for i in range(6):
        box.emit(event(3) if i in (2, 4) else telemetry(3), urgent=i in (2, 4))
    assert box.depth == 0 and box.staged == 6  # emit only stages
    assert box.flush() == 6
    assert box.last_seq == 6 and box.depth == 6
    sent = send_all(box)
    assert keys(sent) == [
        ("events", 3, 3),
        ("events", 3, 5),
        ("telemetry", 3, 1),
        ("telemetry", 3, 2),
        ("telemetry", 3, 4),
        ("telemetry", 3, 6),
    ]
    msg = decode(Kind.TELEMETRY, sent[2].payload)
    assert (msg.device, msg.epoch, msg.seq) == (DEVICE, 3, 1)
    assert send_all(box) == []  # sent once per round
    box.rewind()
    assert keys(send_all(box)) == keys(sent)  # a rewind sends every unacked one again


def test_a_new_event_overtakes_telemetry_waiting_to_be_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=1)
    for _ in range(5):
        box.emit(telemetry(1))
    box.flush()
    first = box.unsent(2)
    for m in first:
        box.sent(m)
    box.emit(event(1), urgent=True)
    box.flush()
    assert keys(box.unsent(1)) == [("events", 1, 6)]


def test_ack_forgets_what_it_covers_and_refuses_what_was_never_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=2)
    for _ in range(5):
        box.emit(telemetry(2))
    box.flush()
    assert box.ack(3, 1) == AckVerdict.FUTURE_EPOCH
    assert box.ack(1, 1) == AckVerdict.UNKNOWN_EPOCH
    assert box.ack(2, 6) == AckVerdict.BEYOND_SENT
    assert box.depth == 5
    assert box.ack(2, 3) is None
    assert box.depth == 2 and box.acked_seq() == 3
    assert box.ack(2, 2) is None and box.depth == 2  # an old ack changes nothing
    box.rewind()
    assert [m.seq for m in send_all(box)] == [4, 5]


def test_a_restart_resends_the_old_epoch_with_its_own_seqs_and_honours_its_ack(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, epoch=7)
    for _ in range(4):
        box.emit(telemetry(7, n=3))
    box.flush()
    box.ack(7, 1)
    box.close()

    box = Outbox(path, epoch=8)
    assert box.recovered == 3 and box.last_seq == 0
    box.emit(telemetry(8))
    box.flush()
    assert keys(send_all(box)) == [
        ("telemetry", 7, 2),
        ("telemetry", 7, 3),
        ("telemetry", 7, 4),
        ("telemetry", 8, 1),
    ]
    assert box.ack(7, 4) is None
    assert box.depth == 1
    assert box.issued() == {7: (4, 12), 8: (1, 2)}


def test_full_outbox_drops_oldest_telemetry_first_and_declares_each_range(tmp_path: Path) -> None:
    probe = Outbox(None, epoch=1)
    probe.emit(telemetry(1))
    probe.flush()
    size = probe.size_bytes
    box = Outbox(tmp_path / "outbox.db", epoch=1, max_bytes=4 * size + size // 2)
    box.emit(telemetry(1))  # 1
    box.emit(event(1), urgent=True)  # 2
    box.emit(telemetry(1))  # 3
    box.emit(telemetry(1))  # 4
    box.flush()
    assert box.declarations(DEVICE) == []
    box.emit(telemetry(1))  # 5: over the bound -> drop 1
    box.emit(telemetry(1))  # 6: drop 3
    box.flush()
    assert box.size_bytes <= box.max_bytes
    kept = [m.seq for m in send_all(box)]
    assert kept == [2, 4, 5, 6]  # the event stays while telemetry is left
    declared = box.declarations(DEVICE)
    assert [(d.epoch, d.first, d.seq, d.reason, d.readings) for d in declared] == [
        (1, 1, 1, "outbox_full", (2,)),
        (1, 3, 3, "outbox_full", (2,)),
    ]
    assert box.declared == {"outbox_full_messages": 2, "outbox_full_readings": 4}
    assert box.declarations(DEVICE) == []  # sent once per round...
    box.rewind()
    assert len(box.declarations(DEVICE)) == 2  # ...and again after a rewind
    box.ack(1, 2)
    box.rewind()
    assert [(d.first, d.seq) for d in box.declarations(DEVICE)] == [(3, 3)]
    box.ack(1, 4)
    assert box.pending_declarations == 0


def test_only_events_left_drops_the_oldest_event(tmp_path: Path) -> None:
    probe = Outbox(None, epoch=1)
    probe.emit(event(1))
    probe.flush()
    box = Outbox(tmp_path / "outbox.db", epoch=1, max_bytes=2 * probe.size_bytes)
    for _ in range(3):
        box.emit(event(1), urgent=True)
    box.flush()
    assert [m.seq for m in send_all(box)] == [2, 3]
    assert [(d.first, d.seq, d.readings) for d in box.declarations(DEVICE)] == [(1, 1, (0,))]


def test_contiguous_drops_make_one_range(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=1, max_messages=2)
    for _ in range(10):
        box.emit(telemetry(1, n=5))
    box.flush()
    assert [(d.first, d.seq, sum(d.readings)) for d in box.declarations(DEVICE)] == [(1, 8, 40)]


def test_messages_older_than_the_age_bound_are_declared_expired(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=1, max_age_s=60.0)
    box.emit(telemetry(1))
    box.flush(now=1000.0)
    box.emit(telemetry(1))
    box.flush(now=1061.0)
    assert [m.seq for m in send_all(box)] == [2]
    assert [(d.first, d.reason) for d in box.declarations(DEVICE)] == [(1, "expired")]


def test_memory_outbox_declares_everything_it_holds_at_drop_all() -> None:
    box = Outbox(None, epoch=4)
    for _ in range(3):
        box.emit(telemetry(4, n=3))
    box.flush()
    box.ack(4, 1)
    assert box.drop_all("shutdown_unsent") == 2
    assert [(d.first, d.seq, d.reason, d.readings) for d in box.declarations(DEVICE)] == [
        (2, 3, "shutdown_unsent", (3, 3))
    ]


def test_staging_is_bounded_and_counts_what_it_drops() -> None:
    wake = threading.Event()
    box = Outbox(None, epoch=1, staging_max=3, wake=wake)
    box.emit(event(1), urgent=True)
    for _ in range(4):
        box.emit(telemetry(1))
    assert wake.is_set()
    assert box.staged == 3
    assert box.dropped == {"staging_full_messages": 2}
    box.flush()
    assert keys(send_all(box))[0] == ("events", 1, 1)  # the urgent one was kept


def test_a_corrupt_outbox_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, epoch=2)
    assert box.corrupt is not None
    moved = box.corrupt.moved_to
    assert moved.exists() and moved.read_bytes().startswith(b"this is not")
    assert box.dropped == {"outbox_corrupt_files": 1}
    assert str(path) in caplog.text and "moved it to" in caplog.text
    box.emit(telemetry(2))
    assert box.flush() == 1  # the new outbox works


def test_a_truncated_outbox_is_moved_aside_and_what_it_held_counted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, epoch=1, fsync_ms=0)
    for _ in range(400):
        box.emit(telemetry(1, n=20))
    box.flush()
    box.close()
    with sqlite3.connect(path) as db:  # fold the WAL in, so the main file holds it all
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a torn copy, or a card that lost its tail
    box = Outbox(path, epoch=2)
    assert box.corrupt is not None and box.corrupt.moved_to.exists()
    assert box.dropped["outbox_corrupt_files"] == 1
    assert "cannot be read" in str(box.corrupt) and str(path) in str(box.corrupt)
    assert box.recovered == 0 and box.flush() == 0


def test_a_write_survives_the_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    script = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_outbox import telemetry
from edge_agent.outbox import Outbox
from pathlib import Path
box = Outbox(Path({str(path)!r}), epoch=5, fsync_ms=60_000)
for _ in range(20):
    box.emit(telemetry(5))
box.flush()
print("flushed", flush=True)
import time; time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"flushed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    box = Outbox(path, epoch=6)
    assert box.recovered == 20
    assert [m.seq for m in send_all(box)] == list(range(1, 21))


class _FullDisk(Outbox):
    """The real outbox whose writes fail while ``full`` is set (the fault, injected)."""

    full = False

    def _insert(
        self, rows: list[tuple[int, int, str, int, float, int, bytes]], readings: int
    ) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super()._insert(rows, readings)


def test_a_failed_write_keeps_the_messages_staged_and_spends_no_seq(tmp_path: Path) -> None:
    box = _FullDisk(tmp_path / "outbox.db", epoch=1)
    box.emit(telemetry(1))
    box.flush()
    box.full = True
    for _ in range(3):
        box.emit(telemetry(1))
    with pytest.raises(sqlite3.OperationalError):
        box.flush()
    assert box.staged == 3 and box.last_seq == 1 and box.depth == 1
    assert box.write_due() is not None  # still to be written
    box.emit(event(1), urgent=True)
    with pytest.raises(sqlite3.OperationalError):
        box.flush()
    box.full = False
    assert box.flush() == 4
    assert keys(send_all(box)) == [
        ("events", 1, 5),
        ("telemetry", 1, 1),
        ("telemetry", 1, 2),
        ("telemetry", 1, 3),
        ("telemetry", 1, 4),
    ]


def test_staged_messages_wait_to_share_a_write_and_urgent_ones_do_not() -> None:
    wake = threading.Event()
    box = Outbox(None, epoch=1, write_delay_ms=20, wake=wake)
    assert box.write_due() is None
    box.emit(telemetry(1))
    assert wake.is_set()  # the link thread learns when to write
    due = box.write_due()
    assert due is not None
    wake.clear()
    box.emit(telemetry(1))
    assert not wake.is_set()  # it knows already
    assert box.write_due() == due  # counted from the oldest staged message
    box.emit(event(1), urgent=True)
    assert wake.is_set()  # an urgent message is written at once, with what waits
    assert box.write_due() == pytest.approx(due - 0.02)
    wake.clear()
    box.emit(event(1), urgent=True)
    assert not wake.is_set()
    assert box.flush() == 4
    assert box.write_due() is None
    box.emit(telemetry(1))
    assert wake.is_set()


REPLAY_EPOCH = 2**52 + 12345


def write_recording(box: Outbox, kinds: str) -> None:
    for k in kinds:
        box.emit(event(REPLAY_EPOCH) if k == "e" else telemetry(REPLAY_EPOCH), urgent=k == "e")
    box.flush(now=1.0)


def test_a_replay_numbers_from_one_each_run_and_writes_only_what_the_hub_lacks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, REPLAY_EPOCH, replay=True)
    write_recording(first, "ttet")  # an interrupted run: 4 of the recording's 6 messages
    assert first.ack(REPLAY_EPOCH, 2) is None
    first.close()

    again = Outbox(path, REPLAY_EPOCH, replay=True)
    assert again.recovered == 2  # seqs 3 and 4, unacked
    write_recording(again, "ttetee")
    assert again.last_seq == 6
    assert again.replay_known == 4  # 1-2 acked, 3-4 still held: not written twice
    assert keys(send_all(again)) == [
        ("events", REPLAY_EPOCH, 3),
        ("events", REPLAY_EPOCH, 5),
        ("events", REPLAY_EPOCH, 6),
        ("telemetry", REPLAY_EPOCH, 4),
    ]
    assert again.issued() == {REPLAY_EPOCH: (6, 6)}  # each telemetry's 2 readings, once
    again.close()


def test_a_replay_takes_the_hubs_ack_beyond_what_this_run_issued(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", REPLAY_EPOCH, replay=True)
    write_recording(box, "tt")
    # The hub stored 40 messages of this recording in an earlier run elsewhere.
    assert box.ack(REPLAY_EPOCH, 40) is None
    assert box.depth == 0
    write_recording(box, "tttt")
    assert box.depth == 0
    assert box.replay_known == 4
    live = Outbox(tmp_path / "live.db", 1_764_000_000)
    assert live.ack(REPLAY_EPOCH, 1) == AckVerdict.UNKNOWN_EPOCH  # not a future epoch
    assert live.ack(1_764_000_001, 1) == AckVerdict.FUTURE_EPOCH


# What an agent of wire schema v1 left in its outbox: telemetry with and without the
# model's name, an event (v1 events are v2's but for "v").
_V1_TELEMETRY = (
    b'{"v":1,"device":"pi-07","epoch":7,"seq":%d,"model_version":"%s",'
    b'"ts":[1.0,2.0],"features":[[0.1,1e-45],[0.5,2.0]],"scores":[[0.25,0.75],[1.0,0.0]]%s}'
)
_V1_EVENT = (
    b'{"v":1,"device":"pi-07","epoch":7,"seq":4,"ts":1.0,"model_version":"1.0.0",'
    b'"rule":"score","score":0.9,"sensor":null,"value":null,"action":"log",'
    b'"action_ok":true,"detail":""}'
)


def test_an_outbox_an_older_agent_left_is_sent_in_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, epoch=7).close()  # the tables, as the v1 agent had them
    rows = [
        (1, "telemetry", _V1_TELEMETRY % (1, b"1.0.0", b',"model":"rig-edge"')),
        (2, "telemetry", _V1_TELEMETRY % (2, b"1.0.0", b"")),  # no name, the version it runs
        (3, "telemetry", _V1_TELEMETRY % (3, b"0.9.0", b"")),  # no name, another version
        (4, "events", _V1_EVENT),
    ]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO messages (epoch, seq, kind, readings, created, size, payload) "
            "VALUES (7, ?, ?, ?, 1.0, ?, ?)",
            [(seq, kind, 2 if kind == "telemetry" else 0, len(p), p) for seq, kind, p in rows],
        )
        db.execute("UPDATE epochs SET last_seq = 4, readings = 6 WHERE epoch = 7")
    db.close()

    box = Outbox(path, epoch=8, model=("machine-edge", "1.0.0"))
    sent = send_all(box)
    assert keys(sent) == [("events", 7, 4), ("telemetry", 7, 1), ("telemetry", 7, 2)]
    got = {m.seq: decode(m.kind, m.payload) for m in sent}
    assert [m.payload[:7] for m in sent] == [b'{"v":2,'] * 3
    t1, t2 = got[1], got[2]
    assert isinstance(t1, Telemetry) and isinstance(t2, Telemetry)
    assert (t1.model, t2.model) == ("rig-edge", "machine-edge")
    assert t1.features.tolist() == np.array([[0.1, 1e-45], [0.5, 2.0]], np.float32).tolist()
    # The one no one can name is declared dropped, so the hub closes its seq.
    [declared] = box.declarations("pi-07")
    assert (declared.epoch, declared.first, declared.seq) == (7, 3, 3)
    assert (declared.reason, declared.readings) == ("schema_upgrade", (2,))
    assert box.recovered == 3 and box.depth == 3
    box.close()
    again = Outbox(path, epoch=9, model=("machine-edge", "1.0.0"))  # nothing left to upgrade
    assert [m.payload for m in send_all(again)] == [m.payload for m in sent]
