"""One reading's way from raw values to a decision: checks, baseline, features, model, rule.

The agent's hot path (:meth:`edge_agent.agent.Agent.process` calls
:meth:`ReadingPath.step` once per reading), and the same code for any caller
that must score a stream exactly as an agent does (``edgeloop-sim bench
baseline``). The order, and why, is :mod:`shared.baseline`'s:

1. :class:`shared.features.InputCheck` on the raw values: values outside the
   sensor's valid range become missing and are counted; values whose *mapped*
   value would lie far outside the model's training range are counted (the
   training range is mapped into the device's units once, here);
2. the device's baseline, if any (:class:`shared.baseline.BaselineMap`: two
   numpy calls), maps the raw values onto the model's reference;
3. :class:`shared.features.FeatureWindow` and the model, on the mapped values;
4. :class:`edge_agent.rules.UrgentRule` on the urgent score and the *raw*
   values (hard limits are physical).

:func:`load_baseline` reads and checks a ``--baseline`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.rules import Decision, UrgentRule
from shared.baseline import Baseline, BaselineMap
from shared.baseline_file import read_baseline
from shared.features import FeatureWindow, InputCheck
from shared.manifest import ModelManifest

__all__ = ["ReadingPath", "Scorer", "load_baseline"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class Scorer(Protocol):
    """What the path needs of a model (:class:`edge_agent.engine.EdgeModel`)."""

    @property
    def manifest(self) -> ModelManifest: ...

    def score(self, features: F32) -> F32: ...


class ReadingPath:
    """One device's stream through the model: call :meth:`step` per reading, in order."""

    def __init__(self, model: Scorer, baseline: Baseline | None = None) -> None:
        manifest = model.manifest
        sensors = manifest.input.sensor_names
        self.model = model
        self.baseline = baseline
        self.map: BaselineMap | None = None
        expected = manifest.expected_ranges()
        if baseline is not None:
            baseline.check_for(baseline.device, manifest.name, sensors, "baseline")
            self.map = baseline.mapping(manifest.reference_sensors, sensors)
            expected = self.map.device_ranges(expected)
        self.inputs = InputCheck(manifest.input.sensors, expected)
        self.features = FeatureWindow(manifest.input.window, manifest.input.fallback)
        self.rule = UrgentRule(manifest.urgent, manifest.output.urgent_index, sensors)
        self.urgent_index = manifest.output.urgent_index

    def step(self, values: F64) -> tuple[F32, F32, tuple[Decision, ...]]:
        """Features, class scores and the urgent causes that start on this reading."""
        raw = self.inputs.check(values)  # out-of-range values become missing, counted
        mapped = raw if self.map is None else self.map.apply(raw)
        feats = self.features.push(mapped)  # always finite: bad values are carried forward
        scores = self.model.score(feats)
        return feats, scores, self.rule.check(raw, scores.item(self.urgent_index))

    def features_of(self, values: F64) -> tuple[F64, F32]:
        """Steps 1-3 before the model: the checked raw values and the feature row
        (:meth:`step` is this and :meth:`decide`, in one call on the hot path)."""
        raw = self.inputs.check(values)
        mapped = raw if self.map is None else self.map.apply(raw)
        return raw, self.features.push(mapped)

    def decide(self, raw: F64, feats: F32) -> tuple[F32, tuple[Decision, ...]]:
        """The model's scores of ``feats`` and the urgent causes that start on them."""
        scores = self.model.score(feats)
        return scores, self.rule.check(raw, scores.item(self.urgent_index))


def load_baseline(path: Path, device: str, manifest: ModelManifest) -> Baseline:
    """The baseline in ``path``, checked against this device and model, or a
    :class:`~shared.baseline.BaselineError` that names the file and the field."""
    baseline = read_baseline(path, device)
    baseline.check_for(device, manifest.name, manifest.input.sensor_names, f"baseline file {path}")
    return baseline
