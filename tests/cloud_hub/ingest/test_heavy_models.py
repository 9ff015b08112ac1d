"""The hub picks the heavy twin of each message's edge model (cloud_hub/ingest/heavy.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cloud_hub.inference import OnnxScorer
from cloud_hub.ingest.heavy import HeavyModels
from cloud_hub.store.base import ModelRecord
from shared.manifest import load_package
from tests.conftest import ModelPaths


def _record(path: str, name: str | None = None) -> ModelRecord:
    m = load_package(Path(path)).manifest
    if name is not None:
        m = dataclasses.replace(m, name=name)
    return ModelRecord(m.name, m.version, m.variant, path, 0.0, m)


def test_each_edge_model_gets_its_twin_else_the_default(model_packages: ModelPaths) -> None:
    edge, heavy = str(model_packages.edge), str(model_packages.heavy)
    default = OnnxScorer.from_package(load_package(model_packages.heavy))
    records: list[ModelRecord] = []
    now = [0.0]
    models = HeavyModels(default, "0.9.0", lambda: records, refresh_s=5.0, clock=lambda: now[0])
    # Nothing registered: the default scores what it can read, nothing else.
    assert models.for_telemetry(32, "1.0.0") == (default, "0.9.0")
    assert models.for_telemetry(16, "1.0.0") is None
    # Registered while running: looked up again once refresh_s has passed.
    records += [_record(edge), _record(heavy)]
    now[0] = 1.0
    assert models.for_telemetry(16, "1.0.0") is None
    assert models.for_telemetry(32, "1.0.0") == (default, "0.9.0")  # not yet looked up again
    now[0] = 6.0
    twin = models.for_telemetry(32, "1.0.0")
    assert twin is not None and twin[0] is not default and twin[1] == "1.0.0"
    records.clear()
    now[0] = 60.0
    assert models.for_telemetry(32, "1.0.0") == twin  # a twin, once found, is kept
    assert twin[0].model_path == model_packages.heavy / "model.onnx"
    # Two edge models of one version and feature count cannot be told apart: the default.
    records += [_record(edge), _record(heavy)]
    records += [_record(edge, "other-edge"), _record(heavy, "other-heavy")]
    again = HeavyModels(default, "0.9.0", lambda: records)
    assert again.for_telemetry(32, "1.0.0") == (default, "0.9.0")
    # No default and no twin: nothing scores it (the worker dead-letters it).
    none = HeavyModels(None, "0.9.0", lambda: records)
    assert none.for_telemetry(32, "2.0.0") is None and none.scores_anything
    assert not HeavyModels(None, "0.9.0").scores_anything
