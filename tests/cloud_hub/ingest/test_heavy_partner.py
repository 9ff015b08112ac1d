"""Telemetry is scored by the heavy partner of the edge model that made it, found by the
model's name and version (both required on the wire)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cloud_hub.inference import OnnxScorer
from cloud_hub.ingest.heavy import HeavyModels, partner_name
from cloud_hub.pipeline.convert import INPUT_NAME, SCORES_OUTPUT, sklearn_to_onnx
from cloud_hub.store.sqlite import SQLiteStore
from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from tests.cloud_hub.ingest.conftest import Client, running_hub, settled, telemetry
from tests.cloud_hub.ingest.test_worker import stored_rows

pytestmark = pytest.mark.timeout(90)

RIG_FEATURES = 12  # a rig of three sensors: 4 features each


def rig_heavy(tmp_path: Path) -> OnnxScorer:
    """A real (tiny) heavy model of another feature set."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, RIG_FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "rig-heavy.onnx"
    path.write_bytes(
        sklearn_to_onnx(
            LogisticRegression().fit(x, y), RIG_FEATURES, "rig-heavy"
        ).SerializeToString()
    )
    return OnnxScorer(path, INPUT_NAME, SCORES_OUTPUT)


def test_partner_name() -> None:
    assert partner_name("rig-edge") == "rig-heavy"
    assert partner_name("-edge") is None and partner_name("edge") is None


def test_each_edge_model_is_scored_by_its_partner_and_one_without_is_kept(
    broker: BrokerEndpoint,
    topics: Topics,
    heavy: OnnxScorer,
    device_client: Client,
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    rig = rig_heavy(tmp_path)
    asked: list[tuple[str, str]] = []

    def lookup(name: str, version: str) -> tuple[OnnxScorer, str] | None:
        asked.append((name, version))
        found = {"rig-heavy": (rig, "2.0.0"), "machine-heavy": (heavy, "1.1.0")}
        return found.get(name)

    models = HeavyModels(heavy, "1.0.0", default_edge="machine-edge", lookup=lookup)
    with running_hub(broker, topics, store, heavy, heavy_models=models) as hub:
        # The default edge model at the default heavy's version: the default heavy, no lookup.
        default = telemetry("dev-old", 1)
        assert (default.model, default.model_version) == ("machine-edge", "1.0.0")
        # The same model at another version is looked up by name and version.
        newer = dataclasses.replace(telemetry("dev-new", 1), model_version="1.1.0")
        base = telemetry("dev-rig", 1)
        rig_msg = dataclasses.replace(
            base,
            model="rig-edge",
            features=np.random.default_rng(1)
            .normal(size=(len(base), RIG_FEATURES))
            .astype(np.float32),
            scores=base.scores[:, :2] / base.scores[:, :2].sum(axis=1, keepdims=True),
        )
        orphan = dataclasses.replace(telemetry("dev-solo", 1), model="solo-edge")
        for msg in (default, newer, rig_msg, orphan):
            device_client.send(msg)
        settled(hub.worker, "4 messages stored", lambda s: s.stored_messages == 4)

    (row,) = stored_rows(store, "dev-old")
    assert row.heavy_model_version == "1.0.0"
    assert np.allclose(row.heavy_scores, heavy.scores(default.features), atol=1e-5)
    (row,) = stored_rows(store, "dev-new")
    assert row.heavy_model_version == "1.1.0"
    assert np.allclose(row.heavy_scores, heavy.scores(newer.features), atol=1e-5)
    (row,) = stored_rows(store, "dev-rig")
    assert row.heavy_model_version == "2.0.0"
    assert np.allclose(row.heavy_scores, rig.scores(rig_msg.features), atol=1e-5)
    (row,) = stored_rows(store, "dev-solo")
    assert row.heavy_scores.shape == (len(orphan), 0)  # kept, with the edge scores only
    assert store.counters("dev-solo")["no_heavy_model"] == 1
    assert ("rig-heavy", "1.0.0") in asked and ("solo-heavy", "1.0.0") in asked
    assert ("machine-heavy", "1.1.0") in asked and ("machine-heavy", "1.0.0") not in asked
    assert asked.count(("rig-heavy", "1.0.0")) == 1  # found once, then cached
    store.close()
