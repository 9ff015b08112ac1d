"""The urgent rule: when a reading calls for a local action. Pure logic, shared by the
edge agent (each reading) and the hub's batch scoring (recorded series).

Each *cause* is watched on its own: the score rule, and the hard limit of each
sensor that has one. A cause starts an episode, and fires once, when

- score: the urgent-class score has been at or over the threshold for
  ``consecutive`` readings in a row; the episode ends after ``release``
  readings in a row below the threshold (1: at the first one), so a score that
  hovers around the threshold during one fault gives one event, not one per
  crossing. A missing score (NaN: the model gave no number) is skipped: it
  neither counts toward nor breaks a run of high scores or of low ones, as a
  missing value does not end a hard-limit episode;
- hard limit: a sensor's value is beyond its limit; the episode ends at the
  first reading of that sensor back inside its limit.

A cause re-arms when its episode ends, so a machine that stays hot is stopped
once, not once per reading; and a cause that starts while another's episode
goes on fires its own decision, so an escalation is never swallowed. A missing
value (NaN or inf, as in :mod:`shared.features`) neither starts nor ends a
hard-limit episode: an unseen sensor is not known to be back inside its limit.

:meth:`UrgentRule.check` returns every cause that started on the reading, the
most severe first: hard limits (a measured value is beyond its limit) in the
manifest's order, then the score. Usually that is the empty tuple.
:meth:`UrgentRule.check_block` feeds a block of readings through :meth:`check`
(batch scoring), skipping only the calls that provably change nothing.

>>> import numpy as np
>>> from shared.manifest import UrgentSpec
>>> spec = UrgentSpec(0.8, 2, {"temperature": (None, 110.0)}, release=2)
>>> rule = UrgentRule(spec, 2, ("temperature",))
>>> rule.check(np.array([70.0]), 0.9)               # first high score: not yet
()
>>> [d.rule for d in rule.check(np.array([70.0]), 0.95)]   # second in a row: fire
['score']
>>> rule.check(np.array([80.0]), 0.97)              # the same score episode: nothing new
()
>>> rule.check(np.array([120.0]), 0.95)             # a new cause during it fires on its own
(Decision(rule='hard_limit', score=0.95, sensor='temperature', value=120.0),)
>>> rule.check(np.array([125.0]), 0.1)              # still beyond: the same limit episode
()
>>> rule.check(np.array([100.0]), 0.1)              # back inside: re-armed
()
>>> [d.sensor for d in rule.check(np.array([130.0]), 0.1)]
['temperature']
>>> rule.check(np.array([70.0]), 0.75)             # one low score: the episode goes on
()
>>> rule.check(np.array([70.0]), 0.9)               # high again: no second event
()
>>> rule.check(np.array([70.0]), 0.2), rule.check(np.array([70.0]), 0.3)  # 2 lows: it ends
((), ())
>>> rule.check(np.array([70.0]), 0.9)               # a new episode needs 2 highs again
()
>>> [d.rule for d in rule.check(np.array([70.0]), 0.9)]
['score']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

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


_NOTHING: Final[tuple[Decision, ...]] = ()


class UrgentRule:
    """Stateful urgent detector for one device's stream: one episode per cause."""

    def __init__(self, spec: UrgentSpec, urgent_index: int, sensors: tuple[str, ...]) -> None:
        self.threshold = spec.score_threshold
        self.consecutive = spec.consecutive
        self.release = spec.release
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
        self._beyond: set[str] = set()  # sensors in a hard-limit episode
        self._run = 0  # high scores in a row while no score episode is on
        self._on = False  # a score episode is on
        self._low = 0  # low scores in a row while the score episode is on

    @property
    def episode_on(self) -> bool:
        """Whether an urgent episode (a score episode or a hard limit crossed) is on."""
        return self._on or bool(self._beyond)

    def check(self, raw: npt.NDArray[np.float64], score: float) -> tuple[Decision, ...]:
        """Feed one reading's raw values (NaN or inf = missing) and urgent score.

        Returns the causes that start on this reading, most severe first; the
        empty tuple (no allocation) when none does.
        """
        fired = _NOTHING
        if self._limits:
            vals = raw.tolist()
            beyond = self._beyond
            for name, i, lo, hi in self._limits:
                v = vals[i]
                # NaN compares false both ways, so it is never beyond; inf (missing
                # too) is told apart only on the rare paths, never on a clear reading.
                if v < lo or v > hi:
                    if name not in beyond and math.isfinite(v):
                        beyond.add(name)
                        fired += (Decision("hard_limit", score, name, v),)
                elif beyond and name in beyond and math.isfinite(v):
                    beyond.discard(name)
        if score >= self.threshold:
            if self._on:
                self._low = 0
            else:
                self._run += 1
                if self._run >= self.consecutive:
                    self._on, self._run, self._low = True, 0, 0
                    fired += (Decision("score", score),)
        elif score < self.threshold:  # NaN is neither: skipped
            if self._on:
                self._low += 1
                if self._low >= self.release:
                    self._on = False
            else:
                self._run = 0
        return fired

    def check_block(
        self, raw: npt.NDArray[np.float64], scores: npt.NDArray[np.floating[Any]]
    ) -> npt.NDArray[np.bool_]:
        """:meth:`check` for each reading of ``raw`` ``(n, n_sensors)`` in order, with
        its urgent score; True where a cause starts.

        While no episode is on and no run of high scores counts, a reading whose
        score is under the threshold (or missing) and whose limited sensors are
        inside their limits (or missing) changes nothing and fires nothing, so
        :meth:`check` is called only for the other readings, and for every
        reading while an episode or a run is on. The verdicts are :meth:`check`'s own.
        """
        n = int(raw.shape[0])
        fired = np.zeros(n, dtype=np.bool_)
        with np.errstate(invalid="ignore"):
            busy = np.asarray(scores >= self.threshold)
            for _, i, lo, hi in self._limits:
                busy = busy | (raw[:, i] < lo) | (raw[:, i] > hi)
        todo = np.flatnonzero(busy).tolist()
        score = scores.tolist()
        check = self.check
        r = t = 0
        while r < n:
            if self._run == 0 and not self._on and not self._beyond:
                while t < len(todo) and todo[t] < r:
                    t += 1
                if t == len(todo):
                    break
                r = todo[t]
            if check(raw[r], score[r]):
                fired[r] = True
            r += 1
        return fired
