"""What every sensor source yields, and the contract it keeps.

A source is an iterable of :class:`Reading`. It ends when its data ends (a CSV
file, stdin closed) or when the ``stop`` event it was given is set; it never
blocks for longer than a fraction of a second without checking that event, so
SIGTERM stops the agent promptly whatever the source is doing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Reading", "Source"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading: a timestamp (unix seconds) and one value per sensor, NaN if missing."""

    ts: float
    values: npt.NDArray[np.float64]


class Source(Protocol):
    """A sensor source: iterate to get readings; ``invalid`` counts input it skipped."""

    invalid: dict[str, int]

    def readings(self, stop: threading.Event) -> Iterator[Reading]: ...
