"""The send queue between the reading loop and the MQTT link.

Stream messages (telemetry, events, ota) take their ``seq`` here, under the same
lock that queues them, so the queue is always in ``seq`` order and the wire is
too. The queue is bounded: while the broker is away it holds at most
``max_messages``; beyond that it drops the *oldest telemetry* batch (urgent
events are kept while any telemetry is left to drop) and counts every drop, and
the next heartbeat reports the counts.

This in-memory queue is the seam for the durable on-disk outbox: it keeps the
same methods (``emit``, ``take``, ``give_back``, ``acked``), and the hub's
``ack`` tells it what may be forgotten.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from shared.messages import Event, Ota, Telemetry

__all__ = ["MemoryOutbox", "StreamMessage"]

StreamMessage = Telemetry | Event | Ota
_S = TypeVar("_S", Telemetry, Event, Ota)


class MemoryOutbox:
    """Bounded FIFO of stream messages for one device and epoch."""

    def __init__(self, max_messages: int, wake: threading.Event | None = None) -> None:
        if max_messages < 1:
            raise ValueError("outbox must hold at least one message")
        self.max_messages = max_messages
        self._queue: deque[StreamMessage] = deque()
        self._lock = threading.Lock()
        self._next_seq = 1
        self._wake = wake
        self.dropped: dict[str, int] = {}
        self.acked_seq = 0

    @property
    def last_seq(self) -> int:
        """The last seq issued (0 before the first message)."""
        return self._next_seq - 1

    def __len__(self) -> int:
        return len(self._queue)

    def emit(self, make: Callable[[int], _S]) -> _S:
        """Build a message with the next seq and queue it; never blocks on I/O."""
        with self._lock:
            msg = make(self._next_seq)
            self._next_seq += 1
            if len(self._queue) >= self.max_messages:
                self._drop_one()
            self._queue.append(msg)
        if self._wake is not None:
            self._wake.set()
        return msg

    def _drop_one(self) -> None:
        victim = next((m for m in self._queue if isinstance(m, Telemetry)), self._queue[0])
        self._queue.remove(victim)
        key = f"outbox_full_{victim.kind.value}"
        self.dropped[key] = self.dropped.get(key, 0) + 1
        if isinstance(victim, Telemetry):
            readings = "outbox_full_readings"
            self.dropped[readings] = self.dropped.get(readings, 0) + len(victim)

    def take(self) -> StreamMessage | None:
        """The oldest queued message, removed from the queue (None if empty)."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def give_back(self, msg: StreamMessage) -> None:
        """Put a message the link could not hand over back at the front."""
        with self._lock:
            self._queue.appendleft(msg)

    def acked(self, seq: int) -> None:
        """The hub has stored everything up to ``seq`` of this epoch."""
        with self._lock:
            self.acked_seq = max(self.acked_seq, min(seq, self.last_seq))
