"""Fixtures for the hub's tests that need more than one module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
