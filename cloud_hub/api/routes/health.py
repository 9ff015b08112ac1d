"""``GET /healthz``: can the hub do its job? The store, its broker link, its broker. No token."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Response, status

from cloud_hub.api.deps import StateDep
from cloud_hub.api.schemas import HealthOut, PartHealthOut
from cloud_hub.health import PartHealth, down_parts

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

# A name no device can have (MQTT wildcards are never in a device id): the probe
# is one indexed lookup that finds nothing.
_PROBE_DEVICE = "#healthz"


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={
        503: {
            "model": HealthOut,
            "description": "Something the hub needs is down; `down` names it (`store`, "
            "`broker_link`, `embedded_broker`) and `parts` says since when, why and what "
            "to check.",
        }
    },
)
def healthz(state: StateDep, response: Response) -> HealthOut:
    """200 when the store answers and every part is up (the hub's MQTT link connected
    and subscribed; its embedded broker running, when it has one), 503 otherwise.

    While the embedded broker restarts, or the hub's session was taken from it,
    devices' readings cannot reach the hub: ``down`` says so until the link is
    subscribed again. The body needs no token, so it names no address, path or
    account; the hub's log has the details.
    """
    detail: str | None = None
    try:
        state.store.device(_PROBE_DEVICE)
    except Exception as exc:  # any backend, any failure: report it, never raise
        log.warning("healthz: the store does not answer: %s", exc)
        detail = f"the store does not answer ({type(exc).__name__}: {exc}); see the hub log"
    parts: dict[str, PartHealth] = {}
    if state.parts is not None:
        try:
            parts = dict(state.parts())
        except Exception as exc:  # a part's report must never take /healthz down
            log.warning("healthz: the parts' health is unavailable: %s", exc)
            parts = {
                "parts": PartHealth(
                    up=False, since=time.time(), reason=f"{type(exc).__name__}: {exc}"
                )
            }
    down = down_parts(parts)
    if detail is not None:
        down = ["store", *down]
    if down:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(
        status="degraded" if down else "ok",
        store="ok" if detail is None else "unreachable",
        detail=detail,
        down=down,
        parts={
            name: PartHealthOut(
                up=part.up,
                since=part.since,
                reason=part.reason,
                check=part.check,
                counts=dict(part.counts),
            )
            for name, part in sorted(parts.items())
        },
        version=state.version,
        uptime_s=max(time.time() - state.started_at, 0.0),
        auth="open" if state.config.open_access is not None else "tokens",
    )
