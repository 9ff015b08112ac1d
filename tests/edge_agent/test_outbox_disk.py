"""The outbox on a small or full disk: its WAL stays small, it stops growing below its
free-space reserve (declaring what it drops), and a failed write never issues a reading twice.

The small disk is a real tmpfs where the test may mount one (root); the
reserve is tested on any disk by injecting what the outbox reads as free space.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.outbox import Outbox
from shared.messages import Telemetry

pytestmark = pytest.mark.timeout(60)

DEVICE = "pi-07"
READINGS = 10


def telemetry(epoch: int):  # type: ignore[no-untyped-def]
    """A message like the agent's at 10 readings/s: 10 readings of 32 features."""
    rng = np.random.default_rng(epoch)

    def make(seq: int) -> Telemetry:
        return Telemetry(
            DEVICE,
            epoch,
            seq,
            "1.0.0",
            np.arange(READINGS, dtype=np.float64) + seq,
            rng.random((READINGS, 32), dtype=np.float32),
            np.full((READINGS, 3), 1 / 3, dtype=np.float32),
            "machine-edge",
        )

    return make


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path``; the test is skipped where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], timeout=10, check=False)


def test_the_wal_stays_small_while_the_hub_acks(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", epoch=1)
    for _ in range(400):
        box.emit(telemetry(1))
        box.flush()
        assert box.ack(1, box.last_seq) is None
    # SQLite's own default checkpoints at 1,000 pages and keeps the file: ~4 MiB here.
    assert (tmp_path / "outbox.db-wal").stat().st_size <= 512 * 1024
    box.close()


def test_an_outbox_on_a_small_disk_keeps_working_while_the_hub_acks(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "512k") as disk:
        box = Outbox(disk / "outbox.db", epoch=1, min_free_bytes=128 * 1024)
        for _ in range(600):
            box.emit(telemetry(1))
            assert box.flush() == 1
            assert box.ack(1, box.last_seq) is None
        assert box.depth == 0 and box.declared == {}
        box.close()


class _NearlyFull(Outbox):
    """The real outbox, told its disk has ``free`` bytes left (the fault, injected)."""

    free = 10**12

    def _disk_free(self) -> int:
        return self.free


def test_below_its_reserve_the_outbox_stops_growing_and_declares_what_it_drops(
    tmp_path: Path,
) -> None:
    box = _NearlyFull(tmp_path / "outbox.db", epoch=3, min_free_bytes=1024 * 1024)
    for _ in range(100):  # the hub is away: nothing is acked, the outbox grows
        box.emit(telemetry(3))
        box.flush()
    assert box.declared == {}
    pages = box._pages()
    box.free = 1000  # now the disk is nearly full
    for _ in range(300):
        box.emit(telemetry(3))
        box.flush()
    assert box._pages() <= pages + 4, "the file kept growing below the reserve"
    dropped = box.declared["disk_full_readings"]
    assert dropped > 0 and dropped == READINGS * box.declared["disk_full_messages"]
    kept = box._db.execute("SELECT coalesce(sum(readings), 0) FROM messages").fetchone()[0]
    assert kept + dropped == 400 * READINGS  # every reading issued is kept or declared
    declarations = box.declarations(DEVICE)
    assert {d.reason for d in declarations} == {"disk_full"}
    assert sum(sum(d.readings) for d in declarations) == dropped
    assert declarations[0].first == 1  # the oldest went first
    assert box.issued() == {3: (400, 400 * READINGS)}


def test_below_its_reserve_the_outbox_drops_nothing_while_the_hub_acks(tmp_path: Path) -> None:
    box = _NearlyFull(tmp_path / "outbox.db", epoch=3, min_free_bytes=1024 * 1024)
    for _ in range(5):
        box.emit(telemetry(3))
        box.flush()
    box.ack(3, box.last_seq)
    box.free = 1000
    for _ in range(200):
        box.emit(telemetry(3))
        box.flush()
        box.ack(3, box.last_seq)
    assert box.declared == {}


class _DropFails(Outbox):
    """The real outbox whose drops fail once (the disk fills between the insert and the drop)."""

    fail_next_drop = False

    def _drop(self, victims: list[tuple[int, int, int, int]], reason: str) -> None:
        if self.fail_next_drop:
            self.fail_next_drop = False
            raise sqlite3.OperationalError("database or disk is full")
        super()._drop(victims, reason)


def test_a_failure_after_the_write_does_not_issue_the_same_readings_again(
    tmp_path: Path,
) -> None:
    box = _DropFails(tmp_path / "outbox.db", epoch=1, max_messages=3)
    for _ in range(3):
        box.emit(telemetry(1))
    box.flush()
    box.emit(telemetry(1))
    box.fail_next_drop = True
    with pytest.raises(sqlite3.OperationalError):
        box.flush()  # the message is written (seq 4); dropping seq 1 failed
    assert box.staged == 0 and box.last_seq == 4
    box.emit(telemetry(1))
    box.flush()
    assert box.last_seq == 5
    assert box.issued() == {1: (5, 5 * READINGS)}
    kept = box._db.execute("SELECT coalesce(sum(readings), 0) FROM messages").fetchone()[0]
    assert kept + box.declared["outbox_full_readings"] == 5 * READINGS
