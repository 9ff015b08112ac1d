"""When to restart a broker that died: doubling delays, forgiven after a stable run. Pure.

The first restart waits ``min_s``; each crash soon after the last start doubles
the wait, up to ``max_s``, so a broker that cannot start does not spin. A broker
that stayed up ``stable_s`` or more starts the count again: one crash a day is
restarted at once, every time.

>>> policy = RestartPolicy(min_s=0.5, max_s=30.0, stable_s=60.0)
>>> [policy.next_delay(ran_s=1.0) for _ in range(8)]
[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
>>> policy.next_delay(ran_s=120.0)
0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RestartPolicy"]


@dataclass(slots=True)
class RestartPolicy:
    """Delay before the next restart, from how long the last run lasted."""

    min_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 60.0
    """A run at least this long resets the delay to ``min_s``."""
    failures: int = field(default=0, init=False)
    """Restarts in a row that followed a short run."""

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(
                f"restart policy: need 0 < min_s <= max_s, got {self.min_s} and {self.max_s}"
            )

    def next_delay(self, ran_s: float) -> float:
        """Seconds to wait before restarting a process that ran ``ran_s`` seconds."""
        if ran_s >= self.stable_s:
            self.failures = 0
        delay: float = min(self.max_s, self.min_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return delay
