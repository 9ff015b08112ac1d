"""The body gate answers 401/403/413 from the headers alone, before a byte of the body is sent.

Each live test sends only a request's headers (declaring a 40 MB body, or a
chunked one) over a raw socket and reads the answer: had the server waited
for the body, the read would time out.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import pytest
from starlette.datastructures import Headers

from cloud_hub.api.bodylimit import admit
from cloud_hub.api.config import ApiConfig
from cloud_hub.settings import OPTIONS, resolve_settings
from tests.cloud_hub.api.conftest import ADMIN_TOKEN, READ_TOKEN, Hub

pytestmark = pytest.mark.timeout(60)

FORTY_MB = 40 * 2**20
_READ_TIMEOUT_S = 10.0


def _connect(hub: Hub) -> socket.socket:
    sock = socket.create_connection((hub.read.host, hub.read.port), timeout=_READ_TIMEOUT_S)
    sock.settimeout(_READ_TIMEOUT_S)
    return sock


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One response read off ``sock``: status, headers (lower-case names), JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before answering; got {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        rest += chunk
    return int(status_line.split()[1]), headers, json.loads(rest[:length])


def _predict_head(length: int | None, token: str | None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return _head("POST", "/v1/predict", headers)


@pytest.mark.parametrize("length", [FORTY_MB, None], ids=["content-length", "chunked"])
def test_no_token_is_401_before_the_body_is_sent(hub: Hub, length: int | None) -> None:
    with _connect(hub) as sock:
        sock.sendall(_predict_head(length, token=None))
        status, headers, body = _response(sock)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "needs a token" in body["detail"]


def test_a_wrong_token_is_401_before_the_body_is_sent(hub: Hub) -> None:
    with _connect(hub) as sock:
        sock.sendall(_predict_head(FORTY_MB, token="not-a-token-of-this-hub-at-all"))
        status, headers, body = _response(sock)
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert "not one of this hub's tokens" in body["detail"]


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(hub: Hub) -> None:
    limit = hub.config.predict_body_limit
    with _connect(hub) as sock:
        sock.sendall(_predict_head(limit + 1, token=READ_TOKEN))
        status, _, body = _response(sock)
    assert status == 413
    assert f"limit of {limit} bytes" in body["detail"]
    assert "--predict-max-body-bytes" in body["detail"]


def test_other_paths_are_capped_too(hub: Hub) -> None:
    limit = hub.config.max_body_bytes
    with _connect(hub) as sock:
        sock.sendall(_head("POST", "/healthz", {"Content-Length": str(FORTY_MB)}))
        status, _, body = _response(sock)
    assert (
        status == 413 and "--http-max-body-bytes" in body["detail"] and str(limit) in body["detail"]
    )
    with _connect(hub) as sock:
        sock.sendall(_head("POST", "/v1/dead-letters", {"Content-Length": str(FORTY_MB)}))
        status, _, body = _response(sock)
    assert status == 401, body


def test_the_refused_body_is_streamed_away_and_the_connection_serves_on(hub: Hub) -> None:
    size = 4 * 2**20
    with _connect(hub) as sock:
        sock.sendall(_predict_head(size, token=None))
        status, _, _ = _response(sock)
        assert status == 401
        block = b" " * 65536
        for _ in range(size // len(block)):
            sock.sendall(block)
        sock.sendall(_head("GET", "/v1/devices", {"Authorization": f"Bearer {READ_TOKEN}"}))
        status, _, body = _response(sock)
    assert status == 200 and "devices" in body


def test_with_the_token_a_body_under_the_limit_is_read(hub: Hub) -> None:
    reply = hub.read.post(
        "/v1/predict", json_body={"model": "nope", "version": "1.0.0", "rows": []}
    )
    assert reply.status in (404, 422), reply.body  # the route saw the body
    reply = hub.admin.post(
        "/v1/predict", json_body={"model": "nope", "version": "1.0.0", "rows": []}
    )
    assert reply.status in (404, 422), reply.body


# -- the decision alone, without I/O -----------------------------------------------------------

_CONFIG = ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN, predict_max_body_bytes=10_000)


def _admit(method: str, path: str, **headers: str) -> tuple[int | None, int | None]:
    refusal, cap = admit(
        _CONFIG, method, path, Headers({k.replace("_", "-"): v for k, v in headers.items()})
    )
    return (refusal.status if refusal else None), cap


def test_admit_rules() -> None:
    bearer = f"Bearer {READ_TOKEN}"
    # No body: nothing to gate, the route's own dependency decides.
    assert _admit("GET", "/v1/devices") == (None, None)
    assert _admit("POST", "/v1/predict", content_length="0") == (None, None)
    # A body needs the token first, whatever its size.
    assert _admit("POST", "/v1/predict", content_length="5") == (401, None)
    assert _admit("POST", "/v1/predict", transfer_encoding="chunked") == (401, None)
    assert _admit("POST", "/v1/predict", content_length="5", authorization="Basic eDp5") == (
        401,
        None,
    )
    # With it, the route's cap; a declared size over the cap is refused at once.
    assert _admit("POST", "/v1/predict", content_length="10000", authorization=bearer) == (
        None,
        10_000,
    )
    assert _admit("POST", "/v1/predict", content_length="10001", authorization=bearer) == (
        413,
        None,
    )
    assert _admit("POST", "/v1/predict", transfer_encoding="chunked", authorization=bearer) == (
        None,
        10_000,
    )
    # Any other route: the general cap; outside /v1/ no token is asked for.
    assert _admit("POST", "/v1/devices", content_length="10", authorization=bearer) == (
        None,
        65_536,
    )
    assert _admit("POST", "/healthz", content_length="10") == (None, 65_536)
    assert _admit("POST", "/healthz", content_length="65537") == (413, None)


def test_admit_open_access_under_insecure_dev() -> None:
    config = ApiConfig(read_token=None, admin_token=None, insecure_dev=True)
    refusal, cap = admit(config, "POST", "/v1/predict", Headers({"content-length": "100"}))
    assert refusal is None and cap == config.predict_body_limit


def test_the_limits_are_hub_settings() -> None:
    args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(
        ["--predict-max-body-bytes", "2048", "--http-max-body-bytes", "0"]
    )
    env = {"EDGELOOP_HUB_MAX_PAYLOAD_BYTES": "65536"}
    settings = resolve_settings(args, env=env, serving=False)
    assert (settings.predict_max_body_bytes, settings.http_max_body_bytes) == (2048, 0)
    assert settings.max_payload_bytes == 65536
    defaults = resolve_settings(
        OPTIONS.add_to(argparse.ArgumentParser()).parse_args([]), env={}, serving=False
    )
    assert defaults.predict_max_body_bytes is None and defaults.http_max_body_bytes == 65_536
    assert defaults.max_payload_bytes == 1_048_576
