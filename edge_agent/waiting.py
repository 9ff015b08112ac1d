"""The reading loop's waits between two readings, with room for an update's next step.

The OTA machine belongs to the reading loop (:mod:`edge_agent.ota.runner`): its
worker thread downloads, verifies, stages and smoke-tests, and the reading loop
takes each outcome and hands the machine the next step. Taken only at the next
reading, every step would cost a reading period: at 1 reading/s an update would
spend five seconds between its steps before its trial even began.

So the agent gives its source a :class:`ReadingWait` instead of the bare stop
event. A source waits for its next reading with ``stop.wait(delay)``; while an
update is in progress (``busy``), that wait also ends whenever another thread
calls :meth:`ReadingWait.wake` (the runner does, for each outcome), runs the
reading loop's ``work`` (the runner's poll) there and then, on the reading
thread, between two readings, and goes on waiting for the rest of the delay.
While no update is in progress it is the stop event's own wait: no cost, and a
desired message that arrives meanwhile is taken at the next reading.

During an update, a stop is seen within :data:`SLICE_S` (the wait is cut into
slices to look at it); otherwise at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["SLICE_S", "ReadingWait"]

SLICE_S: Final = 0.25
"""During an update, the longest the reading loop waits without looking at the stop
event and the update's deadlines."""


class ReadingWait:
    """A stop signal for the source (:class:`~edge_agent.sources.base.StopSignal`) that
    runs ``work`` between two readings when woken while ``busy``."""

    def __init__(
        self,
        stop: threading.Event,
        busy: Callable[[], bool],
        work: Callable[[], None],
        slice_s: float = SLICE_S,
    ) -> None:
        self._stop = stop
        self._busy = busy
        self._work = work
        self._slice_s = slice_s
        self._woken = threading.Event()

    def wake(self) -> None:
        """Ask the reading loop to run its work now (any thread)."""
        self._woken.set()

    def is_set(self) -> bool:
        """True once the run is to stop; runs the work first if it was asked for."""
        if self._woken.is_set():
            self._woken.clear()
            self._work()
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds, doing the work asked for meanwhile; True if the
        run is to stop."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self._woken.is_set():
                self._woken.clear()
                self._work()
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if not self._busy():
                return self._stop.wait(remaining)
            slice_s = self._slice_s if remaining is None else min(remaining, self._slice_s)
            if not self._woken.wait(slice_s):
                self._work()  # the update's deadlines are looked at every slice too
        return True
