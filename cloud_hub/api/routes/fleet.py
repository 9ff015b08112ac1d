"""Read routes the dashboard needs that the rest of the API did not give.

- ``GET /v1/fleet``: per device, what the fleet table shows beside ``GET /v1/devices``
  (which keeps the state): readings per second over the last minute, open gaps,
  readings lost (declared by the device or never arrived), the drift state.
- ``GET /v1/devices/{d}/series``: a device's recent readings thinned to at most
  ``points`` per series (edge and heavy urgent-class scores, the first features),
  so a plot of the last hour is one small answer, not every reading.
- ``GET /v1/devices/{d}/ota``: a device's OTA reports, newest first.

All computed in the hub, from the store; the page only draws them.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import DeviceId, Until, require_device

__all__ = ["router"]

router = APIRouter(tags=["devices"], responses=responses(401))

RATE_WINDOW_S = 60.0
"""Readings per second are the readings received over this many seconds, divided by it."""
_GAPS_COUNTED = 100_000
_FEATURES_SHOWN = 3
READINGS_KEPT = 20_000
"""A series answer thins the newest this many readings (at least: whole messages) of
its window."""


class FleetDeviceOut(BaseModel):
    readings_per_s: float
    """Readings received over the last ``window_s`` seconds, per second (over the time
    since the device was first seen, when that is shorter)."""
    open_gaps: int
    """Ranges of seqs not (yet) received."""
    lost_readings: int
    """Readings the device declared lost (outbox full, expired, ...)."""
    lost_unexplained_messages: int
    """Messages that never arrived and were never declared (should be 0)."""
    drift_state: str | None
    """``ok``, ``drifting`` or ``recovered`` on the device's model version (None: not counted yet)."""
    drift_streams: list[str]
    """The streams it drifts on."""


class FleetOut(BaseModel):
    window_s: float
    readings_per_s: float
    """The sum of the devices' rates."""
    devices: dict[str, FleetDeviceOut]
    """By device id: every device of ``GET /v1/devices``."""


def _span(first_seen: float | None, now: float) -> float:
    """The seconds a device's rate is over: the window, or less for a device seen for less
    (at least 1 s)."""
    if first_seen is None:
        return RATE_WINDOW_S
    return min(RATE_WINDOW_S, max(now - first_seen, 1.0))


@router.get("/v1/fleet", response_model=FleetOut)
def fleet(access: ReadAccess, store: StoreDep) -> FleetOut:
    """Per device, the activity figures of the dashboard's fleet table (the state is
    ``GET /v1/devices``'s)."""
    now = time.time()
    records = store.devices()
    received = store.readings_received_since(now - RATE_WINDOW_S)
    gaps = Counter(g.device for g in store.gaps(None, limit=_GAPS_COUNTED))
    drift = {(r.device, r.model, r.version): r for r in store.drift_states()}
    out: dict[str, FleetDeviceOut] = {}
    for r in records:
        row = drift.get((r.device, r.model or "", r.model_version or ""))
        lost = sum(v for k, v in r.counters.items() if k.startswith("lost_at_edge_readings:"))
        out[r.device] = FleetDeviceOut(
            readings_per_s=round(received.get(r.device, 0) / _span(r.first_seen, now), 3),
            open_gaps=gaps.get(r.device, 0),
            lost_readings=lost,
            lost_unexplained_messages=r.counters.get("lost_unexplained_messages", 0),
            drift_state=None if row is None else row.state,
            drift_streams=[] if row is None else sorted(row.streams),
        )
    return FleetOut(
        window_s=RATE_WINDOW_S,
        readings_per_s=round(sum(o.readings_per_s for o in out.values()), 3),
        devices=out,
    )


class SeriesOut(BaseModel):
    device: str
    since: float
    readings: int
    """Readings in the window (before thinning)."""
    truncated: bool
    """True when not every reading of the window is shown: thinned to ``points``, or more
    than the hub thins for one answer (then the newest are shown and the plot starts
    later than ``since``), or readings of another model left out."""
    other_model_readings: int
    """Readings among the newest left out because they have another width of features
    or scores than the device's current model (from before an OTA update)."""
    urgent_class: str | None
    ts: list[float]
    edge_score: list[float]
    """The edge model's score of the urgent class (or of the last class)."""
    heavy_score: list[float | None]
    """The heavy model's (null where it did not score the reading)."""
    features: dict[str, list[float]]
    """The first features of the manifest, by name."""


def _heavy_column(scores: np.ndarray, col: int) -> np.ndarray:
    """The heavy model's score in column ``col`` (NaN where it did not score)."""
    if scores.ndim == 2 and scores.shape[1] > max(col, 0):
        return scores[:, col].astype(np.float64)
    return np.full(len(scores), np.nan)


def _thin(n: int, points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, num=min(n, points)).round().astype(np.int64))


@router.get("/v1/devices/{device}/series", response_model=SeriesOut, responses=responses(404, 422))
def series(
    *,
    access: ReadAccess,
    store: StoreDep,
    device: DeviceId,
    window_s: Annotated[float, Query(gt=0, le=86_400)] = 3600.0,
    points: Annotated[int, Query(ge=2, le=5000)] = 600,
    until: Until = None,
) -> SeriesOut:
    """A device's readings over the ``window_s`` seconds before ``until`` (default: now),
    at most ``points`` per series (evenly thinned): scores edge and heavy side by side,
    and the first features."""
    record = require_device(store, device)
    end = time.time() if until is None else until
    since = end - window_s
    newest = store.newest_telemetry(device, since, end, READINGS_KEPT)
    urgent: str | None = None
    names: list[str] = []
    col = -1
    width: tuple[int, int] | None = None
    model = (
        store.model(record.model, record.model_version)
        if record.model is not None and record.model_version is not None
        else None
    )
    if model is not None:
        urgent = model.manifest.output.urgent_class
        col = model.manifest.output.urgent_index
        names = list(model.manifest.input.features)[:_FEATURES_SHOWN]
        width = (len(model.manifest.input.features), len(model.manifest.output.classes))
    elif newest.rows:
        last = newest.rows[-1]
        width = (last.features.shape[1], last.edge_scores.shape[1])
    # Readings of another width (another model's, before an OTA) cannot share a plot.
    rows = [
        r
        for r in newest.rows
        if width is None or (r.features.shape[1], r.edge_scores.shape[1]) == width
    ]
    kept = sum(len(r) for r in rows)
    other = sum(len(r) for r in newest.rows) - kept
    if not rows:
        return SeriesOut(
            device=device,
            since=since,
            readings=newest.readings,
            truncated=newest.readings > 0,
            other_model_readings=other,
            urgent_class=urgent,
            ts=[],
            edge_score=[],
            heavy_score=[],
            features={},
        )
    ts = np.concatenate([r.ts for r in rows])
    edge = np.concatenate([r.edge_scores for r in rows])
    heavy = np.concatenate([_heavy_column(r.heavy_scores, col) for r in rows])
    feats = np.concatenate([r.features for r in rows])
    pick = _thin(len(ts), points)
    heavy_out: list[float | None] = [None if np.isnan(v) else float(v) for v in heavy[pick]]
    return SeriesOut(
        device=device,
        since=since,
        readings=newest.readings,
        truncated=newest.readings > len(pick),
        other_model_readings=other,
        urgent_class=urgent,
        ts=ts[pick].tolist(),
        edge_score=edge[pick, col].tolist(),
        heavy_score=heavy_out,
        features={
            name: feats[pick, i].tolist() for i, name in enumerate(names) if i < feats.shape[1]
        },
    )


class OtaReportOut(BaseModel):
    ts: float
    received_at: float
    state: str
    reason: str
    from_version: str | None
    to_version: str | None
    detail: str


class OtaHistoryOut(BaseModel):
    device: str
    count: int
    reports: list[OtaReportOut]
    """Newest first."""


@router.get("/v1/devices/{device}/ota", response_model=OtaHistoryOut, responses=responses(404, 422))
def ota_history(
    access: ReadAccess,
    store: StoreDep,
    device: DeviceId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> OtaHistoryOut:
    """The device's OTA reports (every state its update went through), newest first."""
    require_device(store, device)
    found = store.device_ota_reports(device, limit)
    reports = [
        OtaReportOut(
            ts=r.ota.ts,
            received_at=r.received_at,
            state=r.ota.state,
            reason=r.ota.reason,
            from_version=r.ota.from_version,
            to_version=r.ota.to_version,
            detail=r.ota.detail,
        )
        for r in found
    ]
    return OtaHistoryOut(device=device, count=len(reports), reports=reports)
