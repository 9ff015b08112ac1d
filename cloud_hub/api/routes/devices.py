"""``/v1/devices``: the fleet (each device's state from :func:`cloud_hub.devices.states.shown`),
one device, and its baseline."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, status

from cloud_hub.api.auth import AdminAccess, ReadAccess
from cloud_hub.api.deps import ConfigDep, StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import DeviceId, find_model, require_device, unknown_device
from cloud_hub.api.schemas import (
    BaselineOut,
    DesiredIn,
    DesiredOut,
    DeviceDetailOut,
    DeviceListOut,
    DeviceOut,
    GapOut,
    ReplayOut,
    SensorInputsOut,
)
from cloud_hub.devices.states import count_states
from cloud_hub.ota.desired import check_desirable, desired_record
from cloud_hub.ota.rollouts import devices_in_rollouts
from cloud_hub.store.base import DesiredRecord, DeviceRecord, Store
from shared.epochs import is_replay_epoch

__all__ = ["router"]

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=responses(401))

_GAPS_SHOWN = 100


@router.get("", response_model=DeviceListOut)
def list_devices(access: ReadAccess, store: StoreDep, config: ConfigDep) -> DeviceListOut:
    """Every device the hub knows, by id, with its state, why and since when, and how
    many devices are in each state.

    ``online``; ``degraded`` (its heartbeat shows errors, inputs out of range or a
    latency over its model's manifest budget, else the hub's
    ``--latency-budget-ms``); ``buffering`` (its outbox holds more than the hub's
    ``--buffering-outbox-messages``, or it is resending); ``offline`` (a clean stop
    or its last will); ``stale`` (nothing from it for more than ``stale_after_s``
    seconds); ``never_seen``. Changes are events: ``GET /v1/events?kind=device_state``.
    """
    now = time.time()
    devices = [DeviceOut.from_record(r, now, config.stale_after_s) for r in store.devices()]
    return DeviceListOut(
        count=len(devices),
        stale_after_s=config.stale_after_s,
        states=count_states(d.state for d in devices),
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


def _desired_or_404(store: Store, device: str) -> DesiredRecord:
    desired = store.desired(device)
    if desired is None:
        require_device(store, device)
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"device {device!r} has no desired model: it runs what it was started with; "
            f"set one with PUT /v1/devices/{device}/desired (admin)",
        )
    return desired


@router.get("/{device}/desired", response_model=DesiredOut, responses=responses(404, 422))
def get_desired(access: ReadAccess, store: StoreDep, device: DeviceId) -> DesiredOut:
    """The model version the device should run, what it says it runs, and whether they match."""
    return DesiredOut.from_record(_desired_or_404(store, device), store.device(device))


@router.put(
    "/{device}/desired", response_model=DesiredOut, responses=responses(403, 404, 409, 422, 503)
)
def put_desired(
    access: AdminAccess, state: StateDep, device: DeviceId, body: DesiredIn
) -> DesiredOut:
    """Set the model version one device should run (admin token; rollout "manual"). The
    hub stores it, sends it retained on the device's ``desired`` topic, and sends it again
    whenever the device's birth or heartbeat shows another model. The version must be a
    registered, signed edge model, not archived unless ``allow_downgrade``."""
    publisher = state.desired
    if publisher is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="this hub sends no desired state (it runs without a broker link)",
        )
    store = state.store
    require_device(store, device)
    rollout = devices_in_rollouts(store).get(device)
    if rollout is not None:
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT,
            detail=f"device {device!r} is in rollout {rollout}, which sets its desired model; "
            f"abort it first (POST /v1/rollouts/{rollout}/abort)",
        )
    record = find_model(store, body.model, body.version)
    refusal = check_desirable(record, allow_downgrade=body.allow_downgrade)
    if refusal is not None:
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT, detail=f"{refusal.detail} ({refusal.reason})"
        )
    desired = desired_record(
        record, device, rollout="manual", allow_downgrade=body.allow_downgrade, at=time.time()
    )
    publisher.set([desired])
    return DesiredOut.from_record(desired, store.device(device))
