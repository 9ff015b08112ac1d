"""What only the SQLite backend promises: durability under SIGKILL, WAL, the
schema version, and the ``sqlite:///`` URLs of :func:`open_store`."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.store import SCHEMA_VERSION, SQLiteStore, StoreError, open_store
from tests.cloud_hub.store.samples import event, manifest, tele

pytestmark = pytest.mark.timeout(60)

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cloud_hub.store import SQLiteStore
    from tests.cloud_hub.store.samples import event, ota, tele

    store = SQLiteStore(Path(sys.argv[1]))
    for batch in range(5):
        items = [tele(f"pi-{d}", 1, batch * 3 + 1, n=50, n_features=32) for d in range(4)]
        items += [event(f"pi-{d}", 1, batch * 3 + 2) for d in range(4)]
        items += [ota(f"pi-{d}", 1, batch * 3 + 3) for d in range(4)]
        result = store.write_stream(items)
    # The hub acks right here; a SIGKILL now must lose nothing.
    print(result.watermarks[0].seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_what_write_stream_returned_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=Path(__file__).parents[3],
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "15"

    with SQLiteStore(db) as store:
        for d in range(4):
            assert store.watermark(f"pi-{d}", 1) == 15
            page = store.telemetry(f"pi-{d}", 0, 1e12, limit=10_000)
            assert [r.seq for r in page.items] == [1, 4, 7, 10, 13]
            for rows in page.items:
                expected = tele(f"pi-{d}", 1, rows.seq, n=50, n_features=32)
                assert rows.features.tobytes() == expected.features.tobytes()
                assert rows.heavy_scores.tobytes() == expected.heavy_scores.tobytes()
            events = store.events(f"pi-{d}", 0, 1e12, limit=100).items
            assert [r.event.seq for r in events] == [2, 5, 8, 11, 14]
        assert store.gaps() == []
        # Everything acked is a duplicate now: the dedupe record survived too.
        replay = store.write_stream([tele("pi-0", 1, 13, n=50, n_features=32)])
        assert replay.duplicates == [("pi-0", 1, 13)]


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    SQLiteStore(db).close()
    SQLiteStore(db).close()  # opening again migrates nothing
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    SQLiteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade edgeloop") as info:
        SQLiteStore(db)
    assert info.value.path == str(db)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        SQLiteStore(db)


def test_parent_directories_are_created(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "a" / "b" / "hub.db") as store:
        store.add_device("pi-01")
    assert (tmp_path / "a" / "b" / "hub.db").is_file()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    store.add_device("pi-01")
    assert store.device("pi-01") is not None
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.add_device("pi-02")
    with pytest.raises(StoreError, match="closed"):
        store.devices()


def test_a_failed_write_stores_nothing(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        ragged = dataclasses.replace(tele("pi-02", 1, 2), ts=np.zeros(3))
        with pytest.raises(ValueError, match=r"pi-02.*seq 2"):
            store.write_stream([tele("pi-01", 1, 1), ragged])
        # A failure inside the transaction, after the devices were created in it.
        unbindable = dataclasses.replace(event("pi-04", 1, 2), detail=object())  # type: ignore[arg-type]
        with pytest.raises(sqlite3.Error):
            store.write_stream([tele("pi-03", 1, 1), tele("pi-04", 1, 1), unbindable])
        assert store.devices() == []
        assert store.watermark("pi-04", 1) == 0
        # Devices the rolled-back write created are gone; new rows must not point at them.
        result = store.write_stream([tele("pi-04", 1, 1), tele("pi-01", 1, 1)])
        assert (result.stored, result.duplicates) == (2, [])
        assert [d.device for d in store.devices()] == ["pi-01", "pi-04"]
        assert [r.device for r in store.telemetry("pi-04", 0, 1e12, limit=100).items] == ["pi-04"]


def test_readers_of_finished_threads_are_closed(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        store.add_device("pi-01")
        for _ in range(20):
            t = threading.Thread(target=store.devices)
            t.start()
            t.join()
        store.devices()
        assert len(store._readers) <= 2


def test_a_second_store_on_the_same_file_sees_committed_writes(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as a, SQLiteStore(tmp_path / "hub.db") as b:
        a.write_stream([event("pi-01", 1, 1)])
        assert b.watermark("pi-01", 1) == 1
        assert b.write_stream([event("pi-01", 1, 1)]).duplicates == [("pi-01", 1, 1)]


# --------------------------------------------------------------------------- open_store


def test_open_store_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/hub.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path("data/hub.db")
    finally:
        store.close()
    assert (tmp_path / "data" / "hub.db").is_file()

    absolute = tmp_path / "abs" / "hub.db"
    store = open_store(f"sqlite:///{absolute}")  # absolute: sqlite:////tmp/...
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == absolute
    finally:
        store.close()
    assert absolute.is_file()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://hub:s3cret@db/edgeloop",
            r"postgresql:// is not implemented yet; use sqlite:///",
        ),
        ("postgres://hub@db/edgeloop", r"postgres:// is not implemented yet"),
        ("mysql://hub:s3cret@db/edgeloop", r"scheme 'mysql' is not supported; use sqlite:///"),
        ("hub.db", r"no scheme; use sqlite:///"),
        ("sqlite://host/hub.db", r"names a host \('host'\)"),
        ("sqlite:///", r"names no database file"),
        ("sqlite:///data/", r"names no database file"),
        ("sqlite:///:memory:", r":memory: is not supported"),
        ("sqlite:///hub.db?mode=ro", r"query or fragment"),
    ],
)
def test_open_store_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        open_store(url)
    assert "s3cret" not in str(info.value)


def test_migration_2_turns_pending_rows_into_a_ledger(tmp_path: Path) -> None:
    from cloud_hub.store.sqlite import _migrate_to_1  # noqa: PLC0415

    db_path = tmp_path / "hub.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        _migrate_to_1(db)
        db.execute("INSERT INTO schema_version VALUES (1, 0)")
        db.execute("INSERT INTO devices (id, name, state) VALUES (1, 'pi-01', 'online')")
        db.execute("INSERT INTO watermarks VALUES (1, 1, 2)")
        db.executemany("INSERT INTO pending VALUES (1, 1, ?)", [(5,), (6,), (9,)])
    with SQLiteStore(db_path) as store:
        assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(3, 4), (7, 8)]
        assert store.write_stream([tele("pi-01", 1, 6)]).duplicates == [("pi-01", 1, 6)]


def test_a_model_record_of_an_older_manifest_format_is_replaced_not_fatal(tmp_path: Path) -> None:
    """A hub upgraded across manifest format 2 finds format-1 records in its store."""
    new = manifest("machine-edge", "1.0.0")
    old = new.to_dict()
    old["format"] = 1
    with SQLiteStore(tmp_path / "hub.db") as store:
        with store._write() as db:  # as an older build left it
            db.execute(
                "INSERT INTO models (name, version, variant, path, registered_at, manifest) "
                "VALUES ('machine-edge', '1.0.0', 'edge', '/old', 1.0, ?)",
                (json.dumps(old),),
            )
        assert store.models() == [] and store.model("machine-edge", "1.0.0") is None
        rec = store.register_model(new, "/new", registered_at=2.0)
        assert (rec.path, rec.manifest) == ("/new", new)
        assert [r.manifest for r in store.models()] == [new]
        changed = manifest("machine-edge", "1.0.0", metrics={"holdout_auc": 0.5})
        with pytest.raises(ValueError, match="different manifest"):  # a readable one is kept
            store.register_model(changed, "/other", registered_at=3.0)


def test_a_changed_model_replaces_its_record_only_when_asked(tmp_path: Path) -> None:
    """``models train --force`` rebuilds a version on purpose: its record follows."""
    first = manifest("rig-edge", "1.0.0")
    rebuilt = manifest("rig-edge", "1.0.0", metrics={"holdout_auc": 0.5})
    with SQLiteStore(tmp_path / "hub.db") as store:
        store.register_model(first, "/a", registered_at=1.0)
        with pytest.raises(ValueError, match="different manifest"):
            store.register_model(rebuilt, "/b", registered_at=2.0)
        rec = store.register_model(rebuilt, "/b", registered_at=2.0, replace=True)
        assert (rec.path, rec.registered_at, rec.manifest) == ("/b", 2.0, rebuilt)
        assert [(r.path, r.manifest) for r in store.models()] == [("/b", rebuilt)]


def test_migration_5_adds_baselines_to_a_version_4_store(tmp_path: Path) -> None:
    from cloud_hub.store.sqlite import (  # noqa: PLC0415
        _migrate_to_1,
        _migrate_to_2,
        _migrate_to_3,
        _migrate_to_4,
    )
    from shared.baseline import Baseline, SensorBaseline  # noqa: PLC0415

    db_path = tmp_path / "hub.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        _migrate_to_1(db)
        _migrate_to_2(db)
        _migrate_to_3(db)
        _migrate_to_4(db)
        db.executemany("INSERT INTO schema_version VALUES (?, 0)", [(1,), (2,), (3,), (4,)])
        db.execute("INSERT INTO devices (id, name, state) VALUES (1, 'pi-01', 'online')")
    b = Baseline(
        "pi-01", "m", {"t": SensorBaseline(1.0, 2.0)}, 0.0, 1.0, 10, "2026-11-26T20:00:00Z"
    )
    with SQLiteStore(db_path) as store:
        assert store.device("pi-01") is not None and store.baseline("pi-01") is None
        store.put_baseline(b, 5.0)
        assert store.baselines() == [b]


def test_migration_12_keeps_devices_and_leaves_them_unjudged(tmp_path: Path) -> None:
    from cloud_hub.store import sqlite as backend  # noqa: PLC0415

    db_path = tmp_path / "hub.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        for v in range(1, 12):
            backend._MIGRATIONS[v](db)
            db.execute("INSERT INTO schema_version VALUES (?, 0)", (v,))
        db.execute(
            "INSERT INTO devices (name, state, epoch, last_seen) VALUES ('pi-01', 'online', 3, 5.0)"
        )
    with SQLiteStore(db_path) as store:
        got = store.device("pi-01")
        assert got is not None and got.state == "online" and got.epoch == 3
        assert (got.judged_state, got.state_reason, got.state_since) == (None, None, None)
        assert store.device_state_events(None, 0.0, 10.0, 10).items == []
