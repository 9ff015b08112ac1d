"""``GET /v1/devices/{device}/telemetry``: a device's readings over a time range, page by page.

Each reading carries its features, the edge model's scores (computed on the
device) and the heavy model's scores (computed by the hub), side by side.
Pages hold at most ``limit`` readings, oldest first; follow ``next_cursor``
(keeping ``since`` and ``until``) until it is null to read every reading once.
"""

from __future__ import annotations

from fastapi import APIRouter

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import ConfigDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import (
    Cursor,
    DeviceId,
    Limit,
    Since,
    Until,
    bad_param,
    check_page,
    require_device,
)
from cloud_hub.api.schemas import ReadingOut, TelemetryPageOut
from cloud_hub.store.base import Store, TelemetryRows

__all__ = ["router"]

router = APIRouter(prefix="/v1/devices", tags=["telemetry"], responses=responses(401, 404, 422))


def _columns(
    store: Store, rows: list[TelemetryRows], model: str | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """Feature and class names from the manifest of the page's edge model, when one
    registered edge model version covers the whole page (of the model the device's
    birth named, when it named one: versions alone do not tell models apart)."""
    versions = {r.edge_model_version for r in rows}
    if len(versions) != 1:
        return None, None
    (version,) = versions
    specs = {
        (rec.manifest.input.features, rec.manifest.output.classes)
        for rec in store.models()
        if rec.variant == "edge"
        and rec.version == version
        and (model is None or rec.name == model)
        and len(rec.manifest.input.features) == rows[0].features.shape[1]
    }
    if len(specs) != 1:
        return None, None
    ((features, classes),) = specs
    width = rows[0].features.shape[1]
    return (list(features) if len(features) == width else None), list(classes)


def _readings(rows: list[TelemetryRows]) -> list[ReadingOut]:
    out: list[ReadingOut] = []
    for r in rows:
        ts, feats = r.ts.tolist(), r.features.tolist()
        edge, heavy = r.edge_scores.tolist(), r.heavy_scores.tolist()
        out.extend(
            ReadingOut(
                ts=ts[i],
                epoch=r.epoch,
                seq=r.seq,
                edge_model_version=r.edge_model_version,
                heavy_model_version=r.heavy_model_version,
                features=feats[i],
                edge_scores=edge[i],
                heavy_scores=heavy[i],
                received_at=r.received_at,
            )
            for i in range(len(ts))
        )
    return out


@router.get("/{device}/telemetry", response_model=TelemetryPageOut)
def get_telemetry(
    *,
    access: ReadAccess,
    store: StoreDep,
    config: ConfigDep,
    device: DeviceId,
    since: Since = 0.0,
    until: Until = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> TelemetryPageOut:
    """Readings of one device with ``since <= ts < until``, oldest first."""
    end, size = check_page(config, since, until, limit)
    record = require_device(store, device)
    try:
        page = store.telemetry(device, since, end, size, cursor)
    except ValueError as exc:  # the store's word on a cursor it cannot read
        raise bad_param("cursor", f"{exc}; or drop it to start again") from None
    feature_names, classes = (
        _columns(store, page.items, record.model) if page.items else (None, None)
    )
    readings = _readings(page.items)
    return TelemetryPageOut(
        device=device,
        since=since,
        until=until,
        count=len(readings),
        next_cursor=page.next_cursor,
        feature_names=feature_names,
        classes=classes,
        readings=readings,
    )
