"""Calibrating the drift detector's threshold to a false-alarm budget. Pure: no I/O.

The budget is an ARL0: the average number of stationary readings between false
alarms. A CUSUM's ARL0 grows exponentially with its threshold ``h``
(Siegmund, *Sequential Analysis*, 1985, ch. X), so ``ln(ARL0)`` is close to a
line in ``h``. Budgets like 10^6 readings are too rare to count directly in a
run of minutes, so the calibration counts alarms on stationary streams at
thresholds from low to high (:func:`alarm_counts`), keeps the points
``(h, ln(blocks per false alarm))`` with enough alarms to count
(:func:`calibration_points`), and reads ``h`` for a budget off them
(:func:`threshold_from_points`): interpolated inside the measured range,
extrapolated along the tail beyond it. The points of the default settings,
measured on 10^7 stationary readings, are in
:data:`shared.drift.detector.CALIBRATION`, so a budget of 10^6 readings is
read inside the measured range; ``edgeloop-sim bench drift`` counts the
false alarms at that ``h`` on other seeds.

>>> import numpy as np
>>> u = [np.random.default_rng(1).normal(size=(20000, 2))]
>>> counts = alarm_counts(u, k=0.5, thresholds=np.array([2.0, 3.0, 4.0]))
>>> bool(counts[0] > counts[1] > counts[2] > 0)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["alarm_counts", "calibration_points", "threshold_from_points"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def alarm_counts(paths: Sequence[F64], k: float, thresholds: F64) -> I64:
    """Alarms of the detector's CUSUM (two-sided, per channel, restart after an
    alarm) at each of ``thresholds``, over stationary channel paths: each path
    an ``(blocks, channels)`` array of standardised, clipped channel values
    (:meth:`shared.drift.detector.ResidualChannels.push`)."""
    h = np.asarray(thresholds, dtype=np.float64)[:, None]
    counts = np.zeros(h.shape[0], dtype=np.int64)
    for path in paths:
        if path.ndim != 2:
            raise ValueError(f"alarm_counts: a path must be (blocks, channels); got {path.shape}")
        up = np.zeros((h.shape[0], path.shape[1]))
        down = np.zeros_like(up)
        for row in path:
            np.maximum(up + row - k, 0.0, out=up)
            np.maximum(down - row - k, 0.0, out=down)
            hit = (np.maximum(up, down) > h).any(axis=1)
            if hit.any():
                counts += hit
                up[hit] = 0.0
                down[hit] = 0.0
    return counts


def calibration_points(
    thresholds: F64, alarms: I64, blocks: int, min_alarms: int = 4
) -> tuple[tuple[float, float], ...]:
    """``(h, ln(blocks per false alarm))`` for each threshold that counted at least
    ``min_alarms`` alarms in ``blocks`` stationary blocks, in increasing ``h``
    (what :data:`shared.drift.detector.CALIBRATION` holds). Raises ValueError when
    fewer than two qualify (run longer, or try lower thresholds)."""
    points = tuple(
        (float(h), round(math.log(blocks / int(a)), 4))
        for h, a in sorted(zip(np.asarray(thresholds).tolist(), alarms.tolist(), strict=True))
        if a >= min_alarms
    )
    if len(points) < 2:
        raise ValueError(
            f"calibration_points: {len(points)} threshold(s) gave >= {min_alarms} alarms in "
            f"{blocks} blocks; the calibration needs 2: use lower thresholds or more data"
        )
    return points


def threshold_from_points(points: Sequence[tuple[float, float]], log_blocks: float) -> float:
    """The threshold for ``ln(blocks per false alarm) = log_blocks``: linear
    interpolation between calibration points; beyond the last, the line through
    the last three (the tail, where the rate falls slowest: the conservative
    side); below the first, proportional to it."""
    h = np.array([p[0] for p in points])
    x = np.array([p[1] for p in points])
    if log_blocks <= x[0]:
        return float(h[0] * max(log_blocks, 0.0) / x[0])
    if log_blocks <= x[-1]:
        return float(np.interp(log_blocks, x, h))
    slope, intercept = np.polyfit(x[-3:], h[-3:], 1)
    return float(max(intercept + slope * log_blocks, h[-1]))
