"""Population stability index (PSI) of windowed counts against reference proportions.

``PSI = sum_i (o_i - r_i) * ln(o_i / r_i)`` over the bins of one histogram,
``o`` the window's observed shares, ``r`` the reference proportions. Empty bins
would make it infinite, so both sides are smoothed, and the smoothing is part of
the number:

- observed: ``o_i = (c_i + 0.5) / (n + 0.5 k)`` (half a reading added to each of
  the ``k`` bins: the Jeffreys prior), so an empty bin in a window of ``n``
  readings counts as ``0.5 / (n + 0.5 k)``;
- reference: ``r_i = max(p_i, 1e-4)``, renormalised to sum to 1 (a reference
  bin can be empty when quantile edges merged).

Rules of thumb (Siddiqi, *Credit Risk Scorecards*, 2006): < 0.1 stable, 0.1-0.25
a shift, > 0.25 a large shift. They are *not* a calibrated test: on autocorrelated
streams with operating regimes a short window's PSI is routinely far above 0.25
without any drift. Alarms come from :mod:`shared.drift.detector`; PSI says how
much and where.

>>> import numpy as np
>>> round(psi(np.array([50, 50]), (0.5, 0.5)), 6)
0.0
>>> round(psi(np.array([90, 10]), (0.5, 0.5)), 3)
0.853
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from shared.drift.counts import DriftReference, WindowCounts

__all__ = ["OBSERVED_PSEUDOCOUNT", "REFERENCE_FLOOR", "PsiTable", "psi", "window_psi"]

F64 = npt.NDArray[np.float64]

OBSERVED_PSEUDOCOUNT: Final = 0.5
"""Readings added to every bin of a window before taking shares."""
REFERENCE_FLOOR: Final = 1e-4
"""Smallest reference proportion used (then renormalised)."""


def _reference(proportions: Sequence[float]) -> F64:
    r: F64 = np.maximum(np.asarray(proportions, dtype=np.float64), REFERENCE_FLOOR)
    return r / float(r.sum())


def psi(counts: npt.NDArray[np.integer], proportions: Sequence[float]) -> float:
    """PSI of one histogram's bin ``counts`` against its reference ``proportions``."""
    if counts.ndim != 1 or counts.shape[0] != len(proportions):
        raise ValueError(
            f"psi: {counts.shape} counts for {len(proportions)} reference bins; "
            "give one count per bin"
        )
    if counts.shape[0] < 2 or (counts < 0).any():
        raise ValueError("psi: counts must be >= 0 over at least 2 bins")
    c = counts.astype(np.float64) + OBSERVED_PSEUDOCOUNT
    o = c / c.sum()
    r = _reference(proportions)
    return float(np.sum((o - r) * np.log(o / r)))


class PsiTable:
    """PSI of every histogram of a window at once (the features', then the score's),
    in a few numpy calls: what the hub runs on every closed window. Built once per
    reference; the numbers are :func:`psi`'s, histogram by histogram."""

    def __init__(self, reference: DriftReference) -> None:
        props = [*reference.feature_proportions]
        if reference.score_proportions is not None:
            props.append(reference.score_proportions)
        self.reference = reference
        self.offsets: tuple[int, ...] = (0, *np.cumsum([len(p) for p in props]).tolist())
        self._starts = np.asarray(self.offsets[:-1], dtype=np.intp)
        self._sizes = np.diff(np.asarray(self.offsets))
        self._ref: F64 = np.concatenate([_reference(p) for p in props])
        self._log_ref: F64 = np.log(self._ref)

    def __call__(self, window: WindowCounts) -> F64:
        """PSI per histogram ``(f,)`` or ``(f + 1,)`` with the score last. Raises
        ValueError on an empty window or counts of another reference."""
        if window.n == 0:
            raise ValueError("PsiTable: the window holds no readings; PSI needs at least one")
        bins = window.bins[: self.offsets[-1]]
        if tuple(window.offsets[: len(self.offsets)]) != self.offsets:
            raise ValueError(
                "PsiTable: the window was counted on other reference histograms; count with "
                "a BinCounter of this reference"
            )
        c = bins.astype(np.float64) + OBSERVED_PSEUDOCOUNT
        o = c / np.repeat(np.add.reduceat(c, self._starts), self._sizes)
        out: F64 = np.add.reduceat((o - self._ref) * (np.log(o) - self._log_ref), self._starts)
        return out


def window_psi(window: WindowCounts, reference: DriftReference) -> tuple[F64, float | None]:
    """PSI of every feature ``(f,)``, in the reference's feature order, and of the
    score (None when the reference has no score histogram). Raises ValueError on
    an empty window (no readings: nothing to compare)."""
    if len(window.offsets) != len(reference.features) + 2:
        raise ValueError(
            f"window_psi: counts of {len(window.offsets) - 2} features against a reference "
            f"of {len(reference.features)}; count with a BinCounter of this reference"
        )
    values = PsiTable(reference)(window)
    f = len(reference.features)
    return values[:f], None if reference.score_proportions is None else float(values[f])
