"""Where a benchmark keeps its run: ``--work-dir`` or a temporary directory, torn down on SIGTERM."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["in_work_dir"]

T = TypeVar("T")


def in_work_dir(work_dir: Path | None, prefix: str, run: Callable[[Path], T]) -> T:
    """Call ``run`` with ``work_dir`` (created) or a temporary directory removed afterwards.

    SIGTERM (a CI timeout, say) unwinds like Ctrl-C while it runs, so the brokers,
    hubs and agents the run started are stopped on the way out, not left running.
    """
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
            return run(work_dir.resolve())
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(Path(tmp))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
