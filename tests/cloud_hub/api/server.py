"""A real uvicorn server in a thread, for an app on a store the test filled itself.

The server binds an ephemeral loopback port; ``live_server`` yields a client for
it (:class:`simulators.harness.HubApi`, without a token) once uvicorn has
finished its start-up (lifespan included), signalled by an event rather than
polled.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from simulators.harness import HOST, HubApi

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


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
def live_server(app: FastAPI) -> Iterator[HubApi]:
    """Serve ``app`` on 127.0.0.1, an ephemeral port, in a thread; yield a client for it."""
    config = uvicorn.Config(app, host=HOST, port=0, log_level="warning", lifespan="on")
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(_START_TIMEOUT) or not server.started:
            raise RuntimeError("uvicorn did not start; see the captured log")
        port: int = server.servers[0].sockets[0].getsockname()[1]
        yield HubApi(f"http://{HOST}:{port}")
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {_STOP_TIMEOUT} s")
