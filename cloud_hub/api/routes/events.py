"""``GET /v1/events``: urgent events (and the local action taken), of one device or all;
with ``kind=drift``, drift events (:mod:`cloud_hub.api.routes.drift`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import ConfigDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import (
    Cursor,
    DeviceFilter,
    Limit,
    Since,
    Until,
    bad_param,
    check_page,
    require_device,
)
from cloud_hub.api.routes.drift import DriftEventOut, DriftEventPageOut
from cloud_hub.api.schemas import EventOut, EventPageOut

__all__ = ["router"]

router = APIRouter(prefix="/v1/events", tags=["events"], responses=responses(401, 404, 422))


Kind = Annotated[
    Literal["urgent", "drift"],
    Query(description="``urgent`` (the default): urgent events; ``drift``: drift state changes"),
]


@router.get("", response_model=EventPageOut | DriftEventPageOut)
def list_events(
    *,
    access: ReadAccess,
    store: StoreDep,
    config: ConfigDep,
    device: DeviceFilter = None,
    since: Since = 0.0,
    until: Until = None,
    limit: Limit = None,
    cursor: Cursor = None,
    kind: Kind = "urgent",
) -> EventPageOut | DriftEventPageOut:
    """Events with ``since <= ts < until``, oldest first; follow ``next_cursor``.

    ``kind=drift`` lists drift events instead (a device's, or every device's and the
    fleet's), with ``at`` as their time.
    """
    end, size = check_page(config, since, until, limit)
    if device is not None:
        require_device(store, device)
    if kind == "drift":
        try:
            drift = store.drift_events(device, since, end, size, cursor=cursor)
        except ValueError as exc:
            raise bad_param("cursor", f"{exc}; or drop it to start again") from None
        found = [DriftEventOut.from_row(r) for r in drift.items]
        return DriftEventPageOut(count=len(found), next_cursor=drift.next_cursor, events=found)
    try:
        page = store.events(device, since, end, size, cursor)
    except ValueError as exc:
        raise bad_param("cursor", f"{exc}; or drop it to start again") from None
    events = [EventOut.from_record(r) for r in page.items]
    return EventPageOut(count=len(events), next_cursor=page.next_cursor, events=events)
