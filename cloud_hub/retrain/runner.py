"""Starting, watching and recording pipeline runs: :class:`PipelineRunner`.

One runner per process that starts runs (the hub, or ``edgeloop-hub pipeline
run``). Concurrency:

- :meth:`PipelineRunner.submit` (the API's thread, the CLI, the schedule, the
  drift side through :meth:`PipelineRunner.request_run`) checks the request,
  records the run in the store (one transaction that refuses a second run of
  the same model: :class:`RunConflictError`) and starts one watcher thread;
- the watcher starts the run's own process (``multiprocessing`` *spawn*,
  :func:`cloud_hub.retrain.job.main`), which does every step and records it,
  and waits for it at most ``max_s`` seconds; a process still running then is
  killed and the run marked failed, as is a run whose process died without
  recording its end. The ingest worker never waits for a run: training runs
  on another core, in another process;
- a schedule thread (when ``schedule_s`` > 0) asks for a run of
  ``schedule_model`` every ``schedule_s`` seconds over the last ``window_s``.

A hub that starts (:meth:`PipelineRunner.start`) marks failed every run the
store still shows running whose process is gone ("hub restarted"); a
run past its deadline counts as gone whatever its process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cloud_hub.retrain.job import JobSettings, load_run, main, save_run
from cloud_hub.retrain.runs import (
    PipelineInputs,
    PipelineOptions,
    PipelineRun,
    Trigger,
    finish,
    new_run,
)
from shared.errors import EdgeloopError
from shared.isotime import iso_utc

if TYPE_CHECKING:
    from cloud_hub.settings import HubSettings

__all__ = [
    "PipelineRequestError",
    "PipelineRunner",
    "RunConflictError",
    "RunRequest",
    "RunnerSettings",
    "new_run_id",
    "runner_settings",
]

log = logging.getLogger(__name__)

DEADLINE_GRACE_S: Final = 60.0
"""A run's deadline is its start + ``max_s`` + this: the watcher kills it first."""
_KILL_WAIT_S: Final = 10.0


class PipelineRequestError(EdgeloopError):
    """A run request that cannot start; ``status`` is the HTTP status that says why
    (404 unknown model or device, 409 no production version or a run still running,
    422 a bad window or option, 503 stopping); ``reason`` names it in the counter
    ``pipeline_runs_refused:REASON``."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class RunConflictError(PipelineRequestError):
    """Another run of the model is still running; ``running`` is its id."""

    def __init__(self, model: str, running: str) -> None:
        super().__init__(
            f"pipeline run {running} of {model} is still running; two runs of one model never "
            f"overlap: wait for it (GET /v1/pipeline/runs/{running})",
            409,
            "overlap",
        )
        self.running = running


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    job: JobSettings
    max_s: float = 1800.0
    window_s: float = 86_400.0
    """The window of a scheduled or drift run: the last ``window_s`` seconds."""
    schedule_s: float = 0.0
    """0: no schedule."""
    schedule_model: str | None = None
    on_drift: bool = False
    """May a drift alarm start a run (``request_run(trigger="drift")``)?"""
    defaults: PipelineOptions = dataclasses.field(default_factory=PipelineOptions)


def runner_settings(settings: HubSettings, schedule_model: str | None) -> RunnerSettings:
    """The runner's settings from the hub's (``--pipeline-*``); ``schedule_model`` is
    the model the schedule retrains (the hub's edge model)."""
    from cloud_hub.settings import cohort_percents  # noqa: PLC0415

    s = settings
    return RunnerSettings(
        job=JobSettings(
            s.store,
            s.data_dir.resolve(),
            s.signing_key,
            canary=s.pipeline_canary,
            cohorts=cohort_percents(s.pipeline_cohorts),
        ),
        max_s=s.pipeline_max_s,
        window_s=s.pipeline_window_s,
        schedule_s=s.pipeline_schedule_s,
        schedule_model=schedule_model,
        on_drift=s.pipeline_on_drift,
        defaults=PipelineOptions(
            f1_tolerance=s.pipeline_f1_tolerance,
            min_agreement=s.pipeline_min_agreement,
            max_latency_us=s.pipeline_max_latency_us,
            max_model_bytes=s.pipeline_max_model_bytes,
            heavy_min_train_labels=s.pipeline_heavy_min_train_labels,
            heavy_min_holdout_labels=s.pipeline_heavy_min_holdout_labels,
        ),
    )


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What :meth:`PipelineRunner.request_run` did: the run started, or why not."""

    run: PipelineRun | None
    why: str


def new_run_id(model: str, now: float) -> str:
    """``run-MODEL-YYYYmmddTHHMMSS-xxxxxx``: readable, sortable, unique."""
    return f"run-{model}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the PID now
        return True
    return True


class PipelineRunner:
    def __init__(
        self, store: Any, settings: RunnerSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchers: dict[str, threading.Thread] = {}
        self._processes: dict[str, Any] = {}
        self._schedule: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> list[str]:
        """Fail what an earlier process left running; start the schedule. Returns the
        ids of the runs marked failed."""
        failed = self.fail_orphans("hub restarted")
        s = self.settings
        if s.schedule_s > 0 and s.schedule_model:
            self._schedule = threading.Thread(
                target=self._scheduled, name="pipeline-schedule", daemon=True
            )
            self._schedule.start()
            log.info(
                "pipeline: a run of %s every %g s over the last %g s",
                s.schedule_model,
                s.schedule_s,
                s.window_s,
            )
        return failed

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the schedule; kill the runs in progress and mark them failed."""
        self._stop.set()
        with self._lock:
            running = dict(self._processes)
        for run_id, proc in running.items():
            if proc.is_alive():
                proc.kill()
                proc.join(_KILL_WAIT_S)
            self._fail(run_id, "the hub stopped during the run; start it again")
        with self._lock:
            watchers = list(self._watchers.values())
        for thread in watchers:
            thread.join(timeout)
        if self._schedule is not None:
            self._schedule.join(timeout)

    def fail_orphans(self, why: str) -> list[str]:
        """Mark failed each run still ``running`` whose process is gone or whose
        deadline passed (not this process's own runs)."""
        now = self.clock()
        failed = []
        for row in self.store.pipeline_runs(limit=1000):
            if row.state != "running":
                continue
            run = PipelineRun.from_dict(json.loads(row.body))
            if run.owner_pid == os.getpid():
                gone = run.id not in self._watchers  # an earlier runner of this process
            else:
                gone = not _alive(run.owner_pid)
            if not gone and row.deadline > now:
                continue
            self._fail(
                run.id,
                f"{why}: the process running it (PID {run.owner_pid}) ended before the run "
                "did; start it again",
            )
            failed.append(run.id)
            log.warning("pipeline run %s marked failed: %s", run.id, why)
        return failed

    # -- requests ----------------------------------------------------------------------

    def submit(
        self,
        model: str,
        since: float,
        until: float,
        *,
        devices: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
        trigger: Trigger = "admin",
        reason: str = "",
    ) -> PipelineRun:
        """Check, record and start a run; :class:`PipelineRequestError` (with its HTTP
        status) when it cannot start, :class:`RunConflictError` when a run of
        ``model`` is still running. Each refusal is counted by its reason."""
        try:
            return self._submit(
                model,
                since,
                until,
                devices=devices,
                options=options,
                trigger=trigger,
                reason=reason,
            )
        except PipelineRequestError as exc:
            self.store.add_counters({(None, f"pipeline_runs_refused:{exc.reason}"): 1})
            raise

    def _submit(
        self,
        model: str,
        since: float,
        until: float,
        *,
        devices: Sequence[str] | None,
        options: dict[str, Any] | None,
        trigger: Trigger,
        reason: str,
    ) -> PipelineRun:
        if self._stop.is_set():
            raise PipelineRequestError("the pipeline runner is stopping", 503, "stopping")
        if not (math.isfinite(since) and math.isfinite(until)) or not since < until:
            raise PipelineRequestError(
                f"the window must be finite with from < to (the range is from <= ts < to); "
                f"got from={iso_utc(since)} to={iso_utc(until)}",
                422,
                "bad_window",
            )
        try:
            opts = dataclasses.replace(self.settings.defaults, **(options or {}))
            opts.check()
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(PipelineOptions))
            raise PipelineRequestError(
                f"unknown option among {sorted(options or {})}; the options are {known}",
                422,
                "bad_option",
            ) from None
        except ValueError as exc:
            raise PipelineRequestError(str(exc), 422, "bad_option") from None
        parent = self._production(model)
        chosen = self._devices(model, devices)
        now = self.clock()
        run = new_run(
            new_run_id(model, now),
            model,
            trigger,
            PipelineInputs(since, until, chosen, parent),
            now,
            options=opts,
            reason=reason,
            owner_pid=os.getpid(),
        )
        from cloud_hub.store.base import PipelineRunRow  # noqa: PLC0415

        deadline = now + self.settings.max_s + DEADLINE_GRACE_S
        self.fail_orphans("its process is gone")
        with self._lock:
            busy = self.store.start_pipeline_run(
                PipelineRunRow(run.id, model, run.state, json.dumps(run.to_dict()), now, deadline),
                now,
            )
            if busy is not None:
                raise RunConflictError(model, busy)
            # Registered and started under the lock that recorded the run: whoever sees
            # the run in the store and takes the lock finds its watcher running.
            thread = threading.Thread(
                target=self._watch, args=(run.id,), name=f"pipeline-{run.id}", daemon=True
            )
            self._watchers[run.id] = thread
            thread.start()
        self.store.add_counters({(None, f"pipeline_runs:{trigger}"): 1})
        log.info(
            "pipeline run %s of %s started (%s%s)",
            run.id,
            model,
            trigger,
            f": {reason}" if reason else "",
        )
        return run

    def request_run(self, model: str, trigger: Trigger = "drift", reason: str = "") -> RunRequest:
        """What the hub's drift side (and the schedule) call: a run of ``model`` over
        the last ``window_s`` seconds on every device that runs it. Returns the run,
        or None and why not (automatic runs off, a run still running, no production
        version...). Never raises for a refused request."""
        if trigger == "drift" and not self.settings.on_drift:
            return RunRequest(
                None, "runs on drift alarms are off on this hub (--pipeline-on-drift)"
            )
        now = self.clock()
        try:
            run = self.submit(
                model, now - self.settings.window_s, now, trigger=trigger, reason=reason
            )
        except PipelineRequestError as exc:
            log.info("pipeline: no %s run of %s: %s", trigger, model, exc)
            return RunRequest(None, str(exc))
        return RunRequest(run, f"run {run.id} started")

    def wait(self, run_id: str, timeout: float) -> PipelineRun:
        """The run's record once it has ended, or as it is after ``timeout`` seconds."""
        with self._lock:
            thread = self._watchers.get(run_id)
        if thread is not None:
            thread.join(timeout)
        run, _ = load_run(self.store, run_id)
        return run

    # -- internals ---------------------------------------------------------------------

    def _production(self, model: str) -> str:
        from cloud_hub.registry.stages import Stage  # noqa: PLC0415

        versions = [r for r in self.store.models() if r.name == model]
        if not versions:
            names = sorted({r.name for r in self.store.models() if r.variant == "edge"})
            raise PipelineRequestError(
                f"model {model!r} is not registered; the edge models: {', '.join(names) or 'none'}",
                404,
                "unknown_model",
            )
        prod = [r for r in versions if r.stage is Stage.PRODUCTION]
        if not prod:
            raise PipelineRequestError(
                f"model {model} has no production version to compare a candidate with; promote "
                f"one first ('edgeloop-hub models promote {model} VERSION production')",
                409,
                "no_production",
            )
        if prod[0].variant != "edge":
            raise PipelineRequestError(
                f"model {model} is a {prod[0].variant} model; the pipeline retrains edge models",
                422,
                "not_edge",
            )
        return str(prod[0].version)

    def _devices(self, model: str, devices: Sequence[str] | None) -> tuple[str, ...]:
        if devices is None:
            return tuple(sorted(d.device for d in self.store.devices() if d.model == model))
        for d in devices:
            if self.store.device(d) is None:
                raise PipelineRequestError(
                    f"device {d!r} is unknown to this hub; GET /v1/devices lists the devices",
                    404,
                    "unknown_device",
                )
        return tuple(dict.fromkeys(devices))

    def _fail(self, run_id: str, why: str) -> None:
        try:
            run, deadline = load_run(self.store, run_id)
        except Exception:  # a record we cannot read cannot be marked either
            log.exception("pipeline run %s: cannot read its record", run_id)
            return
        if run.finished:
            return
        running = [st.name for st in run.steps if st.status == "running"]
        done = [st.name for st in run.steps if st.status in ("ok", "skipped")]
        decision = (
            f"failed at step {running[0]}"
            if running
            else f"failed after step {done[-1]}"
            if done
            else "failed before its first step"
        )
        run = finish(run, "failed", decision, why, self.clock())
        save_run(self.store, run, deadline)

    def _watch(self, run_id: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=main, args=(self.settings.job, run_id), name=f"pipeline-{run_id}", daemon=True
        )
        try:
            proc.start()
        except OSError as exc:
            self._fail(run_id, f"the run's process could not start: {exc}")
            with self._lock:
                self._watchers.pop(run_id, None)
            return
        with self._lock:
            self._processes[run_id] = proc
        try:
            proc.join(self.settings.max_s)
            if proc.is_alive():
                proc.kill()
                proc.join(_KILL_WAIT_S)
                self._fail(
                    run_id,
                    f"the run took longer than {self.settings.max_s:g} s (--pipeline-max-s) "
                    "and was stopped; nothing was registered by it after that",
                )
            elif proc.exitcode != 0:
                self._fail(
                    run_id,
                    f"the run's process ended with exit code {proc.exitcode} before recording "
                    "its end (the hub's log says why)",
                )
            else:
                self._fail(run_id, "the run's process ended without recording its end")
        finally:
            with self._lock:
                self._processes.pop(run_id, None)
                self._watchers.pop(run_id, None)  # the run is recorded as ended by now

    def _scheduled(self) -> None:
        s = self.settings
        assert s.schedule_model is not None
        while not self._stop.wait(s.schedule_s):
            try:
                got = self.request_run(s.schedule_model, "schedule", f"every {s.schedule_s:g} s")
                log.info("pipeline schedule: %s", got.why)
            except Exception:  # the schedule must outlive one bad run request
                log.exception("pipeline schedule: the request failed; trying again later")
