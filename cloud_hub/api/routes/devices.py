"""``/v1/devices``: the fleet (state derived from the record and the stale timeout), one
device, and its baseline."""

from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, HTTPException, status

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import ConfigDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import DeviceId, unknown_device
from cloud_hub.api.schemas import (
    BaselineOut,
    DeviceDetailOut,
    DeviceListOut,
    DeviceOut,
    GapOut,
    ReplayOut,
    SensorInputsOut,
)
from cloud_hub.store.base import DeviceRecord, Store
from shared.epochs import is_replay_epoch

__all__ = ["router"]

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=responses(401))

_GAPS_SHOWN = 100


@router.get("", response_model=DeviceListOut)
def list_devices(access: ReadAccess, store: StoreDep, config: ConfigDep) -> DeviceListOut:
    """Every device the hub knows, by id, with its state.

    ``stale``: the device's last status said online, but nothing has arrived
    from it for more than ``stale_after_s`` seconds.
    """
    now = time.time()
    devices = [DeviceOut.from_record(r, now, config.stale_after_s) for r in store.devices()]
    states = Counter({"online": 0, "offline": 0, "stale": 0, "never_seen": 0})
    states.update(d.state for d in devices)
    return DeviceListOut(
        count=len(devices),
        stale_after_s=config.stale_after_s,
        states=dict(states),
        devices=devices,
    )


def _sensors(store: Store, record: DeviceRecord) -> tuple[str, ...]:
    """The sensors of the model the device's birth named (empty when unknown)."""
    if record.model is None or record.model_version is None:
        return ()
    model = store.model(record.model, record.model_version)
    return () if model is None else model.manifest.input.sensor_names


@router.get("/{device}", response_model=DeviceDetailOut, responses=responses(404, 422))
def get_device(
    access: ReadAccess, store: StoreDep, config: ConfigDep, device: DeviceId
) -> DeviceDetailOut:
    """One device: state, versions, its counters, its last heartbeat and its open gaps."""
    record = store.device(device)
    if record is None:
        raise unknown_device(device)
    summary = DeviceOut.from_record(record, time.time(), config.stale_after_s)
    return DeviceDetailOut(
        **summary.model_dump(),
        inputs=SensorInputsOut.from_health(record.last_health, _sensors(store, record)),
        acked_seq=store.watermark(device, record.epoch) if record.epoch else 0,
        replays=[
            ReplayOut(epoch=epoch, acked_seq=seq)
            for epoch, seq in store.watermarks(device).items()
            if is_replay_epoch(epoch)
        ],
        counters=dict(record.counters),
        last_health=dict(record.last_health) if record.last_health is not None else None,
        gaps=[GapOut.from_record(g) for g in store.gaps(device, limit=_GAPS_SHOWN)],
    )


@router.get("/{device}/baseline", response_model=BaselineOut, responses=responses(404, 422))
def get_baseline(access: ReadAccess, store: StoreDep, device: DeviceId) -> BaselineOut:
    """The device's baseline: the file to give its agent (``edgeloop-agent --baseline FILE``).

    The hub records it from the device's first ``--baseline-readings`` stored
    readings, or ``edgeloop-hub devices baseline`` over a chosen range. It is
    also the device's drift reference (drift tracking: not built yet).
    """
    baseline = store.baseline(device)
    if baseline is None:
        if store.device(device) is None:
            raise unknown_device(device)
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"device {device!r} has no baseline yet: the hub records one once its first "
            "--baseline-readings readings are stored, or make one over a range of stored "
            f"readings with 'edgeloop-hub devices baseline {device} --from T --to T'",
        )
    return BaselineOut.from_record(baseline)
