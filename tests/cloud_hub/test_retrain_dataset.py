"""Dataset assembly for the pipeline (pure): operator labels win over the teacher's,
the held-out slice is the end of each device's readings and shares no window with
training, and sabotage makes labels wrong on purpose."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.retrain.dataset import (
    HOLDOUT,
    TRAIN,
    VALIDATION,
    DeviceData,
    LabelSpan,
    assemble,
    sabotage,
)
from cloud_hub.retrain.runs import PipelineInputs, finish, new_run, set_step

pytestmark = pytest.mark.timeout(10)


def _device(name: str, n: int, teacher: int, *, shuffled: bool = False) -> DeviceData:
    ts = 100.0 + np.arange(n, dtype=np.float64)
    scores = np.full((n, 3), 0.1, dtype=np.float32)
    scores[:, teacher] = 0.8
    x = ts[:, None].astype(np.float32).repeat(2, axis=1)
    if shuffled:  # stored out of order: assembly sorts by time
        order = np.random.default_rng(0).permutation(n)
        return DeviceData(name, ts[order], x[order], scores[order])
    return DeviceData(name, ts, x, scores)


def test_ground_truth_labels_win_over_the_teacher_where_they_cover_a_reading() -> None:
    devices = [_device("a", 100, teacher=0, shuffled=True), _device("b", 100, teacher=2)]
    labels = {
        "a": [LabelSpan(110.0, 120.0, 1), LabelSpan(115.0, 117.0, 2)],  # the later one wins
        "c": [LabelSpan(0.0, 1e9, 1)],  # a device with no readings: nothing to label
    }
    ds = assemble(
        devices, labels, n_classes=3, window=1, validation_fraction=0.1, holdout_fraction=0.2
    )
    assert ds.devices == ("a", "b")
    a_ts = ds.x[ds.device == 0, 0]
    assert np.array_equal(a_ts, np.arange(100, 200, dtype=np.float32))  # in time order
    a_y = ds.y[ds.device == 0]
    expected = np.zeros(100, dtype=np.int64)
    expected[10:20] = 1
    expected[15:17] = 2
    assert np.array_equal(a_y, expected)
    assert np.array_equal(ds.teacher[ds.device == 0], np.zeros(100))
    assert int(ds.from_label.sum()) == 10
    assert np.all(ds.y[ds.device == 1] == 2)  # no label: the teacher's class
    counts = ds.counts()
    assert (counts["label_rows"], counts["teacher_rows"]) == (10, 190)


def test_the_held_out_slice_is_each_device_s_last_readings_and_no_window_crosses_a_cut() -> None:
    window = 5
    ds = assemble(
        [_device("a", 200, 0), _device("b", 100, 1)],
        {},
        n_classes=3,
        window=window,
        validation_fraction=0.1,
        holdout_fraction=0.2,
    )
    for d, n in ((0, 200), (1, 100)):
        side = ds.side[ds.device == d]
        ts = ds.x[ds.device == d, 0]
        held = ts[side == HOLDOUT]
        assert held.min() > ts[side == VALIDATION].max() > ts[side == TRAIN].max()
        assert len(held) == round(0.2 * n) - (window - 1)  # the cut's overlap dropped
        # No held-out reading's window (it and the window-1 before it) holds a training one.
        assert held.min() - (window - 1) > ts[side != HOLDOUT][side[side != HOLDOUT] >= 0].max()
    x_hold, y_hold = ds.part(HOLDOUT)
    assert (
        x_hold.shape == (int(np.sum(ds.side == HOLDOUT)), 2) and y_hold.shape[0] == x_hold.shape[0]
    )
    same = assemble(
        [_device("a", 200, 0), _device("b", 100, 1)],
        {},
        n_classes=3,
        window=window,
        validation_fraction=0.1,
        holdout_fraction=0.2,
    )
    assert same.sha256 == ds.sha256 and len(ds.sha256) == 64


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="no stored readings"):
        assemble([], {}, n_classes=3, window=1, validation_fraction=0, holdout_fraction=0.2)
    d = _device("a", 10, 0)
    narrow = DeviceData("b", d.ts, d.features[:, :1], d.heavy_scores)
    with pytest.raises(ValueError, match="other inputs"):
        assemble(
            [d, narrow], {}, n_classes=3, window=1, validation_fraction=0, holdout_fraction=0.2
        )
    with pytest.raises(ValueError, match="must have 4 columns"):
        assemble([d], {}, n_classes=3 + 1, window=1, validation_fraction=0, holdout_fraction=0.2)


def test_sabotage_gives_that_share_the_next_class() -> None:
    y = np.zeros(1000, dtype=np.int64)
    bad = sabotage(y, 0.6, 3, seed=1)
    assert int(np.sum(bad == 1)) == 600 and int(np.sum(bad == 0)) == 400
    assert np.array_equal(sabotage(y, 0.0, 3, seed=1), y)
    assert np.array_equal(sabotage(y, 0.6, 3, seed=1), bad)  # seeded


def test_a_run_record_ends_with_every_step_accounted_for() -> None:
    run = new_run("r", "m", "drift", PipelineInputs(0.0, 1.0, ("a",), "1.0.0"), 1.0, reason="x")
    run = set_step(run, "assemble", "running", 2.0)
    run = set_step(run, "assemble", "ok", 3.0, "100 readings")
    run = set_step(run, "train", "running", 4.0)
    done = finish(run, "failed", "failed at step train", "no urgent rows", 5.0)
    assert [(s.name, s.status) for s in done.steps][:3] == [
        ("assemble", "ok"),
        ("train", "failed"),
        ("convert", "skipped"),
    ]
    assert done.step("assemble").started_at == 2.0 and done.step("assemble").finished_at == 3.0
    assert done.step("train").detail == "no urgent rows" and done.finished_at == 5.0
    with pytest.raises(ValueError, match="trigger"):
        new_run("r", "m", "cron", PipelineInputs(0.0, 1.0, (), None), 1.0)  # type: ignore[arg-type]
