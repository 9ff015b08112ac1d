"""Which heavy model scores an edge version's telemetry (Hub._heavy_lookup): its partner of
the same version whatever its stage, else production; a heavy candidate never scores
another version's telemetry."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cloud_hub.registry.stages import Stage
from cloud_hub.service import Hub
from cloud_hub.settings import OPTIONS, resolve_settings
from cloud_hub.store import SQLiteStore
from shared.manifest import load_package
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(30)


def test_a_heavy_candidate_scores_only_its_own_version(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(
        ["--insecure-dev", "true", "--data-dir", str(tmp_path / "hub")]
    )
    hub = Hub(resolve_settings(args, env={}, serving=True))
    store = SQLiteStore(tmp_path / "hub.db")
    heavy = load_package(model_packages.heavy).manifest
    path = str(model_packages.heavy)
    store.register_model(heavy, path, 0.0, stage=Stage.PRODUCTION)
    newer = dataclasses.replace(heavy, version="9.0.0")
    store.register_model(newer, path, 1.0, stage=Stage.CANDIDATE)
    hub.store = store
    try:
        found = hub._heavy_lookup(heavy.name, "9.0.0")  # its own partner, a candidate
        assert found is not None and found[1] == "9.0.0"
        found = hub._heavy_lookup(heavy.name, "5.5.5")  # no partner: production, not newest
        assert found is not None and found[1] == heavy.version
        assert hub._heavy_lookup("nobody-heavy", "1.0.0") is None
    finally:
        store.close()
