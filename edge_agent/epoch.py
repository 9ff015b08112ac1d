"""The agent's epoch: a counter on disk, bumped at every start.

``(device, epoch, seq)`` must never repeat, so the new epoch is written and
fsynced before the agent sends anything. A state file that cannot be read as a
number is not guessed at: the epoch then jumps to the current unix time, which
is larger than any counter a device reaches by restarts, and a warning says so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

__all__ = ["next_epoch"]

log = logging.getLogger(__name__)


def next_epoch(state_dir: Path) -> int:
    """Read, bump, durably store and return this start's epoch."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "epoch"
    previous = 0
    if path.exists():
        try:
            previous = int(path.read_text(encoding="ascii").strip())
            if previous < 0:
                raise ValueError(previous)
        except (ValueError, UnicodeDecodeError):
            previous = int(time.time())
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
