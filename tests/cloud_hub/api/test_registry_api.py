"""The registry through the API: uploads (``POST /v1/models``), stage changes, the
record with its history, and every listed file served with Range, on a real
uvicorn server with its own store and registry directory."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.api.deps import RegistryFiles
from cloud_hub.store import open_store
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, load_package
from shared.signing import SigningKey, verify_signature
from simulators.harness import HubApi
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

READ = "registry-read-token-0123456789"
ADMIN = "registry-admin-token-0123456789"
UPLOAD_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Registry:
    read: HubApi
    admin: HubApi
    signer: SigningKey
    tmp: Path


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths
) -> Iterator[Registry]:
    tmp = tmp_path_factory.mktemp("registry-api")
    signer = SigningKey.generate()
    store = open_store(f"sqlite:///{tmp / 'hub.db'}")
    config = ApiConfig(read_token=READ, admin_token=ADMIN, model_upload_max_bytes=UPLOAD_LIMIT)
    app = create_app(store, config, registry=RegistryFiles(tmp / "registry", (signer.public,)))
    try:
        with live_server(app) as anon:
            yield Registry(anon.with_token(READ), anon.with_token(ADMIN), signer, tmp)
    finally:
        store.close()


def _zip(
    directory: Path, *, top: str | None = None, extra: dict[str, bytes] | None = None
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, f"{top}/{path.name}" if top else path.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _package(src: Path, dst: Path, *, version: str, signer: SigningKey | None) -> Path:
    shutil.copytree(src, dst)
    (dst / SIGNATURE_FILE).unlink(missing_ok=True)
    manifest = json.loads((dst / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    if signer is not None:
        (dst / SIGNATURE_FILE).write_bytes(signer.sign_manifest((dst / MANIFEST_FILE).read_bytes()))
    return dst


def test_upload_register_then_serve_every_file_with_range(
    registry: Registry, model_packages: ModelPaths
) -> None:
    pkg = _package(
        model_packages.edge, registry.tmp / "up-1", version="5.0.0", signer=registry.signer
    )
    name = load_package(pkg).manifest.name
    body = _zip(pkg, top="5.0.0")
    # The read token may not write; nothing is registered.
    assert registry.read.post("/v1/models", body=body).status == 403
    reply = registry.admin.post(
        "/v1/models", body=body, headers={"Content-Type": "application/zip"}
    )
    assert reply.status == 201, reply.body
    model = reply.json()["model"]
    assert (model["stage"], model["registered_by"]) == ("candidate", "api:admin")
    assert model["signed_by"] == registry.signer.key_id
    # Again: 200, nothing new.
    again = registry.admin.post("/v1/models", body=body)
    assert again.status == 200 and again.json()["new"] is False

    base = f"/v1/models/{name}/5.0.0"
    manifest = registry.read.get(base).body
    assert manifest == (pkg / MANIFEST_FILE).read_bytes()
    sig = registry.read.get(f"{base}/signature").body
    assert verify_signature(manifest, sig, [registry.signer.public]).ok
    for entry in load_package(pkg).manifest.files:
        whole = registry.read.get(f"{base}/files/{entry.path}")
        assert whole.status == 200 and whole.body == (pkg / entry.path).read_bytes()
        assert whole.headers["etag"] == f'"{entry.sha256}"'
        part = registry.read.get(
            f"{base}/files/{entry.path}", headers={"Range": f"bytes={entry.size // 2}-"}
        )
        assert part.status == 206 and part.body == whole.body[entry.size // 2 :]
    missing = registry.read.get(f"{base}/files/nothing.bin")
    assert missing.status == 404 and "its files" in missing.detail

    record = registry.read.get_json(f"{base}/record")
    assert record["model"]["stage"] == "candidate"
    assert [(h["from_stage"], h["to_stage"], h["by"]) for h in record["history"]] == [
        (None, "candidate", "api:admin")
    ]


def test_uploads_that_do_not_verify_are_refused_with_the_reason(
    registry: Registry, model_packages: ModelPaths
) -> None:
    admin = registry.admin
    assert "not a zip" in admin.post("/v1/models", body=b"plain text").detail
    assert admin.post("/v1/models", body=b"plain text").status == 422
    # Signed by a key the hub does not trust.
    stranger = _package(
        model_packages.edge,
        registry.tmp / "stranger",
        version="6.0.0",
        signer=SigningKey.generate(),
    )
    reply = admin.post("/v1/models", body=_zip(stranger))
    assert reply.status == 422 and "reason: unknown_key" in reply.detail
    # A file that is not the one listed.
    tampered = _package(
        model_packages.edge, registry.tmp / "tampered", version="6.0.1", signer=None
    )
    model = tampered / load_package(tampered).manifest.model.file
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    reply = admin.post("/v1/models", body=_zip(tampered))
    assert reply.status == 422 and "sha256" in reply.detail
    # A path out of the package.
    ok = _package(model_packages.edge, registry.tmp / "evil", version="6.0.2", signer=None)
    reply = admin.post("/v1/models", body=_zip(ok, extra={"../escape.txt": b"x"}))
    assert reply.status == 422 and "plain file name" in reply.detail
    assert not (registry.tmp / "registry" / "escape.txt").exists()
    # Over the upload limit: 413 before the body is read.
    big = admin.post("/v1/models", body=b"\0" * (UPLOAD_LIMIT + 1))
    assert big.status == 413
    # Other content under a registered version: 409.
    first = _package(model_packages.edge, registry.tmp / "v7", version="7.0.0", signer=None)
    assert admin.post("/v1/models", body=_zip(first)).status == 201
    changed = registry.tmp / "v7b"
    shutil.copytree(first, changed)
    m = json.loads((changed / MANIFEST_FILE).read_text())
    m["urgent"]["score_threshold"] = 0.321
    (changed / MANIFEST_FILE).write_text(json.dumps(m))
    reply = admin.post("/v1/models", body=_zip(changed))
    assert reply.status == 409 and "immutable" in reply.detail
    # A bad manifest: the reason names the package's file, not where the hub unpacked it.
    bad = registry.tmp / "v8"
    shutil.copytree(first, bad)
    m = json.loads((bad / MANIFEST_FILE).read_text())
    m["version"] = "8.0.0"
    m["latency_budget_ms"] = -1
    (bad / MANIFEST_FILE).write_text(json.dumps(m))
    reply = admin.post("/v1/models", body=_zip(bad))
    assert reply.status == 422 and "latency_budget_ms" in reply.detail
    assert str(registry.tmp) not in reply.detail and "uploads" not in reply.detail
    # No upload left behind.
    assert list((registry.tmp / "registry" / "uploads").iterdir()) == []


def test_stage_changes_through_the_api(registry: Registry, model_packages: ModelPaths) -> None:
    a = _package(model_packages.heavy, registry.tmp / "h1", version="3.0.0", signer=None)
    b = _package(model_packages.heavy, registry.tmp / "h2", version="3.1.0", signer=None)
    name = load_package(a).manifest.name
    for pkg in (a, b):
        assert registry.admin.post("/v1/models", body=_zip(pkg)).status == 201
    path = f"/v1/models/{name}/3.0.0/stage"
    assert registry.read.post(path, json_body={"stage": "production"}).status == 403
    reply = registry.admin.post(path, json_body={"stage": "production", "reason": "first"})
    assert reply.status == 200 and reply.json()["model"]["stage"] == "production"
    reply = registry.admin.post(f"/v1/models/{name}/3.1.0/stage", json_body={"stage": "production"})
    assert [(c["version"], c["to_stage"]) for c in reply.json()["changes"]] == [
        ("3.1.0", "production"),
        ("3.0.0", "archived"),
    ]
    refused = registry.admin.post(path, json_body={"stage": "canary"})
    assert refused.status == 409 and "candidate only" in refused.detail
    assert registry.admin.post(path, json_body={"stage": "gold"}).status == 422
    assert (
        registry.admin.post(f"/v1/models/{name}/9.9.9/stage", json_body={"stage": "canary"}).status
        == 404
    )
    stages = {
        m["version"]: m["stage"]
        for m in registry.read.get_json("/v1/models")["models"]
        if m["name"] == name
    }
    assert stages == {"3.0.0": "archived", "3.1.0": "production"}
