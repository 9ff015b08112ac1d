"""Verifying a package directory: every listed file, nothing unlisted, the signature over
the manifest's bytes on disk; each reason to refuse, on a real package the pipeline built."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from shared.errors import ManifestError
from shared.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelManifest,
    load_package,
    manifest_file_bytes,
)
from shared.package_verify import verify_package
from shared.reasons import RejectReason
from shared.signing import SigningKey
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)


def sign_package(root: Path, key: SigningKey) -> None:
    (root / SIGNATURE_FILE).write_bytes(key.sign_manifest((root / MANIFEST_FILE).read_bytes()))


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def package(tmp_path: Path, model_packages: ModelPaths, key: SigningKey) -> Path:
    """A signed copy of the default edge package."""
    root = tmp_path / "machine-edge"
    shutil.copytree(model_packages.edge, root)
    (root / SIGNATURE_FILE).unlink(missing_ok=True)
    sign_package(root, key)
    return root


def _reasons(path: Path, key: SigningKey) -> list[RejectReason | None]:
    return [c.reason for c in verify_package(path, [key.public]).checks]


def test_a_signed_package_verifies_and_says_what_it_checked(package: Path, key: SigningKey) -> None:
    result = verify_package(package, [key.public])
    assert result.ok and result.reason is None and result.failure is None
    assert result.key_id == key.key_id
    assert result.manifest is not None and result.manifest.name == "machine-edge"
    assert [c.what for c in result.checks] == [MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE]
    assert "sha256 matches" in result.checks[1].detail


def test_the_manifest_lists_every_file_with_sha256_and_size(package: Path) -> None:
    manifest = load_package(package).manifest
    files = {f.path: (f.sha256, f.size) for f in manifest.files}
    assert files == {MODEL_FILE: (manifest.model.sha256, manifest.model.size)}


def test_tampered_manifest_byte_is_a_bad_signature(package: Path, key: SigningKey) -> None:
    mpath = package / MANIFEST_FILE
    data = mpath.read_bytes()
    # The same JSON with one byte changed: whitespace still parses and lists the same files.
    mpath.write_bytes(data.replace(b"\n", b" \n", 1))
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.BAD_SIGNATURE
    assert result.checks[0].ok and result.checks[1].ok  # everything else still holds
    # And a changed value: still parses, still a bad signature.
    obj = json.loads(data)
    obj["urgent"]["score_threshold"] = 0.99
    mpath.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n")
    assert verify_package(package, [key.public]).reason is RejectReason.BAD_SIGNATURE


def test_tampered_model_file_is_a_sha256_mismatch(package: Path, key: SigningKey) -> None:
    model = package / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.SHA256_MISMATCH
    assert result.failure is not None and result.failure.what == MODEL_FILE
    assert _reasons(package, key)[-1] is None  # the signature over the manifest still holds


def test_wrong_size_is_a_size_mismatch(package: Path, key: SigningKey) -> None:
    with (package / MODEL_FILE).open("ab") as fh:
        fh.write(b"\0")
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.SIZE_MISMATCH
    assert result.failure is not None and "bytes where the manifest says" in result.failure.detail


def test_missing_file(package: Path, key: SigningKey) -> None:
    (package / MODEL_FILE).unlink()
    assert verify_package(package, [key.public]).reason is RejectReason.MISSING_FILE


def test_unlisted_file_and_directory(package: Path, key: SigningKey) -> None:
    (package / "extra.onnx").write_bytes(b"x")
    (package / ".hidden").mkdir()
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.UNLISTED_FILE
    unlisted = [c.what for c in result.checks if c.reason is RejectReason.UNLISTED_FILE]
    assert unlisted == [".hidden", "extra.onnx"]


def test_unknown_key_and_rotation(package: Path, key: SigningKey) -> None:
    new = SigningKey.generate()
    assert verify_package(package, [new.public]).reason is RejectReason.UNKNOWN_KEY
    assert verify_package(package, [new.public, key.public]).key_id == key.key_id
    sign_package(package, new)  # re-signed by the new key: the old one alone no longer does
    assert verify_package(package, [key.public, new.public]).key_id == new.key_id
    assert verify_package(package, [key.public]).reason is RejectReason.UNKNOWN_KEY


def test_bad_signature_from_another_key_under_the_trusted_id(
    package: Path, key: SigningKey
) -> None:
    forger = SigningKey.generate()
    forged = json.loads(forger.sign_manifest((package / MANIFEST_FILE).read_bytes()))
    forged["key_id"] = key.key_id
    (package / SIGNATURE_FILE).write_text(json.dumps(forged))
    assert verify_package(package, [key.public]).reason is RejectReason.BAD_SIGNATURE


def test_malformed_signature_file(package: Path, key: SigningKey) -> None:
    for data in (b"", b"garbage", bytes(64), b"{" * 10_000):
        (package / SIGNATURE_FILE).write_bytes(data)
        assert verify_package(package, [key.public]).reason is RejectReason.MALFORMED_SIGNATURE


def test_unsigned(package: Path, key: SigningKey) -> None:
    (package / SIGNATURE_FILE).unlink()
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.UNSIGNED and "keys init" in result.checks[-1].detail


def test_malformed_manifest_or_one_without_a_file_list(package: Path, key: SigningKey) -> None:
    mpath = package / MANIFEST_FILE
    manifest = ModelManifest.from_dict(json.loads(mpath.read_bytes()))
    # An older manifest lists no files: it loads, but cannot be verified.
    older = manifest.to_dict()
    del older["files"]
    old = ModelManifest.from_dict(older)
    assert old.files == ()
    mpath.write_bytes(manifest_file_bytes(old))
    sign_package(package, key)
    load_package(package)
    result = verify_package(package, [key.public])
    assert result.reason is RejectReason.MALFORMED_MANIFEST and "rebuild" in result.checks[0].detail
    assert result.checks[-1].ok  # its signature is fine: that is not enough
    mpath.write_bytes(b"{not json")
    assert verify_package(package, [key.public]).reason is RejectReason.MALFORMED_MANIFEST
    with pytest.raises(ManifestError, match="not a directory"):
        verify_package(package / MODEL_FILE, [key.public])


def test_a_latency_budget_is_signed_and_a_manifest_without_one_still_verifies(
    package: Path, key: SigningKey
) -> None:
    mpath = package / MANIFEST_FILE
    built = load_package(package).manifest
    assert built.latency_budget_ms == 20.0  # the default build writes one
    assert verify_package(package, [key.public]).ok
    # A package written before the field: still valid, its signature still verifies.
    mpath.write_bytes(manifest_file_bytes(dataclasses.replace(built, latency_budget_ms=None)))
    sign_package(package, key)
    assert b"latency_budget_ms" not in mpath.read_bytes()
    result = verify_package(package, [key.public])
    assert result.ok and result.manifest is not None and result.manifest.latency_budget_ms is None
    # The budget is covered by the signature: changing it breaks it.
    mpath.write_bytes(manifest_file_bytes(dataclasses.replace(built, latency_budget_ms=500.0)))
    assert verify_package(package, [key.public]).reason is RejectReason.BAD_SIGNATURE


def test_files_list_rules(package: Path) -> None:
    d = json.loads((package / MANIFEST_FILE).read_bytes())
    entry = d["files"][0]
    for files, why in (
        ([entry, entry], "twice"),
        ([{**entry, "path": "../model.onnx"}], "plain file name"),
        ([entry, {**entry, "path": MANIFEST_FILE}], "cannot list itself"),
        ([{**entry, "size": entry["size"] + 1}], "sha256 and size of the 'model'"),
        ([{**entry, "sha256": "AB" * 32}], "64 lowercase hex"),
        ([], "sha256 and size of the 'model'"),
    ):
        with pytest.raises(ManifestError, match=why):
            ModelManifest.from_dict({**d, "files": files})


def test_load_package_checks_every_listed_file(package: Path) -> None:
    d = json.loads((package / MANIFEST_FILE).read_bytes())
    (package / "labels.txt").write_bytes(b"normal\nfault\nurgent\n")
    d["files"].append({"path": "labels.txt", "sha256": "0" * 64, "size": 20})
    (package / MANIFEST_FILE).write_bytes(json.dumps(d).encode())
    with pytest.raises(ManifestError, match=r"labels\.txt: sha256") as info:
        load_package(package)
    assert info.value.field == "files[1].sha256"
