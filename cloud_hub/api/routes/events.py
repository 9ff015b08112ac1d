"""``GET /v1/events``: urgent events (and the local action taken), of one device or all;
with ``kind=drift``, drift events (:mod:`cloud_hub.api.routes.drift`); with
``kind=device_state``, device state changes (:mod:`cloud_hub.devices.states`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel

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
from cloud_hub.store.base import DeviceStateRow, Page

__all__ = ["router"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

router = APIRouter(prefix="/v1/events", tags=["events"], responses=responses(401, 404, 422))


Kind = Annotated[
    Literal["urgent", "drift", "device_state"],
    Query(
        description="``urgent`` (the default): urgent events; ``drift``: drift state changes; "
        "``device_state``: device state changes (online, degraded, buffering, offline, stale)"
    ),
]


Order = Annotated[
    Literal["asc", "desc"],
    Query(
        description="``asc`` (the default): oldest first; ``desc``: newest first "
        "(urgent events only)"
    ),
]


class DeviceStateEventOut(BaseModel):
    kind: str = "device_state"
    id: int
    at: float
    device: str
    state: str
    previous: str
    reason: str
    """Why the device entered ``state``, e.g. ``outbox 1,200 messages > 1,000``."""

    @classmethod
    def from_row(cls, r: DeviceStateRow) -> DeviceStateEventOut:
        return cls(
            id=r.id, at=r.at, device=r.device, state=r.state, previous=r.previous, reason=r.reason
        )


class DeviceStateEventPageOut(BaseModel):
    count: int
    next_cursor: str | None
    events: list[DeviceStateEventOut]


@router.get("", response_model=EventPageOut | DriftEventPageOut | DeviceStateEventPageOut)
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
    order: Order = "asc",
) -> EventPageOut | DriftEventPageOut | DeviceStateEventPageOut:
    """Events with ``since <= ts < until``, oldest first (``order=desc``: newest first,
    for urgent events); follow ``next_cursor``.

    ``kind=drift`` lists drift events instead (a device's, or every device's and the
    fleet's), with ``at`` as their time; ``kind=device_state`` lists device state
    changes, each with its reason.
    """
    end, size = check_page(config, since, until, limit)
    if device is not None:
        require_device(store, device)
    if order == "desc" and kind != "urgent":
        raise bad_param("order", f"desc is for urgent events only, not kind={kind}; drop it")
    if kind == "device_state":
        changes = _paged(store.device_state_events, device, since, end, size, cursor=cursor)
        rows = [DeviceStateEventOut.from_row(r) for r in changes.items]
        return DeviceStateEventPageOut(
            count=len(rows), next_cursor=changes.next_cursor, events=rows
        )
    if kind == "drift":
        drift = _paged(store.drift_events, device, since, end, size, cursor=cursor)
        found = [DriftEventOut.from_row(r) for r in drift.items]
        return DriftEventPageOut(count=len(found), next_cursor=drift.next_cursor, events=found)
    page = _paged(
        store.events, device, since, end, size, cursor=cursor, newest_first=order == "desc"
    )
    events = [EventOut.from_record(r) for r in page.items]
    return EventPageOut(count=len(events), next_cursor=page.next_cursor, events=events)


def _paged(fetch: Callable[_P, Page[_T]], *args: _P.args, **kwargs: _P.kwargs) -> Page[_T]:
    """One page from the store; a cursor it cannot read is a 422 naming ``cursor``."""
    try:
        return fetch(*args, **kwargs)
    except ValueError as exc:
        raise bad_param("cursor", f"{exc}; or drop it to start again") from None
