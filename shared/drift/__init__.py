"""Drift statistics: pure code (no I/O, no threads) the pipeline and the hub share.

- :mod:`shared.drift.binning` — the binning rule, the reference edges, the drift score;
- :mod:`shared.drift.counts` — windowed, mergeable counts per reference bin, and
  edge/heavy disagreement;
- :mod:`shared.drift.psi` — population stability index of counts against a reference;
- :mod:`shared.drift.detector` — the calibrated sequential detector per device stream
  (regression-adjusted block medians and noise scales, a robust two-sided CUSUM);
- :mod:`shared.drift.calibration` — its threshold from a false-alarm budget (ARL0).
"""

from shared.drift.binning import (
    REFERENCE_BINS,
    SCORE_EDGES,
    binned_proportions,
    drift_score,
    quantile_edges,
)
from shared.drift.counts import BinCounter, Disagreement, DriftReference, WindowCounts
from shared.drift.detector import (
    Alarm,
    DetectorSettings,
    DetectorUpdate,
    DriftDetector,
    threshold_for,
)
from shared.drift.psi import psi, window_psi

__all__ = [
    "REFERENCE_BINS",
    "SCORE_EDGES",
    "Alarm",
    "BinCounter",
    "DetectorSettings",
    "DetectorUpdate",
    "Disagreement",
    "DriftDetector",
    "DriftReference",
    "WindowCounts",
    "binned_proportions",
    "drift_score",
    "psi",
    "quantile_edges",
    "threshold_for",
    "window_psi",
]
