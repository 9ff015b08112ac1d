"""The lenient reader's numeric blocks (pyarrow's CSV reader where installed, else
numpy's parser) give what the row-by-row parser gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub import recordings
from cloud_hub.recordings import Chunk, CsvOptions, Recording


@pytest.fixture(autouse=True, params=["pyarrow", "numpy"])
def block_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with pyarrow's reader (skipped where it is not installed) and without."""
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow")
    else:
        monkeypatch.setattr(recordings, "_arrow_csv", lambda: None)
    return str(request.param)


def _read(path: Path, strict: bool, rows: int) -> list[Chunk]:
    rec = Recording.open(path, CsvOptions(device_column="dev", delimiter="auto"), ["a", "b"])
    return list(rec.chunks(rows, strict=strict))


def test_numeric_blocks_equal_row_by_row_parsing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    lines = ["ts;dev;b;a;note"]
    for i in range(1000):
        a, b = rng.normal(size=2).tolist()
        lines.append(f"{1_763_719_200_000 + 500 * i};{'xy'[i % 2]} ;{b!r};{a:.3e};n{i}")
    path = tmp_path / "clean.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    strict, lenient = _read(path, True, 300), _read(path, False, 300)
    assert [c.first_line for c in lenient] == [c.first_line for c in strict] == [2, 302, 602, 902]
    for s, f in zip(strict, lenient, strict=True):
        np.testing.assert_array_equal(f.ts, s.ts)
        np.testing.assert_array_equal(f.values, s.values)
        assert f.devices == s.devices and f.bad_cells == 0


def test_blocks_that_do_not_parse_whole_fall_back_row_by_row(tmp_path: Path) -> None:
    body = ["ts,dev,a,b"]
    body += [f"{100 + i},d,{i},{2 * i}" for i in range(10)]
    body[3] = "102,d,oops,4"  # a bad cell
    body[6] = "105,d,,10"  # a dropout
    body[8] = ""  # a blank line
    body[9] = '108,"d",8,16'  # a quote: the rest row by row
    path = tmp_path / "rough.csv"
    path.write_text("\n".join(body) + "\n")
    chunks = _read(path, False, 4)
    values = np.concatenate([c.values for c in chunks])
    ts = np.concatenate([c.ts for c in chunks])
    assert ts.tolist() == [100, 101, 102, 103, 104, 105, 106, 108, 109]
    assert np.isnan(values[2, 0]) and np.isnan(values[5, 0])
    assert values[8].tolist() == [9.0, 18.0]
    assert sum(c.bad_cells for c in chunks) == 1
    assert [d for c in chunks for d in c.devices or []] == ["d"] * 9
    assert chunks[0].first_line == 2 and chunks[1].first_line == 6
