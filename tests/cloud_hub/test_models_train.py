"""``edgeloop-hub models train`` on generated recordings of a rig with other sensors.

The CSVs are separated by ';' and carry an ISO ``datetime`` column (see
tests/rig_data.py). Training runs in-process through the CLI's ``main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_hub.cli import main
from cloud_hub.inference import OnnxScorer
from cloud_hub.store import open_store
from shared.features import features_for_stream
from shared.manifest import load_package, sha256_file
from tests.rig_data import (
    SENSORS,
    apply_labels,
    labels_for,
    rig_values,
    write_rig_csv,
)

pytestmark = pytest.mark.timeout(90)


def _train(tmp_path: Path, *args: str) -> list[str]:
    return [
        "models",
        "train",
        "--ts-column",
        "datetime",
        "--data-dir",
        str(tmp_path / "hub"),
        "--models-dir",
        str(tmp_path / "models"),
        *args,
    ]


def _run(
    capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 0
) -> tuple[list[str], str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == status, (out, err)
    return out.splitlines(), err


def test_supervised_training_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 4000
    labels = labels_for(n)
    csv = write_rig_csv(tmp_path / "Test Rig.csv", apply_labels(rig_values(n, 1), labels), labels)
    argv = _train(tmp_path, "--data", str(csv), "--label", "state", "--urgent", "alarm")
    lines, _ = _run(capsys, [*argv, "--units", "vib_rms=g,temp_in=degC"])
    result = json.loads(lines[-1])
    assert result["name"] == "test-rig" and result["version"] == "1.0.0"
    assert result["data_files"] == {str(csv): sha256_file(csv)}
    report = "\n".join(lines)
    assert "split by time" in report and "confusion (rows: true" in report
    assert "maximises urgent F1 on the validation rows" in report
    assert "sensor flow_m3h: no unit (give --units NAME=UNIT)" in report
    edge = load_package(Path(result["edge"])).manifest
    heavy = load_package(Path(result["heavy"])).manifest
    for m in (edge, heavy):
        assert m.input.sensor_names == SENSORS
        assert [s.unit for s in m.input.sensors] == ["g", "", "", "degC"]
        assert m.output.classes == ("ok", "warn", "alarm") and m.output.urgent_class == "alarm"
        assert sha256_file(csv) in m.lineage.data_window
        assert m.metrics["urgent_recall"] >= 0.8 and m.metrics["auc_macro"] >= 0.95
        assert m.metrics["validation_rows"] > 0
    assert edge.model.quantization == "int8-dynamic" and edge.metrics["int8_fp32_agreement"] >= 0.99
    store = open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        names = {(r.name, r.version, r.variant) for r in store.models()}
    finally:
        store.close()
    assert names == {("test-rig-edge", "1.0.0", "edge"), ("test-rig-heavy", "1.0.0", "heavy")}
    # Again: an existing version is refused; without --version the next one is taken.
    _, err = _run(capsys, [*argv, "--version", "1.0.0"], status=2)
    assert "already exists" in err and "--force" in err and "1.1.0" in err
    lines, _ = _run(capsys, argv)
    assert json.loads(lines[-1])["version"] == "1.1.0"
    assert any("version 1.1.0: the next free one" in line for line in lines)
    # --force replaces a version on purpose: the packages and the store's record.
    lines, _ = _run(capsys, [*argv, "--version", "1.0.0", "--force"])
    again = json.loads(lines[-1])
    assert any("replacing the existing one: --force" in line for line in lines)
    store = open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        record = store.model("test-rig-edge", "1.0.0")
    finally:
        store.close()
    assert record is not None
    assert record.manifest.lineage.pipeline_run == again["run_id"] != result["run_id"]


def test_unsupervised_training_keeps_the_budget_and_finds_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 6000
    values = rig_values(n, 2)
    # The recording ends in a fault; --normal-to leaves it out of training.
    faulty = values.copy()
    faulty[5400:, 3] += 4.0  # temp_in up by ~4 degC (its noise is 0.3)
    csv = write_rig_csv(tmp_path / "rig.csv", faulty)
    lines, _ = _run(
        capsys,
        _train(tmp_path, "--data", str(csv), "--normal-to", "2025-03-01T01:30:00Z"),
    )
    result = json.loads(lines[-1])
    report = "\n".join(lines)
    assert "false alarm(s) in" in report and "synthetic faults found" in report
    for variant in ("edge", "heavy"):
        m = load_package(Path(result[variant])).manifest
        assert m.output.classes == ("normal", "urgent")
        assert m.metrics["false_alarm_rate"] <= m.metrics["false_alarm_budget"] == 1e-4
        assert m.metrics["synthetic_anomaly_recall"] >= 0.9
        # The recording's own fault, which training never saw.
        scorer = OnnxScorer.from_package(load_package(Path(result[variant])))
        x = features_for_stream(faulty, m.input.window, m.input.fallback)
        urgent = scorer.scores(x, batch_size=1)[:, 1] >= m.urgent.score_threshold
        assert urgent[5410:].mean() >= 0.9, (variant, urgent[5410:].mean())
        assert not urgent[:5400].any() or variant == "heavy"
    edge = load_package(Path(result["edge"])).manifest
    assert edge.model.quantization == "int8-dynamic" and edge.metrics["int8_fp32_agreement"] >= 0.99


def _bad(tmp_path: Path, case: str) -> tuple[list[str], list[str]]:
    """argv for one bad input, and the words its message must hold."""
    n = 600
    values = rig_values(n, 3)
    csv = tmp_path / "bad.csv"
    if case == "missing sensor column":
        write_rig_csv(csv, values)
        return ["--data", str(csv), "--sensors", "vib_rms,pressure"], [
            "bad.csv",
            "pressure",
            "--csv-map",
        ]
    if case == "wrong delimiter":
        write_rig_csv(csv, values)
        return ["--data", str(csv), "--csv-delimiter", ","], [
            "bad.csv",
            "datetime",
            "--csv-delimiter",
        ]
    if case == "non-numeric cell":
        write_rig_csv(csv, values)
        lines = csv.read_text().splitlines()
        cells = lines[49].split(";")
        cells[2] = "n/a?"
        lines[49] = ";".join(cells)
        csv.write_text("\n".join(lines) + "\n")
        return ["--data", str(csv), "--sensors", ",".join(SENSORS)], [
            "bad.csv",
            "line 50",
            "flow_m3h",
        ]
    if case in ("unsorted timestamps", "duplicate timestamps"):
        write_rig_csv(csv, values)
        lines = csv.read_text().splitlines()
        if case == "unsorted timestamps":
            lines[100], lines[101] = lines[101], lines[100]
        else:
            lines[101] = lines[100].split(";")[0] + ";" + lines[101].split(";", 1)[1]
        csv.write_text("\n".join(lines) + "\n")
        return ["--data", str(csv)], ["bad.csv", "line 102", "datetime"]
    if case == "empty file":
        csv.write_text("")
        return ["--data", str(csv)], ["bad.csv", "empty"]
    if case == "header only":
        csv.write_text("datetime;vib_rms;flow_m3h\n")
        return ["--data", str(csv), "--sensors", "vib_rms,flow_m3h"], ["bad.csv", "no data rows"]
    if case == "labels with one class only":
        write_rig_csv(csv, values, ["ok"] * n)
        return ["--data", str(csv), "--label", "state", "--urgent", "alarm"], [
            "bad.csv",
            "'state'",
            "one class only",
            "without --label",
        ]
    if case == "no urgent row in the holdout":
        labels = ["ok"] * n
        labels[100:140] = ["alarm"] * 40
        write_rig_csv(csv, values, labels)
        return ["--data", str(csv), "--label", "state", "--urgent", "alarm"], [
            "bad.csv",
            "validation slice",
            "'alarm'",
            "--holdout-fraction",
        ]
    assert case == "normal range too short"
    write_rig_csv(csv, values)
    return [
        "--data",
        str(csv),
        "--normal-from",
        "2025-03-01T00:01:00Z",
        "--normal-to",
        "2025-03-01T00:03:00Z",
    ], ["bad.csv", "120 readings", "--normal-from/--normal-to"]


@pytest.mark.parametrize(
    "case",
    [
        "missing sensor column",
        "wrong delimiter",
        "non-numeric cell",
        "unsorted timestamps",
        "duplicate timestamps",
        "empty file",
        "header only",
        "labels with one class only",
        "no urgent row in the holdout",
        "normal range too short",
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    argv, words = _bad(tmp_path, case)
    lines, err = _run(capsys, _train(tmp_path, *argv), status=2)
    assert lines == [] and err.startswith("edgeloop-hub: error: "), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (case, word, err)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.onnx"))


def test_train_help_lists_the_registry_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "train", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--data",
        "--label",
        "--urgent",
        "--false-alarm-budget",
        "--data-dir",
        "--models-dir",
        "--store",
        "--normal-from",
        "--csv-map",
    ):
        assert option in text
