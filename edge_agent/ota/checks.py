"""The OTA's pure decisions: may this package run here, did it pass its smoke test, its trial.

No I/O, no clocks: the caller measures and passes the figures in.

- :func:`compatibility`: a verified candidate manifest against this agent (its
  version, the sensors its source delivers, the running model, the desired
  message's ``allow_downgrade``).
- :func:`smoke_verdict`: the manifest's test vectors, scored row by row, against
  their expected scores and a latency budget. :meth:`edge_agent.engine.EdgeModel.smoke_test`
  uses it too, so a model loaded at start and one staged by the OTA pass the same test.
- :class:`TrialStats` and :func:`trial_verdict`: the new model's figures over its
  trial window against the previous model's, in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.latency import LatencyWindow
from shared.manifest import ModelManifest, parse_version
from shared.reasons import OtaReason

__all__ = [
    "ModelFigures",
    "SmokeResult",
    "TrialSettings",
    "TrialStats",
    "compatibility",
    "input_columns",
    "smoke_verdict",
    "trial_verdict",
]


def compatibility(
    running: ModelManifest,
    candidate: ModelManifest,
    agent_version: str,
    source_sensors: Sequence[str],
    allow_downgrade: bool,
) -> tuple[OtaReason, str] | None:
    """Why ``candidate`` cannot replace ``running`` on this agent, with a detail; None if it can.

    What really breaks, in the order checked:

    - ``agent_too_old``: the manifest's ``min_agent_version`` is newer than ``agent_version``.
    - ``incompatible_input``: the candidate reads a sensor the source does not
      deliver (the source is built once, at start, for the sensors of the model
      it started with, and is not rebuilt by an update), or reads a sensor the
      running model reads too in another unit (the source's numbers would mean
      something else). A different order or subset of the delivered sensors is
      fine: :func:`input_columns` picks them. The window and the feature layout
      never break: any manifest that parses (``shared.manifest``) has features
      :class:`shared.features.FeatureWindow` computes, for any window it allows.
    - ``downgrade``: the candidate's version is lower than the running one,
      unless ``allow_downgrade`` (a rollback the hub signed off).
    """
    if parse_version(candidate.min_agent_version) > parse_version(agent_version):
        return (
            OtaReason.AGENT_TOO_OLD,
            f"model {candidate.name} {candidate.version} needs agent >= "
            f"{candidate.min_agent_version}; this agent is {agent_version}",
        )
    delivered = set(source_sensors)
    missing = [s for s in candidate.input.sensor_names if s not in delivered]
    if missing:
        return (
            OtaReason.INCOMPATIBLE_INPUT,
            f"model {candidate.name} {candidate.version} reads sensor(s) {missing} that this "
            f"agent's source does not deliver (it delivers {list(source_sensors)})",
        )
    units = {s.name: s.unit for s in running.input.sensors}
    for sensor in candidate.input.sensors:
        if sensor.name in units and units[sensor.name] != sensor.unit:
            return (
                OtaReason.INCOMPATIBLE_INPUT,
                f"model {candidate.name} {candidate.version} reads sensor {sensor.name!r} in "
                f"{sensor.unit!r}; the source delivers it in {units[sensor.name]!r}",
            )
    if candidate.version_key < running.version_key and not allow_downgrade:
        return (
            OtaReason.DOWNGRADE,
            f"model {candidate.name} {candidate.version} is older than the running "
            f"{running.version}, and the desired message allows no rollback",
        )
    return None


def input_columns(source_sensors: Sequence[str], model_sensors: Sequence[str]) -> tuple[int, ...]:
    """Where each of the model's sensors is in the source's readings (call after
    :func:`compatibility` passed: every model sensor is delivered).

    >>> input_columns(["temp", "vib", "rpm"], ["rpm", "temp"])
    (2, 0)
    """
    where = {name: i for i, name in enumerate(source_sensors)}
    return tuple(where[name] for name in model_sensors)


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """A smoke test's outcome: ``reason`` is None when it passed."""

    reason: OtaReason | None
    max_error: float
    median_latency_us: float
    detail: str


def smoke_verdict(
    scores: npt.ArrayLike,
    expected: npt.ArrayLike,
    atol: float,
    latencies_us: Sequence[float] = (),
    budget_us: float | None = None,
) -> SmokeResult:
    """Judge the scores of the test vectors (one row each) and their per-row latencies.

    ``smoke_failed`` if any score differs from its expected one by more than
    ``atol`` or is not finite (wrong scores weigh more than slow ones);
    ``smoke_too_slow`` if the *median* latency is over ``budget_us`` (the median,
    so the first row's one-off warm-up does not decide); else passed.

    >>> smoke_verdict([[0.9, 0.1]], [[0.9, 0.1]], 1e-3, [40.0], 100.0).reason is None
    True
    >>> smoke_verdict([[0.5, 0.5]], [[0.9, 0.1]], 1e-3).reason
    <OtaReason.SMOKE_FAILED: 'smoke_failed'>
    """
    got = np.asarray(scores, dtype=np.float64)
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape:
        return SmokeResult(
            OtaReason.SMOKE_FAILED,
            math.inf,
            0.0,
            f"scores have shape {got.shape}, the test vectors expect {want.shape}",
        )
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    median = float(np.median(np.asarray(latencies_us, dtype=np.float64))) if latencies_us else 0.0
    if not err <= atol:  # NaN fails too
        return SmokeResult(
            OtaReason.SMOKE_FAILED,
            err,
            median,
            f"scores differ from the manifest's test vectors by {err:.3g} (allowed {atol:g})",
        )
    if budget_us is not None and median > budget_us:
        return SmokeResult(
            OtaReason.SMOKE_TOO_SLOW,
            err,
            median,
            f"median latency {median:.0f} us per row is over the budget of {budget_us:.0f} us",
        )
    return SmokeResult(None, err, median, f"max error {err:.2g}, median {median:.0f} us per row")


@dataclass(frozen=True, slots=True)
class TrialSettings:
    """When a trial fails. A model fails at once on an error or a non-finite score;
    on latency and urgent rate only when its window is complete."""

    max_errors: int = 0
    """Errors (exceptions while scoring) a trial tolerates."""
    latency_factor: float = 3.0
    latency_floor_us: float = 100.0
    """Fails if p99 > ``latency_factor`` x the previous p99 + ``latency_floor_us``, and the
    median is over the same bound on the previous median (a short trial's p99 is its
    slowest reading, so one spike alone must not fail a model)."""
    urgent_factor: float = 2.0
    urgent_floor: float = 0.01
    """Fails if urgent events per reading > ``urgent_factor`` x the previous rate + ``urgent_floor``,
    with at least ``min_urgent_events`` events in the trial."""
    min_urgent_events: int = 2
    """One event alone never fails a trial: in a short one (a few readings) it is a rate of
    tens of percent, and the machine may simply have had a fault then."""
    latency_ring: int = 1024
    """The most latencies kept (the last ones): memory stays fixed however long the trial."""

    def __post_init__(self) -> None:
        for name in ("latency_factor", "latency_floor_us", "urgent_factor", "urgent_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"OTA trial setting {name} = {value} must be finite and >= 0")
        if self.max_errors < 0 or self.latency_ring < 1 or self.min_urgent_events < 1:
            raise ValueError(
                f"OTA trial settings max_errors = {self.max_errors} must be >= 0, "
                f"latency_ring = {self.latency_ring} and min_urgent_events = "
                f"{self.min_urgent_events} >= 1"
            )


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """The previous model's figures from before the switch, to compare the trial with."""

    readings: int
    urgent_events: int
    latency_p99_us: float
    latency_p50_us: float | None = None
    """None when unknown: the latency gate then looks at p99 alone."""

    @property
    def urgent_rate(self) -> float:
        return self.urgent_events / self.readings if self.readings else 0.0


class TrialStats:
    """The new model's running figures over its trial, in fixed memory."""

    def __init__(self, latency_ring: int) -> None:
        self.readings = 0
        self.errors = 0
        self.non_finite = 0
        self.urgent_events = 0
        self._latency = LatencyWindow(latency_ring)

    def add(self, latency_us: float, finite: bool, error: bool, urgent: bool) -> None:
        """One reading the new model scored (or failed to: ``error``)."""
        self.readings += 1
        self.errors += error
        self.non_finite += not finite
        self.urgent_events += urgent
        self._latency.add(latency_us)

    @property
    def latency_p99_us(self) -> float:
        return self._latency.percentiles()[1]

    @property
    def latency_p50_us(self) -> float:
        return self._latency.percentiles()[0]

    @property
    def urgent_rate(self) -> float:
        return self.urgent_events / self.readings if self.readings else 0.0


def trial_verdict(
    stats: TrialStats, previous: ModelFigures, settings: TrialSettings, complete: bool
) -> tuple[OtaReason, str] | None:
    """Why the trial fails, with a detail; None if it does not (yet).

    Errors and non-finite scores fail at once; latency and urgent rate are
    judged only when the window is ``complete`` (a few readings prove nothing).

    >>> s = TrialStats(16)
    >>> s.add(50.0, finite=False, error=False, urgent=False)
    >>> trial_verdict(s, ModelFigures(100, 1, 50.0), TrialSettings(), complete=False)[0]
    <OtaReason.TRIAL_NAN: 'trial_nan'>
    """
    if stats.errors > settings.max_errors:
        return (
            OtaReason.TRIAL_ERRORS,
            f"{stats.errors} scoring error(s) in {stats.readings} readings",
        )
    if stats.non_finite:
        return (
            OtaReason.TRIAL_NAN,
            f"{stats.non_finite} NaN/inf score(s) in {stats.readings} readings",
        )
    if not complete:
        return None
    # A trial of a few dozen readings has a p99 that is its slowest reading: one scheduler
    # hiccup. A slower model moves the median too, so the median must be over as well.
    p99, old_p99 = stats.latency_p99_us, previous.latency_p99_us
    old_p50 = previous.latency_p50_us
    median_slower = old_p50 is None or stats.latency_p50_us > (
        settings.latency_factor * old_p50 + settings.latency_floor_us
    )
    if p99 > settings.latency_factor * old_p99 + settings.latency_floor_us and median_slower:
        return (
            OtaReason.TRIAL_LATENCY,
            f"latency p99 {p99:.0f} us against the previous model's {old_p99:.0f} us "
            f"(allowed {settings.latency_factor:g} x + {settings.latency_floor_us:g} us)",
        )
    rate, old_rate = stats.urgent_rate, previous.urgent_rate
    if (
        stats.urgent_events >= settings.min_urgent_events
        and rate > settings.urgent_factor * old_rate + settings.urgent_floor
    ):
        return (
            OtaReason.TRIAL_URGENT_RATE,
            f"{rate:.4f} urgent events per reading against the previous model's {old_rate:.4f} "
            f"(allowed {settings.urgent_factor:g} x + {settings.urgent_floor:g})",
        )
    return None
