"""The edge engine: loads the real int8 package, scores, and refuses packages it cannot trust."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import engine
from edge_agent.engine import EdgeModel, load_edge_model
from shared import __version__ as agent_version
from shared.errors import ManifestError
from shared.features import FeatureWindow
from shared.manifest import MANIFEST_FILE, load_package
from simulators.sensors import FEATURE_NAMES, SENSORS
from tests.conftest import ModelPaths

# func_only: the session fixture that trains the models is not the engine's time.
pytestmark = pytest.mark.timeout(30, func_only=True)


@pytest.fixture(scope="module")
def edge_model(model_packages: ModelPaths) -> EdgeModel:
    return load_edge_model(model_packages.edge, agent_version)


def broken_copy(
    src: Path, dst: Path, edit: Callable[[dict[str, Any]], None], model_bytes: bytes | None = None
) -> Path:
    """A copy of the package at ``src`` with its manifest edited (and model replaced)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_FILE).read_text(encoding="utf-8"))
    if model_bytes is not None:
        (dst / manifest["model"]["file"]).write_bytes(model_bytes)
        manifest["model"]["sha256"] = hashlib.sha256(model_bytes).hexdigest()
        manifest["model"]["size"] = len(model_bytes)
        for entry in manifest.get("files", []):  # the list of every file agrees with it
            if entry["path"] == manifest["model"]["file"]:
                entry.update(sha256=manifest["model"]["sha256"], size=len(model_bytes))
    edit(manifest)
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dst


def test_loads_the_edge_package_and_smoke_tests(edge_model: EdgeModel) -> None:
    m = edge_model.manifest
    assert m.variant == "edge"
    assert m.model.quantization.startswith("int8")
    assert edge_model.version == m.version
    assert edge_model.n_classes == len(m.output.classes)
    assert 0.0 <= edge_model.smoke_test() <= m.test_vectors.atol


def test_score_returns_probabilities(edge_model: EdgeModel) -> None:
    fw = FeatureWindow(edge_model.manifest.input.window, edge_model.manifest.input.fallback)
    nominal = np.array([s.fallback for s in SENSORS])
    for i in range(20):
        scores = edge_model.score(fw.push(nominal + i * 0.01))
        assert scores.shape == (edge_model.n_classes,)
        assert scores.dtype == np.float32
        assert np.all(scores >= -1e-6)
        assert float(scores.sum()) == pytest.approx(1.0, abs=1e-3)


def test_score_batch_of_one_is_score(edge_model: EdgeModel) -> None:
    rows = np.asarray(edge_model.manifest.test_vectors.inputs, dtype=np.float32)
    batch = edge_model.score_batch(rows)
    assert batch.shape == (rows.shape[0], edge_model.n_classes)
    for row in rows:
        np.testing.assert_array_equal(
            edge_model.score_batch(row[None, :])[0], edge_model.score(row)
        )


def test_smoke_test_scores_row_by_row_like_the_reading_loop(
    model_packages: ModelPaths, edge_model: EdgeModel, tmp_path: Path
) -> None:
    # int8-dynamic: a row's scores depend slightly on the batch it is in. The manifest's
    # expected scores are for rows scored alone (as on a device), so with atol 0 the smoke
    # test passes only if it scores them alone too.
    rows = np.asarray(edge_model.manifest.test_vectors.inputs, dtype=np.float32)
    alone = [edge_model.score(row).tolist() for row in rows]

    def exact(manifest: dict[str, Any]) -> None:
        manifest["test_vectors"]["expected_scores"] = alone
        manifest["test_vectors"]["atol"] = 0.0

    path = broken_copy(model_packages.edge, tmp_path / "pkg", exact)
    assert load_edge_model(path, agent_version).smoke_test() == 0.0


def test_hot_overheat_reading_scores_urgent(edge_model: EdgeModel) -> None:
    m = edge_model.manifest
    fw = FeatureWindow(m.input.window, m.input.fallback)
    nominal = np.array([s.fallback for s in SENSORS])
    for _ in range(m.input.window):
        fw.push(nominal)
    hot = nominal.copy()
    hot[0] = 125.0  # temperature far beyond anything normal
    scores = edge_model.score(fw.push(hot))
    assert int(np.argmax(scores)) == m.output.urgent_index


def test_different_features_name_the_first_difference(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    def swap(manifest: dict[str, Any]) -> None:
        feats = manifest["input"]["features"]
        feats[2], feats[3] = feats[3], feats[2]

    path = broken_copy(model_packages.edge, tmp_path / "pkg", swap)
    with pytest.raises(ManifestError) as info:
        load_edge_model(path, agent_version)
    text = str(info.value)
    assert info.value.field == "input.features"
    assert "position 2" in text
    assert f"{FEATURE_NAMES[3]!r} vs {FEATURE_NAMES[2]!r}" in text


def test_renamed_feature_is_named(model_packages: ModelPaths, tmp_path: Path) -> None:
    def rename(manifest: dict[str, Any]) -> None:
        old = manifest["input"]["features"][5]
        manifest["input"]["features"][5] = "vibration_rms"
        ref = manifest["reference"]["features"]
        ref["vibration_rms"] = ref[old]

    path = broken_copy(model_packages.edge, tmp_path / "pkg", rename)
    with pytest.raises(
        ManifestError, match=rf"position 5: 'vibration_rms' vs {FEATURE_NAMES[5]!r}"
    ):
        load_edge_model(path, agent_version)


def test_window_mismatch(model_packages: ModelPaths) -> None:
    window = load_package(model_packages.edge).manifest.input.window
    with pytest.raises(ManifestError, match=f"window of {window}") as info:
        load_edge_model(model_packages.edge, agent_version, window=window + 1)
    assert info.value.field == "input.window"


def test_newer_agent_required(model_packages: ModelPaths, tmp_path: Path) -> None:
    def bump(manifest: dict[str, Any]) -> None:
        manifest["min_agent_version"] = "99.0.0"

    path = broken_copy(model_packages.edge, tmp_path / "pkg", bump)
    with pytest.raises(ManifestError) as info:
        load_edge_model(path, agent_version)
    text = str(info.value)
    assert info.value.field == "min_agent_version"
    assert "99.0.0" in text
    assert agent_version in text
    assert "Upgrade the agent" in text


def test_corrupt_model_file(model_packages: ModelPaths, tmp_path: Path) -> None:
    good = (model_packages.edge / "model.onnx").read_bytes()
    corrupt = good[: len(good) // 2] + bytes(range(256)) * 4
    # sha and size are the corrupt file's own: load_package accepts it; onnxruntime must not.
    path = broken_copy(model_packages.edge, tmp_path / "pkg", lambda m: None, corrupt)
    load_package(path)
    with pytest.raises(ManifestError, match="onnxruntime cannot load it") as info:
        load_edge_model(path, agent_version)
    assert info.value.path == str(path / "model.onnx")


def test_graph_names_must_match_the_manifest(model_packages: ModelPaths, tmp_path: Path) -> None:
    def rename(manifest: dict[str, Any]) -> None:
        manifest["model"]["scores_output"] = "probabilities_v2"

    path = broken_copy(model_packages.edge, tmp_path / "pkg", rename)
    with pytest.raises(ManifestError, match=r"'probabilities_v2'.*the graph has"):
        load_edge_model(path, agent_version)


def test_altered_test_vectors_fail_the_smoke_test(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    def alter(manifest: dict[str, Any]) -> None:
        manifest["test_vectors"]["expected_scores"][0][0] += 0.25

    path = broken_copy(model_packages.edge, tmp_path / "pkg", alter)
    with pytest.raises(ManifestError) as info:
        load_edge_model(path, agent_version)
    text = str(info.value)
    assert info.value.field == "test_vectors"
    assert "smoke test failed" in text
    measured = re.search(r"differ from the manifest's test vectors by ([0-9.e+-]+)", text)
    assert measured is not None, text
    atol = load_package(path).manifest.test_vectors.atol
    assert float(measured.group(1)) == pytest.approx(0.25, abs=atol + 1e-3)
    assert f"allowed {atol:g}" in text


def test_session_runs_on_one_thread_that_sleeps_instead_of_spinning(
    model_packages: ModelPaths,
) -> None:
    # The same options as the hub's scorer (tests/cloud_hub/test_inference.py), one thread.
    session = engine.open_session(load_package(model_packages.edge).model_path)
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    for pool in ("intra", "inter"):
        assert opts.get_session_config_entry(f"session.{pool}_op.allow_spinning") == "0"
    assert "sequential" in str(opts.execution_mode).lower()
    assert "all" in str(opts.graph_optimization_level).lower()
    assert session.get_providers() == ["CPUExecutionProvider"]


class _PublicOnly:
    """An onnxruntime session seen only through its public methods (no bound ``_sess``)."""

    def __init__(self, session: Any) -> None:
        self.get_inputs = session.get_inputs
        self.get_outputs = session.get_outputs
        self.run = session.run
        self.io_binding = session.io_binding
        self.run_with_iobinding = session.run_with_iobinding


def test_scores_through_the_public_run_when_the_binding_is_not_there(
    model_packages: ModelPaths, edge_model: EdgeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = engine.open_session
    monkeypatch.setattr(engine, "open_session", lambda path: _PublicOnly(real_open(path)))
    public = load_edge_model(model_packages.edge, agent_version)  # smoke test included
    for row in np.asarray(edge_model.manifest.test_vectors.inputs, dtype=np.float32):
        np.testing.assert_array_equal(public.score(row), edge_model.score(row))


def test_threads_sharing_one_model_get_their_own_scores(edge_model: EdgeModel) -> None:
    # The fleet host shares one model among its agents' threads; each thread
    # scores through buffers of its own, so no thread sees another's row.
    rows = np.asarray(edge_model.manifest.test_vectors.inputs, dtype=np.float32)
    want = [edge_model.score(row) for row in rows]
    failures: list[str] = []

    def worker(k: int) -> None:
        for i in range(300):
            j = (i + k) % len(rows)
            got = edge_model.score(rows[j])
            if not np.array_equal(got, want[j]):
                failures.append(f"thread {k} row {j}: {got} != {want[j]}")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]


def test_a_returned_score_is_not_overwritten_by_the_next(edge_model: EdgeModel) -> None:
    rows = np.asarray(edge_model.manifest.test_vectors.inputs, dtype=np.float32)
    first = edge_model.score(rows[0])
    kept = first.copy()
    edge_model.score(rows[-1])
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize(
    "row",
    [
        np.zeros(len(FEATURE_NAMES), dtype=np.float64),
        np.zeros(1, dtype=np.float32),
        np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32),
        np.zeros(len(FEATURE_NAMES) + 1, dtype=np.float32),
    ],
    ids=["float64", "one value", "2-d", "too long"],
)
def test_score_refuses_a_row_of_the_wrong_shape_or_type(
    edge_model: EdgeModel, row: np.ndarray
) -> None:
    with pytest.raises(ValueError, match=r"a feature row is float32 of shape \(32,\); got"):
        edge_model.score(row)
