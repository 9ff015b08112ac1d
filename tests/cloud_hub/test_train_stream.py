"""``models train`` streams its data: a bounded, time-ordered sample of feature rows.

The sample (:class:`cloud_hub.pipeline.sample.RowSample`) is checked on its own;
the streaming read (:func:`cloud_hub.pipeline.recorded.stream_sample`) against
the features of whole series; and ``models train`` on a file larger than its
``--max-rows``, whose memory must not grow with the file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.pipeline import recorded
from cloud_hub.pipeline.sample import RowSample
from cloud_hub.recordings import CsvOptions
from shared.features import BlockFeatureWindow, features_for_stream
from simulators.rig import SENSORS, apply_labels, labels_for, rig_values, write_rig_csv
from tests.cloud_hub.train_cli import train_argv

pytestmark = pytest.mark.timeout(60)


def _interleaved(rng: np.random.Generator, lengths: list[int]) -> list[tuple[int, int, int]]:
    """Blocks ``(series, start, n)`` of random sizes, the series taking turns at random."""
    pos = [0] * len(lengths)
    out = []
    while any(p < n for p, n in zip(pos, lengths, strict=True)):
        i = int(rng.choice([j for j, n in enumerate(lengths) if pos[j] < n]))
        n = min(int(rng.integers(1, 700)), lengths[i] - pos[i])
        out.append((i, pos[i], n))
        pos[i] += n
    return out


def test_sample_never_exceeds_the_cap_and_keeps_time_order_and_labels() -> None:
    rng = np.random.default_rng(5)
    lengths = [9000, 3100, 17]
    values = [rng.normal(size=(n, 2)) for n in lengths]
    ts = [np.cumsum(rng.uniform(0.5, 2.0, n)) for n in lengths]
    labels = [rng.integers(0, 3, n).astype(np.int32) for n in lengths]
    thinned: list[int] = []
    sample = RowSample(1000, 2, 8, stretch=40, on_thin=thinned.append)
    for i, start, n in _interleaved(rng, lengths):
        rows = slice(start, start + n)
        sample.add(
            i,
            start,
            ts=ts[i][rows],
            values=values[i][rows],
            features=np.repeat(values[i][rows], 4, axis=1).astype(np.float32),
            labels=labels[i][rows],
        )
        assert sample.size <= 1000
    assert sample.offered == sum(lengths)
    assert thinned == [2 ** (j + 1) for j in range(len(thinned))] and sample.k == 16
    for i, n in enumerate(lengths):
        mine = sample.series == i
        index = sample.index[mine]
        # Exactly every k-th reading of the series, in time order, with its own data.
        assert index.tolist() == list(range(0, n, sample.k))
        assert np.array_equal(sample.ts[mine], ts[i][index])
        assert np.all(np.diff(sample.ts[mine]) > 0)
        assert np.array_equal(sample.labels[mine], labels[i][index])
        assert np.array_equal(sample.values[mine], values[i][index])
        assert np.array_equal(sample.features[mine][:, ::4], values[i][index].astype(np.float32))
        # Stretches: consecutive raw readings, one per k * every readings, thinned alike.
        period = sample.k * sample.every
        got = [(s.start, s.values) for s in sample.stretches if s.series == i]
        assert [start for start, _ in got] == list(range(0, n - 40 + 1, period))
        for start, raw in got:
            assert np.array_equal(raw, values[i][start : start + 40])


@pytest.mark.parametrize("chunk_rows", [7, 97, 5000])
def test_features_of_kept_rows_equal_the_whole_series(tmp_path: Path, chunk_rows: int) -> None:
    n = 4000
    values = rig_values(n, 8)
    rng = np.random.default_rng(8)
    values[rng.random(values.shape) < 0.02] = np.nan  # dropouts, carried forward
    values[0, 2] = np.nan  # the first reading misses one: the fallback is used
    values = np.vectorize(lambda v: float(f"{v:.5g}"))(values)  # as written
    device = np.where(np.arange(n) % 3 == 0, "pump-a", "pump-b")
    csv = write_rig_csv(tmp_path / "two.csv", values)
    lines = csv.read_text().splitlines()
    lines[0] += ";dev"
    lines[1:] = [f"{line};{d}" for line, d in zip(lines[1:], device, strict=True)]
    csv.write_text("\n".join(lines) + "\n")
    options = CsvOptions(ts_column="datetime", device_column="dev")
    fallback = [0.3, 50.0, 11.0, 39.0]
    got = recorded.stream_sample(
        [csv],
        options,
        SENSORS,
        window=10,
        fallback=fallback,
        max_rows=1000,
        stretch=40,
        chunk_rows=chunk_rows,
    )
    assert got.rows_read == n and got.rows == [1334, 2666] and got.fallback_used
    # The smallest doubling of k that keeps every series' k-th readings under the cap.
    assert got.sample.k == 8 and got.sample.size == 167 + 334 <= 1000 < 334 + 667
    for i, name in enumerate(("pump-a", "pump-b")):
        whole = values[device == name]
        mine = got.sample.series == i
        index = got.sample.index[mine]
        block = BlockFeatureWindow(10, fallback).push_block(whole)
        assert np.array_equal(got.sample.features[mine], block[index])
        rowwise = features_for_stream(whole, 10, fallback)
        np.testing.assert_allclose(got.sample.features[mine], rowwise[index], rtol=1e-5, atol=1e-5)
        assert np.array_equal(got.sample.values[mine], whole[index], equal_nan=True)
    present = values[np.isfinite(values).all(axis=1)]
    assert got.data_min is not None and got.data_max is not None
    np.testing.assert_array_equal(got.data_min, np.nanmin(values, axis=0))
    np.testing.assert_array_equal(got.data_max, np.nanmax(values, axis=0))
    assert present.size  # the data is mostly there


def _train_argv(tmp_path: Path, csv: Path, *extra: str) -> list[str]:
    return train_argv(tmp_path, "--data", str(csv), "--max-rows", "3000", *extra)


# The child's peak from its own start: a forked child's high-water mark includes
# the parent's pages (this test's), so it is reset first (Linux, 4.0 and later).
_CHILD = """
import re, sys
from pathlib import Path
Path("/proc/self/clear_refs").write_text("5")
from cloud_hub.cli import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
sys.exit(code)
"""


def _peak_rss_of_training(tmp_path: Path, n: int) -> int:
    """Train on ``n`` generated readings in a child; its peak RSS in bytes."""
    csv = write_rig_csv(tmp_path / f"rig-{n}.csv", rig_values(n, 9))
    argv = _train_argv(tmp_path / str(n), csv, "--seed", "3")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    result = json.loads(lines[-2])
    assert result["rows_read"] == n and result["rows_kept"] <= 3000
    assert result["keep_every"] == 2 ** math.ceil(math.log2(n / 3000))
    report = "\n".join(lines)
    assert f"kept for training: {result['rows_kept']} of {n} readings" in report
    assert "over --max-rows 3000" in proc.stderr and "Traceback" not in proc.stderr
    return int(lines[-1]) * 1024


@pytest.mark.timeout(150)
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_a_file_larger_than_the_cap_trains_in_bounded_memory(tmp_path: Path) -> None:
    n = 100_000
    small = _peak_rss_of_training(tmp_path, n)
    large = _peak_rss_of_training(tmp_path, 4 * n)
    # Holding the extra 3 * n readings (4 float64 sensors) and their features
    # (16 float32) would add 3 * n * 96 bytes, 29 MB; streamed, the peak stays.
    grown = large - small
    assert grown < 3 * n * 96 / 3, (small, large)


def test_labelled_training_on_a_thinned_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 10_000
    labels = labels_for(n)
    values = apply_labels(rig_values(n, 4), labels)
    values[0, 1] = np.nan  # a first reading that misses a value: read twice
    csv = write_rig_csv(tmp_path / "rig.csv", values, labels)
    code = main(_train_argv(tmp_path, csv, "--label", "state", "--urgent", "alarm"))
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    assert "read again, with the fallback values" in out
    assert "kept for training: 2500 of 10000 readings, every 4th of each series" in out
    result = json.loads(out.splitlines()[-1])
    assert result["keep_every"] == 4 and result["rows_kept"] == 2500
    assert result["metrics"]["edge"]["urgent_recall"] >= 0.8
    assert result["metrics"]["edge"]["train_rows"] < 2500


def test_a_cap_too_small_to_train_on_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_rig_csv(tmp_path / "rig.csv", rig_values(300, 1))
    assert main(train_argv(tmp_path, "--data", str(csv), "--max-rows", "999")) == 2
    err = capsys.readouterr().err
    assert "--max-rows" in err and "'999' must be at least 1000" in err


def test_a_latency_budget_that_is_not_a_number_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_rig_csv(tmp_path / "rig.csv", rig_values(300, 1))
    for given, says in (("abc", "'abc' is not a number: give"), ("0", "'0' must be")):
        assert main(train_argv(tmp_path, "--data", str(csv), "--latency-budget-ms", given)) == 2
        err = capsys.readouterr().err
        assert f"--latency-budget-ms: {says} a number of milliseconds in (0, 60000]" in err


def test_each_series_is_split_by_its_own_time_and_stretches_by_their_side() -> None:
    sample = RowSample(10_000, 1, 4, stretch=40)
    streamed = recorded.Streamed(sample, sources=["a", "b"], rows=[1000, 400])
    for start in range(0, 1000, 100):  # the series interleaved, 100 readings at a time
        for i, n in enumerate((1000, 400)):
            if start < n:
                v = np.arange(start, start + 100, dtype=np.float64)[:, None]
                sample.add(i, start, ts=v[:, 0], values=v, features=np.zeros((100, 4), np.float32))
    side, cuts = recorded.split_sample(streamed, 10, 0.2, 0.2)
    assert cuts == [(600, 800), (240, 320)]
    for i, (val, hold) in enumerate(cuts):
        index, mine = sample.index[sample.series == i], side[sample.series == i]
        expected = np.select(
            [index >= hold + 9, index >= hold, index >= val + 9, index >= val], [2, -1, 1, -1], 0
        )
        assert np.array_equal(mine, expected)
    b = {s.start: recorded.stretch_side(s, cuts) for s in sample.stretches if s.series == 1}
    assert b == {0: 0, 50: 0, 100: 0, 150: 0, 200: 0, 250: 1, 300: -1, 350: 2}
