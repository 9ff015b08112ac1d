"""``/v1/rollouts``: staged rollouts of an edge model version (start, watch, pause, resume, abort).

The rules are :mod:`cloud_hub.ota.rollout`'s; the hub's
:class:`~cloud_hub.ota.rollouts.RolloutManager` carries them out. Writes need
the admin token.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.auth import AdminAccess, ReadAccess
from cloud_hub.api.deps import StateDep
from cloud_hub.api.errors import responses
from cloud_hub.ota.rollout import DEFAULT_COHORTS, Gates, Rollout, RolloutError
from cloud_hub.ota.rollouts import RolloutManager, StartRequest, new_rollout_id

__all__ = ["router"]

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], responses=responses(401))

RolloutId = Annotated[str, Path(min_length=1, max_length=200, description="A rollout's id.")]


class GatesIn(BaseModel):
    """When a cohort passes; every field is optional (the defaults in parentheses)."""

    model_config = ConfigDict(extra="forbid")
    min_commit_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0
    max_failure_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    device_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    soak_s: Annotated[float, Field(ge=0)] = 0.0
    max_latency_ratio: Annotated[float | None, Field(ge=0)] = None
    max_disagreement_delta: Annotated[float | None, Field(ge=0)] = None
    max_urgent_ratio: Annotated[float | None, Field(ge=0)] = None
    urgent_floor: Annotated[float, Field(ge=0)] = 0.001
    min_readings: Annotated[int, Field(ge=1)] = 100


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    cohorts: list[float] = Field(default_factory=lambda: list(DEFAULT_COHORTS), min_length=1)
    """Cumulative percentages of the model's devices, rising to 100 (first: the canary)."""
    gates: GatesIn = Field(default_factory=GatesIn)
    devices: list[str] | None = None
    """Only these devices (default: every device whose birth or heartbeat names the model)."""


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=500)] = ""


class RolloutOut(BaseModel):
    id: str
    model: str
    version: str
    state: str
    cohort: int
    """The cohort in flight, from 1 (``cohorts + 1`` once every cohort passed)."""
    cohorts: list[dict[str, Any]]
    """Per cohort: its devices and how many are in each state."""
    devices: dict[str, int]
    """How many devices are in each state."""
    device_states: dict[str, str]
    gates: dict[str, Any]
    decisions: list[dict[str, Any]]
    """Every decision, oldest first: what, why, and gate values against thresholds."""
    created_at: float

    @classmethod
    def from_rollout(cls, r: Rollout) -> RolloutOut:
        return cls(
            id=r.id,
            model=r.model,
            version=r.version,
            state=r.state.value,
            cohort=r.cohort + 1,
            cohorts=[
                {
                    "index": i + 1,
                    "devices": list(c),
                    "states": {
                        s: sum(r.devices[d].value == s for d in c)
                        for s in sorted({r.devices[d].value for d in c})
                    },
                }
                for i, c in enumerate(r.cohorts)
            ],
            devices=r.counts(),
            device_states={d: s.value for d, s in sorted(r.devices.items())},
            gates=r.to_dict()["gates"],
            decisions=r.to_dict()["decisions"],
            created_at=r.created_at,
        )


class RolloutListOut(BaseModel):
    count: int
    rollouts: list[RolloutOut]


def _manager(state: StateDep) -> RolloutManager:
    if state.rollouts is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="this hub runs no rollouts (it runs without a broker link)",
        )
    manager: RolloutManager = state.rollouts
    return manager


@router.get("", response_model=RolloutListOut)
def list_rollouts(access: ReadAccess, state: StateDep) -> RolloutListOut:
    """Every rollout, newest first."""
    found = [
        RolloutOut.from_rollout(Rollout.from_dict(json.loads(row.body)))
        for row in state.store.rollouts()
    ]
    return RolloutListOut(count=len(found), rollouts=found)


@router.get("/{rollout_id}", response_model=RolloutOut, responses=responses(404, 422))
def get_rollout(access: ReadAccess, state: StateDep, rollout_id: RolloutId) -> RolloutOut:
    """One rollout: cohorts, devices per state, gates, and every decision with its reasons."""
    row = state.store.rollout(rollout_id)
    if row is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"there is no rollout {rollout_id!r}; GET /v1/rollouts lists them",
        )
    return RolloutOut.from_rollout(Rollout.from_dict(json.loads(row.body)))


@router.post(
    "",
    response_model=RolloutOut,
    status_code=status.HTTP_201_CREATED,
    responses=responses(403, 409, 422, 503),
)
def start_rollout(access: AdminAccess, state: StateDep, body: RolloutIn) -> RolloutOut:
    """Start a rollout (admin token): the first cohort is told at once. 409 when it cannot
    start (the version is not a signed edge model, no device runs the model, a device is in
    a rollout still running, cohorts or gates out of range)."""
    manager = _manager(state)
    try:
        req = StartRequest(
            body.model, body.version, body.cohorts, Gates(**body.gates.model_dump()), body.devices
        )
        rollout_id = new_rollout_id(body.model, body.version, manager.clock())
        r = manager.run_command(rollout_id, "start", req.to_json())
    except RolloutError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return RolloutOut.from_rollout(r)


@router.post(
    "/{rollout_id}/{what}", response_model=RolloutOut, responses=responses(403, 404, 409, 422, 503)
)
def control_rollout(
    access: AdminAccess,
    state: StateDep,
    rollout_id: RolloutId,
    what: Literal["pause", "resume", "abort"],
    body: CommandIn | None = None,
) -> RolloutOut:
    """Pause (stop advancing; devices in flight go on converging), resume, or abort (every
    device already moved gets its previous version back), with a reason for the record."""
    manager = _manager(state)
    if state.store.rollout(rollout_id) is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND, detail=f"there is no rollout {rollout_id!r}"
        )
    reason = "" if body is None else body.reason
    try:
        r = manager.run_command(rollout_id, what, json.dumps({"reason": reason}))
    except RolloutError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return RolloutOut.from_rollout(r)
