"""BlockFeatureWindow gives FeatureWindow's features, block by block, and InputCheck.check_block
counts and cleans as check does row by row."""

from __future__ import annotations

import numpy as np
import pytest

from shared.features import BlockFeatureWindow, FeatureWindow, InputCheck, SensorSpec


def _stream(seed: int, n: int, sensors: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-1e4, 1e4, size=sensors)
    x = offsets + rng.normal(0.0, rng.uniform(0.01, 50.0, size=sensors), size=(n, sensors))
    x[rng.random((n, sensors)) < 0.1] = np.nan  # dropouts
    x[rng.random((n, sensors)) < 0.01] = np.inf
    x[: rng.integers(0, 4), rng.integers(0, sensors)] = np.nan  # missing from the start
    x[n // 3 : n // 3 + 15] = x[n // 3]  # a constant run: std exactly 0
    return x


@pytest.mark.parametrize("seed", range(6))
def test_blocks_equal_feature_window_on_random_streams(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    sensors, window, n = int(rng.integers(1, 9)), int(rng.integers(2, 16)), 700
    fallback = rng.uniform(-10, 10, size=sensors).tolist()
    x = _stream(seed, n, sensors)
    fw = FeatureWindow(window, fallback)
    expected = np.stack([fw.push(row) for row in x])
    block = BlockFeatureWindow(window, fallback)
    cuts = np.sort(rng.choice(np.arange(1, n), size=8, replace=False))
    got = np.concatenate([block.push_block(part) for part in np.split(x, cuts)])
    assert got.dtype == np.float32 and got.shape == expected.shape
    scale = np.maximum(np.abs(expected).max(axis=0), 1.0)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)  # float32 rounding
    assert (np.abs(got - expected) <= scale * 1e-6).all()
    assert block.imputed == fw.imputed


def test_check_block_counts_as_check() -> None:
    specs = [SensorSpec("t", "degC", -40.0, 200.0, 20.0), SensorSpec("v", "g", 0.0, 10.0, 1.0)]
    x = np.array([[21.0, 1.0], [900.0, 1.0], [60.0, np.nan], [20.0, -1.0], [np.inf, 9.0]])
    rows, block = (
        InputCheck(specs, [(15.0, 25.0), (0.5, 2.0)]),
        InputCheck(specs, [(15.0, 25.0), (0.5, 2.0)]),
    )
    expected = np.stack([rows.check(r.copy()) for r in x])
    np.testing.assert_array_equal(block.check_block(x), expected)
    assert block.counts() == rows.counts()
