"""Readings to predictions, block by block: :class:`BatchScorer`.

The very steps the edge agent takes for each reading (``edge_agent.agent``),
done for a block of readings at once, with one state per series (a device, or
one recording):

1. :class:`~shared.features.InputCheck`: out-of-range values become missing,
   counted per sensor (one check for the whole run, and one per series that has
   a baseline: its training range is mapped into the device's units, as the
   agent's is);
2. the series' baseline, if it has one (``baselines``:
   :class:`shared.baseline.BaselineMap`), maps the raw values onto the model's
   reference, as the agent's ``--baseline FILE`` does
   (:mod:`edge_agent.reading`);
3. :class:`~shared.features.BlockFeatureWindow`: the agent's feature window,
   vectorized, carried from block to block, on the mapped values;
4. the model: one run per block (an fp32 model), or one run per reading for an
   int8 model, whose dynamically quantized scores depend on the rows scored
   together: batch scoring then gives each reading exactly the scores a device
   gives it (as ``POST /v1/predict`` does);
5. :class:`~shared.urgent.UrgentRule` (:meth:`~shared.urgent.UrgentRule.check_block`),
   reading by reading in each series' order: ``urgent`` is 1 on a reading where a cause starts (the score over the
   threshold for ``consecutive`` readings, or a hard limit crossed, on the
   *raw* values), where a device would act.

Stored telemetry holds the features already (:meth:`BatchScorer.score_features`);
there the urgent rule's raw values are the features' ``<sensor>_last`` columns
(the readings after the device's checks, missing values carried forward). No
baseline is applied to them: they are what the device's model saw, already
mapped when its agent ran with a baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_hub.inference import OnnxScorer
from cloud_hub.recordings import series_rows
from shared.baseline import Baseline, BaselineMap
from shared.features import BlockFeatureWindow, InputCheck
from shared.manifest import ModelManifest
from shared.urgent import UrgentRule

__all__ = ["BaselineLookup", "BatchScorer", "Prepared", "Scored"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

BaselineLookup = Callable[[str], Baseline | None]
"""A series' baseline by its name (the device, or ``""`` for a file without a
device column); None: the series is scored against the model's reference."""


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
    __slots__ = ("features", "inputs", "map", "rule")

    def __init__(
        self, manifest: ModelManifest, inputs: InputCheck, baseline: Baseline | None
    ) -> None:
        self.features = BlockFeatureWindow(manifest.input.window, manifest.input.fallback)
        self.rule = UrgentRule(
            manifest.urgent, manifest.output.urgent_index, manifest.input.sensor_names
        )
        self.map: BaselineMap | None = None
        self.inputs = inputs
        if baseline is not None:
            self.map = baseline.mapping(manifest.reference_sensors, manifest.input.sensor_names)
            self.inputs = InputCheck(
                manifest.input.sensors, self.map.device_ranges(manifest.expected_ranges())
            )


class BatchScorer:
    """Scores blocks of readings of many series with one model; keeps each series' state.

    ``row_by_row`` (default: for an int8 model) scores each reading alone, as a
    device does. ``baselines`` gives a series its baseline when the series is
    first seen; the baseline's sensors must be the model's (its device and model
    names are not checked: the caller chose it, and a device's own location and
    scale do not depend on the model they are mapped onto). Pure apart from
    onnxruntime and ``baselines``: no I/O.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        scorer: OnnxScorer,
        *,
        row_by_row: bool | None = None,
        baselines: BaselineLookup | None = None,
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
        self._baselines = baselines
        self._mapped: list[InputCheck] = []
        self.mapped_series = 0
        """How many series were mapped with a baseline."""

    @property
    def series(self) -> int:
        """How many series were seen."""
        return len(self._series)

    def input_counts(self) -> dict[str, int]:
        """The input checks' counters over every series (:meth:`InputCheck.counts`)."""
        total = self.inputs.counts()
        for check in self._mapped:
            for key, n in check.counts().items():
                total[key] = total.get(key, 0) + n
        return total

    @property
    def imputed(self) -> int:
        return sum(s.features.imputed for s in self._series.values())

    def _state(self, key: str, name: str = "") -> _Series:
        state = self._series.get(key)
        if state is None:
            baseline = None if self._baselines is None else self._baselines(name)
            if baseline is not None:
                sensors = self.manifest.input.sensor_names
                where = f"the baseline of series {name!r}" if name else "the baseline"
                baseline.check_for(baseline.device, baseline.model, sensors, where)
            state = self._series[key] = _Series(self.manifest, self.inputs, baseline)
            if state.map is not None:
                self._mapped.append(state.inputs)
                self.mapped_series += 1
        return state

    def forget(self, key: str) -> None:
        """Drop a series' state (its recording ended); its input counts stay counted."""
        self._series.pop(key, None)

    def score_readings(self, values: F64, series: str | Sequence[str], prefix: str = "") -> Scored:
        """Score raw readings ``(n, n_sensors)`` (NaN: missing), in the model's sensor
        order; ``series`` names the series of the whole block, or of each reading
        (``prefix`` is put before each name: the file, say)."""
        return self.score_prepared(self.prepare(values, series, prefix))

    def prepare(
        self,
        values: F64,
        series: str | Sequence[str],
        prefix: str = "",
        codes: tuple[npt.NDArray[np.intp], list[str]] | None = None,
    ) -> Prepared:
        """The first half of :meth:`score_readings`: the input check and each series'
        features, up to the model. Blocks must be prepared, and then scored with
        :meth:`score_prepared`, in their order; the two may run in different
        threads (``batch score`` prepares the next block while the model scores
        this one). ``codes``, when the reader has them, give each reading's series
        as an index into a list of names (the same series as ``series``), which
        spares a lookup per reading."""
        if values.ndim != 2 or values.shape[1] != self._n_sensors:
            raise ValueError(
                f"readings need {self._n_sensors} values each; got shape {values.shape}"
            )
        if codes is not None:
            named = self._coded_groups(codes, values.shape[0], prefix)
        else:
            named = self._groups(series, values.shape[0], prefix)
        states = [self._state(key, name) for key, name, _ in named]
        groups = [(key, rows) for key, _, rows in named]
        if len(named) == 1:
            state = states[0]
            checked = state.inputs.check_block(values)
            return Prepared(state.features.push_block(_mapped(state, checked)), checked, groups)
        feats = np.empty((values.shape[0], 4 * self._n_sensors), dtype=np.float32)
        if all(state.map is None for state in states):  # one check for the whole block
            checked = self.inputs.check_block(values)
            for state, (_, rows) in zip(states, groups, strict=True):
                feats[rows] = state.features.push_block(checked[rows])
            return Prepared(feats, checked, groups)
        checked = np.empty_like(values)
        for state, (_, rows) in zip(states, groups, strict=True):
            part = state.inputs.check_block(values[rows])
            checked[rows] = part
            feats[rows] = state.features.push_block(_mapped(state, part))
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
    def _groups(
        series: str | Sequence[str], n: int, prefix: str
    ) -> list[tuple[str, str, I64 | None]]:
        """Each series' key, name and rows (in order); None for all the rows."""
        if isinstance(series, str):
            return [(prefix + series, series, None)]
        return [(prefix + name, name, rows) for name, rows in series_rows(series, n)]

    @staticmethod
    def _coded_groups(
        codes: tuple[npt.NDArray[np.intp], list[str]], n: int, prefix: str
    ) -> list[tuple[str, str, I64 | None]]:
        """:meth:`_groups` for series given as codes into a list of distinct names."""
        inverse, names = codes
        if inverse.shape[0] != n:
            raise ValueError(f"{inverse.shape[0]} series codes for {n} readings")
        counts = np.bincount(inverse, minlength=len(names))
        used = np.flatnonzero(counts).tolist()
        if len(used) == 1:
            return [(prefix + names[used[0]], names[used[0]], None)]
        order = np.argsort(inverse, kind="stable")
        parts = np.split(order, np.cumsum(counts)[:-1])
        return [(prefix + names[i], names[i], parts[i]) for i in used]

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


def _mapped(state: _Series, checked: F64) -> F64:
    """The readings the model's features are computed from: mapped with the
    series' baseline, if any, with the agent's two operations in its order
    (:meth:`shared.baseline.BaselineMap.apply`), so the values are the same."""
    if state.map is None:
        return checked
    return np.add(np.multiply(checked, state.map.gain), state.map.offset)
