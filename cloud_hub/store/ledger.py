"""Which seqs of one (device, epoch) are settled: the dedupe and gap arithmetic. Pure.

A seq is *settled* when the hub stored it, or closed it without storing it:
declared dropped by the device (lost at the edge), refused by the hub (kept
aside as a dead letter), or given up on after the gap retention (lost,
unexplained). The ledger keeps that as a watermark ``wm`` (every seq up to it
is settled: what the hub acks) and the settled ranges above it, so its size is
O(open gaps), never O(messages). The holes below the highest settled or issued
seq are the *gaps*; each remembers when it was first seen, for the retention.

Every backend (SQLite now, PostgreSQL later) stores a ledger as one value per
(device, epoch) and does this arithmetic here.

>>> led = Ledger()
>>> [led.claim(s, now=1.0, max_ahead=100) for s in (1, 2, 2, 5)]
['new', 'new', 'duplicate', 'new']
>>> led.wm, led.gaps()
(2, [(3, 4, 1.0)])
>>> led.close(3, 4, now=2.0)
[(3, 4)]
>>> led.wm, led.gaps()
(5, [])
>>> led.claim(500, now=3.0, max_ahead=100)
'too_far'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Claim", "Ledger"]

Claim = Literal["new", "duplicate", "too_far"]


@dataclass(slots=True)
class Ledger:
    """One (device, epoch)'s settled seqs. See the module docstring."""

    wm: int = 0
    """Every seq 1..wm is settled."""
    ranges: list[list[float]] = field(default_factory=list)
    """Settled ranges above ``wm + 1``: sorted, disjoint, not touching, as
    [first, last, seen_at]; ``seen_at`` is when the hole below it was first seen."""
    issued: int = 0
    """The highest seq the device said it issued (birth, will, heartbeat)."""
    issued_at: float = 0.0
    """When ``issued`` was first above everything settled (a tail gap's age)."""

    # -- questions -----------------------------------------------------------------------------

    def settled(self, seq: int) -> bool:
        if seq <= self.wm:
            return True
        return any(r[0] <= seq <= r[1] for r in self.ranges)

    @property
    def top(self) -> int:
        """The highest settled seq."""
        return int(self.ranges[-1][1]) if self.ranges else self.wm

    def gaps(self) -> list[tuple[int, int, float]]:
        """Holes as (first, last, seen_at): below settled ranges, then the issued tail."""
        out: list[tuple[int, int, float]] = []
        prev = self.wm
        for first, last, seen in self.ranges:
            out.append((prev + 1, int(first) - 1, seen))
            prev = int(last)
        if self.issued > prev:
            out.append((prev + 1, self.issued, self.issued_at))
        return out

    # -- changes -------------------------------------------------------------------------------

    def claim(self, seq: int, *, now: float, max_ahead: int) -> Claim:
        """Record ``seq`` as stored if it is new. A seq more than ``max_ahead``
        beyond the watermark is refused (``too_far``) and records nothing."""
        if seq < 1 or self.settled(seq):
            return "duplicate"
        if seq - self.wm > max_ahead:
            return "too_far"
        self._settle(seq, seq, now)
        return "new"

    def close(
        self, first: int, last: int, *, now: float, max_ahead: int = 2**62
    ) -> list[tuple[int, int]] | None:
        """Settle every unsettled seq of first..last; returns the ranges it settled,
        or None (nothing settled) when ``last`` is more than ``max_ahead`` beyond ``wm``."""
        if last - self.wm > max_ahead:
            return None
        first = max(first, self.wm + 1)
        if last < first:
            return []
        closed: list[tuple[int, int]] = []
        cursor = first
        for r_first, r_last, _ in list(self.ranges):
            if r_last < cursor:
                continue
            if r_first > last:
                break
            if r_first > cursor:
                closed.append((cursor, int(r_first) - 1))
            cursor = int(r_last) + 1
            if cursor > last:
                break
        if cursor <= last:
            closed.append((cursor, last))
        for a, b in closed:
            self._settle(a, b, now)
        return closed

    def note_issued(self, seq: int, *, now: float) -> None:
        """The device says it issued seqs up to ``seq`` (it may be behind us: ignored)."""
        if seq > self.issued:
            if self.issued <= self.top:
                self.issued_at = now  # a new tail gap opens now
            self.issued = seq

    def expire(self, *, before: float) -> list[tuple[int, int]]:
        """Close every gap first seen before ``before``; returns the ranges closed."""
        expired = [(a, b) for a, b, seen in self.gaps() if seen < before and a <= b]
        for a, b in expired:
            self._settle(a, b, before)
        return expired

    def _settle(self, first: int, last: int, now: float) -> None:
        if first == self.wm + 1:
            self.wm = last
        else:
            merged: list[list[float]] = []
            new = [float(first), float(last), now]
            placed = False
            for r in self.ranges:
                if r[1] + 1 < new[0]:
                    merged.append(r)
                elif new[1] + 1 < r[0]:
                    if not placed:
                        merged.append(new)
                        placed = True
                    merged.append(r)
                else:  # overlapping or touching: one range, the older hole's age
                    new = [min(r[0], new[0]), max(r[1], new[1]), min(r[2], new[2])]
            if not placed:
                merged.append(new)
            self.ranges = merged
        while self.ranges and self.ranges[0][0] <= self.wm + 1:
            self.wm = max(self.wm, int(self.ranges.pop(0)[1]))

    # -- storage -------------------------------------------------------------------------------

    def dumps(self) -> str:
        return json.dumps(
            {
                "r": [[int(a), int(b), t] for a, b, t in self.ranges],
                "i": self.issued,
                "t": self.issued_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, wm: int, text: str | None) -> Ledger:
        if not text:
            return cls(wm)
        obj = json.loads(text)
        return cls(
            wm,
            [[float(a), float(b), float(t)] for a, b, t in obj["r"]],
            int(obj["i"]),
            float(obj["t"]),
        )
