"""The agent's package download, against a real HTTP server on 127.0.0.1 serving a real
signed package the pipeline built, with Range support and switches to inject faults:
a cut midway, Range ignored, stalls, error statuses, oversized bodies."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import random
import shutil
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.api.byteranges import RangeNotSatisfiableError, parse_range
from cloud_hub.certs import TlsFiles, init_ca
from cloud_hub.store import open_store
from edge_agent.ota.download import (
    PART_SUFFIX,
    TARGET_FILE,
    DownloadError,
    DownloadPolicy,
    DownloadResult,
    FetchedPackage,
    Pacing,
    download_file,
    fetch_package,
)
from shared.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, load_package
from shared.ota import Reason
from shared.package_verify import verify_package
from shared.reasons import OtaReason, RejectReason
from shared.signing import SigningKey
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

TOKEN = "device-token-7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HUB_TOKEN = "read-token-for-download-tests-0123456789"


@dataclass
class Faults:
    """Switches the tests flip; each maps a URL path to its fault."""

    cut_once: dict[str, int] = field(default_factory=dict)
    """Declare the whole body, send this many bytes, close (the first request only)."""
    ignore_range: bool = False
    stall_s: dict[str, float] = field(default_factory=dict)
    """Send the headers, then wait this long (or until the server stops) before the body."""
    status: dict[str, int] = field(default_factory=dict)
    status_headers: dict[str, str] = field(default_factory=dict)
    """Headers sent with a ``status`` answer (``Retry-After``)."""
    unsized_body: dict[str, bytes] = field(default_factory=dict)
    """Serve these bytes instead, without Content-Length (the end is the close)."""


class Request(NamedTuple):
    path: str
    range: str | None
    status: int


class PackageServer:
    """A ThreadingHTTPServer serving ``files`` (URL path -> bytes) to the bearer of TOKEN."""

    def __init__(self, files: dict[str, bytes], tls: ssl.SSLContext | None = None) -> None:
        self.files = files
        self.faults = Faults()
        self.requests: list[Request] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def _log(self, h: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.requests.append(Request(h.path, h.headers.get("Range"), status))

    def _status(self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        self._log(h, status)
        h.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            h.send_header(name, value)
        h.end_headers()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        f = self.faults
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(h, 401, {})
        if h.path in f.status:
            return self._status(h, f.status[h.path], f.status_headers)
        if h.path in f.unsized_body:
            self._log(h, 200)
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(f.unsized_body[h.path])
            h.close_connection = True
            return None
        data = self.files.get(h.path)
        if data is None:
            return self._status(h, 404, {})
        wanted = None if f.ignore_range else h.headers.get("Range")
        try:
            byte_range = parse_range(wanted, len(data))
        except RangeNotSatisfiableError:
            return self._status(h, 416, {"Content-Range": f"bytes */{len(data)}"})
        status, body = 200, data
        if byte_range is not None:
            status, body = 206, data[byte_range.start : byte_range.end + 1]
        self._log(h, status)
        h.send_response(status)
        if byte_range is not None:
            h.send_header("Content-Range", byte_range.content_range(len(data)))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.path in f.stall_s:
            self.stop.wait(f.stall_s[h.path])
        cut = f.cut_once.pop(h.path, None)
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            return None
        h.wfile.write(body)
        return None

    def __enter__(self) -> PackageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class FakeTime:
    """A clock that only the injected sleep moves: backoff waits take no time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def pacing(self) -> Pacing:
        return Pacing(sleep=self.sleep, clock=self.clock, rng=random.Random(3))


@dataclass
class Hub:
    server: PackageServer
    key: SigningKey
    manifest_url: str
    manifest_sha256: str
    model_path: str
    """The URL path of model.onnx."""
    model: bytes
    time: FakeTime

    def fetch(self, staging: Path, **kw: Any) -> FetchedPackage:
        args: dict[str, Any] = {
            "expected_manifest_sha256": self.manifest_sha256,
            "size_limit": 1 << 30,
            "headers": AUTH,
            "pacing": self.time.pacing(),
            "policy": DownloadPolicy(read_timeout_s=5, attempts=3),
        }
        args.update(kw)
        return fetch_package(self.manifest_url, staging, **args)

    def download(self, dest: Path, pacing: Pacing | None = None, **kw: Any) -> DownloadResult:
        """Download model.onnx alone into ``dest``."""
        args: dict[str, Any] = {"max_bytes": 1 << 20, "headers": AUTH}
        args.update(kw)
        url = self.server.url(self.model_path)
        return download_file(url, dest, pacing=pacing or self.time.pacing(), **args)


@pytest.fixture(scope="module")
def signed_package(
    model_packages: ModelPaths, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SigningKey]:
    key = SigningKey.generate()
    root = tmp_path_factory.mktemp("signed") / "machine-edge"
    shutil.copytree(model_packages.edge, root)
    (root / SIGNATURE_FILE).write_bytes(key.sign_manifest((root / MANIFEST_FILE).read_bytes()))
    return root, key


@pytest.fixture
def hub(signed_package: tuple[Path, SigningKey]) -> Iterator[Hub]:
    root, key = signed_package
    manifest = load_package(root).manifest
    base = f"/v1/models/{manifest.name}/{manifest.version}"
    manifest_bytes = (root / MANIFEST_FILE).read_bytes()
    files = {
        base: manifest_bytes,
        f"{base}/signature": (root / SIGNATURE_FILE).read_bytes(),
        **{f"{base}/files/{f.path}": (root / f.path).read_bytes() for f in manifest.files},
    }
    with PackageServer(files) as server:
        yield Hub(
            server,
            key,
            server.url(base),
            hashlib.sha256(manifest_bytes).hexdigest(),
            f"{base}/files/{MODEL_FILE}",
            files[f"{base}/files/{MODEL_FILE}"],
            FakeTime(),
        )


@pytest.fixture(autouse=True)
def no_leaked_sockets() -> Iterator[None]:
    """A failed download must not leave a socket open: the agent downloads for months."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks


def _fails(reason: Reason, call: Callable[[], object]) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    return info.value


def test_a_package_is_staged_and_verifies(hub: Hub, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    got = hub.fetch(staging)
    assert sorted(p.name for p in staging.iterdir()) == [MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE]
    assert verify_package(staging, [hub.key.public]).ok
    assert got.resumes == 0
    assert got.bytes_fetched > len(hub.model)
    base = hub.manifest_url.removeprefix(hub.server.url(""))
    assert hub.server.paths() == [base, f"{base}/signature", hub.model_path]


def test_a_download_cut_midway_resumes_with_a_range_request(hub: Hub, tmp_path: Path) -> None:
    half = len(hub.model) // 2
    assert half > 1000
    hub.server.faults.cut_once[hub.model_path] = half
    staging = tmp_path / "staging"
    got = hub.fetch(staging)
    model_requests = [r for r in hub.server.requests if r.path == hub.model_path]
    assert model_requests == [
        (hub.model_path, None, 200),
        (hub.model_path, f"bytes={half}-", 206),
    ]
    assert got.resumes == 1
    assert (staging / MODEL_FILE).read_bytes() == hub.model
    assert verify_package(staging, [hub.key.public]).ok
    assert len(hub.time.sleeps) == 1 and 1 <= hub.time.sleeps[0] <= 30


def test_a_server_that_ignores_range_restarts_from_zero(hub: Hub, tmp_path: Path) -> None:
    hub.server.faults.cut_once[hub.model_path] = len(hub.model) // 3
    hub.server.faults.ignore_range = True
    dest = tmp_path / MODEL_FILE
    got = hub.download(
        dest,
        max_bytes=len(hub.model),
        expected_size=len(hub.model),
        sha256=hashlib.sha256(hub.model).hexdigest(),
    )
    asked = [r for r in hub.server.requests if r.path == hub.model_path]
    assert [(r.range is not None, r.status) for r in asked] == [(False, 200), (True, 200)]
    assert got.resumes == 0 and got.attempts == 2
    assert got.bytes_fetched == len(hub.model) // 3 + len(hub.model)
    assert dest.read_bytes() == hub.model
    assert not (tmp_path / (MODEL_FILE + PART_SUFFIX)).exists()


def test_an_agent_restarted_mid_download_resumes_its_part_file(hub: Hub, tmp_path: Path) -> None:
    """The first fetch gives up after a cut (one attempt): the file is not there, only
    its .part; the next fetch of the same target keeps that .part and resumes it."""
    third = len(hub.model) // 3
    hub.server.faults.cut_once[hub.model_path] = third
    staging = tmp_path / "staging"
    err = _fails(
        OtaReason.DOWNLOAD_FAILED,
        lambda: hub.fetch(staging, policy=DownloadPolicy(attempts=1)),
    )
    assert "gave up after 1 attempt" in str(err)
    assert not (staging / MODEL_FILE).exists()
    assert (staging / (MODEL_FILE + PART_SUFFIX)).stat().st_size == third
    assert not verify_package(staging, [hub.key.public]).ok  # a .part is never the file
    (staging / "stray.bin").write_bytes(b"x")
    hub.fetch(staging)
    assert hub.server.requests[-1] == (hub.model_path, f"bytes={third}-", 206)
    assert verify_package(staging, [hub.key.public]).ok
    assert not (staging / TARGET_FILE).exists()


def test_leftovers_of_another_target_are_cleaned_at_start(hub: Hub, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "old" / "deep").mkdir(parents=True)
    (staging / TARGET_FILE).write_text("ab" * 32 + "\n")
    (staging / (MODEL_FILE + PART_SUFFIX)).write_bytes(hub.model[:5000])
    (staging / MODEL_FILE).write_bytes(b"a complete file from before")
    hub.fetch(staging)
    assert sorted(p.name for p in staging.iterdir()) == [MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE]
    assert all(r.range is None for r in hub.server.requests)  # the other .part was not resumed
    assert verify_package(staging, [hub.key.public]).ok


def test_manifest_sha256_mismatch_is_refused_before_anything_else(hub: Hub, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    _fails(
        RejectReason.SHA256_MISMATCH,
        lambda: hub.fetch(staging, expected_manifest_sha256="0" * 64),
    )
    assert hub.server.paths() == [hub.manifest_url.removeprefix(hub.server.url(""))]
    assert not (staging / MANIFEST_FILE).exists()
    assert not (staging / (MANIFEST_FILE + PART_SUFFIX)).exists()


def test_a_package_over_the_size_limit_is_refused_before_any_file(hub: Hub, tmp_path: Path) -> None:
    err = _fails(
        OtaReason.TOO_LARGE, lambda: hub.fetch(tmp_path / "s", size_limit=len(hub.model) - 1)
    )
    assert "size limit" in str(err)
    assert hub.model_path not in hub.server.paths()


def test_a_file_declared_or_streamed_beyond_its_limit_stops(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / MODEL_FILE
    err = _fails(OtaReason.TOO_LARGE, lambda: hub.download(dest, max_bytes=1000))
    assert f"declares {len(hub.model)} bytes" in str(err)
    # No Content-Length: stopped once the bytes pass the manifest's size.
    hub.server.faults.unsized_body[hub.model_path] = hub.model + b"\0" * 100_000
    err = _fails(
        OtaReason.TOO_LARGE,
        lambda: hub.download(dest, max_bytes=10 << 20, expected_size=len(hub.model)),
    )
    assert "sent more than" in str(err)
    assert not dest.exists() and not (tmp_path / (MODEL_FILE + PART_SUFFIX)).exists()
    assert hub.time.sleeps == []  # neither is retried


def test_not_enough_free_space_is_refused_before_any_file(hub: Hub, tmp_path: Path) -> None:
    class Usage(NamedTuple):
        total: int
        used: int
        free: int

    err = _fails(
        OtaReason.NO_SPACE,
        lambda: hub.fetch(tmp_path / "s", disk_usage=lambda _p: Usage(1 << 30, 1 << 30, 4096)),
    )
    assert "4096 bytes free" in str(err)
    assert hub.model_path not in hub.server.paths()


def test_a_full_disk_while_writing_is_no_space_and_leaves_nothing(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("edge_agent.ota.download.os.fsync", full)  # the fault: a full disk
    dest = tmp_path / MODEL_FILE
    err = _fails(OtaReason.NO_SPACE, lambda: hub.download(dest))
    assert "disk is full" in str(err) and hub.time.sleeps == []
    assert not dest.exists() and not (tmp_path / (MODEL_FILE + PART_SUFFIX)).exists()


def test_404_and_401_fail_at_once_with_the_status(hub: Hub, tmp_path: Path) -> None:
    hub.server.faults.status[hub.model_path] = 404
    err = _fails(OtaReason.DOWNLOAD_FAILED, lambda: hub.fetch(tmp_path / "a"))
    assert err.status == 404 and "HTTP 404" in str(err)
    assert hub.server.paths().count(hub.model_path) == 1
    err = _fails(
        OtaReason.DOWNLOAD_FAILED,
        lambda: hub.fetch(tmp_path / "b", headers={"Authorization": "Bearer wrong"}),
    )
    assert err.status == 401 and "credential" in str(err)
    assert "wrong" not in str(err) and TOKEN not in str(err)
    assert hub.time.sleeps == []


def test_a_stalled_server_times_out_after_the_retries(hub: Hub, tmp_path: Path) -> None:
    hub.server.faults.stall_s[hub.model_path] = 10.0
    policy = DownloadPolicy(connect_timeout_s=2, read_timeout_s=0.2, attempts=2)
    _fails(OtaReason.DOWNLOAD_TIMEOUT, lambda: hub.fetch(tmp_path / "s", policy=policy))
    assert hub.server.paths().count(hub.model_path) == 2
    assert len(hub.time.sleeps) == 1


def test_retries_are_bounded_in_count_and_in_time(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.server.faults.status[hub.model_path] = 503
    dest = tmp_path / MODEL_FILE
    policy = DownloadPolicy(attempts=4, backoff_min_s=1, backoff_max_s=8)
    err = _fails(OtaReason.DOWNLOAD_FAILED, lambda: hub.download(dest, policy=policy))
    assert err.status == 503 and "gave up after 4 attempt(s)" in str(err)
    assert len(hub.time.sleeps) == 3
    assert all(1 <= s <= min(8, 2**i) for i, s in enumerate(hub.time.sleeps))
    assert "HTTP 503" in caplog.text and TOKEN not in caplog.text
    # The deadline comes first: waits of at least 5 s within 12 s allow 3 requests.
    before = len(hub.server.requests)
    timed = FakeTime()
    policy = DownloadPolicy(attempts=100, backoff_min_s=5, backoff_max_s=5, deadline_s=12)
    _fails(
        OtaReason.DOWNLOAD_FAILED,
        lambda: hub.download(dest, timed.pacing(), policy=policy),
    )
    assert len(hub.server.requests) - before == 3 and timed.sleeps == [5, 5]


def test_a_server_asking_to_retry_later_than_the_backoff_fails_at_once(
    hub: Hub, tmp_path: Path
) -> None:
    """The hub answers 503 with Retry-After 300 when its copy of a file is damaged: waiting
    within this download would not help; the update's own retry comes back later."""
    hub.server.faults.status[hub.model_path] = 503
    hub.server.faults.status_headers["Retry-After"] = "300"
    err = _fails(OtaReason.DOWNLOAD_FAILED, lambda: hub.download(tmp_path / MODEL_FILE))
    assert err.status == 503 and "asks to retry after 300 s" in str(err)
    assert hub.server.paths().count(hub.model_path) == 1 and hub.time.sleeps == []
    hub.server.faults.status_headers["Retry-After"] = "2"  # within the backoff: retried
    policy = DownloadPolicy(attempts=2)
    _fails(OtaReason.DOWNLOAD_FAILED, lambda: hub.download(tmp_path / MODEL_FILE, policy=policy))
    assert hub.server.paths().count(hub.model_path) == 3 and len(hub.time.sleeps) == 1


def test_a_corrupt_file_is_a_sha256_mismatch_and_leaves_nothing(hub: Hub, tmp_path: Path) -> None:
    hub.server.files[hub.model_path] = bytes(len(hub.model))
    staging = tmp_path / "staging"
    _fails(RejectReason.SHA256_MISMATCH, lambda: hub.fetch(staging))
    assert not (staging / MODEL_FILE).exists()
    assert not (staging / (MODEL_FILE + PART_SUFFIX)).exists()


def test_a_part_longer_than_the_server_has_is_a_416(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / MODEL_FILE
    (tmp_path / (MODEL_FILE + PART_SUFFIX)).write_bytes(hub.model + b"extra")
    err = _fails(OtaReason.DOWNLOAD_FAILED, lambda: hub.download(dest))
    assert err.status == 416 and "416" in str(err)
    assert not (tmp_path / (MODEL_FILE + PART_SUFFIX)).exists()


def test_a_refused_connection_is_retried_then_fails(tmp_path: Path) -> None:
    with PackageServer({}) as server:
        url = server.url("/v1/models/m/1.0.0")
    fake = FakeTime()
    err = _fails(
        OtaReason.DOWNLOAD_FAILED,
        lambda: download_file(
            url,
            tmp_path / "x",
            max_bytes=100,
            policy=DownloadPolicy(connect_timeout_s=2, attempts=2),
            pacing=fake.pacing(),
        ),
    )
    assert "connection failed" in str(err) and err.status is None
    assert len(fake.sleeps) == 1 and not (tmp_path / "x").exists()
    err = _fails(
        OtaReason.DOWNLOAD_FAILED,
        lambda: download_file("ftp://127.0.0.1/m", tmp_path / "x", max_bytes=100),
    )
    assert "must be an absolute http:// or https:// URL" in str(err)


def test_https_verifies_the_hub_with_the_ca_given(hub: Hub, tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    init_ca(files, ["127.0.0.1"])
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(files.server_cert, files.server_key)
    with PackageServer(hub.server.files, server_tls) as server:
        url = server.url(hub.model_path)
        trusting = ssl.create_default_context(cafile=str(files.ca_cert))
        got = download_file(url, tmp_path / "a", max_bytes=1 << 20, headers=AUTH, tls=trusting)
        assert (tmp_path / "a").read_bytes() == hub.model and got.attempts == 1
        fake = FakeTime()
        err = _fails(  # the system's CAs do not know the hub's
            OtaReason.DOWNLOAD_FAILED,
            lambda: download_file(
                url, tmp_path / "b", max_bytes=1 << 20, headers=AUTH, pacing=fake.pacing()
            ),
        )
        assert "certificate does not verify" in str(err) and fake.sleeps == []


def test_a_package_from_the_hub_api_is_staged_resumed_and_verifies(
    signed_package: tuple[Path, SigningKey], tmp_path: Path
) -> None:
    """The hub's own routes (manifest, signature, /files/{path} with Range) under uvicorn:
    an agent restarted with half of model.onnx in its .part resumes it with a 206."""
    root, key = signed_package
    pkg = load_package(root)
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        store.register_model(
            pkg.manifest, str(root), time.time(), manifest_bytes=pkg.manifest_bytes
        )
        config = ApiConfig(read_token=HUB_TOKEN, admin_token=HUB_TOKEN[::-1])
        with live_server(create_app(store, config)) as api:
            url = f"{api.base_url}/v1/models/{pkg.manifest.name}/{pkg.manifest.version}"
            sha = hashlib.sha256(pkg.manifest_bytes).hexdigest()
            staging = tmp_path / "staging"
            staging.mkdir()
            (staging / TARGET_FILE).write_text(sha + "\n")
            model = (root / MODEL_FILE).read_bytes()
            half = len(model) // 2
            (staging / (MODEL_FILE + PART_SUFFIX)).write_bytes(model[:half])
            auth = {"Authorization": f"Bearer {HUB_TOKEN}"}
            got = fetch_package(
                url, staging, expected_manifest_sha256=sha, size_limit=1 << 30, headers=auth
            )
            assert got.resumes == 1
            assert got.bytes_fetched == (
                len(pkg.manifest_bytes) + (root / SIGNATURE_FILE).stat().st_size + len(model) - half
            )
            assert verify_package(staging, [key.public]).ok
            err = _fails(
                OtaReason.DOWNLOAD_FAILED,
                lambda: fetch_package(
                    url,
                    tmp_path / "other",
                    expected_manifest_sha256=sha,
                    size_limit=1 << 30,
                    headers={"Authorization": "Bearer not-the-token"},
                ),
            )
            assert err.status == 401
    finally:
        store.close()


def test_a_part_as_long_as_the_file_is_fetched_again_not_trusted(hub: Hub, tmp_path: Path) -> None:
    """A crash between the last write and the rename leaves a full-length .part: it is
    not taken as the file (it was never checked); the download starts over."""
    (tmp_path / (MODEL_FILE + PART_SUFFIX)).write_bytes(bytes(len(hub.model)))
    got = hub.download(
        tmp_path / MODEL_FILE,
        expected_size=len(hub.model),
        sha256=hashlib.sha256(hub.model).hexdigest(),
    )
    assert hub.server.requests == [(hub.model_path, None, 200)]
    assert got.bytes_fetched == len(hub.model) and got.resumes == 0
    assert (tmp_path / MODEL_FILE).read_bytes() == hub.model
