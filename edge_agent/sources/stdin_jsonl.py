"""Readings as JSON lines on standard input.

Each line is an object with ``ts`` (unix seconds; optional, default now) and
either one key per sensor the model reads (``{"ts": 1.5, "temperature": 64.2,
...}``; a missing key or ``null`` is a dropout, a key the model does not read is
ignored) or ``values``, a list in the model's sensor order.
A line that does not parse is skipped and counted. A reader thread feeds a
small bounded queue, so the main loop can notice a stop request even while
stdin is silent, and a fast producer is slowed down rather than buffered.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from edge_agent.sources.base import Reading, StopSignal

__all__ = ["StdinSource", "parse_line"]

log = logging.getLogger(__name__)

_EOF = object()


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int with hundreds of digits
        return False


def parse_line(line: str, sensors: Sequence[str]) -> Reading:
    """One JSON line to a :class:`Reading` of ``sensors``, or ``ValueError`` saying what is wrong."""
    try:
        obj: Any = json.loads(line)
    except RecursionError:
        raise ValueError("a line is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    ts = obj.get("ts", time.time())
    if type(ts) not in (int, float) or not _finite(ts):
        raise ValueError("'ts' must be a finite number of unix seconds")
    if "values" in obj:
        raw = obj["values"]
        if not isinstance(raw, list) or len(raw) != len(sensors):
            raise ValueError(
                f"'values' must be a list of {len(sensors)} numbers ({', '.join(sensors)})"
            )
    else:
        raw = [obj.get(name) for name in sensors]
    values = []
    for v in raw:
        if v is None:
            values.append(math.nan)
        elif type(v) in (int, float) and _finite(v):
            values.append(float(v))
        else:
            raise ValueError("sensor values must be finite numbers or null")
    return Reading(float(ts), np.array(values, dtype=np.float64))


class StdinSource:
    """Readings parsed from JSON lines of a text stream (stdin by default)."""

    def __init__(self, stream: IO[str], sensors: Sequence[str], queue_size: int = 256) -> None:
        self.stream = stream
        self.sensors = tuple(sensors)
        self.invalid: dict[str, int] = {}
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._error: Exception | None = None

    def _pump(self) -> None:
        try:
            for line in self.stream:
                self._queue.put(line)
        except (OSError, ValueError) as exc:  # ValueError: undecodable bytes
            self._error = exc
        finally:
            # Always: without it the reading loop would wait for a dead reader.
            self._queue.put(_EOF)

    def readings(self, stop: StopSignal) -> Iterator[Reading]:
        threading.Thread(target=self._pump, name="stdin-reader", daemon=True).start()
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _EOF:
                if self._error is not None:
                    self.invalid["stdin_read_error"] = self.invalid.get("stdin_read_error", 0) + 1
                    log.error("cannot read input lines any more: %s", self._error)
                return
            line = str(item).strip()
            if not line:
                continue
            try:
                yield parse_line(line, self.sensors)
            except ValueError:
                self.invalid["stdin_bad_line"] = self.invalid.get("stdin_bad_line", 0) + 1
