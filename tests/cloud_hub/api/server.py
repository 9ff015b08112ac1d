"""A real uvicorn server in a thread, and a small HTTP client for it (standard library only).

The server binds an ephemeral loopback port; ``start`` returns once uvicorn
has finished its start-up (lifespan included), signalled by an event rather
than polled.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_REQUEST_TIMEOUT = 20.0


class _Server(uvicorn.Server):
    """uvicorn.Server that says when start-up is over (whether or not it succeeded)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


@contextmanager
def live_server(app: FastAPI) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1, an ephemeral port, in a thread; yield the port."""
    config = uvicorn.Config(app, host=HOST, port=0, log_level="warning", lifespan="on")
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(_START_TIMEOUT) or not server.started:
            raise RuntimeError("uvicorn did not start; see the captured log")
        port: int = server.servers[0].sockets[0].getsockname()[1]
        yield port
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {_STOP_TIMEOUT} s")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def detail(self) -> str:
        detail = self.json()["detail"]
        assert isinstance(detail, str), detail
        return detail


@dataclass(frozen=True)
class Client:
    port: int
    token: str | None = None

    def with_token(self, token: str | None) -> Client:
        return Client(self.port, token)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(HOST, self.port, timeout=_REQUEST_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            # Header names are case-insensitive; keep them lower-case for lookups.
            got = {k.lower(): v for k, v in resp.getheaders()}
            return Reply(resp.status, got, data)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)
