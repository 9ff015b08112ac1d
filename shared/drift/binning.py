"""The binning rule: the one place where a value becomes a reference bin.

The pipeline writes reference statistics with it (:mod:`cloud_hub.pipeline.package`)
and drift tracking counts with it (:mod:`shared.drift.counts`), so a reference
proportion and a live count always mean the same bin.

- **Bins**: ``k - 1`` strictly increasing inner edges make ``k`` bins; value
  ``x`` falls in bin ``i`` when ``edges[i-1] <= x < edges[i]`` (the first and
  last bins are open): ``numpy.searchsorted(edges, x, side="right")``. NaN
  sorts after every number, so it would land in the last bin: callers reject it
  (:class:`shared.drift.counts.BinCounter` does).
- **Feature edges** (:func:`quantile_edges`): the 10 %, 20 %, ... 90 %
  quantiles of the training rows, rounded to 6 significant digits, duplicates
  merged, so each of the ~10 bins starts with about a tenth of the data.
- **Score edges** (:data:`SCORE_EDGES`): fixed, fine near 0 and 1 where a
  classifier's scores pile up, so scores of different model versions compare bin
  for bin. The score is ``1 - P(normal)`` (:func:`drift_score`).

>>> binned_proportions(np.array([0.0, 1.0, 1.5, 2.0, 3.0]), (1.0, 2.0))
(0.2, 0.4, 0.4)
>>> bin_index(np.array([[0.5, 2.0], [1.0, -1.0]]), padded_edges(((1.0,), (0.0, 3.0)))).tolist()
[[0, 1], [1, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "REFERENCE_BINS",
    "SCORE_EDGES",
    "bin_index",
    "binned_proportions",
    "drift_score",
    "padded_edges",
    "quantile_edges",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

REFERENCE_BINS: Final = 10
SCORE_EDGES: Final[tuple[float, ...]] = (
    0.001,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    0.9,
    0.95,
    0.99,
    0.999,
)
"""Inner bin edges of the reference score histogram (12 bins over [0, 1])."""


def binned_proportions(
    values: npt.NDArray[np.floating], edges: tuple[float, ...]
) -> tuple[float, ...]:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins (see the module docstring)."""
    if values.size == 0:
        raise ValueError("binned_proportions needs at least one value")
    idx = np.searchsorted(
        np.asarray(edges, dtype=np.float64), values.astype(np.float64), side="right"
    )
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return tuple(float(c) for c in counts / values.size)


def quantile_edges(
    values: npt.NDArray[np.floating], bins: int = REFERENCE_BINS
) -> tuple[float, ...]:
    """Inner edges of a reference histogram of ``values``: the ``1/bins`` ...
    ``(bins-1)/bins`` quantiles, rounded to 6 significant digits, duplicates merged."""
    if values.size == 0:
        raise ValueError("quantile_edges needs at least one value")
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    raw = np.quantile(values.astype(np.float64), qs)
    return tuple(sorted({float(f"{e:.6g}") for e in raw.tolist()}))


def padded_edges(edges: Sequence[Sequence[float]]) -> F64:
    """Several histograms' inner edges as one ``(h, widest)`` array, padded with
    +inf, for :func:`bin_index`."""
    widest = max((len(e) for e in edges), default=0)
    out = np.full((len(edges), widest), np.inf)
    for j, e in enumerate(edges):
        out[j, : len(e)] = e
    return out


def bin_index(x: F64, padded: F64) -> I64:
    """Bin of every value of ``x`` ``(n, h)``, column ``j`` binned on histogram
    ``j`` of ``padded`` (:func:`padded_edges`): the number of edges ``<= x``,
    which is ``searchsorted(edges, x, "right")`` for every column in one
    comparison, without a per-row or per-column loop. ``x`` must be finite
    (NaN would land in bin 0 here, in the last bin with searchsorted).
    """
    idx: I64 = (x[:, :, None] >= padded[None, :, :]).sum(axis=2)
    return idx


def drift_score(scores: F32, classes: tuple[str, ...], normal_class: str = "normal") -> F64:
    """The score drift is measured on: ``1 - P(normal)`` for each row."""
    if normal_class not in classes:
        raise ValueError(f"drift_score: class {normal_class!r} is not one of {list(classes)}")
    return 1.0 - scores[:, classes.index(normal_class)].astype(np.float64)
