"""POST /v1/predict: the API's probabilities are OnnxScorer's own; bad rows are 422s naming
the row and the field."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any

import numpy as np
import pytest

from cloud_hub.api.scorers import ScorerCache
from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.store.base import ModelRecord
from shared.features import features_for_stream
from shared.manifest import ModelPackage
from simulators.sensors import SENSORS
from tests.cloud_hub.api.conftest import PREDICT_MAX_ROWS, READ_TOKEN, Hub

pytestmark = pytest.mark.timeout(30)


def _features(n: int = 40, seed: int = 3) -> np.ndarray:
    """Realistic feature rows: the shared feature code over a random walk of the sensors."""
    rng = np.random.default_rng(seed)
    nominal = np.array([s.fallback for s in SENSORS])
    walk = nominal + np.cumsum(rng.normal(size=(n, len(SENSORS))), axis=0) * nominal * 0.02
    return features_for_stream(walk, 10, [s.fallback for s in SENSORS])


def _rows(pkg: ModelPackage, x: np.ndarray) -> list[dict[str, float]]:
    names = pkg.manifest.input.features
    return [dict(zip(names, map(float, row), strict=True)) for row in x]


def _probabilities(body: dict[str, Any]) -> np.ndarray:
    classes = body["classes"]
    return np.array(
        [[p["probabilities"][c] for c in classes] for p in body["predictions"]], dtype=np.float32
    )


def test_heavy_model_matches_onnx_scorer(hub: Hub) -> None:
    pkg = hub.seeded.heavy
    x = _features()
    reply = hub.read.post(
        "/v1/predict",
        json_body={"model": "machine-heavy", "version": DEFAULT_VERSION, "rows": _rows(pkg, x)},
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    want = OnnxScorer.from_package(pkg).scores(x)
    np.testing.assert_array_equal(_probabilities(body), want)
    assert body["model"] == "machine-heavy" and body["version"] == DEFAULT_VERSION
    assert body["scored_row_by_row"] is False and body["count"] == len(x)
    out = pkg.manifest.output
    urgent = out.urgent_index
    for p, w in zip(body["predictions"], want, strict=True):
        assert p["predicted_class"] == out.classes[int(w.argmax())]
        assert np.float32(p["urgent_score"]) == w[urgent]
        assert p["above_urgent_threshold"] == (p["urgent_score"] >= body["urgent_threshold"])


def test_edge_model_is_scored_row_by_row_like_a_device(hub: Hub) -> None:
    pkg = hub.seeded.edge
    x = np.concatenate([_features(), np.asarray(pkg.manifest.test_vectors.inputs, np.float32)])
    reply = hub.read.post("/v1/predict", json_body={"model": "machine-edge", "rows": _rows(pkg, x)})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["scored_row_by_row"] is True and body["quantization"] == "int8-dynamic"
    scorer = OnnxScorer.from_package(pkg)
    np.testing.assert_array_equal(_probabilities(body), scorer.scores(x, batch_size=1))
    tv = pkg.manifest.test_vectors
    np.testing.assert_allclose(
        _probabilities(body)[-len(tv.inputs) :], np.asarray(tv.expected_scores), atol=tv.atol
    )


def test_features_arrays_equal_named_rows_and_null_version_is_latest(hub: Hub) -> None:
    x = _features(10)
    by_name = hub.read.post(
        "/v1/predict",
        json_body={"model": "machine-heavy", "rows": _rows(hub.seeded.heavy, x)},
    ).json()
    by_order = hub.read.post(
        "/v1/predict", json_body={"model": "machine-heavy", "version": None, "features": x.tolist()}
    ).json()
    assert by_name["version"] == by_order["version"] == "1.2.0"  # the later version
    assert by_name["predictions"] == by_order["predictions"]


def _body(hub: Hub, **change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "machine-heavy", "rows": _rows(hub.seeded.heavy, _features(3))}
    body.update(change)
    return body


def _bad_rows(hub: Hub) -> list[tuple[str, dict[str, Any], list[str]]]:
    rows = _rows(hub.seeded.heavy, _features(3))
    typo = [
        rows[0],
        {("temperature_lst" if k == "temperature_last" else k): v for k, v in rows[1].items()},
    ]
    missing = [{k: v for k, v in rows[0].items() if k != "vibration_std"}]
    text = [dict(rows[0], temperature_last="hot")]
    boolean = [rows[0], rows[1], dict(rows[2], flow_mean=True)]
    huge = [dict(rows[0], pressure_last=1e39)]
    extra = [dict(rows[0], humidity_last=1.0)]
    return [
        ("typo", {"rows": typo}, ["rows[1]['temperature_lst']", "did you mean 'temperature_last'"]),
        ("missing", {"rows": missing}, ["rows[0]['vibration_std']", "lacks 1 of the 32"]),
        ("extra", {"rows": extra}, ["rows[0]['humidity_last']", "not a feature of model"]),
        ("text", {"rows": text}, ["rows[0]['temperature_last']", "valid number"]),
        ("bool", {"rows": boolean}, ["rows[2]['flow_mean']", "valid number"]),
        ("float32", {"rows": huge}, ["rows[0]['pressure_last']", "float32"]),
        (
            "count",
            {"rows": None, "features": [[1.0] * 32, [1.0] * 31]},
            ["features[1]", "has 31 values"],
        ),
        ("both", {"features": [[1.0] * 32]}, ["exactly one of 'rows'"]),
        ("neither", {"rows": None}, ["exactly one of 'rows'"]),
        ("empty", {"rows": []}, ["body rows:", "at least 1"]),
        ("unknown key", {"row": []}, ["body row:", "Extra inputs"]),
        ("no model", {"model": None}, ["body model:"]),
    ]


def test_bad_bodies_are_422_naming_row_and_field(hub: Hub) -> None:
    for name, change, words in _bad_rows(hub):
        reply = hub.read.post("/v1/predict", json_body=_body(hub, **change))
        assert reply.status == 422, (name, reply.body)
        for word in words:
            assert word in reply.detail, (name, reply.detail)
        assert reply.json()["errors"], name


def test_non_finite_and_non_json_bodies_are_422(hub: Hub) -> None:
    # Python's json writes NaN and Infinity literals, as some clients do.
    row = _rows(hub.seeded.heavy, _features(1))[0]
    for body, where in (
        (
            {"model": "machine-heavy", "rows": [dict(row, oil_temp_std=float("nan"))]},
            "rows[0]['oil_temp_std']",
        ),
        ({"model": "machine-heavy", "features": [[1.0] * 31 + [float("inf")]]}, "features[0][31]"),
    ):
        reply = hub.read.post(
            "/v1/predict",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert reply.status == 422 and where in reply.detail, reply.detail
        assert "finite number" in reply.detail
    reply = hub.read.post(
        "/v1/predict", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status == 422 and "not valid JSON" in reply.detail
    reply = hub.read.post("/v1/predict", body=b'{"model": "machine-heavy"}')
    assert reply.status == 422 and "Content-Type: application/json" in reply.detail


def test_unknown_model_or_version_is_404(hub: Hub) -> None:
    reply = hub.read.post("/v1/predict", json_body=_body(hub, model="nope"))
    assert reply.status == 404 and "'nope' is not registered" in reply.detail
    reply = hub.read.post("/v1/predict", json_body=_body(hub, version="2.0.0"))
    assert reply.status == 404 and "no version '2.0.0'" in reply.detail


def test_too_many_rows_or_bytes_is_413(hub: Hub) -> None:
    x = np.repeat(_features(1), PREDICT_MAX_ROWS + 1, axis=0)
    reply = hub.read.post("/v1/predict", json_body=_body(hub, rows=None, features=x.tolist()))
    assert reply.status == 413 and f"limit of {PREDICT_MAX_ROWS}" in reply.detail
    big = b'{"model": "machine-heavy", "features": [' + b" " * (hub.config.predict_body_limit + 1)
    reply = hub.read.post("/v1/predict", body=big, headers={"Content-Type": "application/json"})
    assert reply.status == 413 and "fewer rows" in reply.detail


def test_a_chunked_body_over_the_limit_is_413(hub: Hub) -> None:
    limit = hub.config.predict_body_limit
    body = b'{"model": "machine-heavy", "features": [' + b" " * limit  # just over the limit
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    conn = http.client.HTTPConnection(hub.read.host, hub.read.port, timeout=20)
    try:
        conn.request(
            "POST",
            "/v1/predict",
            body=iter(chunks),
            headers={"Authorization": f"Bearer {READ_TOKEN}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        reply = conn.getresponse()
        assert reply.status == 413
        assert "fewer rows" in json.loads(reply.read())["detail"]
    finally:
        conn.close()


def test_a_damaged_model_is_503_naming_it(hub: Hub) -> None:
    reply = hub.read.post("/v1/predict", json_body=_body(hub, model="broken-heavy"))
    assert reply.status == 503 and f"broken-heavy {DEFAULT_VERSION}" in reply.detail


def _record(pkg: ModelPackage) -> ModelRecord:
    m = pkg.manifest
    return ModelRecord(m.name, m.version, m.variant, str(pkg.path), 0.0, m)


def test_scorer_cache_is_an_lru_that_loads_once(hub: Hub) -> None:
    edge, heavy = _record(hub.seeded.edge), _record(hub.seeded.heavy)
    cache = ScorerCache(capacity=1, models_root=None)
    got: list[OnnxScorer] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(heavy))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 4 and len({id(s) for s in got}) == 1 and cache.loads == 1
    cache.get(edge)
    assert (cache.loads, len(cache)) == (2, 1)
    cache.get(edge)
    assert cache.loads == 2
    cache.get(heavy)
    assert cache.loads == 3
