"""The outbox on a full disk: a failed write never issues a reading twice."""

from __future__ import annotations

import sqlite3
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
        )

    return make


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
