"""The database holds every device's data: only its owner may read it, WAL and SHM included."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from cloud_hub.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(30)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with SQLiteStore(path) as store:
        store.add_device("pi-07")
        side = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in side), "WAL mode makes both while open"
        for p in (path, *side):
            assert _mode(p) == 0o600, (p, oct(_mode(p)))


def test_an_old_world_readable_database_is_narrowed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hub.db"
    with SQLiteStore(path) as store:
        store.add_device("pi-07")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING), SQLiteStore(path) as store:
        assert store.device("pi-07") is not None, "the data is kept"
        assert _mode(path) == 0o600
    assert "0644" in caplog.text and "narrowed" in caplog.text
