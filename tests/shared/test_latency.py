"""The latency window behind the agent's heartbeat and the hub's ingest figures."""

from __future__ import annotations

import numpy as np
import pytest

from shared.latency import LatencyWindow

pytestmark = pytest.mark.timeout(30)


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
