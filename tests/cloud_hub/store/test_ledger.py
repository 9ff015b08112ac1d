"""The ledger's arithmetic against a plain set of settled seqs, without SQL."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.store.ledger import Ledger

pytestmark = pytest.mark.timeout(60)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.integers(0, 60)),
        st.tuples(st.just("close"), st.tuples(st.integers(1, 60), st.integers(0, 8))),
        st.tuples(st.just("issued"), st.integers(0, 70)),
        st.tuples(st.just("expire"), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_ledger_matches_a_set_of_settled_seqs(steps: list[tuple[str, object]]) -> None:
    led = Ledger()
    settled: set[int] = set()
    issued = 0
    for t, (op, arg) in enumerate(steps):
        now = float(t)
        if op == "claim":
            assert isinstance(arg, int)
            want = "duplicate" if arg < 1 or arg in settled else "new"
            assert led.claim(arg, now=now, max_ahead=10**9) == want
            if want == "new":
                settled.add(arg)
        elif op == "close":
            assert isinstance(arg, tuple)
            first, length = arg
            closed = led.close(first, first + length, now=now)
            newly = {s for a, b in closed for s in range(a, b + 1)}
            assert newly == set(range(first, first + length + 1)) - settled
            settled |= newly
        elif op == "issued":
            assert isinstance(arg, int)
            led.note_issued(arg, now=now)
            issued = max(issued, arg)
        else:
            assert isinstance(arg, int)
            for a, b in led.expire(before=float(arg)):
                assert not settled & set(range(a, b + 1))
                settled |= set(range(a, b + 1))
        wm = 0
        while wm + 1 in settled:
            wm += 1
        assert led.wm == wm
        top = max(settled | {issued, 0})
        holes = sorted(set(range(1, top + 1)) - settled)
        assert [s for a, b, _ in led.gaps() for s in range(a, b + 1)] == holes
        assert len(led.ranges) <= len(holes) + 1  # O(gaps), never O(messages)
        again = Ledger.loads(led.wm, led.dumps())
        assert (again.wm, again.ranges, again.issued) == (led.wm, led.ranges, led.issued)


def test_a_gap_remembers_when_it_was_first_seen() -> None:
    led = Ledger()
    led.claim(1, now=1.0, max_ahead=100)
    led.claim(5, now=2.0, max_ahead=100)
    led.claim(9, now=3.0, max_ahead=100)
    assert led.gaps() == [(2, 4, 2.0), (6, 8, 3.0)]
    assert led.expire(before=2.5) == [(2, 4)]
    assert led.wm == 5 and led.gaps() == [(6, 8, 3.0)]
