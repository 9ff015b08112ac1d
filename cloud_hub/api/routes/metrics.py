"""``GET /metrics``: the hub's figures in Prometheus text format (:mod:`cloud_hub.metrics`).

Who may read it: a bearer token that is the metrics token (``--metrics-token-file``),
the read token or the admin token; or, with no token at all, a client whose
address (the TCP peer's, as the hub sees it) is in ``--metrics-allow``. Anything
else gets 401 with ``WWW-Authenticate: Bearer``, like the API's other routes.
Under ``--insecure-dev`` with no read token, it is open as the read routes are.

:func:`install` adds the route and the request-counting middleware; the app
factory calls it only when it is given the hub's metrics.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from cloud_hub.api.auth import bearer_token, token_access
from cloud_hub.api.config import ApiConfig
from cloud_hub.metrics import HubMetrics, MetricsAccess, RequestCounter

__all__ = ["install"]

log = logging.getLogger(__name__)

_HOW = (
    "send 'Authorization: Bearer <token>' with the hub's metrics token (--metrics-token-file) "
    "or its read token, or scrape from an address in --metrics-allow"
)


def _refusal(config: ApiConfig, access: MetricsAccess, request: Request) -> Response | None:
    header = request.headers.get("authorization")
    token = bearer_token(header)
    host = request.client.host if request.client is not None else None
    if token is None and access.allows_address(host):
        return None
    if token is not None and access.is_token(token):
        return None
    if token_access(config, token) is not None:
        return None
    if header is None:
        detail = f"/metrics needs a token: {_HOW}"
    elif token is None:
        detail = f"the Authorization header is not 'Bearer <token>': {_HOW}"
    else:
        log.info("API: rejected an unknown bearer token for GET /metrics")
        detail = f"the bearer token is not one of this hub's tokens: {_HOW}"
    return JSONResponse(
        {"detail": detail}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="edgeloop"'}
    )


def install(app: FastAPI, config: ApiConfig, metrics: HubMetrics, access: MetricsAccess) -> None:
    """Add ``GET /metrics`` and count and time every request (outermost, so refusals
    count too)."""

    def get_metrics(request: Request) -> Response:
        refusal = _refusal(config, access, request)
        if refusal is not None:
            return refusal
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.add_api_route("/metrics", get_metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestCounter, observe=metrics.observe_request)
