"""The default-model build: train, convert, quantize, gate, package, CLI.

Builds use a small simulated data set (4 devices x 2000 readings) to stay quick;
the default size is measured by the CLI and the benchmarks, not here.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from cloud_hub.cli import main
from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline import (
    EDGE_NAME,
    HEAVY_NAME,
    INPUT_NAME,
    SCORES_OUTPUT,
    BuildResult,
    DataSettings,
    GateError,
    PipelineError,
    build_default_models,
    retrain_edge_sklearn,
)
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.pipeline.convert import QUANTIZED_OPS, dedupe_opsets
from cloud_hub.pipeline.package import binned_proportions, pick_test_rows
from cloud_hub.pipeline.train import choose_urgent_threshold
from shared.features import DEFAULT_WINDOW
from shared.manifest import load_package
from simulators.sensors import FEATURE_NAMES

REPO = Path(__file__).resolve().parents[2]
SEED = 7
SMALL: dict[str, Any] = {"devices": 4, "readings_per_device": 2000}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build_default_models(tmp_path_factory.mktemp("models"), SEED, **SMALL)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


@pytest.mark.timeout(60)
def test_build_writes_packages_that_load(built: BuildResult) -> None:
    assert not built.reused
    assert built.edge == built.edge.parent.parent / EDGE_NAME / DEFAULT_VERSION
    assert built.heavy.parent.name == HEAVY_NAME
    edge, heavy = load_package(built.edge).manifest, load_package(built.heavy).manifest
    for m, variant in ((edge, "edge"), (heavy, "heavy")):
        assert m.variant == variant and m.version == DEFAULT_VERSION
        assert (m.model.input_name, m.model.scores_output) == (INPUT_NAME, SCORES_OUTPUT)
        assert m.input.features == FEATURE_NAMES and m.input.window == DEFAULT_WINDOW
        assert m.output.classes == ("normal", "fault", "urgent")
        assert m.output.urgent_class == "urgent"
        assert m.urgent.hard_limits == {"temperature": (None, 110.0), "vibration": (None, 15.0)}
        assert 0.05 <= m.urgent.score_threshold <= 0.95 and m.urgent.consecutive >= 1
        assert set(m.reference_features) == set(FEATURE_NAMES)
        assert all(len(h.proportions) >= 2 for h in m.reference_features.values())
        assert len(m.reference_score.proportions) == len(m.reference_score.edges) + 1
        assert m.lineage.parent is None and m.lineage.data_hash == built.dataset_sha256
        assert m.lineage.pipeline_run == built.run_id
        assert m.min_agent_version == "0.1.0"
        # Loose bounds: this is the small data set, one holdout device. Its
        # thresholds come from the other three devices' last readings, so the
        # heavy model's urgent precision on the holdout device is only ~0.59
        # (0.66 when it was chosen on the holdout itself); at the default size
        # both models reach >= 0.99 (README, "Models").
        assert 0.95 <= m.metrics["auc_macro"] <= 1.0, (variant, m.metrics)
        for key in ("f1_macro", "urgent_recall"):
            assert 0.6 <= m.metrics[key] <= 1.0, (variant, key, m.metrics[key])
        assert 0.5 <= m.metrics["urgent_precision"] <= 1.0, (variant, m.metrics)
        assert m.metrics == built.metrics[variant]
    assert edge.model.quantization == "int8-dynamic" and heavy.model.quantization == "fp32"
    assert edge.metrics["int8_fp32_agreement"] >= 0.99
    # Nothing but the two versions is left behind: no staging directories.
    for name in (EDGE_NAME, HEAVY_NAME):
        assert [p.name for p in (built.edge.parent.parent / name).iterdir()] == [DEFAULT_VERSION]


@pytest.mark.timeout(60)
def test_edge_graph_is_int8_and_heavy_graph_is_fp32(built: BuildResult) -> None:
    edge_ops, heavy_ops = _ops(built.edge / "model.onnx"), _ops(built.heavy / "model.onnx")
    assert "MatMulInteger" in edge_ops or edge_ops & {"QLinearMatMul", "DynamicQuantizeLinear"}
    assert "MatMul" not in edge_ops, "every MatMul of the edge model should be quantized"
    assert not heavy_ops & QUANTIZED_OPS
    edge = onnx.load(built.edge / "model.onnx")
    domains = [o.domain for o in edge.opset_import]
    assert len(domains) == len(set(domains)), "opset_import must list each domain once"
    assert [o.name for o in edge.graph.output] == [SCORES_OUTPUT]
    assert [i.name for i in edge.graph.input] == [INPUT_NAME]


@pytest.mark.timeout(60)
def test_test_vectors_reproduce_with_onnx_scorer(built: BuildResult) -> None:
    for path in (built.edge, built.heavy):
        pkg = load_package(path)
        tv = pkg.manifest.test_vectors
        assert len(tv.inputs) == 8 and tv.atol == pytest.approx(1e-4)
        scorer = OnnxScorer.from_package(pkg)
        got = scorer.scores(np.array(tv.inputs, dtype=np.float32), batch_size=1)
        np.testing.assert_allclose(got, np.array(tv.expected_scores), atol=tv.atol, rtol=0)
        # The vectors cover every class.
        assert set(np.argmax(tv.expected_scores, axis=1).tolist()) == {0, 1, 2}


@pytest.mark.timeout(120)
def test_onnx_edge_model_agrees_with_sklearn(built: BuildResult) -> None:
    out_dir = built.edge.parent.parent
    sk = retrain_edge_sklearn(out_dir, SEED, **SMALL)
    _, _, _, holdout = DataSettings(SEED, **SMALL).load()
    onnx_scores = OnnxScorer.from_package(load_package(built.edge)).scores(holdout.X, batch_size=1)
    agree = float(np.mean(onnx_scores.argmax(1) == sk.predict_proba(holdout.X).argmax(1)))
    assert agree >= 0.99, agree
    # And the retrained pipeline really is the one that was packaged.
    with pytest.raises(PipelineError, match="was trained on data"):
        retrain_edge_sklearn(out_dir, SEED + 1, **SMALL)


@pytest.mark.timeout(120)
def test_gate_fails_when_set_impossibly_high(tmp_path: Path) -> None:
    with pytest.raises(GateError) as info:
        build_default_models(tmp_path, SEED, min_agreement=1.01, **SMALL)
    err = info.value
    assert err.gate == "int8_fp32_agreement" and err.threshold == 1.01
    assert 0.99 <= err.measured <= 1.0
    assert f"{err.measured:.4f}" in str(err) and "1.01" in str(err)
    # A failed build publishes nothing and leaves no staging directory behind.
    for name in (EDGE_NAME, HEAVY_NAME):
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())


@pytest.mark.timeout(120)
def test_build_is_idempotent_and_deterministic(built: BuildResult, tmp_path: Path) -> None:
    out_dir = built.edge.parent.parent
    again = build_default_models(out_dir, SEED, **SMALL)
    assert again.reused and again.run_id == built.run_id and again.metrics == built.metrics

    # Same seed in a fresh directory: same data, same metrics, same model bytes.
    fresh = build_default_models(tmp_path, SEED, **SMALL)
    assert not fresh.reused and fresh.run_id != built.run_id
    assert fresh.dataset_sha256 == built.dataset_sha256
    assert fresh.metrics == built.metrics
    for a, b in ((fresh.edge, built.edge), (fresh.heavy, built.heavy)):
        assert load_package(a).manifest.model.sha256 == load_package(b).manifest.model.sha256

    # A damaged package is not "valid": the next build replaces it.
    model = fresh.edge / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")
    repaired = build_default_models(tmp_path, SEED, **SMALL)
    assert not repaired.reused and repaired.metrics == built.metrics
    load_package(repaired.edge)

    # force=True rebuilds even a valid package.
    assert not build_default_models(tmp_path, SEED, force=True, **SMALL).reused


@pytest.mark.timeout(60)
def test_a_version_built_from_other_data_is_not_overwritten(
    built: BuildResult, tmp_path: Path
) -> None:
    with pytest.raises(PipelineError, match="versions are immutable"):
        build_default_models(built.edge.parent.parent, SEED + 1, **SMALL)
    # Not even when its sibling package is missing.
    shutil.copytree(built.edge, tmp_path / EDGE_NAME / DEFAULT_VERSION)
    with pytest.raises(PipelineError, match="versions are immutable"):
        build_default_models(tmp_path, SEED + 1, **SMALL)
    assert not (tmp_path / HEAVY_NAME).exists()


@pytest.mark.timeout(30)
def test_thresholds_are_chosen_on_rows_the_metrics_never_see(built: BuildResult) -> None:
    data, train, validation, holdout = DataSettings(SEED, **SMALL).load()
    # Holdout: whole devices. Validation: the last 10 % of each other device's
    # rows, after a gap of window - 1 rows, so no window spans two parts.
    assert not set(holdout.device.tolist()) & set(train.device.tolist())
    assert set(validation.device.tolist()) == set(train.device.tolist())
    for d in set(train.device.tolist()):
        last_train = train.sim_time[train.device == d].max()
        first_val = validation.sim_time[validation.device == d].min()
        own = data.sim_time[data.device == d]
        assert np.count_nonzero((own > last_train) & (own < first_val)) == DEFAULT_WINDOW - 1
    assert all(n > 0 for n in validation.class_counts().values())
    for variant in ("edge", "heavy"):
        m = built.metrics[variant]
        assert (m["train_rows"], m["validation_rows"], m["holdout_rows"]) == (
            len(train),
            len(validation),
            len(holdout),
        )
    edge = load_package(built.edge).manifest
    assert "validation_fraction=0.1" in edge.lineage.data_window


@pytest.mark.timeout(30)
def test_a_holdout_missing_a_class_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="every class is needed"):
        build_default_models(tmp_path, SEED, devices=2, readings_per_device=200)


def test_urgent_threshold_prefers_the_middle_of_a_plateau() -> None:
    scores = np.array([0.01, 0.02, 0.03, 0.97, 0.98, 0.99])
    is_urgent = scores > 0.5
    assert choose_urgent_threshold(scores, is_urgent) == pytest.approx(0.5)
    # Overlapping classes: F1 is best (8/9) for thresholds in (0.3, 0.35];
    # of those, 0.35 is nearest 0.5.
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.35, 0.7, 0.8, 0.9])
    is_urgent = np.array([False, False, False, False, True, True, True, True])
    assert choose_urgent_threshold(scores, is_urgent) == pytest.approx(0.35)


def test_bins_put_values_on_an_edge_in_the_upper_bin() -> None:
    props = binned_proportions(np.array([0.0, 1.0, 1.5, 2.0, 3.0]), (1.0, 2.0))
    assert props == (0.2, 0.4, 0.4)


def test_test_rows_cover_every_class() -> None:
    y = np.array([0] * 50 + [1] * 3 + [2] * 1, dtype=np.int64)
    rows = pick_test_rows(y, 3, n=8, seed=0)
    assert len(rows) == 7 and set(y[rows].tolist()) == {0, 1, 2}  # class 2 has one row only
    rows = pick_test_rows(np.repeat(np.arange(3), 10).astype(np.int64), 3, n=8, seed=0)
    assert np.bincount(np.repeat(np.arange(3), 10)[rows]).tolist() == [3, 3, 2]


def test_dedupe_opsets_keeps_one_entry_per_domain() -> None:
    model = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], []),
        opset_imports=[
            onnx.helper.make_opsetid("", 17),
            onnx.helper.make_opsetid("ai.onnx.ml", 1),
            onnx.helper.make_opsetid("", 17),
        ],
    )
    dedupe_opsets(model)
    assert sorted((o.domain, o.version) for o in model.opset_import) == [
        ("", 17),
        ("ai.onnx.ml", 1),
    ]


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(120)
def test_cli_models_build_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "models"
    data = tmp_path / "hub"
    small = ["--devices", "4", "--readings-per-device", "2000", "--data-dir", str(data)]
    proc = _cli("models", "build", "--out", str(out), "--seed", str(SEED), *small)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4, proc.stdout
    assert lines[2].startswith("packages not signed: no signing key at ")
    del lines[2]
    assert lines[0].startswith(
        f"{EDGE_NAME} {DEFAULT_VERSION} {out / EDGE_NAME / DEFAULT_VERSION} int8-dynamic"
    )
    assert "int8_fp32_agreement=" in lines[0] and "auc_macro=" in lines[0]
    assert lines[1].startswith(f"{HEAVY_NAME} {DEFAULT_VERSION} ") and " fp32 " in lines[1]
    figures = json.loads(lines[2])
    assert figures["reused"] is False and figures["edge"] == str(out / EDGE_NAME / DEFAULT_VERSION)
    assert figures["metrics"]["edge"]["int8_fp32_agreement"] >= 0.99
    load_package(Path(figures["edge"]))
    load_package(Path(figures["heavy"]))

    # With a key, a build signs its packages (here the reused ones), and they verify.
    assert _cli("keys", "init", "--data-dir", str(data)).returncode == 0
    again = _cli("models", "build", "--out", str(out), "--seed", str(SEED), *small)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["reused"]
    for variant in ("edge", "heavy"):
        assert f"{figures[variant]}: signed by key id " in again.stdout
        check = _cli("models", "verify", figures[variant], "--data-dir", str(data))
        assert check.returncode == 0, check.stderr


@pytest.mark.timeout(120)
def test_cli_gate_failure_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["models", "build", "--out", str(tmp_path), "--min-agreement", "1.01"]
    assert main([*argv, "--devices", "4", "--readings-per-device", "2000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeloop-hub: error: ")
    assert "agreement gate failed" in err[0] and "Traceback" not in err[0]


@pytest.mark.timeout(30)
def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "models" in capsys.readouterr().err
    assert main(["models"]) == 2
    assert "build" in capsys.readouterr().err
    assert main(["models", "build", "--min-agreement", "2"]) == 2
    err = capsys.readouterr().err
    assert "--min-agreement: '2' must be between 0 and 1.01" in err and "Traceback" not in err


@pytest.mark.timeout(30)
def test_cli_help_is_fast_and_loads_nothing_heavy() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from cloud_hub.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['models', 'build', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('sklearn', 'skl2onnx', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=True,
    )
    assert proc.stdout.strip() == "[]"
    help_text = _cli("models", "build", "--help", timeout=25).stdout
    for option in ("--out", "--seed", "--force", "--min-agreement", "--signing-key"):
        assert option in help_text


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "module",
    [
        "cloud_hub.inference",
        "cloud_hub.pipeline.train",
        "cloud_hub.pipeline.convert",
        "cloud_hub.pipeline.package",
        "cloud_hub.pipeline.build",
        "cloud_hub.pipeline.anomaly",
        "cloud_hub.pipeline.recorded",
        "cloud_hub.pipeline.sample",
        "cloud_hub.cli",
    ],
)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests of {module} failed"
