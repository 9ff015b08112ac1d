"""The hub's ONNX inference engine, on small real models (no mocks of onnxruntime)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.convert import (
    INPUT_NAME,
    SCORES_OUTPUT,
    quantize_int8,
    sklearn_to_onnx,
)
from shared.errors import ManifestError
from shared.features import features_for_stream
from simulators.sensors import FEATURE_NAMES, SENSORS

pytestmark = pytest.mark.timeout(60)

N_FEATURES = len(FEATURE_NAMES)


def _data(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of a random walk around the nominal sensor values, labelled by two of them."""
    rng = np.random.default_rng(seed)
    nominal = np.array([s.fallback for s in SENSORS])
    values = nominal + np.cumsum(rng.normal(size=(n, len(SENSORS))), axis=0) * nominal * 0.01
    x = features_for_stream(values, 10, [s.fallback for s in SENSORS])
    y = (x[:, 0] > np.median(x[:, 0])).astype(np.int64) + (x[:, 1] > np.quantile(x[:, 1], 0.8))
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    x, y = _data()
    with warnings.catch_warnings():
        # Tiny models on toy data: whether they converge does not matter here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = Pipeline(
            [("s", StandardScaler()), ("m", MLPClassifier((16,), max_iter=100, random_state=0))]
        ).fit(x, y)
        lr = Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=100))]).fit(x, y)
    out = tmp_path_factory.mktemp("onnx")
    fp32 = sklearn_to_onnx(mlp, N_FEATURES, "tiny-mlp")
    paths = {
        "fp32": out / "fp32.onnx",
        "int8": out / "int8.onnx",
        "logreg": out / "logreg.onnx",
    }
    onnx.save(fp32, paths["fp32"])
    onnx.save(quantize_int8(fp32), paths["int8"])
    onnx.save(sklearn_to_onnx(lr, N_FEATURES, "tiny-logreg"), paths["logreg"])
    return paths


def test_scores_are_probabilities_of_every_row(models: dict[str, Path]) -> None:
    x, _ = _data(300, seed=1)
    for path in models.values():
        scorer = OnnxScorer(path, INPUT_NAME, SCORES_OUTPUT)
        assert (scorer.n_features, scorer.n_classes) == (N_FEATURES, 3)
        s = scorer.scores(x)
        assert s.shape == (300, 3) and s.dtype == np.float32
        np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-5)


def test_fp32_batched_equals_row_by_row(models: dict[str, Path]) -> None:
    x, _ = _data(200, seed=2)
    scorer = OnnxScorer(models["fp32"], INPUT_NAME, SCORES_OUTPUT)
    whole = scorer.scores(x)
    np.testing.assert_allclose(scorer.scores(x, batch_size=1), whole, atol=1e-6)
    np.testing.assert_allclose(scorer.scores(x, batch_size=64), whole, atol=1e-6)


def test_int8_row_by_row_is_deterministic_per_row(models: dict[str, Path]) -> None:
    # A dynamically quantized model scales activations per batch: a row alone
    # always scores the same, whatever else is in the matrix.
    x, _ = _data(100, seed=3)
    scorer = OnnxScorer(models["int8"], INPUT_NAME, SCORES_OUTPUT)
    a = scorer.scores(x, batch_size=1)
    b = scorer.scores(x[::-1], batch_size=1)[::-1]
    np.testing.assert_array_equal(a, b)


def test_empty_batch(models: dict[str, Path]) -> None:
    scorer = OnnxScorer(models["fp32"], INPUT_NAME, SCORES_OUTPUT)
    assert scorer.scores(np.empty((0, N_FEATURES), dtype=np.float32)).shape == (0, 3)


def test_session_options_sleep_instead_of_spinning(models: dict[str, Path]) -> None:
    scorer = OnnxScorer(models["fp32"], INPUT_NAME, SCORES_OUTPUT, threads=2)
    opts = scorer.session_options
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    for pool in ("intra", "inter"):
        assert opts.get_session_config_entry(f"session.{pool}_op.allow_spinning") == "0"
    assert "sequential" in str(opts.execution_mode).lower()
    assert "all" in str(opts.graph_optimization_level).lower()


def test_wrong_shape_is_a_value_error_naming_the_model(models: dict[str, Path]) -> None:
    scorer = OnnxScorer(models["fp32"], INPUT_NAME, SCORES_OUTPUT)
    with pytest.raises(ValueError, match=r"fp32\.onnx.*\(n, 32\)"):
        scorer.scores(np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        scorer.scores(np.zeros((4, N_FEATURES), dtype=np.float32), batch_size=0)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf\x00\xff")
    with pytest.raises(ManifestError, match="cannot load it as an ONNX model") as info:
        OnnxScorer(bogus, INPUT_NAME, SCORES_OUTPUT)
    assert str(bogus) in str(info.value)
    assert info.value.path == str(bogus)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        OnnxScorer(tmp_path / "nope.onnx", INPUT_NAME, SCORES_OUTPUT)


def test_wrong_graph_names_are_refused(models: dict[str, Path]) -> None:
    with pytest.raises(ManifestError, match=r"no input 'x'.*'features'") as info:
        OnnxScorer(models["fp32"], "x", SCORES_OUTPUT)
    assert info.value.field == "model.input_name"
    assert str(models["fp32"]) in str(info.value)
    with pytest.raises(ManifestError, match=r"no output 'label'.*'probabilities'") as info:
        OnnxScorer(models["fp32"], INPUT_NAME, "label")
    assert info.value.field == "model.scores_output"


def test_threads_must_be_positive(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="threads"):
        OnnxScorer(models["fp32"], INPUT_NAME, SCORES_OUTPUT, threads=0)
