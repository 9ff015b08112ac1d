"""Readings to predictions, block by block: :class:`BatchScorer`.

The very steps the edge agent takes for each reading (``edge_agent.agent``),
done for a block of readings at once, with one state per series (a device, or
one recording):

1. :class:`~shared.features.InputCheck`: out-of-range values become missing,
   counted per sensor (one check for the whole run);
2. :class:`~shared.features.BlockFeatureWindow`: the agent's feature window,
   vectorized, carried from block to block;
3. the model: one run per block (an fp32 model), or one run per reading for an
   int8 model, whose dynamically quantized scores depend on the rows scored
   together: batch scoring then gives each reading exactly the scores a device
   gives it (as ``POST /v1/predict`` does);
4. :class:`~shared.urgent.UrgentRule` (:meth:`~shared.urgent.UrgentRule.check_block`),
   reading by reading in each series' order: ``urgent`` is 1 on a reading where a cause starts (the score over the
   threshold for ``consecutive`` readings, or a hard limit crossed), where a
   device would act.

Stored telemetry holds the features already (:meth:`BatchScorer.score_features`);
there the urgent rule's raw values are the features' ``<sensor>_last`` columns
(the readings after the device's checks, missing values carried forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_hub.inference import OnnxScorer
from cloud_hub.recordings import series_rows
from shared.features import BlockFeatureWindow, InputCheck
from shared.manifest import ModelManifest
from shared.urgent import UrgentRule

__all__ = ["BatchScorer", "Prepared", "Scored"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Scored:
    """One block's results, one entry per reading, in the block's order."""

    predicted: I64
    """Index of the predicted class (``manifest.output.classes``)."""
    urgent_score: F32
    urgent: U8

    def __len__(self) -> int:
        return int(self.predicted.shape[0])


@dataclass(frozen=True, slots=True)
class Prepared:
    """A block checked and turned into features (:meth:`BatchScorer.prepare`), not yet scored."""

    features: F32
    raw: F64
    """The readings after the input check: what the urgent rule reads."""
    groups: list[tuple[str, I64 | None]]
    """Each series' key and its rows in the block (None: all of them)."""


class _Series:
    __slots__ = ("features", "rule")

    def __init__(self, manifest: ModelManifest) -> None:
        self.features = BlockFeatureWindow(manifest.input.window, manifest.input.fallback)
        self.rule = UrgentRule(
            manifest.urgent, manifest.output.urgent_index, manifest.input.sensor_names
        )


class BatchScorer:
    """Scores blocks of readings of many series with one model; keeps each series' state.

    ``row_by_row`` (default: for an int8 model) scores each reading alone, as a
    device does. Pure apart from onnxruntime: no I/O.
    """

    def __init__(
        self, manifest: ModelManifest, scorer: OnnxScorer, *, row_by_row: bool | None = None
    ) -> None:
        self.manifest = manifest
        self.scorer = scorer
        self.row_by_row = (
            manifest.model.quantization != "fp32" if row_by_row is None else row_by_row
        )
        self.classes = manifest.output.classes
        self.inputs = InputCheck(manifest.input.sensors, manifest.expected_ranges())
        self._urgent = manifest.output.urgent_index
        self._n_sensors = len(manifest.input.sensors)
        self._series: dict[str, _Series] = {}

    @property
    def series(self) -> int:
        """How many series were seen."""
        return len(self._series)

    @property
    def imputed(self) -> int:
        return sum(s.features.imputed for s in self._series.values())

    def _state(self, key: str) -> _Series:
        state = self._series.get(key)
        if state is None:
            state = self._series[key] = _Series(self.manifest)
        return state

    def forget(self, key: str) -> None:
        """Drop a series' state (its recording ended)."""
        self._series.pop(key, None)

    def score_readings(self, values: F64, series: str | Sequence[str], prefix: str = "") -> Scored:
        """Score raw readings ``(n, n_sensors)`` (NaN: missing), in the model's sensor
        order; ``series`` names the series of the whole block, or of each reading
        (``prefix`` is put before each name: the file, say)."""
        return self.score_prepared(self.prepare(values, series, prefix))

    def prepare(self, values: F64, series: str | Sequence[str], prefix: str = "") -> Prepared:
        """The first half of :meth:`score_readings`: the input check and each series'
        features, up to the model. Blocks must be prepared, and then scored with
        :meth:`score_prepared`, in their order; the two may run in different
        threads (``batch score`` prepares the next block while the model scores
        this one)."""
        if values.ndim != 2 or values.shape[1] != self._n_sensors:
            raise ValueError(
                f"readings need {self._n_sensors} values each; got shape {values.shape}"
            )
        checked = self.inputs.check_block(values)
        groups = self._groups(series, checked.shape[0], prefix)
        if len(groups) == 1:
            key, _ = groups[0]
            feats = self._state(key).features.push_block(checked)
            groups = [(key, None)]
        else:
            feats = np.empty((checked.shape[0], 4 * self._n_sensors), dtype=np.float32)
            for key, rows in groups:
                feats[rows] = self._state(key).features.push_block(checked[rows])
        return Prepared(feats, checked, groups)

    def score_prepared(self, prepared: Prepared) -> Scored:
        """The second half of :meth:`score_readings`: the model and the urgent rule."""
        return self._decide(prepared.features, prepared.raw, prepared.groups)

    def score_features(self, features: F32, series: str) -> Scored:
        """Score features already computed (stored telemetry) of one series."""
        want = len(self.manifest.input.features)
        if features.ndim != 2 or features.shape[1] != want:
            raise ValueError(f"features need {want} columns each; got shape {features.shape}")
        raw = features[:, : self._n_sensors].astype(np.float64)
        return self._decide(features, raw, [(series, None)])

    @staticmethod
    def _groups(series: str | Sequence[str], n: int, prefix: str) -> list[tuple[str, I64 | None]]:
        """Each series' key and its rows (in order); None for all the rows."""
        return series_rows(series, n, prefix)

    def _decide(self, feats: F32, raw: F64, groups: list[tuple[str, I64 | None]]) -> Scored:
        n = feats.shape[0]
        scores = self.scorer.scores(feats, batch_size=1 if self.row_by_row else None)
        if scores.shape != (n, len(self.classes)):
            raise RuntimeError(
                f"model {self.manifest.name} {self.manifest.version} returned scores of shape "
                f"{scores.shape}; its manifest names {len(self.classes)} classes"
            )
        predicted = scores.argmax(axis=1).astype(np.int64)
        urgent_score = np.ascontiguousarray(scores[:, self._urgent])
        urgent = np.zeros(n, dtype=np.uint8)
        for key, rows in groups:
            rule = self._state(key).rule
            if rows is None:
                urgent[rule.check_block(raw, urgent_score)] = 1
            else:
                urgent[rows[rule.check_block(raw[rows], urgent_score[rows])]] = 1
        return Scored(predicted, urgent_score, urgent)
