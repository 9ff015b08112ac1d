"""The urgent rule: when a reading calls for a local action. Pure logic.

A reading is urgent when a raw sensor value is beyond a hard limit, or when the
urgent-class score has been at or over the threshold for ``consecutive``
readings in a row. The rule fires once when a condition starts and re-arms
when a reading is clear again, so a machine that stays hot is stopped once,
not once per reading.

>>> from shared.manifest import UrgentSpec
>>> rule = UrgentRule(UrgentSpec(0.8, 2, {"temperature": (None, 110.0)}), 2, ("temperature",))
>>> import numpy as np
>>> rule.check(np.array([70.0]), 0.9) is None   # first high score: not yet
True
>>> rule.check(np.array([70.0]), 0.95).rule      # second in a row: fire
'score'
>>> rule.check(np.array([120.0]), 0.95) is None  # still the same episode
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from shared.manifest import UrgentSpec

__all__ = ["Decision", "UrgentRule"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Why a reading is urgent: which rule, and the score or sensor value behind it."""

    rule: Literal["score", "hard_limit"]
    score: float
    sensor: str | None = None
    value: float | None = None


class UrgentRule:
    """Stateful urgent detector for one device's stream."""

    def __init__(self, spec: UrgentSpec, urgent_index: int, sensors: tuple[str, ...]) -> None:
        self.threshold = spec.score_threshold
        self.consecutive = spec.consecutive
        self.urgent_index = urgent_index
        unknown = sorted(set(spec.hard_limits) - set(sensors))
        if unknown:
            raise ValueError(
                f"hard limit on unknown sensor {unknown[0]!r}; sensors: {', '.join(sensors)}"
            )
        # Plain floats: a handful of Python comparisons beat numpy's per-call cost here.
        self._limits = [
            (
                name,
                sensors.index(name),
                -math.inf if lo is None else lo,
                math.inf if hi is None else hi,
            )
            for name, (lo, hi) in spec.hard_limits.items()
        ]
        self._run = 0
        self._armed = True

    def check(self, raw: npt.NDArray[np.float64], score: float) -> Decision | None:
        """Feed one reading's raw values (NaN or inf = missing) and urgent score."""
        decision: Decision | None = None
        if self._limits:
            vals = raw.tolist()
            for name, i, lo, hi in self._limits:
                v = vals[i]
                # A dropout (NaN, or inf as in shared.features) is never a limit breach;
                # NaN compares false both ways, inf is checked only on a breach.
                if (v < lo or v > hi) and math.isfinite(v):
                    decision = Decision("hard_limit", score, name, v)
                    break
        self._run = self._run + 1 if score >= self.threshold else 0
        if decision is None and self._run >= self.consecutive:
            decision = Decision("score", score)
        if decision is None:
            self._armed = True
            return None
        if not self._armed:
            return None
        self._armed = False
        return decision
