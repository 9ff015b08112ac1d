"""A request body size limit per route path, answered with the API's JSON error body.

Starlette's own limit answers in plain text; this one answers 413 with a
``detail`` like every other error. A declared ``Content-Length`` over the
limit is refused before a byte of the body is read; a body sent without one
(chunked) is counted as it arrives and refused once it goes over.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException, status
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit"]


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        detail=f"the request body is over this route's limit of {limit} bytes; send fewer "
        "rows per request",
    )


class BodySizeLimit:
    """ASGI middleware: at most ``limits[path]`` body bytes for a request to ``path``."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, int]) -> None:
        self.app = app
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            exc = _too_large(limit)
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body read: FastAPI passes an
                    # HTTPException on to the app's handler, which answers JSON.
                    raise _too_large(limit)
            return message

        await self.app(scope, counted, send)
