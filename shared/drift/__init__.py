"""Drift statistics: pure code (no I/O, no threads) the pipeline and the hub share.

- :mod:`shared.drift.binning` — the binning rule, the reference edges, the drift score;
- :mod:`shared.drift.counts` — windowed, mergeable counts per reference bin, and
  edge/heavy disagreement;
- :mod:`shared.drift.psi` — population stability index of counts against a reference.
"""

from shared.drift.binning import (
    REFERENCE_BINS,
    SCORE_EDGES,
    binned_proportions,
    drift_score,
    quantile_edges,
)
from shared.drift.counts import BinCounter, Disagreement, DriftReference, WindowCounts
from shared.drift.psi import psi, window_psi

__all__ = [
    "REFERENCE_BINS",
    "SCORE_EDGES",
    "BinCounter",
    "Disagreement",
    "DriftReference",
    "WindowCounts",
    "binned_proportions",
    "drift_score",
    "psi",
    "quantile_edges",
    "window_psi",
]
