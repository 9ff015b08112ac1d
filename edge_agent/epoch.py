"""The agent's epoch: a counter on disk, bumped at every start.

``(device, epoch, seq)`` must never repeat, so the new epoch is written and
fsynced before the agent sends anything.

A state directory with no epoch file (a new device, or one whose disk was
wiped) starts at the current unix time in seconds, not at 1: a restart adds
one, far less than a second of wall time, so a wiped device's new epoch is
above every epoch it used before and the hub never takes its new readings for
replays of old ones. That holds as long as the device's clock is not behind
the time it first started (a device without a clock that boots at 1970 and
loses its disk can repeat an epoch; the hub counts such a birth as
``epoch_regressed``). A state file that cannot be read as a number is treated
the same way, and a warning says so.

An agent replaying a recording (``--source csv``) leaves this file alone: its
epoch is the recording's (:mod:`edge_agent.replay_identity`), so a replay
neither uses up live epochs nor moves the next live start.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

__all__ = ["next_epoch"]

log = logging.getLogger(__name__)


def next_epoch(state_dir: Path, now: float | None = None) -> int:
    """Read, bump, durably store and return this start's epoch (``now``: unix time)."""
    now = time.time() if now is None else now
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "epoch"
    previous = int(now) - 1
    if path.exists():
        try:
            previous = int(path.read_text(encoding="ascii").strip())
            if previous < 0:
                raise ValueError(previous)
        except (ValueError, UnicodeDecodeError):
            previous = int(now)
            log.warning(
                "epoch file %s is corrupt; continuing from epoch %d (unix time) so no (epoch, seq) repeats",
                path,
                previous,
            )
    epoch = previous + 1
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="ascii") as fh:
        fh.write(f"{epoch}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return epoch
