"""A bounded, time-ordered sample of feature rows: every k-th reading of each series.

``models train`` reads recordings of any size chunk by chunk
(:func:`cloud_hub.pipeline.recorded.stream_sample`), computes every reading's
features, and offers them here; this keeps at most ``max_rows`` of them. Pure
logic, no I/O.

The rule, one ``k`` for all series: reading ``i`` of a series (counted from 0
in that series) is kept when ``i % k == 0``. ``k`` starts at 1 (every reading)
and doubles whenever one more kept row would pass ``max_rows``: the kept rows
with ``i % 2k != 0`` (every other one) are dropped. So each series is thinned
alike, the sample stays in time order within each series with a fixed stride,
and the same data and cap always keep the same rows. A series' first reading is
always kept, so ``max_rows`` must be at least the number of series.

Stretches (training without labels): besides single rows, raw readings
``stretch`` long in a row, one starting at every reading ``i`` with
``i % (k * every) == 0`` (thinned with ``k`` too). Synthetic faults and an
agent's start-up rows need consecutive readings, which every k-th reading is
not. Their readings number at most ``stretch / every`` of the kept rows'.

>>> import numpy as np
>>> s = RowSample(max_rows=4, n_sensors=1, n_features=4)
>>> v = np.arange(10.0)[:, None]
>>> s.add(0, 0, ts=v[:, 0], values=v, features=np.zeros((10, 4), np.float32))
>>> s.k, s.index.tolist(), s.offered
(4, [0, 4, 8], 10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import numpy as np
import numpy.typing as npt

__all__ = ["STRETCH_EVERY", "RowSample", "Stretch"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]

STRETCH_EVERY: Final = 50
"""Readings between two stretches' starts (times ``k``), at least the stretch's length."""
_MIN_CAPACITY: Final = 4096
_MAX_K: Final = 1 << 40


@dataclass(frozen=True, slots=True)
class Stretch:
    """Raw readings in a row: ``values[j]`` is reading ``start + j`` of ``series``."""

    series: int
    start: int
    values: F64


class RowSample:
    """Every k-th reading of each series, at most ``max_rows`` in all (see the module docstring).

    Offer each series' readings in order with :meth:`add`; read the kept rows
    from :attr:`ts`, :attr:`index`, :attr:`series`, :attr:`labels`,
    :attr:`values` and :attr:`features` (in the order they were offered) and the
    stretches from :attr:`stretches`. ``on_thin`` is told each new ``k``.
    """

    def __init__(
        self,
        max_rows: int,
        n_sensors: int,
        n_features: int,
        *,
        stretch: int = 0,
        every: int = STRETCH_EVERY,
        on_thin: Callable[[int], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.k = 1
        self.size = 0
        self.offered = 0
        self.stretch = stretch
        self.every = max(every, stretch)
        self.stretches: list[Stretch] = []
        self._on_thin = on_thin
        self._ts: F64 = np.empty(0, np.float64)
        self._index: I64 = np.empty(0, np.int64)
        self._series: I32 = np.empty(0, np.int32)
        self._labels: I32 = np.empty(0, np.int32)
        self._values: F64 = np.empty((0, n_sensors), np.float64)
        self._features: F32 = np.empty((0, n_features), np.float32)
        self._tails: dict[int, F64] = {}

    @property
    def ts(self) -> F64:
        return self._ts[: self.size]

    @property
    def index(self) -> I64:
        """Each kept row's position in its series (the reading's number, from 0)."""
        return self._index[: self.size]

    @property
    def series(self) -> I32:
        return self._series[: self.size]

    @property
    def labels(self) -> I32:
        """Label codes as given to :meth:`add` (0 where none were)."""
        return self._labels[: self.size]

    @property
    def values(self) -> F64:
        """The raw readings (NaN: missing)."""
        return self._values[: self.size]

    @property
    def features(self) -> F32:
        return self._features[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes held: the arrays' capacity and the stretches."""
        arrays = (self._ts, self._index, self._series, self._labels, self._values, self._features)
        return sum(a.nbytes for a in arrays) + sum(s.values.nbytes for s in self.stretches)

    def add(
        self,
        series: int,
        start: int,
        *,
        ts: F64,
        values: F64,
        features: F32,
        labels: I32 | None = None,
    ) -> None:
        """Offer readings ``start .. start + n - 1`` of ``series`` (its next ones, in order)."""
        n = int(ts.shape[0])
        if n == 0:
            return
        self.offered += n
        if self.stretch:
            self._collect(series, start, values)
        first = -(-start // self.k) * self.k
        while self.size + len(range(first, start + n, self.k)) > self.max_rows:
            self._thin()
            first = -(-start // self.k) * self.k
        rows = np.arange(first - start, n, self.k)
        m = int(rows.size)
        if m == 0:
            return
        self._reserve(self.size + m)
        end = self.size + m
        self._ts[self.size : end] = ts[rows]
        self._index[self.size : end] = start + rows
        self._series[self.size : end] = series
        self._labels[self.size : end] = 0 if labels is None else labels[rows]
        self._values[self.size : end] = values[rows]
        self._features[self.size : end] = features[rows]
        self.size = end

    def _thin(self) -> None:
        """Drop every other kept row of each series and double ``k``."""
        if self.k >= _MAX_K:
            raise ValueError(
                f"cannot keep {self.max_rows} rows: every series keeps its first reading, and "
                f"there are more series than that; raise max_rows"
            )
        keep = np.flatnonzero(self.index % (2 * self.k) == 0)
        m = int(keep.size)
        for arr in (self._ts, self._index, self._series, self._labels, self._values):
            arr[:m] = arr[keep]
        self._features[:m] = self._features[keep]
        self.size = m
        self.k *= 2
        period = self.k * self.every
        self.stretches = [s for s in self.stretches if s.start % period == 0]
        if self._on_thin is not None:
            self._on_thin(self.k)

    def _reserve(self, rows: int) -> None:
        cap = self._ts.shape[0]
        if rows <= cap:
            return
        cap = min(self.max_rows, max(rows, 2 * cap, _MIN_CAPACITY))
        self._ts = _grown(self._ts, cap, self.size)
        self._index = _grown(self._index, cap, self.size)
        self._series = _grown(self._series, cap, self.size)
        self._labels = _grown(self._labels, cap, self.size)
        self._values = _grown(self._values, cap, self.size)
        self._features = _grown(self._features, cap, self.size)

    def _collect(self, series: int, start: int, values: F64) -> None:
        """Keep the stretches that end among these readings; remember the last few."""
        length, period = self.stretch, self.k * self.every
        tail = self._tails.get(series)
        padded = values if tail is None else np.concatenate([tail, values])
        base = start - (0 if tail is None else int(tail.shape[0]))
        end = start + int(values.shape[0])
        first = max(0, start - length + 1)
        first = -(-first // period) * period
        for s in range(first, end - length + 1, period):
            self.stretches.append(Stretch(series, s, padded[s - base : s - base + length].copy()))
        self._tails[series] = padded[max(0, padded.shape[0] - (length - 1)) :].copy()


_A = TypeVar("_A", bound="np.ndarray[Any, Any]")


def _grown(arr: _A, cap: int, used: int) -> _A:
    out = np.empty((cap, *arr.shape[1:]), dtype=arr.dtype)
    out[:used] = arr[:used]
    return cast(_A, out)
