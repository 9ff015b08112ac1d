"""``/v1/batch/jobs``: batch scoring of stored telemetry (admin token).

``POST`` queues a job (devices, a time range, a registered model version) and
answers 202 with its id; ``GET /v1/batch/jobs/{id}`` shows its state and
progress; ``GET .../result?format=csv|jsonl`` downloads the result once the
job is done (409 before). Jobs run in the hub's batch thread
(:mod:`cloud_hub.batch.jobs`), one at a time; their records are in the store.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cloud_hub.api.auth import AdminAccess
from cloud_hub.api.deps import StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import find_model, invalid, parse_time, unknown_device
from cloud_hub.batch import BatchError
from cloud_hub.batch.jobs import BatchJobs
from cloud_hub.store.base import BatchJob, BatchJobState

__all__ = ["BatchJobIn", "BatchJobOut", "router"]

router = APIRouter(prefix="/v1/batch/jobs", tags=["batch"], responses=responses(401, 403))

Time = Annotated[float, BeforeValidator(parse_time)]


class BatchJobIn(BaseModel):
    """A batch job: which devices, which time range, which model."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "devices": ["pi-07"],
                    "from": "2026-11-01T00:00:00Z",
                    "to": "2026-11-02T00:00:00Z",
                    "model": "machine-heavy",
                    "version": "1.1.0",
                }
            ]
        },
    )

    devices: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=1000, description="Device ids, each known to the hub."
    )
    since: Time = Field(alias="from", description="Start (inclusive): Unix seconds or ISO 8601.")
    until: Time | None = Field(
        default=None, alias="to", description="End (exclusive); null: no end."
    )
    model: str = Field(min_length=1, max_length=64, description="A registered model's name.")
    version: str | None = Field(
        default=None, max_length=32, description="MAJOR.MINOR.PATCH; null: the latest version."
    )


class BatchJobOut(BaseModel):
    id: str
    state: BatchJobState
    devices: list[str]
    since: float
    until: float | None
    model: str
    version: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    devices_done: int
    rows_done: int
    rows_total: int | None
    urgent_rows: int
    progress: float = Field(description="Share of the devices scored, 0 to 1.")
    error: str | None
    results: dict[str, str] = Field(description="Download path of each result format, once done.")

    @classmethod
    def from_record(cls, job: BatchJob) -> BatchJobOut:
        done = job.state == "done"
        return cls(
            id=job.id,
            state=job.state,
            devices=list(job.devices),
            since=job.since,
            until=None if math.isinf(job.until) else job.until,
            model=job.model,
            version=job.version,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            devices_done=job.devices_done,
            rows_done=job.rows_done,
            rows_total=job.rows_total,
            urgent_rows=job.urgent_rows,
            progress=1.0 if done else job.devices_done / max(len(job.devices), 1),
            error=job.error,
            results={f: f"/v1/batch/jobs/{job.id}/result?format={f}" for f in ("csv", "jsonl")}
            if done
            else {},
        )


class BatchJobListOut(BaseModel):
    count: int
    jobs: list[BatchJobOut]


def _jobs(state: Any) -> BatchJobs:
    jobs: BatchJobs | None = state.batch_jobs
    if jobs is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="batch jobs do not run in this API (it was started without them)",
        )
    return jobs


def _job(store: Any, job_id: str) -> BatchJob:
    job: BatchJob | None = store.batch_job(job_id)
    if job is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"batch job {job_id!r} is unknown; GET /v1/batch/jobs lists the jobs",
        )
    return job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchJobOut,
    responses=responses(404, 422, 503),
)
def submit_job(access: AdminAccess, state: StateDep, body: BatchJobIn) -> BatchJobOut:
    """Queue a batch job over stored telemetry; poll ``GET /v1/batch/jobs/{id}``."""
    jobs = _jobs(state)
    until = math.inf if body.until is None else body.until
    if not body.since < until:
        raise invalid(
            ("body", "from"),
            f"'from' ({body.since}) must be before 'to' ({body.until}); the range is "
            "from <= ts < to",
        )
    for device in body.devices:
        if state.store.device(device) is None:
            raise unknown_device(device)
    record = find_model(state.store, body.model, body.version)
    try:
        job = jobs.submit(body.devices, body.since, until, record)
    except BatchError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    return BatchJobOut.from_record(job)


@router.get("", response_model=BatchJobListOut)
def list_jobs(
    access: AdminAccess, store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> BatchJobListOut:
    """The newest batch jobs, newest first."""
    jobs = [BatchJobOut.from_record(j) for j in store.batch_jobs(limit)]
    return BatchJobListOut(count=len(jobs), jobs=jobs)


@router.get("/{job_id}", response_model=BatchJobOut, responses=responses(404))
def get_job(access: AdminAccess, store: StoreDep, job_id: str) -> BatchJobOut:
    """A job's state and progress."""
    return BatchJobOut.from_record(_job(store, job_id))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"description": "The result file.", "content": {"text/csv": {}}},
        **responses(404, 503),
        409: {"description": "The job is not done."},
    },
)
def get_result(
    access: AdminAccess,
    state: StateDep,
    job_id: str,
    format: Literal["csv", "jsonl"] = "csv",
) -> FileResponse:
    """Download a done job's result as CSV or JSON lines."""
    jobs = _jobs(state)
    job = _job(state.store, job_id)
    if job.state != "done":
        why = f": {job.error}" if job.error else "; poll GET /v1/batch/jobs/{id} until it is done"
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"batch job {job_id} is {job.state}{why}"
        )
    path = jobs.result_file(job, format)
    if not path.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"batch job {job_id}'s {format} result is gone from the hub's data "
            "directory; submit the job again",
        )
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return FileResponse(path, media_type=media, filename=f"batch-{job_id}.{format}")
