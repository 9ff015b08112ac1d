"""The latency window behind the agent's heartbeat and the hub's ingest figures."""

from __future__ import annotations

import subprocess
import sys

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


@pytest.mark.parametrize("seed", range(20))
def test_latency_percentiles_are_numpys_linear_percentiles(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 3000))
    w = LatencyWindow(size=size)
    values = rng.lognormal(3.0, 1.0, int(rng.integers(1, 3000)))
    if seed % 2:
        values = np.round(values)  # ties
    for v in values:
        w.add(float(v))
    kept = values[-size:]  # the ring holds the newest `size`, in some order
    expected = tuple(float(p) for p in np.percentile(kept, [50, 99]))
    assert w.percentiles() == expected


def test_latency_percentiles_do_not_load_numpy_ma() -> None:
    # np.percentile imports numpy.ma at its first call: 2 MB of an agent's memory.
    code = (
        "import sys\n"
        "from shared.latency import LatencyWindow\n"
        "w = LatencyWindow(16)\n"
        "for v in range(40): w.add(float(v))\n"
        "w.percentiles()\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
