"""Batch jobs over stored telemetry: :class:`BatchJobs`, for ``/v1/batch/jobs``.

A job scores the features the hub stored for a set of devices over a time
range with a registered model (the model's feature names must be those of the
edge model that computed them) and writes the result under
``DATA_DIR/batch/<id>.csv`` and ``<id>.jsonl``. Jobs run one at a time in a
thread of their own (never the ingest worker's), with one onnxruntime thread;
at most ``max_queued`` wait. The job's state and progress are in the store,
saved at most once a second while it runs, so ``GET`` shows them and a job
survives as a record: when the hub starts, a job the store still shows queued
or running (the hub stopped or died under it) is marked failed, with that
reason. A hub that stops cleanly marks the job it was running failed at once.

No per-device baseline is applied: the stored features are what the device's
model saw, already mapped when its agent ran with one (applying it again would
map twice). The urgent rule's hard limits read the stored ``<sensor>_last``
values, which for such a device are mapped too; mapping them back is not built
yet (the hub does not record which readings an agent mapped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cloud_hub.batch import BatchError
from cloud_hub.batch.output import OutputBlock, Writer, open_writer
from cloud_hub.batch.scoring import BatchScorer
from cloud_hub.store.base import BatchJob, ModelRecord, Store, TelemetryRows

__all__ = ["RESULT_FORMATS", "BatchJobs"]

log = logging.getLogger(__name__)

RESULT_FORMATS: Final = ("csv", "jsonl")
_SAVE_EVERY_S: Final = 1.0


class _StoppedError(Exception):
    pass


class BatchJobs:
    """Queue and run batch jobs; ``start`` fails what an earlier hub left unfinished."""

    def __init__(
        self,
        store: Store,
        results_dir: Path,
        models_root: Path | None,
        *,
        max_queued: int = 8,
        page_rows: int = 8192,
    ) -> None:
        self.store = store
        self.results_dir = results_dir
        self.models_root = models_root
        self.max_queued = max_queued
        self.page_rows = page_rows
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> list[str]:
        """Mark jobs an earlier hub left queued or running failed; start the runner.
        Returns the ids of the jobs marked failed."""
        failed = self.store.fail_unfinished_batch_jobs(
            "the hub stopped before the job finished (restart or crash); submit it again",
            time.time(),
        )
        for job_id in failed:
            log.warning("batch job %s: marked failed, the hub stopped before it finished", job_id)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="batch-jobs", daemon=True)
        self._thread.start()
        return failed

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current page; the job running is marked failed."""
        self._stop.set()
        self._queue.put("")  # wake the runner
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self, devices: Sequence[str], since: float, until: float, record: ModelRecord
    ) -> BatchJob:
        """Queue a job; :class:`BatchError` when ``max_queued`` jobs already wait."""
        if self._thread is None or self._stop.is_set():
            raise BatchError("batch jobs are not running on this hub (it is stopping)")
        with self._lock:
            if self._waiting >= self.max_queued:
                raise BatchError(
                    f"{self._waiting} batch jobs are already waiting (the limit); wait for one "
                    "to finish (GET /v1/batch/jobs) and submit again"
                )
            self._waiting += 1
        job = BatchJob(
            id=uuid.uuid4().hex,
            state="queued",
            devices=tuple(dict.fromkeys(devices)),
            since=since,
            until=until,
            model=record.name,
            version=record.version,
            created_at=time.time(),
        )
        self.store.save_batch_job(job)
        self._queue.put(job.id)
        return job

    def result_file(self, job: BatchJob, fmt: str) -> Path:
        if job.result_path is None or fmt not in RESULT_FORMATS:
            raise ValueError(f"job {job.id} has no {fmt} result")
        return Path(f"{job.result_path}.{fmt}")

    # -- the runner thread

    def _run(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if not job_id:
                continue
            with self._lock:
                self._waiting -= 1
            job = self.store.batch_job(job_id)
            if job is None or job.state != "queued":
                continue
            if self._stop.is_set():
                break
            try:
                self._execute(job)
            except Exception:  # a job must never take the runner down
                log.exception("batch job %s failed unexpectedly", job_id)
                with contextlib.suppress(Exception):
                    self._fail(job_id, "an internal error stopped the job; the hub log says why")

    def _fail(self, job_id: str, reason: str) -> None:
        job = self.store.batch_job(job_id)
        if job is not None:
            self.store.save_batch_job(
                dataclasses.replace(job, state="failed", error=reason, finished_at=time.time())
            )

    def _execute(self, job: BatchJob) -> None:
        job = dataclasses.replace(job, state="running", started_at=time.time())
        self.store.save_batch_job(job)
        log.info(
            "batch job %s: %s %s over %d device(s)",
            job.id,
            job.model,
            job.version,
            len(job.devices),
        )
        base = self.results_dir / job.id
        writers: list[Writer] = []
        try:
            record = self.store.model(job.model, job.version)
            if record is None:
                raise BatchError(f"model {job.model} {job.version} is no longer registered")
            scorer = self._scorer(record)
            writers = [
                open_writer(
                    Path(f"{base}.{fmt}.part"),
                    fmt,
                    record.manifest.output.classes,
                    device=True,
                    file=False,
                )
                for fmt in RESULT_FORMATS
            ]
            job = self._score(job, record, scorer, writers)
            for w in writers:
                w.close()
            writers = []
            for fmt in RESULT_FORMATS:
                Path(f"{base}.{fmt}.part").replace(f"{base}.{fmt}")
        except (BatchError, _StoppedError, OSError) as exc:
            for w in writers:
                with contextlib.suppress(OSError):
                    w.close()
            for fmt in RESULT_FORMATS:
                Path(f"{base}.{fmt}.part").unlink(missing_ok=True)
            reason = (
                "the hub stopped during the job; submit it again"
                if isinstance(exc, _StoppedError)
                else str(exc)
            )
            log.warning("batch job %s failed: %s", job.id, reason)
            self._fail(job.id, reason)
            return
        done = dataclasses.replace(
            job,
            state="done",
            finished_at=time.time(),
            rows_total=job.rows_done,
            result_path=str(base),
        )
        self.store.save_batch_job(done)
        log.info("batch job %s: done, %d rows, %d urgent", job.id, job.rows_done, job.urgent_rows)

    def _scorer(self, record: ModelRecord) -> BatchScorer:
        from cloud_hub.api.artifacts import ArtifactError, artifact_path, verify_sha256  # noqa: PLC0415
        from cloud_hub.inference import OnnxScorer  # noqa: PLC0415

        try:
            path = artifact_path(record, self.models_root)
            verify_sha256(record, path)
        except ArtifactError as exc:
            raise BatchError(str(exc)) from None
        m = record.manifest.model
        return BatchScorer(record.manifest, OnnxScorer(path, m.input_name, m.scores_output))

    def _check_features(self, item: TelemetryRows, record: ModelRecord, seen: set[str]) -> None:
        """The stored features must be the ones the model reads: same count, and the
        edge model that computed them (when registered) names the same features."""
        ours = record.manifest.input.features
        if item.features.shape[1] != len(ours):
            raise BatchError(
                f"device {item.device!r} stored {item.features.shape[1]} features per reading "
                f"(edge model {item.edge_model_version}); model {record.name} {record.version} "
                f"reads {len(ours)}: {', '.join(ours[:8])}{', ...' if len(ours) > 8 else ''}. "
                "Choose a model trained on the same sensors as the devices' edge model"
            )
        version = item.edge_model_version
        if version in seen:
            return
        seen.add(version)
        edge = [r for r in self.store.models() if r.version == version and r.variant == "edge"]
        if edge and all(r.manifest.input.features != ours for r in edge):
            theirs = edge[0].manifest.input.features
            raise BatchError(
                f"device {item.device!r} stored the features of edge model {edge[0].name} "
                f"{version} ({', '.join(theirs[:8])}{', ...' if len(theirs) > 8 else ''}); "
                f"model {record.name} {record.version} reads other features "
                f"({', '.join(ours[:8])}{', ...' if len(ours) > 8 else ''}). Choose a model "
                "that reads the features the devices send"
            )

    def _score(
        self, job: BatchJob, record: ModelRecord, scorer: BatchScorer, writers: list[Writer]
    ) -> BatchJob:
        saved = time.monotonic()
        seen: set[str] = set()
        for done, device in enumerate(job.devices):
            cursor: str | None = None
            while True:
                if self._stop.is_set():
                    raise _StoppedError
                page = self.store.telemetry(device, job.since, job.until, self.page_rows, cursor)
                for item in page.items:
                    self._check_features(item, record, seen)
                    scored = scorer.score_features(item.features, device)
                    block = OutputBlock(
                        item.ts, device, None, scored.predicted, scored.urgent_score, scored.urgent
                    )
                    for w in writers:
                        w.write(block)
                    job = dataclasses.replace(
                        job,
                        rows_done=job.rows_done + len(item),
                        urgent_rows=job.urgent_rows + int(scored.urgent.sum()),
                    )
                if time.monotonic() - saved >= _SAVE_EVERY_S:
                    self.store.save_batch_job(job)
                    saved = time.monotonic()
                cursor = page.next_cursor
                if cursor is None:
                    break
            job = dataclasses.replace(job, devices_done=done + 1)
            scorer.forget(device)
        return job
