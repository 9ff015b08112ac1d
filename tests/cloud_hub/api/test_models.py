"""Models: the list, the manifest and its signature byte for byte, and artifact downloads
with Range resume."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.api.byteranges import ByteRange, RangeNotSatisfiableError, parse_range
from cloud_hub.keys import sign_package
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.store import open_store
from shared.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    load_package,
    manifest_file_bytes,
)
from shared.signing import verify_signature
from tests.cloud_hub.api.conftest import READ_TOKEN, Hub
from tests.cloud_hub.api.server import live_server

pytestmark = pytest.mark.timeout(30)

EDGE = f"/v1/models/machine-edge/{DEFAULT_VERSION}"
HEAVY = f"/v1/models/machine-heavy/{DEFAULT_VERSION}"


def test_model_list(hub: Hub) -> None:
    body = hub.read.get("/v1/models").json()
    listed = [(m["name"], m["version"], m["variant"]) for m in body["models"]]
    assert listed == [
        ("broken-heavy", DEFAULT_VERSION, "heavy"),
        ("machine-edge", DEFAULT_VERSION, "edge"),
        ("machine-heavy", DEFAULT_VERSION, "heavy"),
        ("machine-heavy", "1.2.0", "heavy"),
        ("rig-edge", DEFAULT_VERSION, "edge"),
    ]
    edge = body["models"][1]
    manifest = hub.seeded.edge.manifest
    assert edge["sha256"] == manifest.model.sha256 and edge["size"] == manifest.model.size
    assert edge["quantization"] == "int8-dynamic"
    assert edge["features"] == list(manifest.input.features)
    assert edge["artifact_url"] == f"{EDGE}/artifact" and edge["manifest_url"] == EDGE
    assert edge["signature_url"] == f"{EDGE}/signature"
    # The whole lineage, so the dashboard's models page needs no request per row.
    assert edge["lineage"] == {
        "parent": manifest.lineage.parent,
        "data_window": manifest.lineage.data_window,
        "data_hash": manifest.lineage.data_hash,
        "pipeline_run": manifest.lineage.pipeline_run,
    }
    assert edge["lineage"]["data_hash"] and edge["lineage"]["data_window"]
    assert edge["parent"] == edge["lineage"]["parent"]


def test_manifest_is_the_signed_file_byte_for_byte(hub: Hub) -> None:
    for path, pkg in ((EDGE, hub.seeded.edge), (HEAVY, hub.seeded.heavy)):
        reply = hub.read.get(path)
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.body == (pkg.path / MANIFEST_FILE).read_bytes()
        assert reply.headers["etag"] == f'"{hashlib.sha256(reply.body).hexdigest()}"'


def test_manifest_is_served_as_stored_not_reserialized(hub: Hub) -> None:
    # The seeded edge manifest has one-space indents: a re-serialization would differ.
    served = hub.read.get(EDGE).body
    assert served != manifest_file_bytes(hub.seeded.edge.manifest)
    assert served == hub.seeded.edge.manifest_bytes


def test_signature_is_served_and_verifies_over_the_served_manifest(hub: Hub) -> None:
    for path, pkg in ((EDGE, hub.seeded.edge), (HEAVY, hub.seeded.heavy)):
        sig = hub.read.get(f"{path}/signature")
        assert sig.status == 200
        assert sig.body == (pkg.path / SIGNATURE_FILE).read_bytes()
        assert sig.headers["etag"] == f'"{hashlib.sha256(sig.body).hexdigest()}"'
        check = verify_signature(hub.read.get(path).body, sig.body, [hub.seeded.signer.public])
        assert check.ok and check.key_id == hub.seeded.signer.key_id


def test_signature_of_an_unsigned_or_changed_package(hub: Hub, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(hub.seeded.heavy.path, package)
    (package / SIGNATURE_FILE).unlink()
    pkg = load_package(package)
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        store.register_model(pkg.manifest, str(package), 0.0, manifest_bytes=pkg.manifest_bytes)
        app = create_app(store, ApiConfig(read_token=READ_TOKEN, admin_token=READ_TOKEN[::-1]))
        with live_server(app) as anon:
            client = anon.with_token(READ_TOKEN)
            unsigned = client.get(f"{HEAVY}/signature")
            assert unsigned.status == 404
            assert "not signed" in unsigned.detail and "keys init" in unsigned.detail
            # Signed after a rewrite of its manifest: not the registered bytes, so not served.
            (package / MANIFEST_FILE).write_bytes(pkg.manifest_bytes.replace(b"\n", b"\r\n"))
            sign_package(package, hub.seeded.signer)
            changed = client.get(f"{HEAVY}/signature")
            assert changed.status == 503 and changed.headers.get("retry-after") == "300"
            assert "differs from the registered one" in changed.detail
            assert client.get(HEAVY).body == pkg.manifest_bytes
            # A signature file over the limit is an error, never served cut off.
            (package / MANIFEST_FILE).write_bytes(pkg.manifest_bytes)
            (package / SIGNATURE_FILE).write_bytes(b" " * 5000)
            oversized = client.get(f"{HEAVY}/signature")
            assert oversized.status == 503 and "over 4096 bytes" in oversized.detail
    finally:
        store.close()


def test_artifact_download_equals_the_file(hub: Hub) -> None:
    for path, pkg in ((EDGE, hub.seeded.edge), (HEAVY, hub.seeded.heavy)):
        data = (pkg.path / MODEL_FILE).read_bytes()
        reply = hub.read.get(f"{path}/artifact")
        assert reply.status == 200
        assert reply.body == data
        assert int(reply.headers["content-length"]) == len(data)
        assert reply.headers["accept-ranges"] == "bytes"
        assert reply.headers["etag"] == f'"{pkg.manifest.model.sha256}"'
        assert reply.headers["content-type"] == "application/octet-stream"
        head = hub.read.request("HEAD", f"{path}/artifact")
        assert head.status == 200 and head.body == b""
        assert int(head.headers["content-length"]) == len(data)


def test_range_requests_resume_a_download(hub: Hub) -> None:
    data = (hub.seeded.heavy.path / MODEL_FILE).read_bytes()
    size = len(data)
    url = f"{HEAVY}/artifact"
    for header, lo, hi in (
        ("bytes=100-199", 100, 199),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-50", size - 50, size - 1),
        (f"bytes=0-{size * 2}", 0, size - 1),
    ):
        reply = hub.read.get(url, headers={"Range": header})
        assert reply.status == 206, header
        assert reply.body == data[lo : hi + 1], header
        assert reply.headers["content-range"] == f"bytes {lo}-{hi}/{size}"
        assert int(reply.headers["content-length"]) == hi - lo + 1
    # An interrupted download resumes where it stopped, guarded by If-Range.
    first = hub.read.get(url, headers={"Range": "bytes=0-65535"})
    etag = first.headers["etag"]
    rest = hub.read.get(url, headers={"Range": "bytes=65536-", "If-Range": etag})
    assert rest.status == 206 and first.body + rest.body == data
    stale = hub.read.get(url, headers={"Range": "bytes=65536-", "If-Range": '"other"'})
    assert stale.status == 200 and stale.body == data
    # Several ranges, or another unit: the whole file (RFC 9110 lets a server ignore them).
    for header in ("bytes=0-1,5-9", "items=0-1", "bytes=9-3"):
        reply = hub.read.get(url, headers={"Range": header})
        assert reply.status == 200 and reply.body == data, header


def test_range_past_the_end_is_416(hub: Hub) -> None:
    size = hub.seeded.heavy.manifest.model.size
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        reply = hub.read.get(f"{HEAVY}/artifact", headers={"Range": header})
        assert reply.status == 416, header
        assert reply.headers["content-range"] == f"bytes */{size}"
        assert (
            f"machine-heavy {DEFAULT_VERSION}" in reply.detail and f"below {size}" in reply.detail
        )


def test_unknown_model_or_version_is_404_listing_what_exists(hub: Hub) -> None:
    for suffix in ("", "/artifact"):
        reply = hub.read.get(f"/v1/models/no-such-model/1.0.0{suffix}")
        assert reply.status == 404
        assert "'no-such-model' is not registered" in reply.detail
        assert "machine-heavy" in reply.detail
        reply = hub.read.get(f"/v1/models/machine-heavy/9.9.9{suffix}")
        assert reply.status == 404
        assert "no version '9.9.9'" in reply.detail and f"{DEFAULT_VERSION}, 1.2.0" in reply.detail


def test_a_damaged_artifact_is_503_saying_what_to_do_and_counted(hub: Hub) -> None:
    before = hub.read.get_json("/v1/stats/ingest")["counters"].get("artifact_errors", 0)
    reply = hub.read.get(f"/v1/models/broken-heavy/{DEFAULT_VERSION}/artifact")
    # Bad state on the hub, not the client's fault; asking again at once would not help.
    assert reply.status == 503 and reply.headers.get("retry-after") == "300"
    assert hub.read.get_json("/v1/stats/ingest")["counters"]["artifact_errors"] == before + 1
    assert (
        f"broken-heavy {DEFAULT_VERSION}" in reply.detail
        and "register the model again" in reply.detail
    )
    assert str(hub.seeded.broken_path) not in reply.detail  # paths stay in the log


def test_parse_range_rules() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == ByteRange(2, 4)
    assert parse_range("BYTES = 2 - 4", 10) == ByteRange(2, 4)
    assert parse_range("bytes=-3", 10) == ByteRange(7, 9)
    assert parse_range("bytes=-30", 10) == ByteRange(0, 9)
    assert parse_range("bytes=9-", 10) == ByteRange(9, 9)
    for ignored in ("bytes=", "bytes=-", "bytes=a-b", "bytes=5-2", "bytes=0-1,3-4", "pages=1-2"):
        assert parse_range(ignored, 10) is None, ignored
    for unsatisfiable in ("bytes=10-", "bytes=10-20", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(unsatisfiable, 10)
    assert ByteRange(2, 4).length == 3 and ByteRange(2, 4).content_range(10) == "bytes 2-4/10"
