"""The reader of recorded CSV files: columns, chunks, and every bad input named."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.recordings import (
    CsvOptions,
    Recording,
    RecordingError,
    find_recordings,
    read_recording,
)

pytestmark = pytest.mark.timeout(30)

RIG = "datetime;vib_rms_g;flow;current;label\n"


def write(tmp_path: Path, text: str, name: str = "rig.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rig_rows(n: int, start: int = 0) -> str:
    return "".join(
        f"2026-01-01T00:{(start + i) // 60:02d}:{(start + i) % 60:02d}Z;{0.1 + i * 0.001:.4f};"
        f"{50 + i % 3};{12.5};{'ok' if i % 7 else 'bad'}\n"
        for i in range(n)
    )


OPTS = CsvOptions(ts_column="datetime", label_column="label")


def test_reads_a_semicolon_file_by_header_with_a_map(tmp_path: Path) -> None:
    path = write(tmp_path, RIG + rig_rows(5))
    rec, chunk = read_recording(
        path,
        CsvOptions(ts_column="datetime", column_map={"vibration": "vib_rms_g"}),
        ["flow", "vibration"],
    )
    assert rec.delimiter == ";" and rec.sensors == ("flow", "vibration")
    assert rec.unused == ["current", "label"]
    assert chunk.values.shape == (5, 2)
    assert chunk.values[1].tolist() == [51.0, 0.101]
    assert chunk.ts[1] - chunk.ts[0] == 1.0 and chunk.first_line == 2


def test_default_sensors_are_every_other_column(tmp_path: Path) -> None:
    rec, chunk = read_recording(write(tmp_path, RIG + rig_rows(3)), OPTS)
    assert rec.sensors == ("vib_rms_g", "flow", "current")
    assert chunk.labels == ["bad", "ok", "ok"]


def test_epoch_milliseconds_and_empty_cells(tmp_path: Path) -> None:
    text = "ts,a,b\n1763719200000,1,\n1763719200250,,2\n"
    _, chunk = read_recording(write(tmp_path, text), CsvOptions())
    assert chunk.ts.tolist() == [1763719200.0, 1763719200.25]
    assert math.isnan(chunk.values[0, 1]) and math.isnan(chunk.values[1, 0])


def test_chunks_stream_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, RIG + rig_rows(250))
    chunks = list(Recording.open(path, OPTS).chunks(rows=100))
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert [c.first_line for c in chunks] == [2, 102, 202]
    assert np.all(np.diff(np.concatenate([c.ts for c in chunks])) == 1.0)


@pytest.mark.parametrize(
    ("text", "sensors", "options", "expect"),
    [
        ("", None, OPTS, ["is empty", "header row"]),
        (RIG, None, OPTS, ["no data rows"]),
        (RIG + rig_rows(2), ["vibration"], OPTS, ["lacks the sensor(s) vibration", "--csv-map"]),
        (
            RIG.replace(";", ",") + rig_rows(1).replace(";", ","),
            None,
            CsvOptions(ts_column="datetime", delimiter=";"),
            ["no timestamp column", "one field", "--csv-delimiter"],
        ),
        (
            RIG + rig_rows(2) + "2026-01-02T00:00:00Z;abc;1;1;ok\n",
            None,
            OPTS,
            ["line 4", "'vib_rms_g'", "'abc' is not a number"],
        ),
        (
            RIG + rig_rows(3) + rig_rows(1, start=1),
            None,
            OPTS,
            ["line 5", "is before", "Sort the file"],
        ),
        (RIG + rig_rows(2) + rig_rows(1, start=1), None, OPTS, ["line 4", "repeats"]),
        (RIG + "yesterday;1;2;3;ok\n", None, OPTS, ["line 2", "'datetime'", "neither ISO 8601"]),
        (RIG + "2026-01-01T00:00:00Z;1\n", None, OPTS, ["line 2", "has 2 fields"]),
        (
            RIG + rig_rows(1),
            None,
            CsvOptions(ts_column="datetime", label_column="class"),
            ["no label column 'class'", "--label"],
        ),
    ],
    ids=[
        "empty",
        "header-only",
        "missing-sensor",
        "wrong-delimiter",
        "non-numeric",
        "unsorted",
        "duplicate-ts",
        "bad-ts",
        "short-row",
        "no-label",
    ],
)
def test_bad_input_names_file_line_column_and_what_to_do(
    tmp_path: Path, text: str, sensors: list[str] | None, options: CsvOptions, expect: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecordingError) as info:
        read_recording(path, options, sensors)
    message = str(info.value)
    assert str(path) in message
    for part in expect:
        assert part in message, message


def test_lenient_mode_counts_bad_cells_and_keeps_every_row(tmp_path: Path) -> None:
    text = RIG + rig_rows(2) + "nonsense;abc;1;1;ok\n" + rig_rows(1)
    (chunk,) = Recording.open(write(tmp_path, text), OPTS).chunks(strict=False)
    assert len(chunk) == 4 and chunk.bad_cells == 1
    assert math.isnan(chunk.ts[2]) and math.isnan(chunk.values[2, 0])


def test_order_is_per_device(tmp_path: Path) -> None:
    text = "ts,device,a\n1,x,1\n1,y,1\n2,x,1\n2,y,1\n"
    _, chunk = read_recording(write(tmp_path, text), CsvOptions(device_column="device"))
    assert chunk.devices == ["x", "y", "x", "y"]


def test_find_recordings(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write(tmp_path / "d", "ts,a\n1,1\n", "b.csv")
    write(tmp_path / "d" / "sub", "ts,a\n1,1\n", "a.tsv")
    write(tmp_path / "d", "notes", "readme.txt")
    got = find_recordings([tmp_path / "d"])
    assert [p.name for p in got] == ["b.csv", "a.tsv"] or [p.name for p in got] == [
        "a.tsv",
        "b.csv",
    ]
    with pytest.raises(RecordingError, match="does not exist"):
        find_recordings([tmp_path / "nope.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="holds no"):
        find_recordings([tmp_path / "empty"])


@pytest.mark.timeout(120)
def test_a_large_file_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("ts,a,b\n")
        for block in range(20):
            fh.write("".join(f"{block * 10_000 + i},{i % 97},{i % 13}\n" for i in range(10_000)))
    sizes = [len(c) for c in Recording.open(path, CsvOptions()).chunks(rows=8192)]
    assert sum(sizes) == 200_000 and max(sizes) == 8192


NOT_CSV = {
    "json": (b'{"datetime": "2026-01-01T00:00:00Z", "flow": "' + b"1" * 140_000 + b'"}\n', "JSON"),
    "jsonl": (b'{"datetime": "2026-01-01T00:00:00Z", "flow": 1}\n' * 3, "JSON"),
    "xlsx": (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe[Content_Types].xml", "PK"),
    "pipe": (b"datetime|flow|label\n2026-01-01T00:00:00Z|1|ok\n", "separated by '|'"),
    "utf16": ("datetime,flow\n".encode("utf-16"), "not a text CSV"),
}


@pytest.mark.parametrize("kind", NOT_CSV)
def test_a_file_that_is_not_csv_is_named_by_every_reader(tmp_path: Path, kind: str) -> None:
    from edge_agent.sources.csv_replay import CsvReplaySource  # noqa: PLC0415
    from shared.errors import ConfigError  # noqa: PLC0415

    data, expect = NOT_CSV[kind]
    path = tmp_path / f"rig.{kind}"
    path.write_bytes(data)
    with pytest.raises(RecordingError) as hub:
        read_recording(path, OPTS, ["flow"])
    with pytest.raises(ConfigError) as agent:
        CsvReplaySource(path, ["flow"], ts_column="datetime")
    for message in (str(hub.value), str(agent.value)):
        assert expect in message and str(path) in message, message
        assert "\x03" not in message and "\x00" not in message and "\ufffd" not in message
        assert len(message) < 400, message
