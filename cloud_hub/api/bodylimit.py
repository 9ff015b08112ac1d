"""The body gate: the token is checked and the size capped before a byte of a body is read.

FastAPI reads (and parses) a request's whole body before it runs a route's
dependencies, so a token check in a dependency comes after the body is in
memory: eight strangers sending 40 MB each would cost the hub 320 MB before
each got its 401. :class:`BodyGate` is pure ASGI middleware in front of the
app that decides from the request line and headers alone:

- a request under ``/v1/`` that carries a body (``Content-Length`` above 0, or
  ``Transfer-Encoding``) needs the token its route needs (:data:`BODY_ROUTES`
  says which, the read token otherwise); without it, the answer is the same
  401/403 the route would give, and no body byte is read;
- every body is capped: the route's own limit (``predict_max_body_bytes`` for
  ``POST /v1/predict``), ``http_max_body_bytes`` for any other request (the
  hub's settings of those names). A declared
  ``Content-Length`` over it is a 413 at once; a chunked body is counted as
  the app reads it and refused with 413 once it goes over.

What the gate does not read, uvicorn throws away as it arrives once the answer
is sent (it buffers at most 64 KiB of a body the app has not asked for, and
sends ``100 Continue`` only when the app asks), and the connection stays
usable for the next request. :func:`admit` is the decision, without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub.api.auth import Refusal, check_access
from cloud_hub.api.config import Access, ApiConfig

__all__ = ["BODY_ROUTES", "BodyGate", "BodyRoute", "admit"]

_GUARDED_PREFIX: Final = "/v1/"
_NO_TOKEN: Final = frozenset({("POST", "/v1/session/exchange")})
"""Routes under the prefix whose body is their credential (a one-time sign-in code)."""


@dataclass(frozen=True, slots=True)
class BodyRoute:
    """A route that reads a body: the access it needs and the setting that caps its body."""

    access: Access
    limit_setting: str


BODY_ROUTES: Final[dict[tuple[str, str], BodyRoute]] = {
    ("POST", "/v1/predict"): BodyRoute("read", "predict_max_body_bytes"),
    ("POST", "/v1/batch/jobs"): BodyRoute("admin", "http_max_body_bytes"),
    ("POST", "/v1/models"): BodyRoute("admin", "model_upload_max_bytes"),
}
"""Routes that read a request body, by method and path."""
_OTHER: Final = BodyRoute("read", "http_max_body_bytes")


def _limit(config: ApiConfig, route: BodyRoute) -> int:
    if route.limit_setting == "predict_max_body_bytes":
        return config.predict_body_limit
    if route.limit_setting == "model_upload_max_bytes":
        return config.model_upload_max_bytes
    return config.max_body_bytes


def _too_large(method: str, path: str, limit: int, setting: str, declared: int | None) -> Refusal:
    size = f"declares {declared} bytes" if declared is not None else "goes"
    hint = "; send fewer rows per request" if setting == "predict_max_body_bytes" else ""
    return Refusal(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body {size} over the limit of {limit} bytes for {method} {path} "
        f"(the hub's --{setting.replace('_', '-')} setting){hint}",
    )


def admit(
    config: ApiConfig, method: str, path: str, headers: Headers
) -> tuple[Refusal | None, int | None]:
    """``(refusal, cap)`` for a request, from its line and headers only.

    ``refusal`` is the answer to send instead of reading the body (None: let
    it in); ``cap`` is how many body bytes the app may then read (None: the
    request declares no body, so there is nothing to count).

    >>> config = ApiConfig(read_token="r" * 16, admin_token="a" * 16)
    >>> no_token = Headers({"content-length": "40000000"})
    >>> admit(config, "POST", "/v1/predict", no_token)[0].status
    401
    >>> admit(config, "GET", "/v1/devices", Headers({}))
    (None, None)
    """
    route = BODY_ROUTES.get((method, path), _OTHER)
    limit = _limit(config, route)
    length = headers.get("content-length")
    chunked = "transfer-encoding" in headers
    declared = int(length) if length is not None and length.strip().isdigit() else None
    if not chunked and (declared is None or declared == 0):
        # No body: whatever the route needs, its own dependency checks.
        return None, None
    if path.startswith(_GUARDED_PREFIX) and (method, path) not in _NO_TOKEN:
        refusal = check_access(config, headers.get("authorization"), route.access, method, path)
        if refusal is not None:
            return refusal, None
    if declared is not None and declared > limit:
        return _too_large(method, path, limit, route.limit_setting, declared), None
    return None, limit


def _respond(refusal: Refusal) -> JSONResponse:
    return JSONResponse(
        {"detail": refusal.detail}, status_code=refusal.status, headers=refusal.headers or None
    )


class BodyGate:
    """ASGI middleware: :func:`admit` every HTTP request before its body is read."""

    def __init__(self, app: ASGIApp, config: ApiConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        refusal, cap = admit(self.config, method, path, Headers(scope=scope))
        if refusal is not None:
            await _respond(refusal)(scope, receive, send)
            return
        if cap is None:
            await self.app(scope, receive, send)
            return
        limit = cap
        setting = BODY_ROUTES.get((method, path), _OTHER).limit_setting
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = _too_large(method, path, limit, setting, None)
                    # Raised inside the app's body read: FastAPI passes an
                    # HTTPException on to the app's handler, which answers JSON.
                    raise HTTPException(over.status, detail=over.detail)
            return message

        await self.app(scope, counted, send)
