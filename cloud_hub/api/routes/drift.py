"""Drift: ``GET /v1/drift`` (the fleet, per model version) and ``GET /v1/devices/{d}/drift``.

Both read what the hub's drift monitor stored (:mod:`cloud_hub.drift.monitor`):
each device's state per model version, its closed windows (PSI per stream,
detector statistics, edge/heavy disagreement) and the drift events. Drift events
are also listed by ``GET /v1/events?kind=drift``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import DeviceId, Since, require_device
from cloud_hub.store.base import DriftEventRow, DriftStateRow, DriftWindowRow

__all__ = ["DriftEventOut", "DriftEventPageOut", "router"]

router = APIRouter(tags=["drift"], responses=responses(401))

_WINDOWS_SHOWN = 100


class StreamRankOut(BaseModel):
    stream: str
    """A feature name (e.g. ``temperature_last``), or ``score``."""
    mean_psi: float
    """Mean PSI of the devices' last closed windows."""
    max_psi: float
    drifting_devices: int
    """Devices drifting on a detector channel of this feature's sensor (``temperature:level``
    or ``temperature:scale`` for ``temperature_last``; none for other features)."""


class FleetAlarmOut(BaseModel):
    since: float
    streams: list[str]
    devices: list[str]
    active_devices: int
    share: float


class VersionDriftOut(BaseModel):
    model: str
    version: str
    devices: int
    states: dict[str, int]
    """Devices by drift state: ``ok``, ``drifting``, ``recovered``."""
    drifting: list[str]
    channels: dict[str, int]
    """Detector channels with the number of devices drifting on each."""
    streams: list[StreamRankOut]
    """Features (and the score) ranked by mean PSI, highest first."""
    fleet_alarm: FleetAlarmOut | None
    """The fleet alarm open on this version (None: the fleet does not drift)."""


class FleetDriftOut(BaseModel):
    versions: list[VersionDriftOut]


class DriftWindowOut(BaseModel):
    model: str
    version: str
    start_at: float
    end_at: float
    readings: int
    psi: dict[str, float]
    statistic: dict[str, float]
    disagreement: float | None

    @classmethod
    def from_row(cls, r: DriftWindowRow) -> DriftWindowOut:
        return cls(
            model=r.model,
            version=r.version,
            start_at=r.start_at,
            end_at=r.end_at,
            readings=r.readings,
            psi=r.psi,
            statistic=r.statistic,
            disagreement=r.disagreement,
        )


class DeviceVersionDriftOut(BaseModel):
    model: str
    version: str
    state: str
    since: float | None
    streams: dict[str, float]
    """The drifting streams and when each started."""
    readings: int
    last_reading_at: float


class DeviceDriftOut(BaseModel):
    device: str
    versions: list[DeviceVersionDriftOut]
    """The device's drift state on every model version it was counted on."""
    windows: list[DriftWindowOut]
    """Its closed windows since ``since``, newest first (at most 100)."""


class DriftEventOut(BaseModel):
    kind: str = "drift"
    id: int
    at: float
    scope: str
    """``device`` or ``fleet``."""
    device: str | None
    model: str
    version: str
    state: str
    previous: str
    streams: list[str]
    detail: dict[str, object]

    @classmethod
    def from_row(cls, r: DriftEventRow) -> DriftEventOut:
        return cls(
            id=r.id,
            at=r.at,
            scope=r.scope,
            device=r.device,
            model=r.model,
            version=r.version,
            state=r.state,
            previous=r.previous,
            streams=list(r.streams),
            detail=r.detail,
        )


class DriftEventPageOut(BaseModel):
    kind: str = "drift"
    count: int
    next_cursor: str | None
    events: list[DriftEventOut]


@router.get("/v1/drift", response_model=FleetDriftOut)
def fleet_drift(access: ReadAccess, store: StoreDep) -> FleetDriftOut:
    """Per model version: devices by drift state, streams ranked by PSI, the fleet alarm."""
    states: dict[tuple[str, str], list[DriftStateRow]] = defaultdict(list)
    for row in store.drift_states():
        states[(row.model, row.version)].append(row)
    alarms = _open_fleet_alarms(store)
    out: list[VersionDriftOut] = []
    for (model, version), rows in sorted(states.items()):
        latest = store.latest_drift_windows(model, version)
        out.append(_version_out(model, version, rows, latest, alarms.get((model, version))))
    return FleetDriftOut(versions=out)


@router.get(
    "/v1/devices/{device}/drift", response_model=DeviceDriftOut, responses=responses(404, 422)
)
def device_drift(
    access: ReadAccess,
    store: StoreDep,
    device: DeviceId,
    since: Since = 0.0,
    limit: Annotated[int, Query(ge=1, le=_WINDOWS_SHOWN)] = _WINDOWS_SHOWN,
) -> DeviceDriftOut:
    """The device's drift state per model version and its closed windows over time."""
    require_device(store, device)
    rows = store.drift_states(device)
    return DeviceDriftOut(
        device=device,
        versions=[
            DeviceVersionDriftOut(
                model=r.model,
                version=r.version,
                state=r.state,
                since=r.since,
                streams=r.streams,
                readings=r.readings,
                last_reading_at=r.last_reading_at,
            )
            for r in rows
        ],
        windows=[DriftWindowOut.from_row(w) for w in store.drift_windows(device, since, limit)],
    )


def _open_fleet_alarms(store: StoreDep) -> dict[tuple[str, str], FleetAlarmOut]:
    """The last fleet event per model version, when it opened an alarm."""
    last: dict[tuple[str, str], DriftEventRow] = {}
    cursor: str | None = None
    for _ in range(100):  # bounded: 100 pages of 1000 fleet events
        page = store.drift_events(None, 0.0, time.time() + 1e9, 1000, cursor=cursor, scope="fleet")
        for r in page.items:
            last[(r.model, r.version)] = r
        cursor = page.next_cursor
        if cursor is None:
            break
    out: dict[tuple[str, str], FleetAlarmOut] = {}
    for key, r in last.items():
        if r.state != "drifting":
            continue
        devices = r.detail.get("devices")
        active = r.detail.get("active_devices")
        share = r.detail.get("share")
        out[key] = FleetAlarmOut(
            since=r.at,
            streams=list(r.streams),
            devices=[str(d) for d in devices] if isinstance(devices, list) else [],
            active_devices=int(active) if isinstance(active, int) else 0,
            share=float(share) if isinstance(share, int | float) else 0.0,
        )
    return out


def _version_out(
    model: str,
    version: str,
    rows: list[DriftStateRow],
    latest: list[DriftWindowRow],
    alarm: FleetAlarmOut | None,
) -> VersionDriftOut:
    states = {"ok": 0, "drifting": 0, "recovered": 0}
    drifting_on: dict[str, int] = defaultdict(int)
    by_feature: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
        if r.state == "drifting":
            for channel in r.streams:
                drifting_on[channel] += 1
                by_feature[channel.split(":", 1)[0] + "_last"].add(r.device)
    psis: dict[str, list[float]] = defaultdict(list)
    for w in latest:
        for stream, value in w.psi.items():
            psis[stream].append(value)
    ranked = sorted(
        (
            StreamRankOut(
                stream=stream,
                mean_psi=sum(values) / len(values),
                max_psi=max(values),
                drifting_devices=len(by_feature.get(stream, ())),
            )
            for stream, values in psis.items()
        ),
        key=lambda s: (-s.mean_psi, s.stream),
    )
    return VersionDriftOut(
        model=model,
        version=version,
        devices=len(rows),
        states=states,
        drifting=sorted(r.device for r in rows if r.state == "drifting"),
        channels=dict(sorted(drifting_on.items())),
        streams=ranked,
        fleet_alarm=alarm,
    )
