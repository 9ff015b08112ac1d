"""``/v1/pipeline/runs``: the retraining pipeline's recorded runs, and starting one.

``POST`` (admin token) starts a run of an edge model over a window of stored
telemetry (:class:`~cloud_hub.retrain.runner.PipelineRunner`) and answers 202
with its record; ``GET`` (read token) lists runs and shows one: trigger,
inputs, each step with its start, end, status and detail, the gates, the
metrics and the decision with its reason. A second run of a model while one
runs is a 409 naming the running one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cloud_hub.api.auth import AdminAccess, ReadAccess
from cloud_hub.api.deps import StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import invalid, parse_time
from cloud_hub.retrain.runs import PipelineRun
from cloud_hub.store.base import PipelineRunRow

__all__ = ["RunIn", "router"]

router = APIRouter(prefix="/v1/pipeline/runs", tags=["pipeline"], responses=responses(401))

Time = Annotated[float, BeforeValidator(parse_time)]
RunId = Annotated[str, Path(min_length=1, max_length=200, description="A run's id.")]


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    since: Time = Field(alias="from", description="Start (inclusive): Unix seconds or ISO 8601.")
    until: Time = Field(alias="to", description="End (exclusive): Unix seconds or ISO 8601.")


class RunIn(BaseModel):
    """A run of ``model`` over the stored telemetry of ``window`` (and ``devices``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "machine-edge",
                    "window": {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"},
                    "options": {"f1_tolerance": 0.01},
                }
            ]
        },
    )
    model: str = Field(min_length=1, max_length=64, description="A registered edge model.")
    window: WindowIn
    devices: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        max_length=10_000,
        description="Devices whose telemetry to train on (default: every device whose birth "
        "names the model).",
    )
    options: dict[str, float | int] = Field(
        default_factory=dict,
        description="Per-run overrides of the hub's pipeline settings: seed, holdout_fraction, "
        "validation_fraction, f1_tolerance, min_agreement, max_latency_us, max_model_bytes, "
        "heavy_min_train_labels and heavy_min_holdout_labels (operator-labelled readings of "
        "every class the heavy step needs in the training and the held-out part; default "
        "200 and 50); "
        "sabotage_labels (tests and benchmarks only: that share of the training labels made "
        "wrong on purpose).",
    )
    reason: Annotated[str, Field(max_length=500)] = ""


class RunListOut(BaseModel):
    count: int
    runs: list[dict[str, Any]]


def _out(row: PipelineRunRow) -> dict[str, Any]:
    return PipelineRun.from_dict(json.loads(row.body)).to_dict()


def _runner(state: Any) -> Any:
    if state.pipeline is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="this API runs no pipeline (it was started without one)",
        )
    return state.pipeline


@router.get("", response_model=RunListOut)
def list_runs(
    access: ReadAccess,
    store: StoreDep,
    model: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunListOut:
    """The newest runs (of one model, or all), newest first."""
    runs = [_out(r) for r in store.pipeline_runs(model, limit)]
    return RunListOut(count=len(runs), runs=runs)


@router.get("/{run_id}", responses=responses(404, 422))
def get_run(access: ReadAccess, store: StoreDep, run_id: RunId) -> dict[str, Any]:
    """One run: trigger, inputs, steps, gates, metrics, decision and why."""
    row = store.pipeline_run(run_id)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"there is no pipeline run {run_id!r}; GET /v1/pipeline/runs lists them",
        )
    return _out(row)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(403, 404, 409, 422, 503),
)
def start_run(access: AdminAccess, state: StateDep, body: RunIn) -> dict[str, Any]:
    """Start a run (admin token); poll ``GET /v1/pipeline/runs/{id}`` for its progress."""
    from cloud_hub.retrain.runner import PipelineRequestError  # noqa: PLC0415

    runner = _runner(state)
    try:
        run = runner.submit(
            body.model,
            body.window.since,
            body.window.until,
            devices=body.devices,
            options=dict(body.options),
            trigger="admin",
            reason=body.reason,
        )
    except PipelineRequestError as exc:  # counted by the runner
        if exc.status == 422:
            raise invalid(("body",), str(exc)) from None
        raise HTTPException(exc.status, detail=str(exc)) from None
    result: dict[str, Any] = run.to_dict()
    return result
