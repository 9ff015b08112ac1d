"""UrgentRule.check_block gives check's verdicts, reading by reading, on random streams."""

from __future__ import annotations

import numpy as np
import pytest

from shared.manifest import UrgentSpec
from shared.urgent import UrgentRule


@pytest.mark.parametrize("seed", range(12))
def test_check_block_equals_check_on_every_reading(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    raw = rng.normal(0.0, 1.0, size=(n, 3))
    raw[rng.random(raw.shape) < 0.05] = np.nan
    raw[rng.random(raw.shape) < 0.005] = np.inf
    threshold = float(rng.uniform(0.5, 0.9))
    scores = np.clip(rng.normal(0.3, 0.25, size=n), 0, 1).astype(np.float32)
    # Stretches that hover around the threshold (where release matters), and
    # missing scores (skipped by the rule) in and out of them.
    for start in rng.choice(n - 60, size=12, replace=False).tolist():
        scores[start : start + 60] = threshold + rng.normal(0.0, 0.08, size=60)
    scores[rng.random(n) < 0.01] = np.nan
    spec = UrgentSpec(
        threshold,
        int(rng.integers(1, 4)),
        {"a": (None, 1.8), "c": (-2.0, 2.2)} if seed % 4 else {},
        release=int(rng.integers(1, 6)),
    )
    sensors = ("a", "b", "c")
    one = UrgentRule(spec, 0, sensors)
    want = np.array([bool(one.check(raw[i], float(scores[i]))) for i in range(n)])
    block = UrgentRule(spec, 0, sensors)
    cuts = np.sort(rng.choice(np.arange(1, n), size=5, replace=False))
    got = np.concatenate(
        [
            block.check_block(r, s)
            for r, s in zip(np.split(raw, cuts), np.split(scores, cuts), strict=True)
        ]
    )
    assert want.sum() > 0
    np.testing.assert_array_equal(got, want)
