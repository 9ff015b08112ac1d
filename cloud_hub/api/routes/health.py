"""``GET /healthz``: is the API up, and can it reach its store? No token needed."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Response, status

from cloud_hub.api.deps import StateDep
from cloud_hub.api.schemas import HealthOut

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

# A name no device can have (MQTT wildcards are never in a device id): the probe
# is one indexed lookup that finds nothing.
_PROBE_DEVICE = "#healthz"


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The store cannot be reached."}},
)
def healthz(state: StateDep, response: Response) -> HealthOut:
    """Liveness and readiness: 200 when the store answers, 503 when it does not."""
    detail: str | None = None
    try:
        state.store.device(_PROBE_DEVICE)
    except Exception as exc:  # any backend, any failure: report it, never raise
        log.warning("healthz: the store does not answer: %s", exc)
        detail = f"the store does not answer ({type(exc).__name__}: {exc}); see the hub log"
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(
        status="ok" if detail is None else "degraded",
        store="ok" if detail is None else "unreachable",
        detail=detail,
        version=state.version,
        uptime_s=max(time.time() - state.started_at, 0.0),
        auth="open" if state.config.open_access is not None else "tokens",
    )
