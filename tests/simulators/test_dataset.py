"""Tests for simulators.dataset: shapes, dtypes, the one feature function,
class balance, a stable content hash, and leak-free splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.features import DEFAULT_WINDOW, features_for_stream
from simulators import (
    CLASSES,
    TRAINING_FAULT_RATE,
    TRAINING_URGENT_RATE,
    MachineConfig,
    SimulatedMachine,
    TrainingSet,
    build_training_set,
)
from simulators.sensors import FEATURE_NAMES, SENSORS


@pytest.fixture(scope="module")
def small() -> TrainingSet:
    return build_training_set(seed=5, devices=6, readings_per_device=1500)


@pytest.mark.timeout(30)
def test_shapes_and_dtypes(small: TrainingSet) -> None:
    n = 6 * 1500
    assert small.X.shape == (n, len(FEATURE_NAMES)) and small.X.dtype == np.float32
    assert small.y.shape == (n,) and small.y.dtype == np.int64
    assert small.device.shape == (n,) and small.device.dtype == np.int64
    assert small.sim_time.shape == (n,) and small.sim_time.dtype == np.float64
    assert small.feature_names == FEATURE_NAMES
    assert small.classes == CLASSES
    assert small.window == DEFAULT_WINDOW
    assert np.isfinite(small.X).all()  # dropouts are carried forward
    assert set(np.unique(small.y).tolist()) <= {0, 1, 2}
    assert sorted(np.unique(small.device).tolist()) == list(range(6))
    assert len(small) == n
    with pytest.raises(ValueError):
        small.X[0, 0] = 1.0  # read-only


@pytest.mark.timeout(30)
def test_rows_are_the_one_feature_function_of_each_device_stream(small: TrainingSet) -> None:
    d = 4
    m = SimulatedMachine(
        MachineConfig(
            seed=5, device_index=d, urgent_rate=TRAINING_URGENT_RATE, fault_rate=TRAINING_FAULT_RATE
        )
    )
    readings = list(m.readings(1500))
    values = np.array([r.values for r in readings])
    rows = small.device == d
    assert np.array_equal(
        small.X[rows], features_for_stream(values, DEFAULT_WINDOW, [s.fallback for s in SENSORS])
    )
    assert np.array_equal(small.y[rows], [r.label for r in readings])
    assert np.array_equal(small.sim_time[rows], [r.sim_time for r in readings])


@pytest.mark.timeout(60)
def test_hash_is_stable_for_a_seed_and_changes_with_it(small: TrainingSet) -> None:
    again = build_training_set(seed=5, devices=6, readings_per_device=1500)
    assert again.sha256 == small.sha256
    assert len(small.sha256) == 64 and int(small.sha256, 16) >= 0
    other = build_training_set(seed=6, devices=6, readings_per_device=1500)
    assert other.sha256 != small.sha256
    assert build_training_set(seed=5, devices=6, readings_per_device=1500, window=5).sha256 != (
        small.sha256
    )


@pytest.mark.timeout(60)
def test_default_set_is_balanced_enough_and_quick() -> None:
    t0 = time.perf_counter()
    ts = build_training_set(seed=0)
    elapsed = time.perf_counter() - t0
    assert len(ts) == 16 * 4000
    counts = ts.class_counts()
    assert counts["urgent"] / len(ts) >= 0.05
    assert counts["fault"] / len(ts) >= 0.15
    assert counts["normal"] / len(ts) >= 0.3
    assert elapsed < 30.0  # generous: ~1 s here; the budget is 10 s


@pytest.mark.timeout(30)
def test_split_by_device_has_no_device_overlap(small: TrainingSet) -> None:
    train, holdout = small.split(0.34, seed=1)
    tr, ho = set(train.device.tolist()), set(holdout.device.tolist())
    assert tr.isdisjoint(ho)
    assert tr | ho == set(range(6))
    assert len(ho) == 2
    assert len(train) + len(holdout) == len(small)
    assert train.sha256 != holdout.sha256 != small.sha256
    again = small.split(0.34, seed=1)
    assert again[1].sha256 == holdout.sha256


@pytest.mark.timeout(30)
def test_split_by_time_blocks_shares_no_reading(small: TrainingSet) -> None:
    train, holdout = small.split(0.3, seed=1, by="time", block=250)
    assert len(holdout) > 0 and len(train) > 0
    w = small.window
    rate = 10.0
    for d in range(6):
        tr = np.round(train.sim_time[train.device == d] * rate).astype(int)
        ho = np.round(holdout.sim_time[holdout.device == d] * rate).astype(int)
        assert ho.size > 0 and tr.size > 0
        # Each row covers readings [i - w + 1, i]: no train and holdout windows meet.
        tr_cover = {r for i in tr.tolist() for r in range(i - w + 1, i + 1)}
        ho_cover = {r for i in ho.tolist() for r in range(i - w + 1, i + 1)}
        assert tr_cover.isdisjoint(ho_cover)
    assert len(train) + len(holdout) < len(small)  # the purge gaps


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0])
def test_split_rejects_bad_fractions(small: TrainingSet, fraction: float) -> None:
    with pytest.raises(ValueError, match="holdout_fraction"):
        small.split(fraction, seed=0)


@pytest.mark.timeout(30)
def test_split_by_device_needs_two_devices() -> None:
    one = build_training_set(seed=1, devices=1, readings_per_device=200)
    with pytest.raises(ValueError, match="by='time'"):
        one.split(0.5, seed=0)
    train, holdout = one.split(0.5, seed=0, by="time", block=50)
    assert len(train) > 0 and len(holdout) > 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [({"devices": 0}, "devices"), ({"readings_per_device": 0}, "readings_per_device")],
)
def test_builder_validates(kwargs: dict[str, int], setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        build_training_set(seed=0, **kwargs)
