"""Binning, windowed counts, PSI and disagreement against independent numpy computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from shared.drift import (
    BinCounter,
    Disagreement,
    DriftReference,
    binned_proportions,
    psi,
    window_psi,
)

pytestmark = pytest.mark.timeout(30)

EDGES = ((-1.0, 0.0, 1.0), (0.5,), (0.0, 2.0, 4.0, 6.0))
PROPS = ((0.2, 0.3, 0.3, 0.2), (0.6, 0.4), (0.1, 0.2, 0.3, 0.2, 0.2))
SCORE_EDGES = (0.1, 0.5, 0.9)
SCORE_PROPS = (0.7, 0.1, 0.1, 0.1)


def _reference() -> DriftReference:
    return DriftReference(("a", "b", "c"), EDGES, PROPS, SCORE_EDGES, SCORE_PROPS)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * np.array([1.0, 1.0, 3.0]) + np.array([0.0, 0.5, 3.0])
    x[::7, 0] = 0.0  # values exactly on an edge go to the bin above it
    x[::5, 2] = 6.0
    return x, rng.uniform(size=n)


def _by_hand(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bin counts by explicit comparisons, one bin at a time (no searchsorted)."""
    bounds = [-math.inf, *edges, math.inf]
    return np.array(
        [np.sum((values >= lo) & (values < hi)) for lo, hi in itertools.pairwise(bounds)]
    )


def test_counts_match_an_independent_binning() -> None:
    x, s = _data(1000, 1)
    w = BinCounter(_reference()).count(x, s)
    assert w.n == 1000
    for j, e in enumerate(EDGES):
        np.testing.assert_array_equal(w.feature_counts(j), _by_hand(x[:, j], e))
        props = binned_proportions(x[:, j], e)
        np.testing.assert_allclose(props, _by_hand(x[:, j], e) / 1000)
    np.testing.assert_array_equal(w.score, _by_hand(s, SCORE_EDGES))


def test_float32_readings_bin_as_their_exact_values() -> None:
    """Telemetry carries float32; the counter compares those in float32 against edges
    rounded up to float32. A float32 value on either side of an edge that float32
    cannot hold (0.7, whose nearest float32 is below it; 0.1 and 1/3, above), or on a
    float32 edge itself, must land where its exact value does."""
    edges = ((0.1, 1.0 / 3.0, 0.7), (0.5,), (-0.7, 2.0, 4.0, 6.0))
    ref = DriftReference(("a", "b", "c"), edges, PROPS, SCORE_EDGES, SCORE_PROPS)
    near = []
    for e in (0.1, 1.0 / 3.0, 0.7, -0.7, 2.0):
        f = np.float32(e)
        near += [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    column = np.array(near, dtype=np.float32)
    x32 = np.stack([column, column, column], axis=1)
    s = np.linspace(0.0, 1.0, len(column))
    w = BinCounter(ref).count(x32, s)
    for j, e in enumerate(edges):
        exact = x32[:, j].astype(np.float64)  # float32 -> float64 is exact
        np.testing.assert_array_equal(w.feature_counts(j), _by_hand(exact, e))
    np.testing.assert_array_equal(w.bins, BinCounter(ref).count(x32.astype(np.float64), s).bins)


def test_merging_windows_equals_counting_once() -> None:
    x, s = _data(900, 2)
    counter = BinCounter(_reference())
    once = counter.count(x, s)
    parts = counter.empty()
    for lo, hi in ((0, 1), (1, 400), (400, 899), (899, 900)):
        parts = parts + counter.count(x[lo:hi], s[lo:hi])
    assert parts.n == once.n
    np.testing.assert_array_equal(parts.bins, once.bins)


def test_psi_matches_a_computation_by_hand() -> None:
    x, s = _data(500, 3)
    ref = _reference()
    w = BinCounter(ref).count(x, s)
    features, score = window_psi(w, ref)
    for j, e in enumerate(EDGES):
        c = _by_hand(x[:, j], e) + 0.5  # the documented smoothing
        o = c / c.sum()
        r = np.maximum(np.array(PROPS[j]), 1e-4)
        r = r / r.sum()
        assert features[j] == pytest.approx(float(np.sum((o - r) * np.log(o / r))), rel=1e-12)
    c = _by_hand(s, SCORE_EDGES) + 0.5
    o = c / c.sum()
    r = np.array(SCORE_PROPS)
    assert score == pytest.approx(float(np.sum((o - r) * np.log(o / r))), rel=1e-12)


def test_psi_is_zero_at_the_reference_and_grows_with_a_shift() -> None:
    assert psi(np.array([200, 300, 300, 200]), PROPS[0]) == pytest.approx(0.0, abs=1e-6)
    assert psi(np.array([0, 0, 0, 1000]), PROPS[0]) > 1.0  # an empty bin stays finite
    assert math.isfinite(psi(np.array([0, 0, 0, 1000]), PROPS[0]))


def test_disagreement_counts_and_merges() -> None:
    edge = np.array([0, 1, 2, 0, 0, 1])
    heavy = np.array([0, 1, 1, 0, 2, 1])
    d = Disagreement.count(edge[:3], heavy[:3]) + Disagreement.count(edge[3:], heavy[3:])
    assert d == Disagreement.count(edge, heavy) == Disagreement(6, 2)
    assert d.rate == pytest.approx(2 / 6)
    assert math.isnan(Disagreement().rate)


@pytest.mark.parametrize(
    ("features", "scores", "words"),
    [
        (np.zeros((4, 2)), np.zeros(4), "(n, 3)"),
        (np.zeros((4, 3)), np.zeros(3), "scores must be (4,)"),
        (np.array([[0.0, np.nan, 1.0]]), np.zeros(1), "row 0, feature 'b'"),
        (np.zeros((1, 3)), np.array([np.inf]), "row 0, score"),
        (np.zeros((0, 3)), np.zeros(0), "empty batch"),
    ],
)
def test_bad_batches_are_refused_with_the_place(
    features: np.ndarray, scores: np.ndarray, words: str
) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        BinCounter(_reference()).count(features, scores)


def test_bad_references_and_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        DriftReference(("a",), ((1.0, 0.0),), ((0.3, 0.3, 0.4),))
    with pytest.raises(ValueError, match="2 edges but 2 proportions"):
        DriftReference(("a",), ((0.0, 1.0),), ((0.5, 0.5),))
    ref = _reference()
    with pytest.raises(ValueError, match="no readings"):
        window_psi(BinCounter(ref).empty(), ref)
    other = DriftReference(("a",), ((0.0,),), ((0.5, 0.5),))
    with pytest.raises(ValueError, match="different reference"):
        BinCounter(ref).empty() + BinCounter(other).empty()
    with pytest.raises(ValueError, match="one count per bin"):
        psi(np.array([1, 2, 3]), (0.5, 0.5))
