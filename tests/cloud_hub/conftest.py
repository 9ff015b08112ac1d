"""Fixtures for the hub's tests that need more than one module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.store import SQLiteStore
from shared.manifest import load_package
from tests.cloud_hub.retrain_fleet import Fleet, seed_fleet
from tests.conftest import ModelPaths


@pytest.fixture
def fleet(tmp_path: Path, model_packages: ModelPaths) -> Iterator[Fleet]:
    """A store with the default models registered (signed, production) and three devices'
    telemetry scored by them (:func:`tests.cloud_hub.retrain_fleet.seed_fleet`)."""
    fleet = seed_fleet(tmp_path, model_packages)
    try:
        yield fleet
    finally:
        fleet.store.close()


@pytest.fixture
def edge_store(tmp_path: Path, model_packages: ModelPaths) -> Iterator[SQLiteStore]:
    """A SQLite store with the default edge model registered (the drift monitor's tests:
    it takes the reference statistics from the registered manifest)."""
    store = SQLiteStore(tmp_path / "hub.db")
    package = load_package(model_packages.edge)
    store.register_model(package.manifest, str(model_packages.edge), 0.0)
    try:
        yield store
    finally:
        store.close()
