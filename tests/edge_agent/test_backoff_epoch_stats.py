"""Reconnect backoff, the epoch counter on disk, and the heartbeat's figures."""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.backoff import Backoff
from edge_agent.epoch import next_epoch
from edge_agent.stats import Counters, LatencyWindow

pytestmark = pytest.mark.timeout(30)


class _Extreme(random.Random):
    """Always draws the top (or bottom) of the range: shows the ceiling itself."""

    def __init__(self, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    b = Backoff(1, 60, _Extreme(top=True))
    assert [b.next() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert b.attempt == 9


def test_backoff_floor_is_min() -> None:
    b = Backoff(3, 100, _Extreme(top=False))
    assert {b.next() for _ in range(10)} == {3}


def test_backoff_reset() -> None:
    b = Backoff(2, 60, _Extreme(top=True))
    for _ in range(5):
        b.next()
    b.reset()
    assert b.attempt == 0
    assert b.next() == 2


def test_backoff_survives_very_many_failures() -> None:
    b = Backoff(1, 60, random.Random(1))
    for _ in range(10_000):
        assert 1 <= b.next() <= 60


def test_backoff_jitter_spreads_a_fleet() -> None:
    delays = set()
    for seed in range(50):
        b = Backoff(1, 60, random.Random(seed))
        for _ in range(6):
            d = b.next()
        delays.add(d)
    assert len(delays) > 10  # not every device at the same second


@given(
    min_s=st.integers(1, 30),
    extra=st.integers(0, 300),
    seed=st.integers(0, 2**32 - 1),
    attempts=st.integers(1, 40),
)
def test_backoff_jitter_within_bounds(min_s: int, extra: int, seed: int, attempts: int) -> None:
    max_s = min_s + extra
    b = Backoff(min_s, max_s, random.Random(seed))
    for n in range(attempts):
        d = b.next()
        assert isinstance(d, int)
        assert min_s <= d <= min(max_s, min_s * 2**n)


# -- epoch --------------------------------------------------------------------------------------


def test_epoch_starts_at_one_and_counts_up(tmp_path: Path) -> None:
    state = tmp_path / "var" / "agent"  # created on first use
    assert next_epoch(state) == 1
    assert next_epoch(state) == 2
    assert next_epoch(state) == 3
    assert (state / "epoch").read_text(encoding="ascii") == "3\n"
    assert sorted(p.name for p in state.iterdir()) == ["epoch"]  # no temp file left


@pytest.mark.parametrize(
    "content", [b"garbage\n", b"", b"-4\n", b"\xff\xfe\x00", b"12.5\n"], ids=repr
)
def test_corrupt_epoch_file_jumps_to_unix_time(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "epoch").write_bytes(content)
    before = int(time.time())
    with caplog.at_level(logging.WARNING, logger="edge_agent.epoch"):
        epoch = next_epoch(tmp_path)
    assert before + 1 <= epoch <= int(time.time()) + 1
    assert "corrupt" in caplog.text
    assert str(tmp_path / "epoch") in caplog.text
    assert (tmp_path / "epoch").read_text(encoding="ascii") == f"{epoch}\n"
    assert next_epoch(tmp_path) == epoch + 1  # and counts on from there


def test_epoch_file_is_read_back_across_restarts(tmp_path: Path) -> None:
    (tmp_path / "epoch").write_text("  41 \n", encoding="ascii")
    assert next_epoch(tmp_path) == 42


# -- stats --------------------------------------------------------------------------------------


def test_latency_percentiles() -> None:
    w = LatencyWindow(size=1000)
    assert w.percentiles() == (0.0, 0.0)
    for v in range(1, 101):
        w.add(float(v))
    p50, p99 = w.percentiles()
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))


def test_latency_window_is_a_bounded_ring() -> None:
    w = LatencyWindow(size=10)
    for v in range(1000):
        w.add(float(v))
    p50, p99 = w.percentiles()
    assert p50 == pytest.approx(994.5)  # only the last 10 values count
    assert 998 <= p99 <= 999
    assert w._ring.shape == (10,)  # no growth


def test_counters() -> None:
    c = Counters()
    assert c.snapshot() == {}
    c.add("dropped:inbox_full")
    c.add("dropped:inbox_full", 4)
    c.add("invalid:not_json")
    snap = c.snapshot()
    assert snap == {"dropped:inbox_full": 5, "invalid:not_json": 1}
    snap["dropped:inbox_full"] = 0
    assert c.snapshot()["dropped:inbox_full"] == 5  # a snapshot is a copy


def test_counters_from_many_threads() -> None:
    c = Counters()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(2000):
            c.add("n")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.snapshot() == {"n": 16_000}
