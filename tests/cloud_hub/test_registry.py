"""The model registry: stages and their rules, content-addressed artifacts, signing at
registration, and ``edgeloop-hub models register|list|show|promote|archive``."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_hub.cli import main
from cloud_hub.keys import KeyFiles, init_keys
from cloud_hub.registry.blobs import BlobStore
from cloud_hub.registry.register import RegistryError, register_package
from cloud_hub.registry.stages import ALLOWED, Stage, StageError, plan_stage_change
from cloud_hub.store import open_store
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, load_package
from shared.package_verify import verify_package
from shared.signing import SigningKey
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- the rules


@given(st.sampled_from(list(Stage)), st.sampled_from(list(Stage)))
def test_every_move_is_allowed_by_the_table_or_refused_with_a_reason(
    start: Stage, to: Stage
) -> None:
    stages = {"1.0.0": start}
    if to is not start and to in ALLOWED[start]:
        changes = plan_stage_change("m", stages, "1.0.0", to, "why")
        assert [(c.version, c.from_stage, c.to_stage) for c in changes] == [("1.0.0", start, to)]
    else:
        with pytest.raises(StageError, match=r"m 1\.0\.0"):
            plan_stage_change("m", stages, "1.0.0", to, "why")


def test_a_name_has_one_production_version() -> None:
    stages = {"1.0.0": Stage.PRODUCTION, "1.1.0": Stage.CANDIDATE, "0.9.0": Stage.ARCHIVED}
    changes = plan_stage_change("m", stages, "1.1.0", Stage.PRODUCTION, "better")
    assert [(c.version, c.to_stage, c.reason) for c in changes] == [
        ("1.1.0", Stage.PRODUCTION, "better"),
        ("1.0.0", Stage.ARCHIVED, "replaced by 1.1.0"),
    ]
    with pytest.raises(StageError, match=r"no version 2\.0\.0"):
        plan_stage_change("m", stages, "2.0.0", Stage.CANARY, "")
    with pytest.raises(StageError, match="already production"):
        plan_stage_change("m", stages, "1.0.0", Stage.PRODUCTION, "")


# ----------------------------------------------------------------------------- registering


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / SIGNATURE_FILE).unlink(missing_ok=True)
    return dst


def test_register_signs_stores_content_addressed_and_is_idempotent(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    key = SigningKey.generate()
    source = _copy(model_packages.edge, tmp_path / "src")
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        root = tmp_path / "registry"
        done = register_package(store, root, source, trusted=[], key=key, by="test", at=1.0)
        record = done.record
        assert done.new and done.signed_now
        assert record.stage is Stage.CANDIDATE and record.registered_by == "test"
        assert record.signature is not None
        assert not (source / SIGNATURE_FILE).exists()  # the source is never written to
        package = Path(record.path)
        assert package.parent.parent == root / "packages"
        # The registry's copy verifies with the key, and its files are the blobs.
        assert verify_package(package, [key.public]).ok
        blobs = BlobStore(root)
        for entry in record.manifest.files:
            blob = blobs.blob_path(entry.sha256)
            assert os.path.samefile(blob, package / entry.path)
            assert stat.S_IMODE(blob.stat().st_mode) == 0o444
        assert (package / MANIFEST_FILE).read_bytes() == (source / MANIFEST_FILE).read_bytes()
        # Again: nothing changes (not new; the signature is the one made the first time).
        again = register_package(store, root, source, trusted=[], key=None, by="x", at=2.0)
        assert not again.new and not again.signed_now
        assert again.record.signature == record.signature
        assert again.record.registered_by == "test" and again.record.registered_at == 1.0
        # The source can go: the registry holds its own copy.
        shutil.rmtree(source)
        assert load_package(package).manifest == record.manifest
        log = store.stage_log(record.name, record.version)
        assert [(e.from_stage, e.to_stage, e.by) for e in log] == [(None, Stage.CANDIDATE, "test")]
    finally:
        store.close()


def test_register_refuses_a_package_that_does_not_verify(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    root = tmp_path / "registry"
    try:
        tampered = _copy(model_packages.edge, tmp_path / "tampered")
        model = tampered / load_package(tampered).manifest.model.file
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
        with pytest.raises(RegistryError, match=r"does not verify.*sha256") as exc:
            register_package(store, root, tampered, trusted=[], key=None, by="t", at=1.0)
        assert exc.value.reason == "sha256_mismatch"
        # Signed by a key the hub does not trust.
        stranger = SigningKey.generate()
        signed = _copy(model_packages.edge, tmp_path / "signed")
        (signed / SIGNATURE_FILE).write_bytes(
            stranger.sign_manifest((signed / MANIFEST_FILE).read_bytes())
        )
        with pytest.raises(RegistryError, match="--trust") as exc:
            register_package(
                store, root, signed, trusted=[], key=SigningKey.generate(), by="t", at=1.0
            )
        assert exc.value.reason == "unknown_key"
        ok = register_package(
            store, root, signed, trusted=[stranger.public], key=None, by="t", at=1.0
        )
        assert ok.record.signature == (signed / SIGNATURE_FILE).read_bytes()
        # Other content under the same version: versions are immutable.
        other = _copy(model_packages.edge, tmp_path / "other")
        manifest = json.loads((other / MANIFEST_FILE).read_text())
        manifest["urgent"]["score_threshold"] = 0.123
        (other / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(RegistryError, match="immutable") as exc:
            register_package(store, root, other, trusted=[], key=None, by="t", at=1.0)
        assert exc.value.reason == "version_exists"
        assert store.model(ok.record.name, ok.record.version) == ok.record
    finally:
        store.close()


def test_models_register_list_show_promote_archive_from_the_shell(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    init_keys(KeyFiles(data / "keys"))
    opts = ("--data-dir", str(data))
    edge = _copy(model_packages.edge, tmp_path / "edge")
    code, out, _ = _run(capsys, "models", "register", str(edge), *opts, "--by", "alice")
    assert code == 0, out
    assert "registered:" in out and "candidate, signed, signed by the hub's key now" in out
    name, version = load_package(edge).manifest.name, load_package(edge).manifest.version
    code, out, _ = _run(capsys, "models", "list", *opts)
    assert code == 0 and name in out and "candidate" in out and "alice" in out

    # A second version, to promote over the first.
    v2 = tmp_path / "v2"
    shutil.copytree(edge, v2)
    manifest = json.loads((v2 / MANIFEST_FILE).read_text())
    manifest["version"] = "9.0.0"
    (v2 / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert _run(capsys, "models", "register", str(v2), *opts)[0] == 0

    assert _run(capsys, "models", "promote", name, version, "--to", "production", *opts)[0] == 0
    code, out, _ = _run(
        capsys,
        "models",
        "promote",
        name,
        "9.0.0",
        "--to",
        "production",
        "--reason",
        "better",
        *opts,
    )
    assert code == 0
    assert f"{name} 9.0.0: candidate -> production (better)" in out
    assert f"{name} {version}: production -> archived (replaced by 9.0.0)" in out

    # A refused move names the rule; a missing version names the versions there are.
    code, _, err = _run(capsys, "models", "promote", name, version, "--to", "canary", *opts)
    assert code != 0 and "archived version can go to candidate only" in err
    code, _, err = _run(capsys, "models", "archive", name, "7.7.7", *opts)
    assert code != 0 and "not registered" in err and "9.0.0" in err

    code, out, _ = _run(capsys, "models", "show", name, "9.0.0", "--json", *opts)
    shown = json.loads(out)
    assert shown["stage"] == "production" and shown["signed_by"]
    assert [(h["from"], h["to"]) for h in shown["history"]] == [
        (None, "candidate"),
        ("candidate", "production"),
    ]
    assert _run(capsys, "models", "archive", name, "9.0.0", *opts)[0] == 0
    code, out, _ = _run(capsys, "models", "list", "--json", *opts)
    assert {r["version"]: r["stage"] for r in json.loads(out)} == {
        version: "archived",
        "9.0.0": "archived",
    }


def test_migration_7_keeps_models_registered_before_as_candidates(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    import sqlite3  # noqa: PLC0415

    from cloud_hub.store.sqlite import (  # noqa: PLC0415
        _MIGRATIONS,
        SQLiteStore,
    )

    package = load_package(model_packages.edge)
    db_path = tmp_path / "hub.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        for version in range(1, 7):
            _MIGRATIONS[version](db)
            db.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
        db.execute(
            "INSERT INTO models (name, version, variant, path, registered_at, manifest) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                package.manifest.name,
                package.manifest.version,
                "edge",
                str(package.path),
                5.0,
                package.manifest_bytes.decode(),
            ),
        )
    with SQLiteStore(db_path) as store:
        record = store.model(package.manifest.name, package.manifest.version)
        assert record is not None
        assert (record.stage, record.stage_changed_at, record.signature) == (
            Stage.CANDIDATE,
            5.0,
            None,
        )
        assert record.manifest_bytes == package.manifest_bytes


def test_a_stage_change_planned_on_a_stale_view_changes_nothing(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        done = register_package(
            store,
            tmp_path / "reg",
            model_packages.edge,
            trusted=[],
            key=None,
            by="t",
            at=1.0,
        )
        name, version = done.record.name, done.record.version
        stale = plan_stage_change(name, {version: Stage.CANDIDATE}, version, Stage.CANARY, "a")
        store.change_model_stages(name, stale, 2.0, "first")
        with pytest.raises(ValueError, match="look again"):
            store.change_model_stages(name, stale, 3.0, "second")
        record = store.model(name, version)
        assert record is not None and record.stage is Stage.CANARY
        assert [e.by for e in store.stage_log(name)] == ["t", "first"]
    finally:
        store.close()


def test_registering_straight_into_production_archives_the_production_version(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = ("--data-dir", str(tmp_path / "hub"))
    first = _copy(model_packages.edge, tmp_path / "v1")
    assert _run(capsys, "models", "register", str(first), "--stage", "production", *opts)[0] == 0
    second = _copy(model_packages.edge, tmp_path / "v2")
    manifest = json.loads((second / MANIFEST_FILE).read_text())
    manifest["version"] = "8.0.0"
    (second / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert _run(capsys, "models", "register", str(second), "--stage", "production", *opts)[0] == 0
    code, out, _ = _run(capsys, "models", "list", "--json", *opts)
    stages = {r["version"]: r["stage"] for r in json.loads(out)}
    assert code == 0
    assert stages == {load_package(first).manifest.version: "archived", "8.0.0": "production"}
