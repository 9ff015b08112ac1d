"""``edgeloop-sim replay``'s inputs: which files, and which device each one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.replay import ReplayFileError, device_for, find_recordings

pytestmark = pytest.mark.timeout(30)


def test_device_names_fit_the_grammar_or_say_why_not(tmp_path: Path) -> None:
    assert device_for(Path("Press 7 (line B).csv")) == "Press-7-line-B"
    assert device_for(Path("rig_01.2026-03.csv")) == "rig_01.2026-03"
    assert len(device_for(Path("x" * 100 + ".csv"))) == 64
    with pytest.raises(ReplayFileError, match=r"\(\)\.csv.*--device-column"):
        device_for(Path("().csv"))


def test_a_device_column_names_the_device_once_per_file(tmp_path: Path) -> None:
    one = tmp_path / "a.csv"
    one.write_text("ts;machine;x\n1;rig-9;2\n2;rig-9;3\n")
    assert device_for(one, "machine") == "rig-9"
    two = tmp_path / "b.csv"
    two.write_text("ts,machine,x\n1,rig-9,2\n2,rig-8,3\n")
    with pytest.raises(ReplayFileError, match=r"b\.csv.*rig-8, rig-9.*one file per device"):
        device_for(two, "machine")
    with pytest.raises(ReplayFileError, match=r"a\.csv.*no column 'site'"):
        device_for(one, "site")
    # A one-line JSON file over the csv module's field limit: named, not a csv.Error.
    big = tmp_path / "c.csv"
    big.write_text('[{"ts": 1, "machine": "' + "x" * 140_000 + '"}]\n')
    with pytest.raises(ReplayFileError, match=r"c\.csv: this looks like JSON"):
        device_for(big, "machine")


def test_folders_give_their_csv_files_and_bad_paths_an_error_each(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    for name in ("b.csv", "a.CSV", "notes.txt"):
        (tmp_path / "rec" / name).write_text("ts\n")
    (tmp_path / "empty").mkdir()
    files, errors = find_recordings([tmp_path / "rec", tmp_path / "empty", tmp_path / "gone.csv"])
    assert [f.name for f in files] == ["a.CSV", "b.csv"]
    assert [e.file for e in errors] == [str(tmp_path / "empty"), str(tmp_path / "gone.csv")]
    assert "no *.csv" in str(errors[0].error) and "does not exist" in str(errors[1].error)
