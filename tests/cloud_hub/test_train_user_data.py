"""``models train`` on a user's own data: data-derived valid ranges, two-label files,
repeatable sensor options, and what a failed run leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import _parser
from cloud_hub.pipeline import recorded
from cloud_hub.pipeline.train import PipelineError, holdout_metrics, train_edge
from cloud_hub.recordings import CsvOptions
from shared.manifest import load_package
from simulators.rig import SENSORS, apply_labels, labels_for, rig_values, write_rig_csv
from tests.cloud_hub.train_cli import run_cli, train_argv

pytestmark = pytest.mark.timeout(90)


_run = run_cli


def test_a_data_derived_range_leaves_room_for_real_faults_and_is_warned_of(
    tmp_path: Path,
) -> None:
    csv = write_rig_csv(tmp_path / "rig.csv", rig_values(300, 3))
    names = list(SENSORS)
    streamed = recorded.stream_sample(
        [csv], CsvOptions(ts_column="datetime"), names, window=10, fallback=[0.0] * 4, max_rows=1000
    )
    specs, notes = recorded.infer_sensors(
        names, streamed, units={}, valid_ranges={"vib_rms": (0.0, 5.0)}
    )
    assert streamed.data_min is not None and streamed.data_max is not None
    temp = names.index("temp_in")
    dmin, dmax = float(streamed.data_min[temp]), float(streamed.data_max[temp])
    # A fault five spans over the normal maximum is still a valid reading (not "broken").
    assert specs[temp].max >= dmax + 5 * (dmax - dmin), specs[temp]
    warning = notes[-1]
    assert warning.startswith("warning: the valid range of 3 sensor(s) comes from the data")
    assert "never raises an urgent event" in warning
    assert "--valid-range flow_m3h=LO:HI,motor_current=LO:HI,temp_in=LO:HI" in warning
    assert "vib_rms" not in warning and "(given)" in notes[0]


def test_auc_of_two_classes() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0], np.int64)
    p1 = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.75, 0.9, 0.05], np.float32)
    scores = np.column_stack([1 - p1, p1]).astype(np.float32)
    m = holdout_metrics(scores, y, 1, 0.5)
    assert m["auc_macro"] == pytest.approx(14 / 15)
    assert m["urgent_recall"] == 1.0 and m["urgent_precision"] == 0.75


@pytest.mark.timeout(120)
def test_two_label_training_end_to_end_and_a_failed_run_leaves_no_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 4000
    labels = ["ok" if s == "warn" else s for s in labels_for(n)]
    csv = write_rig_csv(tmp_path / "rig.csv", apply_labels(rig_values(n, 4), labels), labels)
    argv = train_argv(tmp_path, "--data", str(csv), "--label", "state", "--urgent", "alarm")
    # An unreachable int8 agreement fails the run after the model folders were made.
    _, err = _run(capsys, [*argv, "--min-agreement", "1.5"], status=2)
    assert "agree" in err, err
    assert not (tmp_path / "models").exists(), list((tmp_path / "models").rglob("*"))
    lines, _ = _run(capsys, argv)
    result = json.loads(lines[-1])
    for variant in ("edge", "heavy"):
        m = load_package(Path(result[variant])).manifest
        assert set(m.output.classes) == {"alarm", "ok"}
        assert m.metrics["auc_macro"] >= 0.9 and m.metrics["urgent_recall"] >= 0.8


def test_units_and_valid_ranges_repeat_and_merge(tmp_path: Path) -> None:
    args = _parser().parse_args(
        train_argv(
            tmp_path,
            "--data",
            "x.csv",
            "--units",
            "vib_rms=g,temp_in=degC",
            "--units",
            "flow_m3h=m3/h",
            "--valid-range",
            "temp_in=-40:200",
            "--valid-range",
            "vib_rms=0:5,flow_m3h=0:100",
        )
    )
    assert args.units == {"vib_rms": "g", "temp_in": "degC", "flow_m3h": "m3/h"}
    assert args.valid_range == {
        "temp_in": (-40.0, 200.0),
        "vib_rms": (0.0, 5.0),
        "flow_m3h": (0.0, 100.0),
    }


@pytest.mark.parametrize(
    "given",
    [
        ["--units", "temp_in=degC", "--units", "temp_in=K"],
        ["--units", "temp_in=degC,temp_in=K"],
        ["--valid-range", "temp_in=0:100", "--valid-range", "temp_in=0:200"],
    ],
)
def test_a_sensor_named_twice_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: list[str]
) -> None:
    _, err = _run(capsys, train_argv(tmp_path, "--data", "x.csv", *given), status=2)
    assert f"argument {given[0]}" in err and "'temp_in' is given twice" in err, err


def test_training_without_a_class_says_how_to_get_one() -> None:
    """The trainer serves the simulator build, ``models train`` and retraining runs: its
    refusal names the classes missing and the remedies of each, not the simulator's."""
    x = np.zeros((20, 4), dtype=np.float32)
    y = np.array([0] * 10 + [1] * 10, dtype=np.int64)
    with pytest.raises(PipelineError, match=r"got counts \[10, 10, 0\]") as refused:
        train_edge(x, y, seed=1, n_classes=3)
    assert "operator labels" in str(refused.value) and "simulate" not in str(refused.value)
