"""Request parameters several routes share, and their checks beyond type and range.

FastAPI checks each parameter's type and static range (422 naming it); the
checks here need the config or the store: the page size against
``max_page``, ``since`` before ``until``, and that a device or a model
version exists (404, naming what does).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from cloud_hub.api.config import ApiConfig
from cloud_hub.store.base import DeviceRecord, ModelRecord, Store

__all__ = [
    "DEFAULT_PAGE",
    "Cursor",
    "DeviceFilter",
    "DeviceId",
    "Limit",
    "ModelName",
    "ModelVersion",
    "Since",
    "Until",
    "bad_param",
    "check_page",
    "find_model",
    "invalid",
    "parse_time",
    "require_device",
    "unknown_device",
]

DEFAULT_PAGE = 1000
"""Page size when a request gives no ``limit`` (capped by ``max_page``)."""

DeviceId = Annotated[str, Path(min_length=1, max_length=128, description="A device id.")]
DeviceFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=128, description="Only this device's items."),
]
ModelName = Annotated[str, Path(min_length=1, max_length=64, description="A model's name.")]
ModelVersion = Annotated[
    str, Path(min_length=1, max_length=32, description="A version, MAJOR.MINOR.PATCH.")
]
_TIME_FORMS = (
    "Unix seconds (1714564800) or an ISO 8601 date or date-time (2024-05-01, "
    "2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00); a date-time without an offset is "
    "UTC, a date alone is its midnight UTC; in a URL send '+' as %2B"
)


def parse_time(value: Any) -> float | None:
    """Unix seconds from a number or from an ISO 8601 date or date-time (naive: UTC).

    >>> parse_time("2024-05-01T12:00:00Z") == parse_time("2024-05-01T12:00:00") == 1714564800.0
    True
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PydanticCustomError("time_format", "expected " + _TIME_FORMS)
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise PydanticCustomError(
                "time_format",
                "{given} is not a time; give " + _TIME_FORMS,
                {"given": repr(text[:40])},
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp()
    if not math.isfinite(seconds):
        raise PydanticCustomError("time_format", "must be a finite time; give " + _TIME_FORMS)
    return seconds


_TIME_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "description": "Unix seconds"},
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
        ]
    }
)
Since = Annotated[
    float,
    BeforeValidator(parse_time),
    _TIME_SCHEMA,
    Query(description=f"Start of the range (inclusive): {_TIME_FORMS}. Default: 0."),
]
Until = Annotated[
    float | None,
    BeforeValidator(parse_time),
    _TIME_SCHEMA,
    Query(description=f"End of the range (exclusive): {_TIME_FORMS}. Omit for no end."),
]
Limit = Annotated[
    int | None,
    Query(
        ge=1,
        description="Most items on one page, at most the hub's max_page; omit for "
        "min(1000, max_page).",
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=512,
        description="The previous page's next_cursor; keep the other parameters the same.",
    ),
]


def invalid(
    loc: tuple[str | int, ...], msg: str, kind: str = "value_error"
) -> RequestValidationError:
    """A 422 for the field at ``loc`` (``("query", "limit")``, ``("body", "rows", 3, "x")``),
    answered like FastAPI's own validation errors: one ``detail`` line, and ``errors``."""
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


def bad_param(name: str, msg: str) -> RequestValidationError:
    """A 422 naming query parameter ``name``."""
    return invalid(("query", name), msg)


def check_page(
    config: ApiConfig, since: float, until: float | None, limit: int | None
) -> tuple[float, int]:
    """Check the range and page size; return ``until`` (None: +infinity) and ``limit``
    (None: the default page size)."""
    if limit is None:
        limit = min(DEFAULT_PAGE, config.max_page)
    if limit > config.max_page:
        raise bad_param(
            "limit",
            f"{limit} is over this hub's page size {config.max_page}; ask for at most "
            f"{config.max_page} and follow next_cursor",
        )
    if until is not None and not since < until:
        raise bad_param(
            "since",
            f"{since} must be before 'until' ({until}) (both as Unix seconds); the range "
            "is since <= ts < until",
        )
    return (math.inf if until is None else until), limit


def unknown_device(device: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"device {device!r} is unknown to this hub; GET /v1/devices lists the devices "
        "it knows (a device appears once provisioned or first heard from)",
    )


def require_device(store: Store, device: str) -> DeviceRecord:
    """The store's record of ``device``, or 404."""
    record = store.device(device)
    if record is None:
        raise unknown_device(device)
    return record


def find_model(store: Store, name: str, version: str | None) -> ModelRecord:
    """The registered ``name`` at ``version`` (None: its latest version), or 404."""
    if version is not None:
        record = store.model(name, version)
        if record is not None:
            return record
    records = store.models()
    versions = sorted((r for r in records if r.name == name), key=lambda r: r.manifest.version_key)
    if not versions:
        names = sorted({r.name for r in records})
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"model {name!r} is not registered; registered models: "
            f"{', '.join(names) or 'none'} (GET /v1/models lists them)",
        )
    if version is None:
        return versions[-1]
    raise HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"model {name!r} has no version {version!r}; registered versions: "
        f"{', '.join(r.version for r in versions)} (GET /v1/models lists them)",
    )
