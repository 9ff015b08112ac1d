"""What every sensor source yields, and the contract it keeps.

A source is an iterable of :class:`Reading`. It ends when its data ends (a CSV
file, stdin closed) or when the ``stop`` signal it was given is set; it never
blocks for longer than a fraction of a second without checking that signal, so
SIGTERM stops the agent promptly whatever the source is doing. A source that
waits between readings waits on ``stop.wait(delay)``: the agent's signal
(:class:`edge_agent.waiting.ReadingWait`) uses that time for work between two
readings, such as the next step of a model update.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Reading", "Source", "StopSignal"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading: a timestamp (unix seconds) and one value per sensor, NaN if missing."""

    ts: float
    values: npt.NDArray[np.float64]


class StopSignal(Protocol):
    """What a source is given to stop on: a :class:`threading.Event` is one."""

    def is_set(self) -> bool:
        """True once the source should end."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True if the source should end."""
        ...


class Source(Protocol):
    """A sensor source: iterate to get readings; ``invalid`` counts input it skipped."""

    invalid: dict[str, int]

    def readings(self, stop: StopSignal) -> Iterator[Reading]: ...
