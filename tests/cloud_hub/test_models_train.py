"""``edgeloop-hub models train`` on generated recordings of a rig with other sensors.

The CSVs are separated by ';' and carry an ISO ``datetime`` column (see
simulators/rig.py). Training runs in-process through the CLI's ``main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline import recorded
from cloud_hub.pipeline.convert import GateError
from cloud_hub.pipeline.train import (
    RARE_CLASS_HEAVY,
    HeavyTrainingConfig,
    choose_urgent_threshold,
    holdout_metrics,
    train_heavy,
)
from cloud_hub.pipeline.trainer import PairSpec, _gate_anomaly, _gate_urgent_recall
from cloud_hub.recordings import CsvOptions
from cloud_hub.store import open_store
from cloud_hub.train_command import DEFAULT_CONSECUTIVE, DEFAULT_RELEASE
from edge_agent.engine import load_edge_model
from edge_agent.reading import ReadingPath
from shared import __version__
from shared.features import features_for_stream
from shared.manifest import MANIFEST_FILE, UrgentSpec, load_package, sha256_file
from shared.urgent import Decision, UrgentRule
from simulators.rig import (
    ALARM_SHIFT,
    SENSORS,
    apply_labels,
    labels_for,
    rig_values,
    write_rig_csv,
)
from tests.cloud_hub.train_cli import run_cli, train_argv

pytestmark = pytest.mark.timeout(90)


_train = train_argv


_run = run_cli


def test_supervised_training_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 4000
    labels = labels_for(n)
    csv = write_rig_csv(tmp_path / "Test Rig.csv", apply_labels(rig_values(n, 1), labels), labels)
    argv = _train(tmp_path, "--data", str(csv), "--label", "state", "--urgent", "alarm")
    lines, _ = _run(
        capsys, [*argv, "--units", "vib_rms=g,temp_in=degC", "--latency-budget-ms", "7.5"]
    )
    result = json.loads(lines[-1])
    assert result["name"] == "test-rig" and result["version"] == "1.0.0"
    assert result["data_files"] == {str(csv): sha256_file(csv)}
    report = "\n".join(lines)
    assert "split by time" in report and "confusion (rows: true" in report
    assert "maximises urgent F1 on the validation rows" in report
    assert "sensor flow_m3h: no unit (give --units NAME=UNIT)" in report
    assert "packages not signed: no signing key at " in report
    edge = load_package(Path(result["edge"])).manifest
    heavy = load_package(Path(result["heavy"])).manifest
    for m in (edge, heavy):
        assert m.input.sensor_names == SENSORS
        assert [s.unit for s in m.input.sensors] == ["g", "", "", "degC"]
        assert m.output.classes == ("ok", "warn", "alarm") and m.output.urgent_class == "alarm"
        assert sha256_file(csv) in m.lineage.data_window
        assert m.metrics["urgent_recall"] >= 0.8 and m.metrics["auc_macro"] >= 0.95
        assert m.metrics["validation_rows"] > 0
        assert (m.urgent.consecutive, m.urgent.release) == (DEFAULT_CONSECUTIVE["classifier"], 10)
        assert m.latency_budget_ms == 7.5
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
    # --force replaces a version on purpose: the packages and the store's record;
    # with a signing key now, signed, and registered with the manifest's own bytes.
    assert main(["keys", "init", "--data-dir", str(tmp_path / "hub")]) == 0
    capsys.readouterr()
    lines, _ = _run(capsys, [*argv, "--version", "1.0.0", "--force"])
    again = json.loads(lines[-1])
    assert any("replacing the existing one: --force" in line for line in lines)
    for variant in ("edge", "heavy"):
        assert f"{again[variant]}: signed by key id " in "\n".join(lines)
        _run(capsys, ["models", "verify", again[variant], "--data-dir", str(tmp_path / "hub")])
    store = open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        record = store.model("test-rig-edge", "1.0.0")
    finally:
        store.close()
    assert record is not None
    assert record.manifest.lineage.pipeline_run == again["run_id"] != result["run_id"]
    assert record.manifest.latency_budget_ms == 20.0  # the default
    assert record.manifest_bytes == (Path(again["edge"]) / MANIFEST_FILE).read_bytes()


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
    # 6000 readings at 1 s from 00:00, normal to 01:30: 5400 inside, 600 left out.
    assert (
        "normal range: [start, 2025-03-01T01:30:00Z) (--normal-from/--normal-to): "
        "5400 of 6000 readings inside, 600 left out"
    ) in report
    assert report.count("  raw threshold ") == 2 and "(score units), published as " in report
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
        "--max-rows",
        "--signing-key",
    ):
        assert option in text


def test_unsupervised_training_refuses_a_model_over_its_false_alarm_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 3000
    values = rig_values(n, 4)
    # The held-out end is unlike the rest: temp_in is five times as noisy.
    values[2400:, 3] += 1.5 * np.random.default_rng(5).standard_normal(n - 2400)
    # A label column the user did not name: the error hints --label.
    csv = write_rig_csv(tmp_path / "rig.csv", values, ["ok"] * n)
    argv = _train(tmp_path, "--data", str(csv), "--min-agreement", "0.9")
    _, err = _run(capsys, argv, status=2)
    assert "false alarms in" in err and "held-out normal readings" in err, err
    assert "x the budget 0.0001" in err and "--normal-from" in err
    assert "--label state" in err
    assert not any(p.name == "1.0.0" for p in (tmp_path / "models").rglob("1.0.0"))
    store = open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        assert store.models() == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("alarms", "readings", "refused"),
    [(1, 1000, False), (2, 100, False), (60, 471, True), (3, 1000, True), (3, 10, True)],
)
def test_false_alarm_gate_is_poisson(alarms: int, readings: int, refused: bool) -> None:
    def gate() -> None:
        _gate_anomaly("m", alarms=alarms, readings=readings, budget=1e-4, recall=0.95)

    if refused:
        with pytest.raises(GateError, match="false alarms") as info:
            gate()
        assert info.value.gate == "false_alarm_rate"
    else:
        gate()


def test_synthetic_fault_gate_refuses_a_blind_model() -> None:
    with pytest.raises(GateError, match=r"finds 2\.8% of the synthetic faults") as info:
        _gate_anomaly("m", alarms=0, readings=4000, budget=1e-4, recall=0.028)
    assert info.value.gate == "synthetic_anomaly_recall" and "--label" in str(info.value)
    _gate_anomaly("m", alarms=0, readings=4000, budget=1e-4, recall=0.6)


def _rare_alarm_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """Four features; class 2 (urgent) is 0.5% of rows, a shift of two features."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, np.int64)
    y[rng.random(n) < 0.2] = 1
    y[rng.random(n) < 0.005] = 2
    x = rng.standard_normal((n, 4)).astype(np.float32)
    x[y == 1, 0] += 1.5
    x[y == 2, 1:3] += np.float32(2.5)
    return x, y


def test_heavy_model_for_recorded_data_learns_a_rare_urgent_class() -> None:
    x, y = _rare_alarm_data(6000, 1)
    xv, yv = _rare_alarm_data(3000, 2)
    recalls = {}
    for name, cfg in (("default", HeavyTrainingConfig()), ("rare", RARE_CLASS_HEAVY)):
        model = train_heavy(x, y, 7, 3, cfg)
        p = model.predict_proba(xv).astype(np.float32)
        t = choose_urgent_threshold(p[:, 2], yv == 2)
        recalls[name] = holdout_metrics(p, yv, 2, t)["urgent_recall"]
    # The default build's settings stop after 6 trees here and find 1 in 10.
    assert recalls["rare"] >= 0.6 and recalls["default"] < 0.3, recalls


def test_a_classifier_that_never_flags_the_urgent_class_is_refused() -> None:
    spec = PairSpec(
        edge_name="rig-edge",
        heavy_name="rig-heavy",
        version="1.0.0",
        sensors=(),
        window=10,
        classes=("normal", "warning", "alarm"),
        urgent_class="alarm",
        normal_class="normal",
        data_window="",
        data_hash="",
    )
    is_urgent = np.zeros(1000, bool)
    is_urgent[:240] = True
    zero = {"urgent_recall": 0.0, "urgent_precision": 0.0, "auc_macro": 0.8}
    with pytest.raises(GateError, match="rig-heavy: urgent recall 0 on the holdout") as info:
        _gate_urgent_recall(spec, "heavy", zero, is_urgent)
    assert "240 'alarm' rows" in str(info.value) and info.value.gate == "urgent_recall"
    _gate_urgent_recall(spec, "heavy", {**zero, "urgent_recall": 0.1}, is_urgent)


def test_sensors_keep_the_file_order_and_nonnegative_ranges_stay_so(tmp_path: Path) -> None:
    values = rig_values(300, 6)
    values[:, 1] -= values[:, 1].min() - 0.5  # a flow down to 0.5: ten spans below is < 0
    csv = write_rig_csv(tmp_path / "rig.csv", values)
    options = CsvOptions(ts_column="datetime", column_map={"flow": "flow_m3h"})
    names, _ = recorded.numeric_sensors(csv, options)
    assert names == ["vib_rms", "flow", "motor_current", "temp_in"]
    streamed = recorded.stream_sample(
        [csv], options, names, window=10, fallback=[0.0] * 4, max_rows=1000
    )
    specs, notes = recorded.infer_sensors(names, streamed, units={}, valid_ranges={})
    assert specs[1].min == 0.0 and all(s.min >= 0 for s in specs), specs
    assert "not below 0 as no value is negative" in notes[1]


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("temp_in=50:45", ["--hard-limit", "'temp_in=50:45'", "LO < HI"]),
        ("temp_in=:", ["--hard-limit", "'temp_in=:'", "SENSOR=:HI"]),
        ("temp_in=hot:", ["--hard-limit", "'temp_in=hot:'", "numbers"]),
        ("temp_in=:inf", ["--hard-limit", "'temp_in=:inf'"]),
        ("temp_in=40", ["--hard-limit", "'temp_in=40'", "SENSOR=LO:HI"]),
        ("=:40", ["--hard-limit", "'=:40'"]),
    ],
)
def test_hard_limit_syntax_errors_name_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, words: list[str]
) -> None:
    argv = _train(tmp_path, "--data", str(tmp_path / "absent.csv"), "--hard-limit", option)
    _, err = _run(capsys, argv, status=2)
    assert "argument --hard-limit" in err.splitlines()[-1], err
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (["pressure=:9"], ["--hard-limit pressure=:9", "no sensor 'pressure'", "temp_in"]),
        (["temp_in=:50", "temp_in=20:"], ["--hard-limit temp_in=20:", "already"]),
        (["temp_in=:500"], ["--hard-limit temp_in=:500", "valid range", "--valid-range"]),
    ],
)
def test_hard_limit_must_fit_the_model_s_sensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limits: list[str], words: list[str]
) -> None:
    csv = write_rig_csv(tmp_path / "rig.csv", rig_values(600, 3))
    argv = _train(tmp_path, "--data", str(csv))
    for limit in limits:
        argv += ["--hard-limit", limit]
    lines, err = _run(capsys, argv, status=2)
    assert lines == [] and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.onnx"))


def _agent_events(package: Path, values: np.ndarray) -> list[tuple[int, Decision]]:  # type: ignore[type-arg]
    """What the agent's reading path decides, reading by reading."""
    path = ReadingPath(load_edge_model(package, __version__))
    return [(t, d) for t, row in enumerate(values) for d in path.step(row)[2]]


def test_trained_defaults_give_one_event_per_episode_and_hard_limits_fire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_rig_csv(tmp_path / "rig.csv", rig_values(5000, 8))
    argv = _train(tmp_path, "--data", str(csv), "--hard-limit", "temp_in=:50")
    lines, _ = _run(capsys, [*argv, "--hard-limit", "flow_m3h=25:"])
    assert "hard limits: flow_m3h < 25, temp_in > 50" in "\n".join(lines)
    edge = Path(json.loads(lines[-1])["edge"])
    m = load_package(edge).manifest
    assert m.urgent.hard_limits == {"temp_in": (None, 50.0), "flow_m3h": (25.0, None)}
    assert (m.urgent.consecutive, m.urgent.release) == (DEFAULT_CONSECUTIVE["anomaly"], 10)
    heavy = load_package(Path(json.loads(lines[-1])["heavy"])).manifest.urgent
    assert (heavy.consecutive, heavy.release, heavy.hard_limits) == (
        m.urgent.consecutive,
        m.urgent.release,
        m.urgent.hard_limits,
    )

    # A hard limit fires in the agent's path on a value beyond it, once per episode,
    # on the raw value, whatever the score.
    values = rig_values(300, 9)
    values[100:104, 3] = 52.0
    values[200, 1] = 20.0
    events = _agent_events(edge, values)
    limits = [(t, d.sensor, d.value) for t, d in events if d.rule == "hard_limit"]
    assert limits == [(100, "temp_in", 52.0), (200, "flow_m3h", 20.0)]

    # Flicker: a fault whose score hovers at the threshold, dipping under it for
    # fewer than `release` readings at a time (the case of 7 events in 5 s): of
    # the fault sizes that give that, the one that crosses the threshold most.
    # The old rule (consecutive 1, release 1) fires at many crossings; the trained
    # defaults fire once, in the agent's path.
    window = m.input.window
    scorer = OnnxScorer.from_package(load_package(edge))
    base = rig_values(240, 10)

    def fault(size: float) -> np.ndarray:  # type: ignore[type-arg]
        out = base.copy()
        out[60:180] += size * ALARM_SHIFT
        return out

    def over(values: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        p = scorer.scores(features_for_stream(values, window, m.input.fallback), batch_size=1)
        return p[:, 1] >= m.urgent.score_threshold

    hovering: list[tuple[int, float]] = []
    for size in np.linspace(0.15, 0.35, 21).tolist():
        high = over(fault(size))[60 : 180 + window]
        on = np.flatnonzero(high)
        if on.size == 0:
            continue
        dips = np.diff(on) - 1  # lows between two highs
        if dips.max(initial=0) < DEFAULT_RELEASE:
            hovering.append((int(np.sum(dips > 0)), size))
    assert hovering, "no fault size hovers at the threshold"
    dips, size = max(hovering)
    values = fault(size)
    assert dips >= 3, hovering
    old = UrgentRule(UrgentSpec(m.urgent.score_threshold, 1, {}, 1), 1, SENSORS)
    assert int(old.check_block(values, over(values).astype(np.float64)).sum()) >= 3
    score_events = [t for t, d in _agent_events(edge, values) if d.rule == "score"]
    assert len(score_events) == 1 and 60 <= score_events[0] < 180 + window, score_events


@pytest.mark.parametrize("option", ["--release", "--consecutive"])
def test_rule_counts_over_the_manifest_limit_are_a_usage_error_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    argv = _train(tmp_path, "--data", str(tmp_path / "absent.csv"), option, "1001")
    _, err = _run(capsys, argv, status=2)
    assert f"argument {option}" in err and "over 1000 readings" in err, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "60001", "fast"])
def test_a_bad_latency_budget_is_a_usage_error_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    argv = _train(tmp_path, "--data", str(tmp_path / "absent.csv"), "--latency-budget-ms", value)
    _, err = _run(capsys, argv, status=2)
    assert "argument --latency-budget-ms" in err, err
