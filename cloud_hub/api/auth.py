"""Bearer-token access: who may call which route.

Two levels, each an ``Annotated`` dependency a route takes as a parameter:

- :data:`ReadAccess`: the read token or the admin token;
- :data:`AdminAccess`: the admin token only.

- :data:`ModelReadAccess` (model downloads): either of those, or a device's own
  credential (HTTP Basic ``device:secret``, :mod:`cloud_hub.device_credentials`);
  a device may fetch only the model version the hub wants it to run
  (:func:`device_may_fetch`).

Missing or unknown credentials give 401 with ``WWW-Authenticate: Bearer``;
the read token on an admin route gives 403. Tokens are compared in constant
time, and against both tokens every time, so timing tells nothing about which
token a guess came close to. Under ``insecure_dev`` a level without a token is
open (see :mod:`cloud_hub.api.config`).

>>> from fastapi import APIRouter
>>> router = APIRouter()
>>> @router.get("/secret")
... def secret(access: AdminAccess) -> str:
...     return access
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_hub.api.config import Access, ApiConfig
from cloud_hub.api.deps import ConfigDep, StateDep
from cloud_hub.store.base import Store

__all__ = [
    "AdminAccess",
    "DeviceAccess",
    "ModelReadAccess",
    "ReadAccess",
    "Refusal",
    "bearer_token",
    "check_access",
    "device_may_fetch",
    "require_admin",
    "require_read",
    "token_access",
]

log = logging.getLogger(__name__)

# Only for /docs: it shows an "Authorize" button. check_access reads the header itself.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The hub's read token (read routes) or admin token (every route).",
)
_CHALLENGE = 'Bearer realm="edgeloop"'
_HOW = "send 'Authorization: Bearer <token>' with the hub's read token (or the admin token)"
# Schemes a client may send by mistake, named back only as spelled here: nothing of the
# header itself is ever echoed, since it may hold a secret.
_OTHER_SCHEMES = {s.lower(): s for s in ("Basic", "Digest", "Token", "Negotiate", "NTLM", "ApiKey")}


def _malformed(header: str) -> str:
    """What is wrong with an Authorization header that is not 'Bearer <token>'."""
    words = header.split()
    if not words:
        return "the Authorization header is empty"
    first = words[0].lower()
    if first == "bearer":
        return "the Authorization header says 'Bearer' but has no token after it"
    if first in _OTHER_SCHEMES:
        return f"the Authorization header uses the {_OTHER_SCHEMES[first]!r} scheme"
    if len(words) == 1:
        return "the Authorization header has no scheme (is the 'Bearer ' before the token missing?)"
    return "the Authorization header does not start with 'Bearer '"


def token_access(config: ApiConfig, token: str | None) -> Access | None:
    """The access level a request with ``token`` (None: no token) has under ``config``.

    None means no access. A token that is neither of the hub's gets none, even
    where a level is open, so a mistyped token is reported rather than ignored;
    only with no tokens configured at all is every token ignored.
    """
    if token is None or (config.read_token is None and config.admin_token is None):
        return config.open_access
    given = token.encode()
    # Both comparisons always run: no early exit that timing could reveal.
    admin = config.admin_token is not None and secrets.compare_digest(
        given, config.admin_token.encode()
    )
    read = config.read_token is not None and secrets.compare_digest(
        given, config.read_token.encode()
    )
    if admin:
        return "admin"
    return "read" if read else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not go on: the status, the ``detail`` and the headers to answer with."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    def exception(self) -> HTTPException:
        return HTTPException(self.status, detail=self.detail, headers=self.headers or None)


def _unauthorized(detail: str, invalid: bool) -> Refusal:
    challenge = _CHALLENGE + (', error="invalid_token"' if invalid else "")
    return Refusal(status.HTTP_401_UNAUTHORIZED, detail, {"WWW-Authenticate": challenge})


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for anything else."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_access(
    config: ApiConfig, header: str | None, need: Access, method: str, path: str
) -> Refusal | None:
    """None if the ``Authorization`` header ``header`` gives ``need`` access, else why not.

    Pure: the route dependencies and :mod:`cloud_hub.api.bodylimit` (which must
    decide before a body is read) both answer with what this returns.

    >>> config = ApiConfig(read_token="r" * 16, admin_token="a" * 16)
    >>> check_access(config, "Bearer " + "r" * 16, "read", "GET", "/v1/devices") is None
    True
    >>> check_access(config, None, "read", "POST", "/v1/predict").status
    401
    """
    token = bearer_token(header)
    access = token_access(config, token)
    if access is None:
        if header is None:
            return _unauthorized(f"this route needs a token: {_HOW}", invalid=False)
        if token is None:
            return _unauthorized(
                f"{_malformed(header)}; this API takes only Bearer tokens: {_HOW}", invalid=True
            )
        log.info("API: rejected an unknown bearer token for %s %s", method, path)
        return _unauthorized(
            "the bearer token is not one of this hub's tokens for the API (its read or admin "
            "token; the metrics token reads GET /metrics only); check for a typo, or ask the "
            "hub's operator for the current read token",
            invalid=True,
        )
    if need == "admin" and access != "admin":
        return Refusal(
            status.HTTP_403_FORBIDDEN,
            f"{method} {path} needs the admin token; the read token only reads. Send "
            "'Authorization: Bearer <admin token>'",
        )
    return None


def _require(request: Request, config: ApiConfig, need: Access) -> Access:
    header = request.headers.get("authorization")
    refusal = check_access(config, header, need, request.method, request.url.path)
    if refusal is not None:
        raise refusal.exception()
    access = token_access(config, bearer_token(header))
    assert access is not None  # check_access refused every request without access
    return access


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_read(request: Request, config: ConfigDep, _credentials: Credentials) -> Access:
    """Dependency: the read or the admin token (or open read access under insecure_dev)."""
    return _require(request, config, "read")


def require_admin(request: Request, config: ConfigDep, _credentials: Credentials) -> Access:
    """Dependency: the admin token (or open admin access under insecure_dev)."""
    return _require(request, config, "admin")


@dataclass(frozen=True, slots=True)
class DeviceAccess:
    """A request made with a device's own credential."""

    device: str


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep and user else None


def require_model_read(
    request: Request, config: ConfigDep, state: StateDep, _credentials: Credentials
) -> Access | DeviceAccess:
    """Dependency: a read or admin token, or a device's own credential (HTTP Basic)."""
    header = request.headers.get("authorization") or ""
    if header.strip().lower().startswith("basic"):
        creds = state.device_credentials
        challenge = {"WWW-Authenticate": 'Basic realm="edgeloop devices"'}
        if creds is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="this hub takes no device credentials here; send a bearer token",
                headers=challenge,
            )
        parsed = _basic(header)
        if parsed is None or not creds.check(*parsed):
            log.info(
                "API: rejected a device credential for %s %s", request.method, request.url.path
            )
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="the device credential is not one of this hub's devices' (send "
                "'Authorization: Basic base64(DEVICE:SECRET)' with the secret 'edgeloop-hub "
                "devices add' gave the device)",
                headers=challenge,
            )
        return DeviceAccess(parsed[0])
    return _require(request, config, "read")


def device_may_fetch(access: Access | DeviceAccess, store: Store, name: str, version: str) -> None:
    """403 unless ``access`` is a token, or a device whose desired model is ``name`` ``version``."""
    if not isinstance(access, DeviceAccess):
        return
    desired = store.desired(access.device)
    if desired is None or (desired.model, desired.version) != (name, version):
        wants = "no model" if desired is None else f"{desired.model} {desired.version}"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"device {access.device!r} may fetch only the model the hub wants it to run "
            f"({wants}), not {name} {version}",
        )


ReadAccess = Annotated[Access, Depends(require_read)]
"""A route parameter that admits the read or the admin token."""
AdminAccess = Annotated[Access, Depends(require_admin)]
"""A route parameter that admits only the admin token."""
ModelReadAccess = Annotated[Access | DeviceAccess, Depends(require_model_read)]
"""A model download: a token, or a device's credential (then :func:`device_may_fetch`)."""
