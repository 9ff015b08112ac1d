"""Reconnect delays: exponential, capped, with full jitter. Pure: no I/O, no threads.

Jitter spreads a fleet's reconnects after a broker restart, so a thousand
devices do not knock at the same second. The agent's MQTT link and the hub's
both wait this way.

>>> import random
>>> b = Backoff(1, 60, random.Random(3))
>>> [b.next() for _ in range(4)]
[1, 2, 3, 6]
>>> b.reset(); b.attempt
0
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


class Backoff:
    """Delay before reconnect attempt n: uniform in [min, min(max, min * 2**n)]."""

    def __init__(self, min_s: int, max_s: int, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> int:
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        # Whole seconds: paho's reconnect timer takes integers.
        return max(self.min_s, math.ceil(self._rng.uniform(self.min_s, ceiling)))

    def reset(self) -> None:
        self.attempt = 0
