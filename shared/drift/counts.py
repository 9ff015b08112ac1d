"""Windowed, mergeable counts per reference bin: what the hub keeps per device and model version.

A :class:`BinCounter` is built once per model version from the manifest's
reference histograms (:class:`DriftReference`); :meth:`BinCounter.count` turns a
batch of feature rows ``(n, f)`` and their drift scores ``(n,)`` into a
:class:`WindowCounts`: for every feature and for the score, how many readings
fell in each reference bin (the rule of :mod:`shared.drift.binning`), plus the
number of readings. Counts add: ``count(a) + count(b) == count(a ++ b)``, so a
window is the sum of its batches, a longer window the sum of shorter ones, and
several hub workers may count parts of one stream.

Cost: one broadcast comparison ``(f, edges, n)`` per batch (in float32 for
float32 readings), no per-row Python: about 0.3 us per reading of 32 features. Memory: one int64 per bin (``(f + 1) x ~11`` bins: about 3 KB
for the simulator's 32 features).

Edge/heavy disagreement (:class:`Disagreement`) is counted the same way:
readings compared and readings where the two models' decisions differ.

>>> ref = DriftReference(("a", "b"), ((0.0,), (1.0, 2.0)), ((0.5, 0.5), (0.2, 0.3, 0.5)),
...                      score_edges=(0.5,), score_proportions=(0.9, 0.1))
>>> counter = BinCounter(ref)
>>> w = counter.count(np.array([[-1.0, 1.5], [1.0, 3.0]]), np.array([0.1, 0.7]))
>>> w.n, w.feature_counts(0).tolist(), w.feature_counts(1).tolist(), w.score.tolist()
(2, [1, 1], [0, 1, 1], [1, 1])
>>> (w + w).feature_counts(1).tolist()
[0, 2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.drift.binning import SCORE_EDGES, padded_edges
from shared.manifest import ModelManifest

__all__ = ["BinCounter", "Disagreement", "DriftReference", "WindowCounts"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DriftReference:
    """The reference a stream is compared with: per feature (in the model's
    feature order) the inner edges and proportions of its reference histogram,
    and the same for the drift score. Only what the manifest carries."""

    features: tuple[str, ...]
    feature_edges: tuple[tuple[float, ...], ...]
    feature_proportions: tuple[tuple[float, ...], ...]
    score_edges: tuple[float, ...] = SCORE_EDGES
    score_proportions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (len(self.features) == len(self.feature_edges) == len(self.feature_proportions)):
            raise ValueError(
                f"DriftReference: {len(self.features)} features, {len(self.feature_edges)} edge "
                f"lists and {len(self.feature_proportions)} proportion lists; give one of each "
                "per feature"
            )
        if not self.features:
            raise ValueError("DriftReference needs at least one feature")
        for name, e, p in zip(
            self.features, self.feature_edges, self.feature_proportions, strict=True
        ):
            _check_histogram(f"feature {name!r}", e, p)
        if self.score_proportions is not None:
            _check_histogram("score", self.score_edges, self.score_proportions)

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> DriftReference:
        """The reference histograms of a model package, in its feature order."""
        names = manifest.input.features
        hists = [manifest.reference_features[n] for n in names]
        return cls(
            names,
            tuple(h.edges for h in hists),
            tuple(h.proportions for h in hists),
            manifest.reference_score.edges,
            manifest.reference_score.proportions,
        )

    def bins(self) -> tuple[int, ...]:
        """Number of bins of each feature's histogram, then the score's."""
        return (*(len(e) + 1 for e in self.feature_edges), len(self.score_edges) + 1)


def _check_histogram(what: str, edges: Sequence[float], props: Sequence[float]) -> None:
    if len(props) != len(edges) + 1:
        raise ValueError(
            f"DriftReference: {what} has {len(edges)} edges but {len(props)} proportions; "
            "a histogram has len(edges) + 1 bins"
        )
    e = np.asarray(edges, dtype=np.float64)
    if not np.isfinite(e).all() or (e.size > 1 and not (np.diff(e) > 0).all()):
        raise ValueError(f"DriftReference: {what} edges must be finite and strictly increasing")


@dataclass(frozen=True, slots=True, eq=False)
class WindowCounts:
    """Counts of one window: ``n`` readings; ``bins`` holds every feature's bin
    counts then the score's, flattened (``offsets[j]:offsets[j+1]`` is histogram
    ``j``; the last histogram is the score). Immutable; ``+`` merges."""

    n: int
    bins: I64
    offsets: tuple[int, ...]

    def __add__(self, other: WindowCounts) -> WindowCounts:
        return self.merge(other)

    def merge(self, other: WindowCounts) -> WindowCounts:
        """The counts of both windows together."""
        if self.offsets != other.offsets:
            raise ValueError(
                "WindowCounts.merge: the two windows were counted on different reference "
                "histograms (another model version?); merge only counts of one reference"
            )
        return WindowCounts(self.n + other.n, self.bins + other.bins, self.offsets)

    def feature_counts(self, j: int) -> I64:
        """Bin counts of feature ``j``."""
        if not 0 <= j < len(self.offsets) - 2:
            raise IndexError(f"feature {j} out of range (0..{len(self.offsets) - 3})")
        return self.bins[self.offsets[j] : self.offsets[j + 1]]

    @property
    def score(self) -> I64:
        """Bin counts of the drift score."""
        return self.bins[self.offsets[-2] : self.offsets[-1]]


class BinCounter:
    """Counts batches against one :class:`DriftReference` (see the module docstring).

    Stateless after construction: one counter serves every device of a model version.
    """

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        bins = reference.bins()
        self.offsets: tuple[int, ...] = (0, *np.cumsum(bins).tolist())
        self.n_features = len(reference.features)
        self._edges: F64 = padded_edges((*reference.feature_edges, reference.score_edges))
        # The feature edges for float32 readings (what telemetry carries): each edge
        # rounded up to the nearest float32, so that for a float32 x, x >= edge32
        # exactly when x >= edge. Comparing in float32 halves the bytes compared.
        near = self._edges[: self.n_features].astype(np.float32)
        self._edges32: npt.NDArray[np.float32] = np.where(
            near < self._edges[: self.n_features], np.nextafter(near, np.float32(np.inf)), near
        )
        self._total = int(self.offsets[-1])
        # Where each histogram's real bins sit in the (h, widest + 1) differences
        # count() takes (the padded edges' bins are always empty).
        widest = self._edges.shape[1] + 1
        self._take: npt.NDArray[np.intp] = np.concatenate(
            [j * widest + np.arange(k) for j, k in enumerate(bins)]
        ).astype(np.intp)

    def empty(self) -> WindowCounts:
        """The counts of an empty window."""
        return WindowCounts(0, np.zeros(self._total, dtype=np.int64), self.offsets)

    def count(
        self, features: npt.NDArray[np.floating], scores: npt.NDArray[np.floating]
    ) -> WindowCounts:
        """Counts of one batch: ``features`` ``(n, f)`` in the reference's feature
        order, ``scores`` ``(n,)`` drift scores (:func:`shared.drift.binning.drift_score`).

        Raises ValueError, naming the row and column, on a wrong shape or a
        non-finite value (features are always finite: missing readings are
        carried forward; a NaN means a malformed batch).
        """
        f = self.n_features
        if features.ndim != 2 or features.shape[1] != f:
            raise ValueError(
                f"BinCounter.count: features must be (n, {f}) in the model's feature order "
                f"{list(self.reference.features[:3])}...; got shape {features.shape}"
            )
        n = int(features.shape[0])
        if n == 0:
            raise ValueError("BinCounter.count: an empty batch (0 rows); pass at least one reading")
        if scores.shape != (n,):
            raise ValueError(
                f"BinCounter.count: scores must be ({n},), one per feature row; "
                f"got shape {scores.shape}"
            )
        # One row per feature, readings along the row: the comparison below then runs
        # over contiguous memory. float32 readings stay float32 (see _edges32).
        x = np.ascontiguousarray(features.T)
        edges: npt.NDArray[np.floating]
        if x.dtype == np.float32:
            edges = self._edges32
        else:
            x, edges = x.astype(np.float64, copy=False), self._edges[:f]
        for values, what in ((x, "feature"), (scores[None, :], "score")):
            if not np.isfinite(values).all():
                col, row = (int(v[0]) for v in np.nonzero(~np.isfinite(values)))
                name = f"feature {self.reference.features[col]!r}" if what == "feature" else what
                raise ValueError(
                    f"BinCounter.count: row {row}, {name} is {values[col, row]}, not a finite "
                    "number; features are finite (missing readings are carried forward), so "
                    "the batch is malformed: drop it and count it as bad input"
                )
        # The binning rule (shared.drift.binning) counted per histogram rather than
        # per value: at_least[j, k] values of histogram j are >= its edge k, so bin k
        # holds at_least[j, k-1] - at_least[j, k] (n for k = 0, 0 past the last edge).
        # The same counts as bincount(bin_index(x)), without the (n, h) bin matrix.
        h, w = self._edges.shape
        steps = np.zeros((h, w + 2), dtype=np.int64)
        steps[:, 0] = n
        steps[:f, 1 : w + 1] = np.count_nonzero(x[:, None, :] >= edges[:, :, None], axis=2)
        steps[f, 1 : w + 1] = np.count_nonzero(scores[None, :] >= self._edges[f][:, None], axis=1)
        counts: I64 = (steps[:, :-1] - steps[:, 1:]).ravel()[self._take]
        return WindowCounts(n, counts, self.offsets)


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Edge/heavy disagreement of a window: readings compared, readings whose
    decisions (classes) differ. ``+`` merges.

    >>> d = Disagreement.count(np.array([0, 1, 2, 0]), np.array([0, 2, 2, 0]))
    >>> d, (d + d).rate
    (Disagreement(compared=4, disagreed=1), 0.25)
    """

    compared: int = 0
    disagreed: int = 0

    @classmethod
    def count(cls, edge: npt.NDArray[np.integer], heavy: npt.NDArray[np.integer]) -> Disagreement:
        """Compare two arrays of decisions ``(n,)`` (class indices), reading for reading."""
        if edge.ndim != 1 or edge.shape != heavy.shape:
            raise ValueError(
                f"Disagreement.count: edge and heavy decisions must be two (n,) arrays of "
                f"one length; got shapes {edge.shape} and {heavy.shape}"
            )
        return cls(int(edge.shape[0]), int(np.count_nonzero(edge != heavy)))

    def __add__(self, other: Disagreement) -> Disagreement:
        return Disagreement(self.compared + other.compared, self.disagreed + other.disagreed)

    @property
    def rate(self) -> float:
        """Share of compared readings where the models disagree (NaN when none were compared)."""
        return self.disagreed / self.compared if self.compared else float("nan")
