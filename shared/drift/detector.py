"""A calibrated sequential drift detector for one device's sensor stream. Pure: no I/O.

Rules (the whole method; everything below implements these):

1. **Input.** Feature rows, in the model's feature order, of one device and
   model version, in time order. The detector reads each sensor's ``_last``
   feature (the reading itself, missing values carried forward) and
   standardises it with the manifest's ``location`` and ``scale``
   (:class:`shared.manifest.SensorReference`): ``z = (x - location) / scale``.
   As a *predictor* of other sensors (rule 3) a value is first clipped to the
   sensor's training range ``[low, high]``, so that an urgent spike does not
   move every prediction. Nothing else comes from outside the stream.
2. **Blocks.** Readings are taken in blocks of ``batch`` readings (default 50),
   whatever the sizes of the batches the caller passes; a partial block waits
   for the next call. Every statistic is per block, so a burst shorter than
   half a block (an urgent event lasts 5-20 readings) cannot move it.
3. **Channels** (two per sensor), one value per block:

   - ``<sensor>:level``: the sensor's *regression-adjusted* block median
     (Hawkins 1993): the median of ``z_j`` over the block minus its prediction
     from the *other* sensors' block medians (their values, squares, and
     exponentially weighted moving averages over ``taus`` readings, which follow
     lagged couplings such as a temperature trailing the load). Operating
     regimes move every sensor together and cancel here; a drift of one sensor
     does not. Medians, not means: a burst shorter than half a block moves no
     predictor either.
   - ``<sensor>:scale``: the log of the block's median absolute deviation of
     the sensor's reading-to-reading changes: measurement noise, blind to
     trends and regime steps; a stuck sensor sends it to the floor.
4. **Self-starting.** The first ``fit_readings`` readings fit the regressions
   (ridge least squares on running sums: no readings kept); the next
   ``scale_readings`` give each channel's in-control centre (the median over
   their blocks) and spread (the 95 % quantile of the deviations from it,
   / 1.96, so a channel whose misfits come in long runs gets the spread its
   tail shows; a level channel's spread is at least ``resolution`` reference
   scales: the linear model's systematic misfits are not drift). No alarm
   before both are done: drift *from the reference* in that time is PSI's job
   (:mod:`shared.drift.psi`).
5. **Test.** Each channel's standardised value ``u = (v - centre) / spread`` is
   clipped to ``[-clip, clip]`` (a robust CUSUM: Lucas & Crosier 1982; the
   in-control channels have heavy tails) and fed to a two-sided CUSUM (Page
   1954) with reference value ``k``: ``S+ = max(0, S+ + u - k)``,
   ``S- = max(0, S- - u - k)``. An alarm is raised when any statistic passes
   ``h``; it names the channels past ``h``; every statistic then restarts at 0
   (a drift that stays raises an alarm again every few blocks: what the
   alarms mean for a device's state is the hub's business).
6. **Calibration.** ``h`` is set from the false-alarm budget, stated as ARL0
   (average readings between false alarms on a stationary stream, all
   channels together), by :data:`CALIBRATION`: the false-alarm rates of the
   detector measured at thresholds 1-24 on 10^7 stationary simulator readings
   (regimes, dropouts and urgent events included), interpolated in
   ``ln(ARL0)`` (a CUSUM's ARL0 grows about exponentially with ``h``,
   Siegmund 1985) and extrapolated along the tail beyond 24
   (:mod:`shared.drift.calibration`). ARL0 = 10^6 readings gives ``h`` = 17.4,
   inside the measured range. ``edgeloop-sim bench drift`` counts the false
   alarms at that ``h`` on streams of other seeds. The calibration holds for
   the default block, CUSUM and clipping settings; with others, give
   ``threshold`` (``bench drift --calibrate`` measures one).

Batch means of autocorrelated data follow Runger & Willemain (1996); the method
is written from those papers and Montgomery, *Introduction to Statistical
Quality Control*, ch. 9-10, not from any library's code.

Cost: the blocks a batch completes are taken together (medians by one sort,
the start's sums by one matrix product, the standardised values of every block
after the start at once, the EWMAs unrolled into one matrix product per 16
blocks); only the CUSUM steps block by block: about 0.3-0.35 us per reading in
batches of 500 readings of 32 features on the project's 2-core VM (0.9 us
before these were batched). Memory after the start: the
regression (33 x 8 floats for 8 sensors), the EWMA state, a partial block, the
CUSUM statistics: about 6 KB per device stream, pickled (during the start, a
33 x 33 running sum and one value per channel per block of the scale phase:
about 20 KB).

Three sensors moved together by operating regimes; sensor ``b`` drifts by half
its reference scale at reading 25,000:

>>> import numpy as np
>>> ref = SensorReference(location=0.0, scale=1.0, low=-3.0, high=3.0)
>>> det = DriftDetector(("a_last", "b_last", "c_last"), {"a": ref, "b": ref, "c": ref},
...                     DetectorSettings(fit_readings=5000, scale_readings=5000, threshold=20.0))
>>> rng = np.random.default_rng(0)
>>> regime = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=300), 100)
>>> x = regime[:, None] * [1.0, 2.0, 0.5] + rng.normal(scale=0.05, size=(30000, 3))
>>> det.update(x[:20000]).alarms, det.ready
((), True)
>>> x[25000:, 1] += 0.5
>>> det.update(x[20000:]).alarms[0]
Alarm(reading=25299, channels=('b:level',), statistic=1.2)
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
import numpy.typing as npt

from shared.drift.calibration import threshold_from_points
from shared.manifest import SensorReference

__all__ = [
    "CALIBRATION",
    "Alarm",
    "DetectorSettings",
    "DetectorUpdate",
    "DriftDetector",
    "ResidualChannels",
    "cusum",
    "threshold_for",
]

F64 = npt.NDArray[np.float64]

CALIBRATION: Final[tuple[tuple[float, float], ...]] = (
    (1.0, 0.903),
    (2.0, 2.214),
    (3.0, 3.362),
    (4.0, 4.470),
    (5.0, 5.401),
    (6.0, 6.255),
    (8.0, 7.642),
    (12.0, 8.910),
    (16.0, 9.721),
    (20.0, 10.260),
    (24.0, 10.820),
)
"""``(h, ln(blocks per false alarm))`` of the default settings, measured by
``edgeloop-sim bench drift --seed 11 --readings 10000000 --calibrate`` on 10^7
stationary simulator readings (100 devices, regimes, dropouts and urgent events):
e.g. 12 alarms at ``h = 16`` in 200,000 blocks (a subset of the thresholds it
prints). Valid for the default ``batch``, ``k``, ``clip``, ``resolution``,
``taus`` and start lengths only."""
_CALIBRATED = ("batch", "k", "clip", "resolution", "taus", "scale_readings", "fit_readings")
_SPREAD_QUANTILE: Final = 0.95
_SPREAD_Z: Final = 1.96
_EWMA_RUN: Final = 16
"""Blocks whose EWMAs are computed by one matrix product (longer runs go in pieces)."""
_LOG_FLOOR: Final = 1e-6
"""Floor of a block's noise scale (in reference scales) before the log: a stuck sensor."""


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's settings (the module docstring says what each does)."""

    batch: int = 50
    fit_readings: int = 20_000
    scale_readings: int = 10_000
    arl0: float = 1e6
    """False-alarm budget: average stationary readings between false alarms."""
    k: float = 1.0
    clip: float = 5.0
    taus: tuple[float, ...] = (100.0, 200.0, 400.0)
    resolution: float = 0.05
    """Smallest spread of a level channel, in reference scales: the prediction's
    systematic misfits (a linear model of a non-linear machine) are not drift."""
    ridge: float = 1e-4
    """Ridge penalty, relative to each design column's sum of squares."""
    threshold: float | None = None
    """``h`` itself, overriding the calibrated ``threshold_for(arl0, batch)``."""

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"DetectorSettings.{name} = {getattr(self, name)!r}: must be {rule}")

        if self.batch < 4:
            raise bad("batch", "at least 4 readings")
        if self.fit_readings < self.batch:
            raise bad("fit_readings", f">= batch ({self.batch})")
        if self.scale_readings < 4 * self.batch:
            raise bad("scale_readings", f">= 4 blocks ({4 * self.batch} readings)")
        if not self.arl0 > self.batch:
            raise bad("arl0", f"> batch ({self.batch} readings)")
        if not 0.0 <= self.k < self.clip:
            raise bad("k", f"in [0, clip = {self.clip})")
        if not all(t >= self.batch for t in self.taus):
            raise bad("taus", f"time constants >= batch ({self.batch} readings)")
        if not self.resolution > 0.0:
            raise bad("resolution", "> 0 (in reference scales)")
        if not self.ridge >= 0.0:
            raise bad("ridge", ">= 0")
        if self.threshold is not None and not self.threshold > 0.0:
            raise bad("threshold", "> 0 (or None: from arl0)")
        self._check_calibrated()

    @property
    def h(self) -> float:
        """The CUSUM threshold in use."""
        if self.threshold is not None:
            return self.threshold
        return threshold_for(self.arl0, self.batch)

    def _check_calibrated(self) -> None:
        default = {f.name: f.default for f in fields(self)}
        changed = [n for n in _CALIBRATED if getattr(self, n) != default[n]]
        if self.threshold is None and changed:
            raise ValueError(
                f"DetectorSettings: {', '.join(changed)} differ from the calibrated defaults, "
                "so ARL0 cannot be turned into a threshold; give threshold (measure one with "
                "edgeloop-sim bench drift --calibrate)"
            )


def cusum(values: F64, k: float, h: float, up: F64, down: F64) -> list[tuple[int, F64]]:
    """Rule 5 over channel values ``(m, channels)``, from the statistics ``up``
    and ``down`` ``(channels,)``, which it updates in place. Returns, per alarm,
    the row and each channel's statistic (the larger side) at that row; all
    statistics restart at 0 after an alarm."""
    alarms: list[tuple[int, F64]] = []
    for i, row in enumerate(values):
        np.maximum(up + row - k, 0.0, out=up)
        np.maximum(down - row - k, 0.0, out=down)
        top = np.maximum(up, down)
        if top.max() > h:
            alarms.append((i, top))
            up[:] = 0.0
            down[:] = 0.0
    return alarms


def threshold_for(arl0: float, batch: int = 50) -> float:
    """The calibrated CUSUM threshold (default settings) for a false-alarm budget
    of ``arl0`` readings.

    >>> round(threshold_for(1e6), 2)
    17.35
    """
    return threshold_from_points(CALIBRATION, math.log(arl0 / batch))


@dataclass(frozen=True, slots=True)
class Alarm:
    """A detection: the stream position (0-based reading count) of the last
    reading of the block that raised it, the channels past the threshold, and the
    largest statistic (in units of the threshold: >= 1)."""

    reading: int
    channels: tuple[str, ...]
    statistic: float


@dataclass(frozen=True, slots=True, eq=False)
class DetectorUpdate:
    """What one :meth:`DriftDetector.update` found: its alarms; the standardised
    channel values ``(m, channels)`` of the ``m`` blocks it completed after the
    start, and the stream position of each block's last reading ``(m,)``."""

    alarms: tuple[Alarm, ...]
    values: F64
    readings: npt.NDArray[np.int64]


def _median(a: F64) -> F64:
    """``np.median(a, axis=1)`` for a 3-d array, by one ``sort``: numpy sorts short
    rows with SIMD, about 4x faster than ``partition``'s branchy selection on
    blocks of 50 (measured on fresh data; the same data timed over and over
    flatter ``partition``, whose branches the CPU then predicts)."""
    n = a.shape[1]
    half = n // 2
    s = np.sort(a, axis=1)
    if n % 2:
        out: F64 = s[:, half]
        return out
    mid: F64 = (s[:, half - 1] + s[:, half]) * 0.5
    return mid


class ResidualChannels:
    """Rules 1-4: blocks of readings in, one standardised value per channel per
    block out (after the start). :class:`DriftDetector` adds the CUSUM; the
    calibration (:mod:`shared.drift.calibration`) reads these values directly."""

    def __init__(
        self,
        features: Sequence[str],
        references: Mapping[str, SensorReference],
        settings: DetectorSettings | None = None,
    ) -> None:
        self.settings = s = settings or DetectorSettings()
        self.feature_names = tuple(features)
        self.sensors = tuple(n.removesuffix("_last") for n in features if n.endswith("_last"))
        if not self.sensors:
            raise ValueError(
                "drift detector: no '<sensor>_last' feature among "
                f"{list(self.feature_names)[:6]}...; it reads each sensor's reading"
            )
        missing = [n for n in self.sensors if n not in references]
        if missing:
            raise ValueError(
                f"drift detector: no reference location/scale for sensor(s) {missing}; "
                "the manifest's reference.sensors must list every sensor"
            )
        self.columns = np.array([self.feature_names.index(f"{n}_last") for n in self.sensors])
        refs = [references[n] for n in self.sensors]
        self._loc: F64 = np.array([r.location for r in refs], dtype=np.float64)
        self._scale: F64 = np.array([r.scale for r in refs], dtype=np.float64)
        if not (np.isfinite(self._loc).all() and (self._scale > 0).all()):
            raise ValueError("drift detector: reference locations must be finite, scales > 0")
        # Regressors are clipped to the training range: an urgent spike (vibration
        # at 10x its normal) must not move the prediction of every other sensor.
        self._zlow: F64 = (np.array([r.low for r in refs]) - self._loc) / self._scale
        self._zhigh: F64 = (np.array([r.high for r in refs]) - self._loc) / self._scale
        self.channel_names = tuple(f"{n}:level" for n in self.sensors) + tuple(
            f"{n}:scale" for n in self.sensors
        )
        ns = len(self.sensors)
        # EWMA decay per block for each time constant (in readings).
        self._decay: F64 = np.array([math.exp(-s.batch / t) for t in s.taus])
        self._ewma_cache: dict[int, tuple[F64, F64]] = {}
        # Design columns: 1, then per group (z, z^2, each EWMA) one column per sensor.
        self._groups = 2 + len(s.taus)
        self._p = 1 + self._groups * ns
        self._gram: F64 | None = np.zeros((self._p, self._p))
        self._beta: F64 | None = None
        self._prev_ewma: F64 | None = None
        self._prev_z: F64 | None = None
        self._pending: F64 = np.empty((0, ns))
        self._blocks = 0
        self._scale_values: list[F64] | None = []
        self._centre: F64 | None = None
        self._spread: F64 | None = None
        self.readings = 0
        """Readings seen so far (complete blocks and the partial one)."""

    @property
    def ready(self) -> bool:
        """Whether the start (fit and scale phases) is over."""
        return self._centre is not None

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def blocks(self) -> int:
        """Complete blocks seen so far (start included)."""
        return self._blocks

    def _check(self, features: npt.NDArray[np.floating]) -> F64:
        f = len(self.feature_names)
        if features.ndim != 2 or features.shape[1] != f:
            raise ValueError(
                f"drift detector: feature rows must be (n, {f}) in the model's feature "
                f"order; got shape {features.shape}"
            )
        if features.shape[0] == 0:
            raise ValueError("drift detector: an empty batch (0 rows); pass at least one reading")
        x = features[:, self.columns].astype(np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise ValueError(
                f"drift detector: row {row}, feature {self.sensors[col]}_last is {x[row, col]}, "
                "not a finite number; features are finite (missing readings are carried "
                "forward): drop the batch and count it as bad input"
            )
        return (x - self._loc) / self._scale

    def push(self, features: npt.NDArray[np.floating]) -> F64:
        """Take a batch of feature rows ``(n, f)``; return the standardised channel
        values ``(m, n_channels)`` of the ``m`` blocks it completed after the start
        (``m`` may be 0). Raises ValueError on a malformed batch, before any state changes."""
        z = self._check(features)
        self.readings += int(z.shape[0])
        b = self.settings.batch
        allz = np.concatenate([self._pending, z]) if self._pending.size else z
        full = allz.shape[0] // b
        self._pending = allz[full * b :].copy()
        if full == 0:
            return np.empty((0, self.n_channels))
        body = allz[: full * b]
        # Every complete block at once: medians, noise scales, design rows.
        med = _median(body.reshape(full, b, -1))
        noise = self._noise(body, full)
        design = self._design(med)
        i = self._start(med, noise, design)
        if i == full:
            return np.empty((0, self.n_channels))
        self._blocks += full - i
        return self._standardised(self._channel_values(med[i:], noise[i:], design[i:]))

    def _start(self, med: F64, noise: F64, design: F64) -> int:
        """Rule 4 on a run of blocks: as many as the fit still needs go into its sums,
        then as many as the scale phase needs into its values. Returns how many
        blocks the start took (all of them until it is over)."""
        s = self.settings
        b = s.batch
        full = design.shape[0]
        i = 0
        if self._gram is not None:
            i = min(full, -(-s.fit_readings // b) - self._blocks)
            self._gram += design[:i].T @ design[:i]
            self._blocks += i
            if self._blocks * b >= s.fit_readings:
                self._fit()
        if i < full and self._scale_values is not None:
            k = min(full - i, -(-s.scale_readings // b) - len(self._scale_values))
            self._scale_values.extend(
                self._channel_values(med[i : i + k], noise[i : i + k], design[i : i + k])
            )
            self._blocks += k
            i += k
            if len(self._scale_values) * b >= s.scale_readings:
                self._standardise()
        return i

    def _design(self, med: F64) -> F64:
        """Design rows of blocks from their medians ``(m, sensors)``: 1, then the
        clipped medians, their squares and their EWMAs over blocks."""
        r = np.clip(med, self._zlow, self._zhigh)
        m, ns = r.shape
        taus = len(self._decay)
        if self._prev_ewma is None:
            self._prev_ewma = np.tile(r[0], (taus, 1))
        e = np.empty((taus, m, ns))
        prev = self._prev_ewma
        # The recursion e_i = d e_(i-1) + (1 - d) r_i over up to _EWMA_RUN blocks at a
        # time, unrolled: e_i = d^(i+1) e_(-1) + sum over j <= i of (1 - d) d^(i-j) r_j.
        for lo in range(0, m, _EWMA_RUN):
            hi = min(m, lo + _EWMA_RUN)
            weights, powers = self._ewma_weights(hi - lo)
            e[:, lo:hi] = weights @ r[lo:hi] + powers[:, :, None] * prev[:, None, :]
            prev = e[:, hi - 1].copy()
        self._prev_ewma = prev
        e = e.transpose(1, 0, 2)
        rows: F64 = np.hstack([np.ones((m, 1)), r, r * r, e.reshape(m, taus * ns)])
        return rows

    def _ewma_weights(self, m: int) -> tuple[F64, F64]:
        """For ``m`` blocks: ``(taus, m, m)`` weights of the blocks' values and
        ``(taus, m)`` weights of the EWMA before them (cached per ``m``)."""
        got = self._ewma_cache.get(m)
        if got is None:
            d = self._decay[:, None, None]
            lag = np.subtract.outer(np.arange(m), np.arange(m)).astype(np.float64)
            weights = np.where(lag >= 0, (1.0 - d) * d ** np.maximum(lag, 0.0), 0.0)
            powers = self._decay[:, None] ** np.arange(1, m + 1, dtype=np.float64)
            got = self._ewma_cache[m] = (weights, powers)
        return got

    def _noise(self, body: F64, m: int) -> F64:
        """Log of each block's MAD of reading-to-reading changes ``(m, sensors)``."""
        prev = body[:1] if self._prev_z is None else self._prev_z
        d = np.diff(np.concatenate([prev, body]), axis=0).reshape(m, self.settings.batch, -1)
        self._prev_z = body[-1:].copy()
        mad = _median(np.abs(d - _median(d)[:, None, :]))
        out: F64 = np.log(np.maximum(mad, _LOG_FLOOR))
        return out

    def _channel_values(self, med: F64, noise: F64, design: F64) -> F64:
        """Channel values of ``m`` blocks ``(m, channels)``: each level's residual from
        its regression, then the noise scales. The product is summed term by term in
        column order (not by BLAS), so a block's value is the same bits whatever
        number of blocks it is computed with."""
        assert self._beta is not None
        predicted = (design[:, :, None] * self._beta[None, :, :]).sum(axis=1)
        out: F64 = np.concatenate([med - predicted, noise], axis=1)
        return out

    def _standardised(self, v: F64) -> F64:
        """Rule 5's input: channel values in units of their in-control spread, clipped."""
        assert self._centre is not None and self._spread is not None
        s = self.settings
        u: F64 = np.clip((v - self._centre) / self._spread, -s.clip, s.clip)
        return u

    def _fit(self) -> None:
        """Ridge regression of each sensor's z on every design column but its own:
        the sensors' normal equations solved together, in one call (a hub whose
        devices all started a model version at once fits them all at once)."""
        assert self._gram is not None
        g = self._gram
        ns = len(self.sensors)
        keep = np.array(
            [
                [
                    c
                    for c in range(self._p)
                    if c not in {1 + grp * ns + j for grp in range(self._groups)}
                ]
                for j in range(ns)
            ]
        )
        a = g[keep[:, :, None], keep[:, None, :]]
        scale = np.sqrt(np.maximum(np.diagonal(a, axis1=1, axis2=2), 1e-12))
        a = a / (scale[:, :, None] * scale[:, None, :])  # ridge on standardised columns
        a[:, 1:, 1:] += self.settings.ridge * np.eye(keep.shape[1] - 1)  # not on the intercept
        rhs = g[keep, 1 + np.arange(ns)[:, None]] / scale
        try:
            # Positive definite: a Gram matrix plus the ridge on every column but the
            # intercept, whose own direction the ridge on the others covers.
            solved = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            solved = np.stack([np.linalg.lstsq(a[j], rhs[j], rcond=None)[0] for j in range(ns)])
        beta = np.zeros((self._p, ns))
        for j in range(ns):
            beta[keep[j], j] = solved[j] / scale[j]
        self._beta = beta
        self._gram = None

    def _standardise(self) -> None:
        assert self._scale_values is not None
        v = np.vstack(self._scale_values)
        centre = np.median(v, axis=0)
        # The 95 % quantile of the deviations, as a normal sd: a channel whose
        # misfits come in long runs (a lagged temperature) gets the spread its
        # tail shows, which the MAD would hide.
        spread = np.quantile(np.abs(v - centre), _SPREAD_QUANTILE, axis=0) / _SPREAD_Z
        # A channel that never moved (a constant sensor) still needs a finite spread.
        spread = np.maximum(spread, 1e-3 * np.maximum(np.abs(centre), 1e-3))
        ns = len(self.sensors)
        spread[:ns] = np.maximum(spread[:ns], self.settings.resolution)
        self._centre, self._spread = centre, spread
        self._scale_values = None


class DriftDetector:
    """Rules 1-6 for one device stream: :class:`ResidualChannels` plus a two-sided
    CUSUM per channel. ``update`` per batch; read the alarms it returns, or
    :meth:`statistics` for the API (per channel, in units of the threshold)."""

    def __init__(
        self,
        features: Sequence[str],
        references: Mapping[str, SensorReference],
        settings: DetectorSettings | None = None,
    ) -> None:
        self.channels = ResidualChannels(features, references, settings)
        self.settings = self.channels.settings
        self.h = self.settings.h
        n = self.channels.n_channels
        self._up: F64 = np.zeros(n)
        self._down: F64 = np.zeros(n)

    @property
    def ready(self) -> bool:
        return self.channels.ready

    @property
    def readings(self) -> int:
        return self.channels.readings

    def update(self, features: npt.NDArray[np.floating]) -> DetectorUpdate:
        """Feed a batch of feature rows ``(n, f)``; returns the alarms it raised
        and the channel values of the blocks it completed."""
        u = self.channels.push(features)
        b = self.settings.batch
        # The values are those of the last u.shape[0] blocks completed.
        ends = (np.arange(self.channels.blocks - u.shape[0], self.channels.blocks) + 1) * b - 1
        alarms = tuple(
            Alarm(
                int(ends[row]),
                tuple(self.channels.channel_names[c] for c in np.flatnonzero(top > self.h)),
                float(top.max() / self.h),
            )
            for row, top in cusum(u, self.settings.k, self.h, self._up, self._down)
        )
        return DetectorUpdate(alarms, u, ends)

    def statistics(self) -> dict[str, float]:
        """Each channel's CUSUM statistic (the larger side) over the threshold."""
        top = np.maximum(self._up, self._down) / self.h
        return dict(zip(self.channels.channel_names, top.tolist(), strict=True))

    def save(self) -> bytes:
        """Everything the detector learnt and holds, as ``.npz`` bytes (arrays only,
        no pickle): what a restarted hub gives :meth:`load` so that a device's
        detector does not start again, blind, from its first reading."""
        c = self.channels
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "channels": np.array(c.channel_names),
            "blocks": np.array(c._blocks),
            "readings": np.array(c.readings),
            "pending": c._pending,
            "up": self._up,
            "down": self._down,
        }
        optional = {
            "gram": c._gram,
            "beta": c._beta,
            "prev_ewma": c._prev_ewma,
            "prev_z": c._prev_z,
            "centre": c._centre,
            "spread": c._spread,
        }
        arrays.update({k: v for k, v in optional.items() if v is not None})
        if c._scale_values is not None:
            arrays["scale_values"] = np.array(c._scale_values).reshape(-1, c.n_channels)
        out = io.BytesIO()
        np.savez(out, **arrays)  # type: ignore[arg-type]
        return out.getvalue()

    def load(self, data: bytes) -> None:
        """Take back what :meth:`save` wrote, for a detector built with the same
        features, references and settings. Raises ValueError (and changes nothing)
        on bytes that are not such a state."""
        c = self.channels
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                got = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"not a saved drift detector state ({exc})") from None
        names = tuple(str(x) for x in got.get("channels", np.array([])).tolist())
        if names != c.channel_names:
            raise ValueError(
                f"a saved detector of channels {list(names)[:3]}..., not this one's "
                f"{list(c.channel_names)[:3]}..."
            )
        n, ns, p = c.n_channels, len(c.sensors), c._p
        shapes = {
            "up": (n,),
            "down": (n,),
            "gram": (p, p),
            "beta": (p, ns),
            "prev_z": (1, ns),
            "centre": (n,),
            "spread": (n,),
        }
        for key, shape in shapes.items():
            if key in got and got[key].shape != shape:
                raise ValueError(f"saved detector: {key} has shape {got[key].shape}, not {shape}")
        pending = got.get("pending", np.empty((0, ns)))
        if pending.ndim != 2 or pending.shape[1] != ns:
            raise ValueError(f"saved detector: pending has shape {pending.shape}")
        c._blocks = int(got["blocks"])
        c.readings = int(got["readings"])
        c._pending = pending.astype(np.float64)
        c._gram = got.get("gram")
        c._beta = got.get("beta")
        c._prev_ewma = got.get("prev_ewma")
        c._prev_z = got.get("prev_z")
        c._centre = got.get("centre")
        c._spread = got.get("spread")
        scale = got.get("scale_values")
        c._scale_values = None if scale is None else list(scale)
        self._up, self._down = got["up"].astype(np.float64), got["down"].astype(np.float64)
