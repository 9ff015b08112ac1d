"""Telemetry micro-batches: sealed when full, when old, or when the model changes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent.batcher import Batcher

pytestmark = pytest.mark.timeout(30)

N_FEATURES, N_CLASSES = 4, 3


def row(i: int) -> tuple[float, np.ndarray, np.ndarray]:
    feats = np.full(N_FEATURES, i, dtype=np.float32)
    scores = np.array([0.5, 0.25, 0.25], dtype=np.float32) + np.float32(i / 1000)
    return 1000.0 + i, feats, scores


def batcher(max_batch: int = 3, max_delay_s: float = 0.05) -> Batcher:
    return Batcher(max_batch, max_delay_s, N_FEATURES, N_CLASSES)


def test_seals_at_max_batch() -> None:
    b = batcher(max_batch=3)
    assert b.add(*row(0), "1.0.0") == (None, True)
    assert b.add(*row(1), "1.0.0") == (None, False)
    sealed, started = b.add(*row(2), "1.0.0")
    assert sealed is not None
    assert not started
    assert sealed.model_version == "1.0.0"
    np.testing.assert_array_equal(sealed.ts, [1000.0, 1001.0, 1002.0])
    assert sealed.features.shape == (3, N_FEATURES)
    assert sealed.features.dtype == np.float32
    np.testing.assert_array_equal(sealed.features[:, 0], [0, 1, 2])
    assert sealed.scores.shape == (3, N_CLASSES)
    np.testing.assert_array_equal(sealed.scores[2], row(2)[2])
    assert b.deadline() is None  # empty again
    assert b.add(*row(3), "1.0.0") == (None, True)  # the next row starts a new batch


def test_max_batch_one() -> None:
    b = batcher(max_batch=1)
    for i in range(3):
        sealed, started = b.add(*row(i), "1.0.0")
        assert started
        assert sealed is not None
        assert sealed.ts.tolist() == [1000.0 + i]


def test_seal_if_due_after_max_delay() -> None:
    b = batcher(max_batch=100, max_delay_s=0.05)
    assert b.seal_if_due(time.monotonic() + 10) is None  # nothing to seal
    before = time.monotonic()
    b.add(*row(0), "1.0.0")
    b.add(*row(1), "1.0.0")
    after = time.monotonic()
    deadline = b.deadline()
    assert deadline is not None
    assert before + 0.05 <= deadline <= after + 0.05  # measured from the first row
    assert b.seal_if_due(deadline - 0.001) is None
    sealed = b.seal_if_due(deadline)
    assert sealed is not None
    assert sealed.ts.tolist() == [1000.0, 1001.0]
    assert b.deadline() is None
    assert b.seal_if_due(deadline + 1) is None


def test_seal_if_due_force() -> None:
    b = batcher(max_batch=100, max_delay_s=60)
    b.add(*row(0), "1.0.0")
    assert b.seal_if_due(time.monotonic()) is None
    sealed = b.seal_if_due(time.monotonic(), force=True)
    assert sealed is not None
    assert len(sealed.ts) == 1


def test_model_version_change_seals_the_previous_batch() -> None:
    b = batcher(max_batch=10)
    b.add(*row(0), "1.0.0")
    b.add(*row(1), "1.0.0")
    sealed, started = b.add(*row(2), "1.1.0")
    assert sealed is not None
    assert sealed.model_version == "1.0.0"
    assert sealed.ts.tolist() == [1000.0, 1001.0]
    assert started  # row 2 opened the 1.1.0 batch
    rest = b.seal_if_due(time.monotonic(), force=True)
    assert rest is not None
    assert rest.model_version == "1.1.0"
    assert rest.ts.tolist() == [1002.0]


def test_sealed_arrays_are_copies() -> None:
    b = batcher(max_batch=2)
    ts, feats, scores = row(0)
    b.add(ts, feats, scores, "1.0.0")
    first, _ = b.add(*row(1), "1.0.0")
    assert first is not None
    feats[:] = -1  # the caller reuses its arrays
    b.add(*row(7), "1.0.0")
    second, _ = b.add(*row(8), "1.0.0")
    assert second is not None
    # Refilling the batcher's buffers must not change a batch already handed over.
    np.testing.assert_array_equal(first.ts, [1000.0, 1001.0])
    np.testing.assert_array_equal(first.features[:, 0], [0, 1])
    np.testing.assert_array_equal(second.features[:, 0], [7, 8])
    for arr in (first.ts, first.features, first.scores):
        assert arr.flags.owndata  # not a view of the batcher's buffers


def test_reading_loop_and_link_thread_never_lose_a_row() -> None:
    # The reading loop adds while the link thread seals overdue batches.
    b = batcher(max_batch=7, max_delay_s=0.0)
    sealed_rows: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def link() -> None:
        while not done.is_set():
            batch = b.seal_if_due(time.monotonic())
            if batch is not None:
                with lock:
                    sealed_rows.extend(batch.ts.tolist())

    t = threading.Thread(target=link)
    t.start()
    for i in range(5000):
        batch, _ = b.add(*row(i), "1.0.0")
        if batch is not None:
            with lock:
                sealed_rows.extend(batch.ts.tolist())
    done.set()
    t.join()
    last = b.seal_if_due(time.monotonic(), force=True)
    if last is not None:
        sealed_rows.extend(last.ts.tolist())
    assert sorted(sealed_rows) == [1000.0 + i for i in range(5000)]


def test_recorded_time_seals_by_the_readings_own_timestamps_never_by_the_clock() -> None:
    b = Batcher(10, 2.0, N_FEATURES, N_CLASSES, recorded_time=True)
    sealed = []
    for i, ts in enumerate((100.0, 100.5, 101.9, 102.0, 102.1, 110.0)):
        _, feats, scores = row(i)
        done, _ = b.add(ts, feats, scores, "1.0.0")
        if done is not None:
            sealed.append(done.ts.tolist())
    # 102.0 is 2 s of recorded time after 100.0: it starts the next batch.
    assert sealed == [[100.0, 100.5, 101.9], [102.0, 102.1]]
    assert b.deadline() is None  # the link thread has nothing to seal by the clock
    assert b.seal_if_due(float("inf")) is None
    assert b.discard() == 1  # 110.0, open
    assert b.seal_if_due(0.0, force=True) is None
