"""Error responses: every one is JSON with a ``detail`` that says what is wrong and what to do.

Handlers installed by :func:`cloud_hub.api.app.create_app`:

- request validation (422): ``detail`` is one line naming each bad parameter or
  field (``query parameter 'limit'``, ``body rows[3]['temperature_last']``), and
  ``errors`` lists them for programs; the offending input is never echoed back;
- Starlette's bare defaults (unknown route, wrong method) are reworded to say
  what to do;
- :class:`~cloud_hub.api.artifacts.ArtifactError` (a registered file missing, or
  not the size or sha256 registered: bad state on the hub, no fault of the
  client) is a 503 that names the model and what the operator must do, with
  ``Retry-After`` (:data:`ARTIFACT_RETRY_AFTER_S`): asking again at once would get
  the same answer. Each one is logged and counted (``artifact_errors`` in
  ``/v1/stats/ingest`` counters);
- anything else is a 500 whose detail points at the hub log (the server logs
  the traceback).

:func:`responses` documents the error codes of a route in the OpenAPI schema.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_hub.api.artifacts import ArtifactError
from cloud_hub.api.deps import STATE_KEY
from cloud_hub.api.schemas import ErrorOut, ValidationErrorOut

__all__ = ["ARTIFACT_RETRY_AFTER_S", "install_handlers", "responses"]

log = logging.getLogger(__name__)

_SHOWN_ISSUES: Final = 5
ARTIFACT_RETRY_AFTER_S: Final = 300
"""The ``Retry-After`` of an :class:`ArtifactError`'s 503: an operator must restore the file."""
_DESCRIPTIONS: Final = {
    401: "No token, or not one of the hub's tokens (`WWW-Authenticate: Bearer`).",
    403: "The read token on a route that needs the admin token.",
    404: "No such device, model or version.",
    409: "The change conflicts with the registry's rules or its current state.",
    413: "Too many rows, or a body over the size limit.",
    416: "The Range starts beyond the end of the file.",
    422: "A parameter or body field is missing, mistyped or out of range.",
    500: "The hub failed; the detail says where to look.",
    503: "The store cannot be reached, or a registered file is not as registered "
    "(`Retry-After` says when to ask again).",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with its body schema."""
    return {
        code: {
            "model": ValidationErrorOut if code == 422 else ErrorOut,
            "description": _DESCRIPTIONS[code],
        }
        for code in codes
    }


def _where(loc: Sequence[str | int]) -> str:
    """``("body", "rows", 3, "x")`` -> ``body rows[3]['x']``; ``("query", "limit")`` ->
    ``query parameter 'limit'``."""
    if not loc:
        return "request"
    source, rest = loc[0], list(loc[1:])
    if source in ("query", "path", "header", "cookie") and len(rest) == 1:
        return f"{source} parameter {rest[0]!r}"
    if source == "body" and rest and isinstance(rest[0], int) and len(rest) == 1:
        return f"body (at character {rest[0]})"  # JSON decode errors carry a position
    text = str(source)
    for i, part in enumerate(rest):
        if isinstance(part, int):
            text += f"[{part}]"
        elif i == 0:
            text += f" {part}"
        else:
            text += f"[{part!r}]"
    return text


def _issue(error: dict[str, Any]) -> dict[str, Any]:
    msg = str(error.get("msg", "invalid"))
    ctx = error.get("ctx")
    if error.get("type") == "json_invalid" and isinstance(ctx, dict) and "error" in ctx:
        msg = f"the body is not valid JSON ({ctx['error']})"
    loc = [p if isinstance(p, int) else str(p) for p in error.get("loc", ())]
    return {"loc": loc, "msg": msg, "type": str(error.get("type", "value_error"))}


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(e) for e in exc.errors()]
    shown = "; ".join(f"{_where(i['loc'])}: {i['msg']}" for i in issues[:_SHOWN_ISSUES])
    more = len(issues) - _SHOWN_ISSUES
    if more > 0:
        shown += f"; and {more} more (see 'errors')"
    hint = "See /docs for the request schema."
    content_type = request.headers.get("content-type", "")
    if any(i["loc"] == ["body"] for i in issues) and "json" not in content_type:
        hint = "Send the body as JSON with 'Content-Type: application/json'."
    body = {"detail": f"invalid request: {shown}. {hint}", "errors": issues}
    return JSONResponse(status_code=422, content=body)


def _reworded(request: Request, exc: StarletteHTTPException) -> str:
    detail = str(exc.detail)
    method, path = request.method, request.url.path
    if exc.status_code == 404 and detail == "Not Found":
        return f"no route {method} {path}; the API's routes are listed at /docs"
    if exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{method} is not allowed on {path}; use {allowed or 'another method'} (see /docs)"
    return detail


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": _reworded(request, exc)},
        headers=exc.headers,
    )


async def _artifact_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ArtifactError)
    # The path and the cause were logged where it was raised; this line says who asked.
    log.warning(
        "%s %s: 503, model %s %s is not served as registered (counted in artifact_errors)",
        request.method,
        request.url.path,
        exc.name,
        exc.version,
    )
    state = getattr(request.app.state, STATE_KEY, None)
    if state is not None:
        try:
            await run_in_threadpool(state.store.add_counters, {(None, "artifact_errors"): 1})
        except Exception as err:  # the answer matters more than the counter
            log.error("could not count an artifact error: %r", err)
    return JSONResponse(
        status_code=503,
        content={"detail": str(exc)},
        headers={"Retry-After": str(ARTIFACT_RETRY_AFTER_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback after this handler answers.
    return JSONResponse(
        status_code=500,
        content={
            "detail": f"the hub failed on {request.method} {request.url.path} "
            f"({type(exc).__name__}); the hub's log has the traceback"
        },
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ArtifactError, _artifact_error)
    app.add_exception_handler(Exception, _unexpected)
