"""``edgeloop-hub keys`` and ``models verify``, and packages signed where the hub builds them."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

import pytest

from cloud_hub.cli import main
from cloud_hub.keys import KeyFiles, KeysError, sign_packages, signing_key_for
from cloud_hub.pipeline.build import DEFAULT_VERSION
from shared.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, load_package
from shared.secret_file import write_private
from shared.signing import SigningKey, load_public_key, verify_signature
from tests.cloud_hub.test_hub_cli import _call, _serving
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _private_body(path: Path) -> str:
    """The base64 body of a PEM private key: what must never be printed or logged."""
    return "".join(path.read_text().splitlines()[1:-1])


def test_keys_init_writes_0600_prints_only_the_public_key_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "hub"
    caplog.set_level(logging.DEBUG)
    code, out, err = _run(capsys, "-vv", "keys", "init", "--data-dir", str(data))
    assert code == 0, err
    files = KeyFiles(data / "keys")
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.public.stat().st_mode) & 0o022 == 0  # no one else writes it
    public = load_public_key(files.public.read_bytes())
    assert f"key id        {public.key_id}" in out
    assert public.pem() in out
    secret = _private_body(files.private)
    for text in (out, err, caplog.text):
        assert secret not in text and secret[:24] not in text and "PRIVATE KEY" not in text

    before = files.private.read_bytes()
    code, out, err = _run(capsys, "keys", "init", "--data-dir", str(data))
    assert code == 2 and out == ""
    assert "already exists" in err and public.key_id in err and "To rotate" in err
    assert "--keys-dir NEW_DIR" in err and secret not in err
    assert files.private.read_bytes() == before

    code, out, err = _run(capsys, "keys", "show", "--data-dir", str(data))
    assert code == 0 and public.key_id in out and public.pem() in out
    assert secret not in out + err
    files.public.unlink()  # lost: keys show derives it from the private key
    code, out, err = _run(capsys, "keys", "show", "--data-dir", str(data))
    assert code == 0 and public.pem() in out and "is missing" in out and secret not in out
    # Another directory: a second key for rotation.
    code, out, _ = _run(capsys, "keys", "init", "--keys-dir", str(tmp_path / "next"))
    assert code == 0 and public.key_id not in out
    code, _, err = _run(capsys, "keys", "show", "--keys-dir", str(tmp_path / "none"))
    assert code == 2 and "keys init --keys-dir" in err


def test_a_signing_key_others_may_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_bytes(SigningKey.generate().to_pem())
    key.chmod(0o644)
    with pytest.raises(KeysError, match="chmod 600") as info:
        signing_key_for(key, tmp_path)
    assert "BEGIN" not in str(info.value)
    with pytest.raises(KeysError, match="does not exist"):
        signing_key_for(tmp_path / "missing.key", tmp_path)
    assert signing_key_for(None, tmp_path) is None  # no default key: unsigned, no error


def test_models_verify(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    package = tmp_path / "machine-edge"
    shutil.copytree(model_packages.edge, package)
    (package / SIGNATURE_FILE).unlink(missing_ok=True)
    code, _, err = _run(capsys, "models", "verify", str(package), "--data-dir", str(data))
    assert code == 2 and "no trusted public key" in err and "keys init" in err

    assert _run(capsys, "keys", "init", "--data-dir", str(data))[0] == 0
    code, _, err = _run(capsys, "models", "verify", str(package), "--data-dir", str(data))
    assert code == 1 and "does not verify: unsigned" in err

    [line] = sign_packages(None, data, [package])
    key_id = load_public_key((data / "keys" / "signing.pub").read_bytes()).key_id
    assert f"signed by key id {key_id}" in line
    assert sign_packages(None, data, [package]) == [f"{package}: already signed by key id {key_id}"]
    code, out, err = _run(capsys, "models", "verify", str(package), "--data-dir", str(data))
    assert code == 0, err
    assert f"ok   {MODEL_FILE}:" in out and f"ok   {SIGNATURE_FILE}:" in out
    assert (
        out.splitlines()[-1]
        == f"verified: machine-edge {DEFAULT_VERSION}, signed by key id {key_id}"
    )

    # Rotation: trust two keys; either verifies.
    other = tmp_path / "other"
    assert _run(capsys, "keys", "init", "--keys-dir", str(other))[0] == 0
    trust_both = ("--trust", str(other / "signing.pub"), "--trust", str(data / "keys/signing.pub"))
    assert _run(capsys, "models", "verify", str(package), *trust_both)[0] == 0
    code, _, err = _run(
        capsys, "models", "verify", str(package), "--trust", str(other / "signing.pub")
    )
    assert code == 1 and "does not verify: unknown_key" in err

    with (package / MODEL_FILE).open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xfe")
    code, out, err = _run(capsys, "models", "verify", str(package), "--data-dir", str(data))
    assert code == 1 and "does not verify: sha256_mismatch" in err and f"FAIL {MODEL_FILE}" in out

    code, _, err = _run(
        capsys, "models", "verify", str(package), "--trust", str(package / MODEL_FILE)
    )
    assert code == 2 and "--trust" in err and "Traceback" not in err


def test_the_hub_signs_its_default_build_and_serves_the_signature(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unsigned packages where the hub looks for its default build; a key from keys init.
    for package in (model_packages.edge, model_packages.heavy):
        target = tmp_path / "var" / "models" / package.parent.name / DEFAULT_VERSION
        shutil.copytree(package, target)
        (target / SIGNATURE_FILE).unlink(missing_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert _run(capsys, "keys", "init")[0] == 0
    finally:
        os.chdir(cwd)
    public = load_public_key((tmp_path / "var/hub/keys/signing.pub").read_bytes())
    read, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    write_private(tmp_path / "read-token", read + "\n")
    write_private(tmp_path / "admin-token", admin + "\n")
    flags = ("--read-token-file", "read-token", "--admin-token-file", "admin-token")
    with _serving(*flags, "--http-port", "0", "--broker-port", "0", cwd=tmp_path) as api:
        for name in ("machine-edge", "machine-heavy"):
            package = tmp_path / "var" / "models" / name / DEFAULT_VERSION
            status, manifest = _call(f"{api}/v1/models/{name}/{DEFAULT_VERSION}", read)
            assert status == 200 and manifest == (package / MANIFEST_FILE).read_bytes()
            status, sig = _call(f"{api}/v1/models/{name}/{DEFAULT_VERSION}/signature", read)
            assert status == 200 and sig == (package / SIGNATURE_FILE).read_bytes()
            assert verify_signature(manifest, sig, [public]).key_id == public.key_id
            assert load_package(package).signature == sig
    secret = _private_body(tmp_path / "var/hub/keys/signing.key")
    assert secret[:24] not in (tmp_path / "hub.log").read_text()


def test_keys_init_refuses_a_public_key_without_its_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = KeyFiles(tmp_path / "hub" / "keys")
    files.directory.mkdir(parents=True)
    files.public.write_text("someone else's public key\n")
    code, out, err = _run(capsys, "keys", "init", "--data-dir", str(tmp_path / "hub"))
    assert code == 2 and out == ""
    assert "exists without its signing key" in err and "move it away" in err
    assert not files.private.exists()
    assert files.public.read_text() == "someone else's public key\n"
