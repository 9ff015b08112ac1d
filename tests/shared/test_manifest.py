"""The model manifest and the package loader (DESIGN.md section 4)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import EdgeloopError, ManifestError
from shared.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelManifest,
    ModelPackage,
    load_package,
    parse_version,
    sha256_file,
    write_manifest,
)

pytestmark = pytest.mark.timeout(30)

MODEL_BYTES = b"not really onnx, but load_package only checks size and sha256\n" * 40
SENSORS = [
    {"name": "temperature", "unit": "degC", "min": -40.0, "max": 250.0, "fallback": 65.0},
    {"name": "pressure", "unit": "bar", "min": 0.0, "max": 40.0, "fallback": 6.0},
]
FEATURES = [f"{s['name']}_{stat}" for stat in ("last", "mean", "std", "delta") for s in SENSORS]


@pytest.fixture
def manifest_dict() -> dict[str, Any]:
    """A valid manifest, as ``json.loads`` would return it."""
    return {
        "format": 2,
        "name": "bearing-fault",
        "version": "1.4.0",
        "variant": "edge",
        "created": "2024-05-01T12:00:00Z",
        "model": {
            "file": MODEL_FILE,
            "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
            "size": len(MODEL_BYTES),
            "input_name": "x",
            "scores_output": "probabilities",
            "quantization": "int8-dynamic",
        },
        "input": {
            "sensors": copy.deepcopy(SENSORS),
            "features": list(FEATURES),
            "dtype": "float32",
            "window": 10,
        },
        "output": {"classes": ["normal", "fault"], "urgent_class": "fault"},
        "urgent": {
            "score_threshold": 0.8,
            "consecutive": 3,
            "release": 2,
            "hard_limits": {
                "temperature": {"min": None, "max": 110.0},
                "pressure": {"min": 1.5, "max": 9.0},
            },
        },
        "reference": {
            "sensors": {
                "temperature": {"location": 65.0, "scale": 2.0, "low": 55.0, "high": 80.0},
                "pressure": {"location": 6.0, "scale": 0.3, "low": 5.0, "high": 7.5},
            },
            "features": {
                name: {"edges": [-1.0, 0.0, 1.0], "proportions": [0.25, 0.25, 0.25, 0.25]}
                for name in FEATURES
            },
            "score": {"edges": [0.5], "proportions": [0.9, 0.1]},
        },
        "metrics": {"holdout_auc": 0.97, "holdout_f1": 0.91, "int8_agreement": 0.995},
        "lineage": {
            "parent": "1.3.2",
            "data_window": "2024-04-01/2024-04-30",
            "data_hash": "c0ffee",
            "pipeline_run": "run-0042",
        },
        "min_agent_version": "0.1.0",
        "test_vectors": {
            "inputs": [
                [65.0, 6.0, 64.5, 6.1, 0.1, 0.0, 0.2, 0.0],
                [120.0, 9.0, 90.0, 8.0, 4.0, 0.5, 30.0, 1.0],
            ],
            "expected_scores": [[0.98, 0.02], [0.05, 0.95]],
            "atol": 0.01,
        },
    }


@pytest.fixture
def package(tmp_path: Path, manifest_dict: dict[str, Any]) -> Path:
    """A package directory on disk: fake model bytes and a matching manifest."""
    root = tmp_path / "bearing-fault-1.4.0"
    root.mkdir()
    (root / MODEL_FILE).write_bytes(MODEL_BYTES)
    write_manifest(root, ModelManifest.from_dict(manifest_dict))
    return root


# --------------------------------------------------------------------------- round trip


def test_round_trip(manifest_dict: dict[str, Any]) -> None:
    m = ModelManifest.from_dict(copy.deepcopy(manifest_dict))
    assert m.to_dict() == manifest_dict
    assert ModelManifest.from_dict(m.to_dict()) == m
    assert json.loads(json.dumps(m.to_dict())) == manifest_dict  # plain JSON types only


def test_parsed_values(manifest_dict: dict[str, Any]) -> None:
    m = ModelManifest.from_dict(manifest_dict)
    assert m.version_key == (1, 4, 0)
    assert m.input.features == tuple(FEATURES)
    assert m.output.urgent_index == 1
    assert m.urgent.hard_limits == {"temperature": (None, 110.0), "pressure": (1.5, 9.0)}
    assert m.reference_score.edges == (0.5,)
    assert m.test_vectors.inputs[1][:3] == (120.0, 9.0, 90.0)
    assert m.input.sensor_names == ("temperature", "pressure")
    assert m.input.fallback == (65.0, 6.0)
    assert m.reference_sensors["pressure"].scale == 0.3
    assert m.expected_ranges() == [(55.0, 80.0), (5.0, 7.5)]
    assert m.model.size == len(MODEL_BYTES) and isinstance(m.model.size, int)
    assert isinstance(m.input.window, int)


def test_optional_parent_and_empty_hard_limits(manifest_dict: dict[str, Any]) -> None:
    del manifest_dict["lineage"]["parent"]
    manifest_dict["urgent"]["hard_limits"] = {}
    m = ModelManifest.from_dict(manifest_dict)
    assert m.lineage.parent is None and m.urgent.hard_limits == {}
    assert m.to_dict()["lineage"]["parent"] is None


def test_release_defaults_to_1_for_manifests_written_before_it(
    manifest_dict: dict[str, Any],
) -> None:
    assert ModelManifest.from_dict(copy.deepcopy(manifest_dict)).urgent.release == 2
    del manifest_dict["urgent"]["release"]
    m = ModelManifest.from_dict(manifest_dict)
    assert m.urgent.release == 1 and m.urgent.consecutive == 3
    assert m.to_dict()["urgent"]["release"] == 1


def test_latency_budget_round_trips_and_is_optional(manifest_dict: dict[str, Any]) -> None:
    assert ModelManifest.from_dict(copy.deepcopy(manifest_dict)).latency_budget_ms is None
    assert "latency_budget_ms" not in ModelManifest.from_dict(manifest_dict).to_dict()
    for value, parsed in ((5, 5.0), (0.25, 0.25), (60_000, 60_000.0)):
        manifest_dict["latency_budget_ms"] = value
        m = ModelManifest.from_dict(copy.deepcopy(manifest_dict))
        assert m.latency_budget_ms == parsed
        assert ModelManifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.parametrize("bad", [0, -5.0, math.inf, math.nan, 60_001, True, "5", None, [5]])
def test_a_bad_latency_budget_is_refused_naming_the_field(
    manifest_dict: dict[str, Any], bad: Any
) -> None:
    manifest_dict["latency_budget_ms"] = bad
    err = _expect_error(manifest_dict, "latency_budget_ms")
    assert "milliseconds in (0, 60000]" in str(err) and "--latency-budget-ms" in str(err)


def test_hard_limit_with_one_bound_only(manifest_dict: dict[str, Any]) -> None:
    manifest_dict["urgent"]["hard_limits"]["pressure"] = {"min": 1.5}
    m = ModelManifest.from_dict(manifest_dict)
    assert m.urgent.hard_limits["pressure"] == (1.5, None)


# --------------------------------------------------------------------------- mutations


def _set(d: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d[key]
    if value is DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value


DELETE = object()
_FEAT0 = FEATURES[0]
REQUIRED = [
    ("format",),
    ("name",),
    ("version",),
    ("variant",),
    ("created",),
    ("model",),
    ("model", "file"),
    ("model", "sha256"),
    ("model", "size"),
    ("model", "input_name"),
    ("model", "scores_output"),
    ("model", "quantization"),
    ("input",),
    ("input", "features"),
    ("input", "dtype"),
    ("input", "window"),
    ("output",),
    ("output", "classes"),
    ("output", "urgent_class"),
    ("urgent",),
    ("urgent", "score_threshold"),
    ("urgent", "consecutive"),
    ("urgent", "hard_limits"),
    ("reference",),
    ("reference", "features"),
    ("reference", "score"),
    ("reference", "score", "edges"),
    ("reference", "features", _FEAT0, "proportions"),
    ("metrics",),
    ("lineage",),
    ("lineage", "data_window"),
    ("lineage", "data_hash"),
    ("lineage", "pipeline_run"),
    ("min_agent_version",),
    ("test_vectors",),
    ("test_vectors", "inputs"),
    ("test_vectors", "expected_scores"),
    ("test_vectors", "atol"),
]

_HIST = f"reference.features.{_FEAT0}"
MUTATIONS: list[tuple[str, tuple[Any, ...], Any, str]] = [
    # (case id, path, new value, the field the error must name)
    # wrong types
    ("name-int", ("name",), 5, "name"),
    ("version-float", ("version",), 1.4, "version"),
    ("created-null", ("created",), None, "created"),
    ("model-list", ("model",), [], "model"),
    ("size-string", ("model", "size"), "1024", "model.size"),
    ("window-string", ("input", "window"), "10", "input.window"),
    ("features-string", ("input", "features"), "temperature_last", "input.features"),
    ("features-numbers", ("input", "features"), [1, 2, 3], "input.features"),
    ("metric-string", ("metrics", "holdout_auc"), "0.97", "metrics.holdout_auc"),
    ("threshold-string", ("urgent", "score_threshold"), "high", "urgent.score_threshold"),
    ("hard-limits-list", ("urgent", "hard_limits"), [], "urgent.hard_limits"),
    (
        "hard-limit-min-string",
        ("urgent", "hard_limits", "pressure", "min"),
        "1",
        "urgent.hard_limits.pressure.min",
    ),
    ("parent-int", ("lineage", "parent"), 3, "lineage.parent"),
    ("edges-string", ("reference", "features", _FEAT0, "edges"), ["a", 0.0, 1.0], f"{_HIST}.edges"),
    ("vectors-not-list", ("test_vectors", "inputs"), {}, "test_vectors.inputs"),
    ("vector-string", ("test_vectors", "inputs", 0), [65.0, "64.5", 0.1], "test_vectors.inputs[0]"),
    ("vector-not-list", ("test_vectors", "inputs", 1), 7.0, "test_vectors.inputs[1]"),
    (
        "score-vector-null",
        ("test_vectors", "expected_scores", 0),
        None,
        "test_vectors.expected_scores[0]",
    ),
    # a bool is never a number
    ("format-bool", ("format",), True, "format"),
    ("size-bool", ("model", "size"), True, "model.size"),
    ("window-bool", ("input", "window"), True, "input.window"),
    ("consecutive-bool", ("urgent", "consecutive"), True, "urgent.consecutive"),
    ("threshold-bool", ("urgent", "score_threshold"), False, "urgent.score_threshold"),
    ("metric-bool", ("metrics", "holdout_auc"), True, "metrics.holdout_auc"),
    ("atol-bool", ("test_vectors", "atol"), False, "test_vectors.atol"),
    ("edges-bool", ("reference", "score", "edges"), [True], "reference.score.edges"),
    ("vector-bool", ("test_vectors", "inputs", 0), [65.0, True, 0.1], "test_vectors.inputs[0]"),
    (
        "hard-limit-bool",
        ("urgent", "hard_limits", "temperature", "max"),
        True,
        "urgent.hard_limits.temperature.max",
    ),
    # values out of range or not allowed
    ("format-1", ("format",), 1, "format"),
    ("format-3", ("format",), 3, "format"),
    # the sensors
    ("sensors-empty", ("input", "sensors"), [], "input.sensors"),
    ("sensors-not-list", ("input", "sensors"), {}, "input.sensors"),
    ("sensor-not-object", ("input", "sensors", 0), "temperature", "input.sensors[0]"),
    ("sensor-name-space", ("input", "sensors", 0, "name"), "oil temp", "input.sensors[0].name"),
    ("sensor-name-empty", ("input", "sensors", 0, "name"), "", "input.sensors[0].name"),
    ("sensor-unit-missing", ("input", "sensors", 1, "unit"), None, "input.sensors[1].unit"),
    ("sensor-min-above-max", ("input", "sensors", 0, "min"), 300.0, "input.sensors[0].min"),
    ("sensor-fallback-outside", ("input", "sensors", 0, "fallback"), 999.0, "input.sensors[0].min"),
    ("sensor-max-inf", ("input", "sensors", 0, "max"), math.inf, "input.sensors[0].max"),
    ("features-not-derived", ("input", "features", 0), "temperature_mean", "input.features"),
    (
        "hard-limit-unknown-sensor",
        ("urgent", "hard_limits", "flow"),
        {"max": 1.0},
        "urgent.hard_limits.flow",
    ),
    (
        "ref-sensor-missing",
        ("reference", "sensors", "pressure"),
        DELETE,
        "reference.sensors.pressure",
    ),
    (
        "ref-scale-zero",
        ("reference", "sensors", "pressure", "scale"),
        0.0,
        "reference.sensors.pressure.scale",
    ),
    (
        "ref-low-above-high",
        ("reference", "sensors", "pressure", "low"),
        9.0,
        "reference.sensors.pressure.low",
    ),
    ("name-upper", ("name",), "Bearing Fault", "name"),
    ("name-empty", ("name",), "", "name"),
    ("variant", ("variant",), "mobile", "variant"),
    ("size-0", ("model", "size"), 0, "model.size"),
    ("size-huge-int", ("model", "size"), 10**400, "model.size"),
    ("metric-huge-int", ("metrics", "holdout_auc"), 10**400, "metrics.holdout_auc"),
    ("metric-inf", ("metrics", "holdout_auc"), math.inf, "metrics.holdout_auc"),
    ("metric-nan", ("metrics", "holdout_auc"), math.nan, "metrics.holdout_auc"),
    ("quantization", ("model", "quantization"), "int4", "model.quantization"),
    ("dtype", ("input", "dtype"), "float64", "input.dtype"),
    ("window-1", ("input", "window"), 1, "input.window"),
    ("window-huge", ("input", "window"), 10_001, "input.window"),
    ("features-empty", ("input", "features"), [], "input.features"),
    ("features-repeated", ("input", "features"), [_FEAT0, _FEAT0], "input.features"),
    ("features-empty-name", ("input", "features"), [""], "input.features"),
    ("classes-repeated", ("output", "classes"), ["fault", "fault"], "output.classes"),
    ("urgent-class", ("output", "urgent_class"), "broken", "output.urgent_class"),
    ("threshold-over-1", ("urgent", "score_threshold"), 1.5, "urgent.score_threshold"),
    ("consecutive-0", ("urgent", "consecutive"), 0, "urgent.consecutive"),
    ("release-0", ("urgent", "release"), 0, "urgent.release"),
    ("release-negative", ("urgent", "release"), -2, "urgent.release"),
    ("release-huge", ("urgent", "release"), 1001, "urgent.release"),
    ("release-fraction", ("urgent", "release"), 1.5, "urgent.release"),
    ("release-float", ("urgent", "release"), 2.0, "urgent.release"),
    ("release-bool", ("urgent", "release"), True, "urgent.release"),
    ("release-text", ("urgent", "release"), "2", "urgent.release"),
    ("release-null", ("urgent", "release"), None, "urgent.release"),
    (
        "hard-limit-no-bound",
        ("urgent", "hard_limits", "temperature"),
        {},
        "urgent.hard_limits.temperature",
    ),
    (
        "hard-limit-nulls",
        ("urgent", "hard_limits", "temperature"),
        {"min": None, "max": None},
        "urgent.hard_limits.temperature",
    ),
    (
        "hard-limit-min-over-max",
        ("urgent", "hard_limits", "pressure"),
        {"min": 9.0, "max": 1.5},
        "urgent.hard_limits.pressure",
    ),
    (
        "hard-limit-inf",
        ("urgent", "hard_limits", "pressure", "max"),
        math.inf,
        "urgent.hard_limits.pressure.max",
    ),
    ("atol-negative", ("test_vectors", "atol"), -0.1, "test_vectors.atol"),
    # versions
    ("version-2-parts", ("version",), "1.4", "version"),
    ("version-v", ("version",), "v1.4.0", "version"),
    ("version-leading-0", ("version",), "01.4.0", "version"),
    ("version-pre", ("version",), "1.4.0-rc1", "version"),
    ("version-space", ("version",), "1.4.0 ", "version"),
    ("version-newline", ("version",), "1.4.0\n", "version"),
    ("version-non-ascii-digit", ("version",), "1\u0661.4.0", "version"),
    ("min-agent-version", ("min_agent_version",), "latest", "min_agent_version"),
    # histograms
    (
        "proportions-sum",
        ("reference", "features", _FEAT0, "proportions"),
        [0.25, 0.25, 0.25, 0.2],
        f"{_HIST}.proportions",
    ),
    (
        "proportions-negative",
        ("reference", "features", _FEAT0, "proportions"),
        [0.5, -0.25, 0.5, 0.25],
        f"{_HIST}.proportions",
    ),
    (
        "proportions-count",
        ("reference", "features", _FEAT0, "proportions"),
        [0.5, 0.5],
        f"{_HIST}.proportions",
    ),
    (
        "proportions-nan",
        ("reference", "features", _FEAT0, "proportions"),
        [0.25, math.nan, 0.25, 0.25],
        f"{_HIST}.proportions",
    ),
    (
        "edges-decreasing",
        ("reference", "features", _FEAT0, "edges"),
        [1.0, 0.0, -1.0],
        f"{_HIST}.edges",
    ),
    ("edges-equal", ("reference", "features", _FEAT0, "edges"), [-1.0, 0.0, 0.0], f"{_HIST}.edges"),
    (
        "score-hist-one-bin",
        ("reference", "score"),
        {"edges": [], "proportions": [1.0]},
        "reference.score.proportions",
    ),
    (
        "reference-missing-feature",
        ("reference", "features", FEATURES[2]),
        DELETE,
        f"reference.features.{FEATURES[2]}",
    ),
    ("reference-hist-not-object", ("reference", "features", _FEAT0), [0.5], _HIST),
    # test vectors
    ("vector-too-narrow", ("test_vectors", "inputs", 1), [120.0, 90.0], "test_vectors.inputs[1]"),
    (
        "vector-too-wide",
        ("test_vectors", "inputs", 0),
        [1.0, 2.0, 3.0, 4.0],
        "test_vectors.inputs[0]",
    ),
    (
        "scores-too-wide",
        ("test_vectors", "expected_scores", 1),
        [0.1, 0.2, 0.7],
        "test_vectors.expected_scores[1]",
    ),
    ("vectors-count", ("test_vectors", "expected_scores"), [[0.9, 0.1]], "test_vectors.inputs"),
    ("vectors-empty", ("test_vectors", "inputs"), [], "test_vectors.inputs"),
    # the model file name must stay inside the package
    ("file-slash", ("model", "file"), "sub/model.onnx", "model.file"),
    ("file-absolute", ("model", "file"), "/etc/passwd", "model.file"),
    ("file-dotdot", ("model", "file"), "..", "model.file"),
    ("file-parent", ("model", "file"), "../model.onnx", "model.file"),
    ("file-backslash", ("model", "file"), "..\\model.onnx", "model.file"),
    ("file-hidden", ("model", "file"), ".model.onnx", "model.file"),
    ("file-empty", ("model", "file"), "", "model.file"),
    # the digest
    ("sha-upper", ("model", "sha256"), "AB" * 32, "model.sha256"),
    ("sha-short", ("model", "sha256"), "ab" * 31, "model.sha256"),
    ("sha-long", ("model", "sha256"), "ab" * 33, "model.sha256"),
    ("sha-not-hex", ("model", "sha256"), "zz" * 32, "model.sha256"),
    ("sha-prefixed", ("model", "sha256"), "sha256:" + "ab" * 32, "model.sha256"),
]


def _expect_error(d: dict[str, Any], field: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_dict(d)
    err = info.value
    assert err.field == field, str(err)
    if field:
        assert f"'{field}'" in str(err), str(err)
    assert isinstance(err, EdgeloopError)
    return err


@pytest.mark.parametrize("path", REQUIRED, ids=".".join)
def test_missing_field(manifest_dict: dict[str, Any], path: tuple[str, ...]) -> None:
    _set(manifest_dict, path, DELETE)
    err = _expect_error(manifest_dict, ".".join(path))
    assert "missing" in str(err)


@pytest.mark.parametrize(
    ("path", "value", "field"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_invalid_field(
    manifest_dict: dict[str, Any], path: tuple[Any, ...], value: Any, field: str
) -> None:
    _set(manifest_dict, path, value)
    _expect_error(manifest_dict, field)


@pytest.mark.parametrize("obj", [None, [], "manifest", 1, True])
def test_top_level_must_be_an_object(obj: Any) -> None:
    with pytest.raises(ManifestError, match="top level"):
        ModelManifest.from_dict(obj)


def test_extra_reference_features_are_allowed(manifest_dict: dict[str, Any]) -> None:
    manifest_dict["reference"]["features"]["spare"] = {"edges": [0.0], "proportions": [0.5, 0.5]}
    assert "spare" in ModelManifest.from_dict(manifest_dict).reference_features


# --------------------------------------------------------------------------- load_package


def test_load_package(package: Path, manifest_dict: dict[str, Any]) -> None:
    pkg = load_package(package)
    assert isinstance(pkg, ModelPackage)
    assert pkg.manifest == ModelManifest.from_dict(manifest_dict)
    assert pkg.manifest_bytes == (package / MANIFEST_FILE).read_bytes()
    assert pkg.signature is None
    assert pkg.model_path == package / MODEL_FILE
    assert pkg.path == package
    assert sha256_file(pkg.model_path) == manifest_dict["model"]["sha256"]


def test_write_manifest_is_stable(package: Path) -> None:
    pkg = load_package(package)
    again = write_manifest(package, pkg.manifest)
    assert again == pkg.manifest_bytes
    assert again.endswith(b"\n") and json.loads(again) == pkg.manifest.to_dict()


def test_signature_is_read_as_bytes(package: Path) -> None:
    sig = bytes(range(64))
    (package / SIGNATURE_FILE).write_bytes(sig)
    assert load_package(package).signature == sig


def test_not_a_directory(tmp_path: Path, package: Path) -> None:
    for path in (tmp_path / "nowhere", package / MODEL_FILE):
        with pytest.raises(ManifestError, match="not a directory") as info:
            load_package(path)
        assert info.value.path == str(path)


def test_missing_manifest(package: Path) -> None:
    (package / MANIFEST_FILE).unlink()
    with pytest.raises(ManifestError, match=r"no readable manifest\.json") as info:
        load_package(package)
    assert info.value.path.endswith(MANIFEST_FILE)


def test_manifest_is_a_directory(package: Path) -> None:
    (package / MANIFEST_FILE).unlink()
    (package / MANIFEST_FILE).mkdir()
    with pytest.raises(ManifestError, match=r"no readable manifest\.json"):
        load_package(package)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'format': 1}", b"\xff\xfe", b"[" * 100_000, b'{"format": NaN'],
    ids=["empty", "truncated", "python-repr", "not-utf8", "deep", "nan-truncated"],
)
def test_invalid_json(package: Path, data: bytes) -> None:
    (package / MANIFEST_FILE).write_bytes(data)
    with pytest.raises(ManifestError, match="not valid JSON") as info:
        load_package(package)
    assert info.value.path.endswith(MANIFEST_FILE)


def test_invalid_manifest_names_file_and_field(
    package: Path, manifest_dict: dict[str, Any]
) -> None:
    manifest_dict["output"]["urgent_class"] = "broken"
    (package / MANIFEST_FILE).write_text(json.dumps(manifest_dict))
    with pytest.raises(ManifestError) as info:
        load_package(package)
    assert info.value.field == "output.urgent_class"
    assert str(package / MANIFEST_FILE) in str(info.value)
    assert "'output.urgent_class'" in str(info.value)


def test_missing_model_file(package: Path) -> None:
    (package / MODEL_FILE).unlink()
    with pytest.raises(ManifestError, match=f"lacks {MODEL_FILE}"):
        load_package(package)


def test_truncated_model_file(package: Path) -> None:
    (package / MODEL_FILE).write_bytes(MODEL_BYTES[:-1])
    with pytest.raises(ManifestError, match="truncated") as info:
        load_package(package)
    assert info.value.field == "model.size"
    assert str(len(MODEL_BYTES) - 1) in str(info.value) and str(len(MODEL_BYTES)) in str(info.value)


@pytest.mark.parametrize("offset", [0, len(MODEL_BYTES) // 2, len(MODEL_BYTES) - 1])
def test_altered_model_byte(package: Path, offset: int) -> None:
    data = bytearray(MODEL_BYTES)
    data[offset] ^= 0x01
    (package / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256") as info:
        load_package(package)
    assert info.value.field == "model.sha256"
    assert "corrupt or replaced" in str(info.value)


def test_other_model_file_name(tmp_path: Path, manifest_dict: dict[str, Any]) -> None:
    manifest_dict["model"]["file"] = "edge-int8.onnx"
    (tmp_path / "edge-int8.onnx").write_bytes(MODEL_BYTES)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest_dict))
    assert load_package(tmp_path).model_path == tmp_path / "edge-int8.onnx"


# --------------------------------------------------------------------------- versions


def test_parse_version_ordering() -> None:
    ordered = [
        "0.0.0",
        "0.0.1",
        "0.1.0",
        "0.9.0",
        "0.10.0",
        "1.0.0",
        "1.2.9",
        "1.2.10",
        "1.10.0",
        "2.0.0",
        "10.0.0",
    ]
    keys = [parse_version(v) for v in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert sorted(reversed(ordered), key=parse_version) == ordered


@given(
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
)
@settings(max_examples=100, deadline=None, database=None)
def test_parse_version_round_trip_and_order(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    va, vb = ".".join(map(str, a)), ".".join(map(str, b))
    assert parse_version(va) == a
    assert (parse_version(va) < parse_version(vb)) == (a < b)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "-1.2.3",
        "1.2.x",
        " 1.2.3",
        "1.2.3\n",
        "\uff11.2.3",
        "1\u0661.2.3",
        "1.2.\u0663",
    ],
)
def test_parse_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        parse_version(bad)
