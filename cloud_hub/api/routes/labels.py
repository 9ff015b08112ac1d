"""``/v1/labels``: ground-truth labels operators post for stored readings.

``POST`` (admin token) says every reading of a device with ``from <= ts < to``
is of a class of its model; the retraining pipeline uses it instead of the
heavy model's class for those readings. ``GET`` (read token) lists them.

A label is refused, with a detail that says what to do, when the device is
unknown (404), the range is empty or inverted, the class is not one of the
model's, the model is unknown or cannot be told, or no stored reading of the
device falls in the range (422). Each refusal is counted hub-wide as
``labels_refused:REASON`` (``GET /v1/stats/ingest``), each stored label as
``labels_stored``.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cloud_hub.api.auth import AdminAccess, ReadAccess
from cloud_hub.api.deps import StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import (
    DeviceFilter,
    Since,
    Until,
    find_model,
    invalid,
    parse_time,
    require_device,
)
from cloud_hub.registry.stages import Stage
from cloud_hub.store.base import LabelRecord, Store
from shared.isotime import iso_utc

__all__ = ["LabelIn", "LabelOut", "router"]

router = APIRouter(prefix="/v1/labels", tags=["labels"], responses=responses(401))

Time = Annotated[float, BeforeValidator(parse_time)]


class LabelIn(BaseModel):
    """Every stored reading of ``device`` with ``from <= ts < to`` is of class ``class``."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "device": "pi-07",
                    "from": "2026-11-01T10:00:00Z",
                    "to": "2026-11-01T10:30:00Z",
                    "class": "fault",
                }
            ]
        },
    )

    device: str = Field(min_length=1, max_length=128)
    since: Time = Field(alias="from", description="Start (inclusive): Unix seconds or ISO 8601.")
    until: Time = Field(alias="to", description="End (exclusive): Unix seconds or ISO 8601.")
    label: str = Field(alias="class", min_length=1, max_length=64, description="A model class.")
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The edge model whose class it is (default: the model the device's "
        "birth names).",
    )


class LabelOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    device: str
    model: str
    since: float = Field(serialization_alias="from")
    until: float = Field(serialization_alias="to")
    label: str = Field(serialization_alias="class")
    created_at: float
    by: str

    @classmethod
    def from_record(cls, r: LabelRecord) -> LabelOut:
        return cls(
            id=r.id,
            device=r.device,
            model=r.model,
            since=r.since,
            until=r.until,
            label=r.label,
            created_at=r.created_at,
            by=r.by,
        )


class LabelListOut(BaseModel):
    count: int
    labels: list[LabelOut]


def _refused(store: Store, reason: str, exc: Exception) -> Exception:
    store.add_counters({(None, f"labels_refused:{reason}"): 1})
    return exc


def _classes(store: Store, model: str) -> tuple[str, ...]:
    """The classes of ``model``'s production version (else its latest); 404 when unknown."""
    record = find_model(store, model, None)
    prod = [r for r in store.models() if r.name == model and r.stage is Stage.PRODUCTION]
    return (prod[0] if prod else record).manifest.output.classes


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=LabelOut,
    responses=responses(403, 404, 422),
)
def post_label(access: AdminAccess, store: StoreDep, body: LabelIn) -> LabelOut:
    """Record a ground-truth label for a device's stored readings in ``[from, to)``."""
    device = store.device(body.device)
    if device is None:
        raise _refused(
            store,
            "unknown_device",
            HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"device {body.device!r} is unknown to this hub; GET /v1/devices lists "
                "the devices it knows",
            ),
        )
    if not body.since < body.until:
        raise _refused(
            store,
            "empty_range",
            invalid(
                ("body", "from"),
                f"'from' ({iso_utc(body.since)}) must be before 'to' ({iso_utc(body.until)}); "
                "the label covers from <= ts < to",
            ),
        )
    model = body.model or device.model
    if model is None:
        raise _refused(
            store,
            "unknown_model",
            invalid(
                ("body", "model"),
                f"the hub has not heard which model {body.device!r} runs; give 'model' (the "
                "edge model whose class this is)",
            ),
        )
    try:
        classes = _classes(store, model)
    except HTTPException as exc:
        raise _refused(store, "unknown_model", exc) from None
    if body.label not in classes:
        raise _refused(
            store,
            "unknown_class",
            invalid(
                ("body", "class"),
                f"{body.label!r} is not a class of model {model}; its classes are "
                f"{', '.join(classes)}",
            ),
        )
    if not store.telemetry(body.device, body.since, body.until, 1).items:
        raise _refused(
            store,
            "no_telemetry",
            invalid(
                ("body", "from"),
                f"the hub stored no reading of {body.device!r} with {iso_utc(body.since)} <= ts "
                f"< {iso_utc(body.until)}; a label applies to stored readings: check the "
                "range with "
                f"GET /v1/devices/{body.device}/telemetry",
            ),
        )
    record = store.add_label(
        LabelRecord(0, body.device, model, body.since, body.until, body.label, time.time(), "api")
    )
    store.add_counters({(None, "labels_stored"): 1})
    return LabelOut.from_record(record)


@router.get("", response_model=LabelListOut, responses=responses(404, 422))
def list_labels(
    *,
    access: ReadAccess,
    store: StoreDep,
    device: DeviceFilter = None,
    since: Since = 0.0,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LabelListOut:
    """Labels whose range overlaps ``[since, until)``, oldest first."""
    end = math.inf if until is None else until
    if not since < end:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "since"), "msg": "must be before until"}]
        )
    if device is not None:
        require_device(store, device)  # a typo is a 404 as in /v1/events, not an empty list
    found: list[Any] = store.labels(device, since, end)[:limit]
    return LabelListOut(count=len(found), labels=[LabelOut.from_record(r) for r in found])
