"""Reconnect backoff: exponential, capped, jittered (used by the agent's and the hub's links)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.backoff import Backoff

pytestmark = pytest.mark.timeout(30)


class _Extreme(random.Random):
    """Always draws the top (or bottom) of the range: shows the ceiling itself."""

    def __init__(self, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


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
