"""One-time sign-in codes for the dashboard: a link that signs a browser in without a token
in the URL.

``POST /v1/session/codes`` (admin token) makes a code: short-lived (``ttl_s``, 120 s by
default) and single use. ``edgeloop-sim demo`` puts it in the fragment of the
dashboard's URL (``http://HUB/#code=CODE``), which browsers never send to a server.
The page posts it to ``POST /v1/session/exchange`` (no token: the code is the
credential) and gets the token back, which it keeps in the tab's session storage.
A code unknown, used or expired is a 400 that says which; the hub counts it
(``session_codes_refused:REASON`` in the store's counters) and logs a warning.

Codes live in the hub's memory only (:class:`CodeBook`): a restart forgets them,
which only means a new link.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.auth import AdminAccess
from cloud_hub.api.deps import ConfigDep, StoreDep
from cloud_hub.api.errors import responses

__all__ = ["EXCHANGE_PATH", "CodeBook", "CodeRefusedError", "router"]

EXCHANGE_PATH = "/v1/session/exchange"
"""Takes a body without a token (:mod:`cloud_hub.api.bodylimit` lets it through)."""
CODEBOOK_KEY = "edgeloop_session_codes"
"""Attribute of ``app.state`` holding the app's :class:`CodeBook`."""
MAX_CODES = 1000
"""Codes outstanding at once; making one more drops the oldest."""

SessionAccess = Literal["read", "admin"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/session", tags=["session"])


RefusedReason = Literal["unknown", "used", "expired"]


class CodeRefusedError(Exception):
    """Why a code cannot be exchanged (the message says which and what to do)."""

    def __init__(self, reason: RefusedReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusedReason = reason


@dataclass
class _Code:
    access: SessionAccess
    expires_at: float
    used: bool = False


@dataclass
class CodeBook:
    """Outstanding one-time codes (thread-safe; ``clock`` is injectable for tests)."""

    clock: Callable[[], float] = time.time
    _codes: dict[str, _Code] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, access: SessionAccess, ttl_s: float) -> tuple[str, float]:
        """A new code and when it expires."""
        code = secrets.token_urlsafe(18)
        now = self.clock()
        with self._lock:
            self._forget_expired(now)
            while len(self._codes) >= MAX_CODES:
                self._codes.pop(next(iter(self._codes)))
            self._codes[code] = _Code(access, now + ttl_s)
        return code, now + ttl_s

    def redeem(self, code: str) -> SessionAccess:
        """The access ``code`` grants; it is used up. :class:`CodeRefusedError` if it is not valid."""
        now = self.clock()
        with self._lock:
            found = self._codes.get(code)
            if found is None:
                raise CodeRefusedError(
                    "unknown",
                    "this sign-in code is not one the hub issued (or the hub restarted since); "
                    "ask for a new link (edgeloop-sim demo prints one) or sign in with a token",
                )
            if found.used:
                raise CodeRefusedError(
                    "used",
                    "this sign-in code was already used (each works once); ask for a new link "
                    "or sign in with a token",
                )
            if now >= found.expires_at:
                raise CodeRefusedError(
                    "expired",
                    f"this sign-in code expired {now - found.expires_at:.0f} s ago (codes last "
                    "a short time); ask for a new link or sign in with a token",
                )
            found.used = True
            return found.access

    def _forget_expired(self, now: float) -> None:
        for code in [c for c, v in self._codes.items() if now >= v.expires_at + 600]:
            del self._codes[code]


def get_codebook(request: Request) -> CodeBook:
    book = getattr(request.app.state, CODEBOOK_KEY, None)
    if not isinstance(book, CodeBook):
        raise RuntimeError(
            "the app has no sign-in code book: build it with cloud_hub.api.create_app, "
            "which installs the dashboard"
        )
    return book


CodeBookDep = Annotated[CodeBook, Depends(get_codebook)]


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    access: SessionAccess = "admin"
    """Which token the code is exchanged for."""
    ttl_s: Annotated[float, Field(gt=0, le=600)] = 120.0


class CodeOut(BaseModel):
    code: str
    access: SessionAccess
    expires_at: float
    fragment: str
    """Append to the dashboard's URL: ``#code=CODE``."""


class ExchangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=200)


class ExchangeOut(BaseModel):
    access: SessionAccess
    token: str | None
    """The token to send as ``Authorization: Bearer``; null when the hub has none
    (``--insecure-dev`` without tokens)."""


@router.post(
    "/codes",
    response_model=CodeOut,
    status_code=status.HTTP_201_CREATED,
    responses=responses(401, 403, 422),
)
def make_code(access: AdminAccess, book: CodeBookDep, body: CodeIn | None = None) -> CodeOut:
    """A one-time sign-in code for the dashboard (admin token): single use, ``ttl_s`` long."""
    body = body or CodeIn()
    code, expires = book.issue(body.access, body.ttl_s)
    return CodeOut(code=code, access=body.access, expires_at=expires, fragment=f"#code={code}")


@router.post(
    "/exchange",
    response_model=ExchangeOut,
    responses={
        **responses(422),
        400: {"description": "The code is unknown, used or expired (the detail says which)."},
    },
)
def exchange(
    config: ConfigDep, store: StoreDep, book: CodeBookDep, body: ExchangeIn, response: Response
) -> ExchangeOut:
    """Exchange a one-time code for the token it grants (no token needed: the code is it).

    A refusal counts ``session_codes_refused:REASON`` (unknown, used, expired) in the
    store's counters and logs a warning (without the code)."""
    response.headers["Cache-Control"] = "no-store"
    try:
        granted = book.redeem(body.code)
    except CodeRefusedError as exc:
        store.add_counters({(None, f"session_codes_refused:{exc.reason}"): 1})
        log.warning("refused a dashboard sign-in code (%s): %s", exc.reason, exc)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    token = config.admin_token if granted == "admin" else config.read_token
    return ExchangeOut(access=granted, token=token)
