"""One pipeline run's work, in its own process: assemble -> train -> convert ->
quantize -> gate -> register -> canary -> heavy.

:func:`main` is the process's entry (started by
:class:`cloud_hub.retrain.runner.PipelineRunner` with ``multiprocessing``'s
*spawn*, so nothing of the hub's threads or locks comes along). It opens the
store itself (SQLite in WAL mode takes a second writer, as ``models train``
does) and saves the run's record after every step, so the API and the CLI show
progress while it runs. :func:`execute` is the same work on a store the caller
opened (tests call it directly to inject faults).

What each step does:

- **assemble**: the stored telemetry of the window and devices, labelled and
  cut by time per device (:mod:`cloud_hub.retrain.dataset`): the heavy model's
  classes as teacher labels, operators' labels winning where they cover a
  reading, and the last ``holdout_fraction`` of each device's readings held out.
- **train**: the edge student on the training rows with the trainer that built
  the default models (:func:`cloud_hub.pipeline.train.train_edge`);
- **convert**: skl2onnx (:func:`cloud_hub.pipeline.convert.sklearn_to_onnx`);
- **quantize**: int8 dynamic (:func:`cloud_hub.pipeline.convert.quantize_int8`);
- **gate**, all on the held-out slice, the int8 model scoring one reading at a
  time as on a device: its macro-F1 against the held-out labels is not below
  the production edge model's minus ``f1_tolerance``; its class agrees with its
  fp32 twin's on at least ``min_agreement`` of the rows; its p99 latency per
  reading is within ``max_latency_us``; its ``model.onnx`` within
  ``max_model_bytes``. Any failed gate rejects the run: nothing is registered.
- **register**: the package (reference statistics and test vectors by
  :func:`cloud_hub.pipeline.package.complete_package`; lineage: parent version,
  data window and hash, run id; the parent's ``latency_budget_ms``, the budget
  the hub judges its devices by) under the next patch version above the highest
  registered, signed with the hub's key and registered as a ``candidate``
  (:func:`cloud_hub.registry.register.register_built`);
- **canary**: only for an automatic run (trigger ``drift`` or ``schedule``)
  on a hub that allows it: a staged rollout of the candidate is queued for the
  hub's rollout manager, its first cohort the canary. Otherwise skipped, saying why.
- **heavy**: after the edge steps, also when the edge gate rejected (not after
  a failed step): where the operators' labels allow it (at least
  ``heavy_min_train_labels`` labelled readings of every class in the train and
  validation slices, ``heavy_min_holdout_labels`` in the held-out one), the
  edge model's heavy partner is retrained on the labelled training readings
  only (:func:`cloud_hub.pipeline.train.train_heavy`), converted (fp32) and
  gated on the labelled held-out readings: macro-F1 not below the production
  heavy model's on them minus ``f1_tolerance``. Passed: registered like the
  edge candidate (signed, ``candidate``, lineage with the production heavy
  version as parent), never promoted. Too few labels: ``skipped``, saying which
  class lacks how many; a failed gate: ``rejected``; an error: ``failed``. The
  run's state stays the edge part's.

Before registering, the run's record is read back: a run that its hub marked
failed meanwhile (it restarted, or the time limit passed) registers nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from cloud_hub.retrain.runs import (
    GateResult,
    PipelineRun,
    RunState,
    StepStatus,
    finish,
    set_step,
)
from cloud_hub.store.base import PipelineRunRow
from shared.errors import EdgeloopError
from shared.isotime import iso_utc

if TYPE_CHECKING:
    from cloud_hub.retrain.dataset import Dataset
    from shared.manifest import ModelManifest

__all__ = [
    "JobSettings",
    "RunAbortedError",
    "execute",
    "load_run",
    "main",
    "save_run",
]

log = logging.getLogger(__name__)

PAGE_ROWS: Final = 20_000
MIN_TRAIN_ROWS: Final = 200
MIN_HOLDOUT_ROWS: Final = 50
LATENCY_ROWS: Final = 500
"""Held-out rows the latency gate times (one at a time)."""
TEST_VECTORS: Final = 8


@dataclass(frozen=True, slots=True)
class JobSettings:
    """What the run's process needs from the hub's settings (picklable)."""

    store_url: str
    data_dir: Path
    signing_key: Path | None
    canary: bool = False
    """May an automatic run start a canary rollout (``--pipeline-canary``)?"""
    cohorts: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    max_rows: int = 500_000
    """Readings assembled at most; the newest beyond it per device are left out."""


class RunAbortedError(Exception):
    """A step cannot go on; ``str`` says why and what to do. ``rejected``: a gate said no."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


def save_run(store: Any, run: PipelineRun, deadline: float) -> None:
    store.save_pipeline_run(
        PipelineRunRow(
            run.id, run.model, run.state, json.dumps(run.to_dict()), run.created_at, deadline
        )
    )


def load_run(store: Any, run_id: str) -> tuple[PipelineRun, float]:
    row: PipelineRunRow | None = store.pipeline_run(run_id)
    if row is None:
        raise RunAbortedError(f"pipeline run {run_id} is not in the store")
    return PipelineRun.from_dict(json.loads(row.body)), row.deadline


def main(settings: JobSettings, run_id: str) -> None:
    """The run's process: open the store, :func:`execute`, close it."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: PLC0415

    from cloud_hub.store import open_store  # noqa: PLC0415
    from shared.logformat import configure_logging, default_log_format  # noqa: PLC0415

    # The hub's --log-format reaches this process through EDGELOOP_LOG_FORMAT.
    configure_logging(
        logging.WARNING,
        default_log_format(),
        "%(asctime)s %(levelname)s pipeline %(name)s: %(message)s",
    )
    store = open_store(settings.store_url)
    try:
        with threadpool_limits(limits=1):
            execute(store, settings, run_id, parent_pid=os.getppid())
    finally:
        store.close()


class _Job:
    def __init__(self, store: Any, settings: JobSettings, run_id: str) -> None:
        self.store = store
        self.settings = settings
        self.run, self.deadline = load_run(store, run_id)
        self.current: str | None = None
        self.detail = ""
        self.outcome: StepStatus = "ok"
        self.parent_pid: int | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise RunAbortedError(
                f"the process that started the run (PID {self.parent_pid}) is gone; the run "
                f"stopped before {name}"
            )
        self.current, self.detail, self.outcome = name, "", "ok"
        self.run = set_step(self.run, name, "running", time.time())
        save_run(self.store, self.run, self.deadline)
        log.info("pipeline run %s: %s", self.run.id, name)
        yield
        self.run = set_step(self.run, name, self.outcome, time.time(), self.detail)
        self.current = None
        save_run(self.store, self.run, self.deadline)

    def where(self) -> str:
        """Where the run stopped: the step in progress, else before the next one."""
        if self.current is not None:
            return f"at step {self.current}"
        pending = [s.name for s in self.run.steps if s.status == "pending"]
        return f"before step {pending[0]}" if pending else "after its last step"

    def end(self, state: RunState, decision: str, why: str) -> PipelineRun:
        if self.current is not None:
            self.run = set_step(self.run, self.current, "running", time.time(), why)
        self.run = finish(self.run, state, decision, why, time.time())
        save_run(self.store, self.run, self.deadline)
        return self.run


def execute(
    store: Any, settings: JobSettings, run_id: str, *, parent_pid: int | None = None
) -> PipelineRun:
    """Run every step of the stored run ``run_id``; returns its final record (also saved).
    With ``parent_pid``, a step does not start once that process is gone (the hub was
    killed: the restarted hub marks the run failed)."""
    job = _Job(store, settings, run_id)
    job.parent_pid = parent_pid
    stage = Path(tempfile.mkdtemp(prefix=f"pipeline-{run_id}-", dir=_work_dir(settings)))
    try:
        _steps(job, stage)
    except RunAbortedError as exc:
        if exc.rejected:
            log.warning("pipeline run %s rejected: %s", run_id, exc)
            failed = ", ".join(g.name for g in job.run.gates if not g.passed)
            decision = f"rejected by the gate: {failed}"
            if job.run.heavy_candidate is not None:
                decision += (
                    f"; the heavy step registered {partner(job.run.model)} "
                    f"{job.run.heavy_candidate}"
                )
            return job.end("rejected", decision, str(exc) + heavy_outcome(job.run))
        log.warning("pipeline run %s failed %s: %s", run_id, job.where(), exc)
        return job.end("failed", f"failed {job.where()}", str(exc))
    except Exception as exc:  # a run must end recorded, whatever broke
        log.exception("pipeline run %s failed %s", run_id, job.where())
        return job.end(
            "failed",
            f"failed {job.where()}",
            f"{type(exc).__name__}: {exc} (the hub's log has the traceback)",
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return job.run


def _work_dir(settings: JobSettings) -> Path:
    work = settings.data_dir / "pipeline"
    work.mkdir(parents=True, exist_ok=True)
    return work


def _steps(job: _Job, stage: Path) -> None:
    run = job.run
    parent = _parent(job.store, run)
    manifest = parent.manifest
    with job.step("assemble"):
        data = _assemble(job, manifest)
    try:
        version = _edge_steps(job, stage, data, parent)
    except RunAbortedError as exc:
        if exc.rejected:  # the heavy part stands on its own: it still runs
            _heavy(job, stage, data, manifest)
        raise
    _heavy(job, stage, data, manifest)
    canary = job.run.step("canary")
    why = (
        f"{run.model} {version} registered as a candidate: "
        + "; ".join(g.detail for g in job.run.gates)
        + f"; canary {canary.status}: {canary.detail}"
        + heavy_outcome(job.run)
    )
    decision = f"registered {run.model} {version} as a candidate"
    if job.run.heavy_candidate is not None:
        decision += f", and {partner(run.model)} {job.run.heavy_candidate}"
    job.run = finish(job.run, "succeeded", decision, why, time.time())
    save_run(job.store, job.run, job.deadline)


def _edge_steps(job: _Job, stage: Path, data: Dataset, parent: _Parent) -> str:
    """train -> convert -> quantize -> gate -> register -> canary of the edge model;
    returns the version registered."""
    from cloud_hub.pipeline.convert import quantize_int8, sklearn_to_onnx  # noqa: PLC0415

    run = job.run
    manifest = parent.manifest
    with job.step("train"):
        edge_sk = _train(job, data, len(manifest.output.classes))
    with job.step("convert"):
        fp32 = sklearn_to_onnx(edge_sk, data.x.shape[1], run.model)
        job.detail = f"{len(fp32.graph.node)} ONNX nodes (fp32)"
    with job.step("quantize"):
        int8 = quantize_int8(fp32)
        job.detail = f"int8 dynamic: {len(int8.SerializeToString())} bytes"
    with job.step("gate"):
        scored = _gate(job, stage, data, (fp32, int8), parent.path)
    with job.step("register"):
        version = _register(job, stage, data, manifest, scored)
    with job.step("canary"):
        _canary(job, version)
    return version


def partner(edge_name: str) -> str:
    """The heavy partner's name of an edge model (the name itself when it has none)."""
    from cloud_hub.ingest.heavy import partner_name  # noqa: PLC0415

    return partner_name(edge_name) or edge_name


def heavy_outcome(run: PipelineRun) -> str:
    """``"; heavy step STATUS: DETAIL"`` once the heavy step ran, else ``""``."""
    step = run.step("heavy")
    if step.status in ("pending", "running"):
        return ""
    return f"; heavy step {step.status}: {step.detail}"


@dataclass(frozen=True, slots=True)
class _Parent:
    manifest: ModelManifest
    path: Path


def _parent(store: Any, run: PipelineRun) -> _Parent:
    if run.inputs.parent is None:
        raise RunAbortedError(
            f"model {run.model} has no production version to compare a candidate with; "
            f"promote one ('edgeloop-hub models promote {run.model} VERSION production')"
        )
    record = store.model(run.model, run.inputs.parent)
    if record is None or record.variant != "edge":
        raise RunAbortedError(
            f"{run.model} {run.inputs.parent} is not a registered edge model; the pipeline "
            "retrains edge models only"
        )
    return _Parent(record.manifest, Path(record.path))


def _assemble(job: _Job, manifest: ModelManifest) -> Dataset:
    from cloud_hub.retrain.dataset import DeviceData, LabelSpan, assemble  # noqa: PLC0415

    run, store = job.run, job.store
    classes = manifest.output.classes
    width = len(manifest.input.features)
    if not run.inputs.devices:
        raise RunAbortedError(
            f"no device runs {run.model} (none named, and no device's birth names it); name "
            "the devices to train on"
        )
    devices: list[DeviceData] = []
    skipped: dict[str, int] = {}
    budget = job.settings.max_rows
    for device in run.inputs.devices:
        ts, xs, hs = [], [], []
        cursor: str | None = None
        kept = 0
        while kept < budget:
            page = store.telemetry(
                device, run.inputs.since, run.inputs.until, min(PAGE_ROWS, budget - kept), cursor
            )
            for item in page.items:
                if item.features.shape[1] != width or item.heavy_scores.shape[1] != len(classes):
                    skipped[device] = skipped.get(device, 0) + len(item)
                    continue
                ts.append(item.ts)
                xs.append(item.features)
                hs.append(item.heavy_scores)
                kept += len(item)
            cursor = page.next_cursor
            if cursor is None:
                break
        budget -= kept
        if ts:
            devices.append(
                DeviceData(device, np.concatenate(ts), np.concatenate(xs), np.concatenate(hs))
            )
    window = f"[{iso_utc(run.inputs.since)}, {iso_utc(run.inputs.until)})"
    if not devices:
        extra = f" ({sum(skipped.values())} readings of other models)" if skipped else ""
        raise RunAbortedError(
            f"no stored readings of {run.model} in {window} from "
            f"{', '.join(run.inputs.devices[:10])}{extra}; choose a window and devices with "
            "telemetry (GET /v1/devices/NAME/telemetry)"
        )
    spans: dict[str, list[LabelSpan]] = {}
    for label in store.labels(None, run.inputs.since, run.inputs.until):
        if label.model == run.model and label.label in classes:
            spans.setdefault(label.device, []).append(
                LabelSpan(label.since, label.until, classes.index(label.label))
            )
    data = assemble(
        devices,
        spans,
        n_classes=len(classes),
        window=manifest.input.window,
        validation_fraction=run.options.validation_fraction,
        holdout_fraction=run.options.holdout_fraction,
    )
    c = data.counts()
    if c["train_rows"] < MIN_TRAIN_ROWS or c["holdout_rows"] < MIN_HOLDOUT_ROWS:
        raise RunAbortedError(
            f"only {c['rows']} readings in {window} ({c['train_rows']} to train on, "
            f"{c['holdout_rows']} held out; at least {MIN_TRAIN_ROWS} and {MIN_HOLDOUT_ROWS} "
            "are needed); widen the window or add devices"
        )
    per_class = np.bincount(data.y, minlength=len(classes)).tolist()
    job.run = dataclasses.replace(
        job.run, metrics={**job.run.metrics, **{k: float(v) for k, v in c.items()}}
    )
    job.detail = (
        f"{c['rows']} readings of {len(data.devices)} device(s) in {window}: "
        f"{c['train_rows']} train, {c['validation_rows']} validation, {c['holdout_rows']} "
        f"held out (the last {run.options.holdout_fraction:.0%} of each device's); labels: "
        f"{c['label_rows']} from operators, {c['teacher_rows']} from the heavy model; per class "
        + ", ".join(f"{k}={n}" for k, n in zip(classes, per_class, strict=True))
        + (f"; left out {sum(skipped.values())} readings of other models" if skipped else "")
        + f"; data sha256 {data.sha256[:12]}"
    )
    return data


def _train(job: _Job, data: Dataset, n_classes: int) -> Any:
    from cloud_hub.pipeline.train import PipelineError, train_edge  # noqa: PLC0415
    from cloud_hub.retrain.dataset import HOLDOUT, sabotage  # noqa: PLC0415

    opts = job.run.options
    fit = (data.side >= 0) & (data.side != HOLDOUT)
    x, y = data.x[fit], data.y[fit]
    note = ""
    if opts.sabotage_labels > 0:
        y = sabotage(y, opts.sabotage_labels, n_classes, opts.seed)
        note = f"; sabotage_labels={opts.sabotage_labels:g}: that share of the labels made wrong on purpose (test/bench option)"
    try:
        model = train_edge(x, y, opts.seed, n_classes)
    except PipelineError as exc:
        raise RunAbortedError(
            f"{exc} (the labels of this window: widen it, add devices, or post labels of the "
            "missing classes with POST /v1/labels)"
        ) from None
    job.detail = (
        f"edge MLP on {y.size} rows (train and validation slices), "
        f"{model.named_steps['mlp'].n_iter_} iterations{note}"
    )
    return model


@dataclass(frozen=True, slots=True)
class _Scored:
    model_path: Path
    metrics: dict[str, float]
    validation_scores: Any


def _macro_f1(scores: Any, y: Any, n_classes: int) -> float:
    from sklearn.metrics import f1_score  # noqa: PLC0415

    return float(
        f1_score(
            y,
            scores.argmax(axis=1),
            labels=list(range(n_classes)),
            average="macro",
            zero_division=0,
        )
    )


def _gate(
    job: _Job, stage: Path, data: Dataset, models: tuple[Any, Any], parent_path: Path
) -> _Scored:
    fp32, int8 = models
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from cloud_hub.pipeline.convert import INPUT_NAME, SCORES_OUTPUT, agreement  # noqa: PLC0415
    from cloud_hub.pipeline.package import save_model  # noqa: PLC0415
    from cloud_hub.retrain.dataset import HOLDOUT, VALIDATION  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    opts = job.run.options
    hx, hy = data.part(HOLDOUT)
    model_path = save_model(stage / "package", int8)
    twin_path = stage / "fp32-twin.onnx"
    twin_path.write_bytes(fp32.SerializeToString())
    cand = OnnxScorer(model_path, INPUT_NAME, SCORES_OUTPUT)
    twin = OnnxScorer(twin_path, INPUT_NAME, SCORES_OUTPUT)
    prod = OnnxScorer.from_package(load_package(parent_path))
    cand_scores = cand.scores(hx, batch_size=1)
    n_classes = cand_scores.shape[1]
    f1 = _macro_f1(cand_scores, hy, n_classes)
    f1_prod = _macro_f1(prod.scores(hx, batch_size=1), hy, n_classes)
    agree = agreement(cand_scores, twin.scores(hx))
    times = []
    for row in hx[:LATENCY_ROWS]:
        t = time.perf_counter_ns()
        cand.scores(row[None, :], batch_size=1)
        times.append(time.perf_counter_ns() - t)
    p99_us = float(np.percentile(np.asarray(times, dtype=np.float64), 99)) / 1000.0
    size = model_path.stat().st_size
    rows = f"{hy.size} held-out readings"
    floor = f1_prod - opts.f1_tolerance
    gates = (
        GateResult(
            "f1_macro_vs_production",
            f1,
            floor,
            f1 >= floor,
            f"macro-F1 {f1:.4f} on {rows} vs production {job.run.inputs.parent} {f1_prod:.4f} "
            f"(at least {floor:.4f} with tolerance {opts.f1_tolerance:g})",
        ),
        GateResult(
            "int8_fp32_agreement",
            agree,
            opts.min_agreement,
            agree >= opts.min_agreement,
            f"int8/fp32 class agreement {agree:.4f} (at least {opts.min_agreement:g})",
        ),
        GateResult(
            "latency_p99_us",
            p99_us,
            opts.max_latency_us,
            p99_us <= opts.max_latency_us,
            f"p99 latency {p99_us:.0f} us per reading (at most {opts.max_latency_us:g})",
        ),
        GateResult(
            "model_bytes",
            float(size),
            float(opts.max_model_bytes),
            size <= opts.max_model_bytes,
            f"model.onnx {size} bytes (at most {opts.max_model_bytes})",
        ),
    )
    metrics = {
        "f1_macro": f1,
        "production_f1_macro": f1_prod,
        "accuracy": float(np.mean(cand_scores.argmax(axis=1) == hy)),
        "int8_fp32_agreement": agree,
        "latency_p99_us": p99_us,
        "model_bytes": float(size),
    }
    job.run = dataclasses.replace(job.run, gates=gates, metrics={**job.run.metrics, **metrics})
    failed = [g for g in gates if not g.passed]
    job.detail = "; ".join(("ok " if g.passed else "FAILED ") + g.detail for g in gates)
    if failed:
        raise RunAbortedError(
            "; ".join(g.detail for g in failed) + "; nothing was registered, production is "
            "unchanged",
            rejected=True,
        )
    vx, _ = data.part(VALIDATION)
    return _Scored(model_path, metrics, cand.scores(vx, batch_size=1) if vx.size else None)


def _next_version(store: Any, name: str) -> str:
    from shared.manifest import parse_version  # noqa: PLC0415

    keys = sorted(parse_version(r.version) for r in store.models() if r.name == name)
    if not keys:
        return "1.0.0"
    major, minor, patch = keys[-1]
    return f"{major}.{minor}.{patch + 1}"


def _register(job: _Job, stage: Path, data: Dataset, parent: ModelManifest, scored: _Scored) -> str:
    from cloud_hub.pipeline.train import choose_urgent_threshold  # noqa: PLC0415
    from cloud_hub.retrain.dataset import HOLDOUT, TRAIN, VALIDATION  # noqa: PLC0415
    from shared.manifest import UrgentSpec  # noqa: PLC0415

    run = job.run
    classes = parent.output.classes
    urgent_index = classes.index(parent.output.urgent_class)
    _, vy = data.part(VALIDATION)
    threshold = parent.urgent.score_threshold
    how = f"the production version's {threshold:.2f}"
    if scored.validation_scores is not None and 0 < int(np.sum(vy == urgent_index)) < vy.size:
        threshold = choose_urgent_threshold(
            scored.validation_scores[:, urgent_index], vy == urgent_index
        )
        how = f"{threshold:.2f}, the best urgent F1 on the {vy.size} validation readings"
    tx, ty = data.part(TRAIN)
    hx, hy = data.part(HOLDOUT)
    window = (
        f"pipeline run {run.id}: stored telemetry of {', '.join(data.devices)} with "
        f"{iso_utc(run.inputs.since)} <= ts < {iso_utc(run.inputs.until)}; trained on the first "
        f"{1 - run.options.holdout_fraction:.0%} of each device's readings, the last "
        f"{run.options.holdout_fraction:.0%} held out for the gates"
    )
    metrics = {
        **scored.metrics,
        "train_rows": float(ty.size),
        "holdout_rows": float(hy.size),
        "label_rows": float(data.from_label.sum()),
    }
    urgent = UrgentSpec(
        threshold,
        parent.urgent.consecutive,
        dict(parent.urgent.hard_limits),
        parent.urgent.release,
    )
    version, signed = _package_and_register(
        job,
        _Built(scored.model_path.parent, run.model, "edge", "int8-dynamic", urgent, metrics),
        parent,
        reference=(tx, ty),
        test_pool=(np.concatenate([hx, tx]), np.concatenate([hy, ty])),
        lineage=(run.inputs.parent or "", window, data.sha256),
    )
    job.run = dataclasses.replace(job.run, candidate=version)
    job.detail = (
        f"{run.model} {version} registered as a candidate, {signed}; parent "
        f"{run.inputs.parent}; urgent threshold {how}"
    )
    return version


@dataclass(frozen=True, slots=True)
class _Built:
    """A model the run built, in its package directory (``model.onnx`` only, so far)."""

    directory: Path
    name: str
    variant: Literal["edge", "heavy"]
    quantization: Literal["int8-dynamic", "fp32"]
    urgent: Any
    metrics: dict[str, float]


def _package_and_register(
    job: _Job,
    built: _Built,
    parent: ModelManifest,
    *,
    reference: tuple[Any, Any],
    test_pool: tuple[Any, Any],
    lineage: tuple[str, str, str],
) -> tuple[str, str]:
    """Write the manifest of ``built`` (reference statistics of the ``reference`` rows
    scored by the model itself, test vectors from ``test_pool``, lineage ``(parent
    version, data window, data hash)``) under the next patch version of its name and
    register it, signed, as a candidate. Returns ``(version, "signed" or why not)``."""
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from cloud_hub.pipeline.convert import INPUT_NAME, SCORES_OUTPUT  # noqa: PLC0415
    from cloud_hub.pipeline.package import complete_package, pick_test_rows  # noqa: PLC0415
    from cloud_hub.registry.register import register_built  # noqa: PLC0415
    from shared.manifest import MODEL_FILE, Lineage  # noqa: PLC0415

    run = job.run
    classes = parent.output.classes
    normal = "normal" if "normal" in classes else classes[0]
    pool_x, pool_y = test_pool
    present = [k for k in range(len(classes)) if np.any(pool_y == k)]
    keep = np.isin(pool_y, present)
    remap = {k: i for i, k in enumerate(present)}
    rows = pick_test_rows(
        np.array([remap[int(v)] for v in pool_y[keep]], dtype=np.int64),
        len(present),
        max(TEST_VECTORS, len(present)),
        run.options.seed,
    )
    ref_x, ref_y = reference
    model = OnnxScorer(built.directory / MODEL_FILE, INPUT_NAME, SCORES_OUTPUT)
    # The reference statistics of the rows the model trained on, scored as it is served.
    reference_scores = model.scores(ref_x, batch_size=1 if built.variant == "edge" else None)
    version = _next_version(job.store, built.name)
    current, _ = load_run(job.store, run.id)
    if current.state != "running":
        raise RunAbortedError(
            f"the run was marked {current.state} while it ran ({current.why}); nothing registered"
        )
    complete_package(
        built.directory,
        name=built.name,
        version=version,
        variant=built.variant,
        quantization=built.quantization,
        sensors=parent.input.sensors,
        window=parent.input.window,
        classes=classes,
        urgent=built.urgent,
        reference_x=ref_x,
        reference_scores=reference_scores,
        reference_normal=ref_y == classes.index(normal)
        if np.any(ref_y == classes.index(normal))
        else None,
        metrics=built.metrics,
        lineage=Lineage(
            parent=lineage[0],
            data_window=lineage[1],
            data_hash=lineage[2],
            pipeline_run=run.id,
        ),
        test_inputs=pool_x[keep][rows],
        urgent_class=parent.output.urgent_class,
        normal_class=normal,
        min_agent_version=parent.min_agent_version,
        # The device's budget is the parent's: the latency gate measures the hub's
        # CPU (5 ms a reading), not a device's, and a device that kept its parent's
        # budget must not show degraded because its model was retrained.
        latency_budget_ms=parent.latency_budget_ms,
    )
    (done,) = register_built(
        job.store,
        job.settings.data_dir,
        job.settings.signing_key,
        [built.directory],
        by=f"pipeline:{run.id}",
    )
    signed = "signed" if done.record.signature is not None else "unsigned (the hub has no key)"
    return version, signed


class _NoHeavyCandidateError(Exception):
    """The heavy step ends without a candidate: ``status`` (skipped or rejected), why."""

    def __init__(self, status: StepStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


def _heavy(job: _Job, stage: Path, data: Dataset, edge: ModelManifest) -> None:
    """The ``heavy`` step: retrain the edge model's heavy partner on the operator-labelled
    rows where they allow it. Its outcome is its own: whatever happens here, the edge
    part's stands (a run marked failed meanwhile, or a gone hub, still stops the run)."""
    with job.step("heavy"):
        try:
            _heavy_work(job, stage, data, edge)
        except _NoHeavyCandidateError as exc:
            job.outcome, job.detail = exc.status, str(exc)
        except RunAbortedError:
            raise
        except Exception as exc:  # the heavy part fails alone
            log.exception("pipeline run %s: the heavy step failed", job.run.id)
            job.outcome = "failed"
            job.detail = (
                f"{type(exc).__name__}: {exc} (the hub's log has the traceback); no heavy "
                "model registered"
            )


def _heavy_work(job: _Job, stage: Path, data: Dataset, edge: ModelManifest) -> None:
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from cloud_hub.pipeline.convert import INPUT_NAME, SCORES_OUTPUT  # noqa: PLC0415
    from cloud_hub.pipeline.convert import sklearn_to_onnx as to_onnx  # noqa: PLC0415
    from cloud_hub.pipeline.package import save_model  # noqa: PLC0415
    from cloud_hub.pipeline.train import train_heavy  # noqa: PLC0415
    from cloud_hub.registry.stages import Stage  # noqa: PLC0415
    from cloud_hub.retrain.dataset import HOLDOUT, sabotage  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    run, opts = job.run, job.run.options
    name = partner(run.model)
    if name == run.model:
        raise _NoHeavyCandidateError(
            "skipped", f"{run.model} has no heavy partner (its name does not end in -edge)"
        )
    production = [
        r
        for r in job.store.models()
        if r.name == name and r.variant == "heavy" and r.stage is Stage.PRODUCTION
    ]
    if not production:
        raise _NoHeavyCandidateError(
            "skipped",
            f"{name} has no production version to compare a heavy candidate with; promote "
            f"one ('edgeloop-hub models promote {name} VERSION production')",
        )
    parent = production[0]
    pm = parent.manifest
    if pm.input.features != edge.input.features or pm.output.classes != edge.output.classes:
        raise _NoHeavyCandidateError(
            "skipped",
            f"{name} {parent.version} reads other features or gives other classes than "
            f"{run.model}; the run's data does not fit it",
        )
    classes = pm.output.classes
    n = len(classes)
    fit = data.from_label & (data.side >= 0) & (data.side != HOLDOUT)
    hold = data.from_label & (data.side == HOLDOUT)
    short = [
        f"{c} labelled readings of class {classes[k]} in the {part} part, {need} needed"
        for part, rows, need in (
            ("training", fit, opts.heavy_min_train_labels),
            ("held-out", hold, opts.heavy_min_holdout_labels),
        )
        for k, c in enumerate(np.bincount(data.y[rows], minlength=n).tolist())
        if c < need
    ]
    if short:
        raise _NoHeavyCandidateError(
            "skipped",
            "too few operator labels to retrain the heavy model: "
            + "; ".join(short)
            + " (the heavy model learns only from labels operators posted, POST /v1/labels; "
            "options heavy_min_train_labels and heavy_min_holdout_labels)",
        )
    x, y = data.x[fit], data.y[fit]
    note = ""
    if opts.sabotage_labels > 0:
        y = sabotage(y, opts.sabotage_labels, n, opts.seed)
        note = f"; sabotage_labels={opts.sabotage_labels:g} (test/bench option)"
    model = train_heavy(x, y, opts.seed, n)
    directory = stage / "heavy-package"
    save_model(directory, to_onnx(model, x.shape[1], name))
    hx, hy = data.x[hold], data.y[hold]
    cand = OnnxScorer(directory / "model.onnx", INPUT_NAME, SCORES_OUTPUT)
    f1 = _macro_f1(cand.scores(hx), hy, n)
    f1_prod = _macro_f1(OnnxScorer.from_package(load_package(Path(parent.path))).scores(hx), hy, n)
    floor = f1_prod - opts.f1_tolerance
    gate = (
        f"macro-F1 {f1:.4f} on {hy.size} labelled held-out readings vs production "
        f"{name} {parent.version} {f1_prod:.4f} (at least {floor:.4f} with tolerance "
        f"{opts.f1_tolerance:g})"
    )
    metrics = {
        "heavy_f1_macro": f1,
        "heavy_production_f1_macro": f1_prod,
        "heavy_train_rows": float(y.size),
        "heavy_holdout_rows": float(hy.size),
    }
    job.run = dataclasses.replace(job.run, metrics={**job.run.metrics, **metrics})
    trained = f"trees on {y.size} labelled readings, {model.n_iter_} iterations{note}"
    if f1 < floor:
        raise _NoHeavyCandidateError(
            "rejected",
            f"FAILED {gate}; {trained}; no heavy model registered, {name} {parent.version} "
            "stays in production",
        )
    window = (
        f"pipeline run {run.id}: the operator-labelled readings of {', '.join(data.devices)} "
        f"with {iso_utc(run.inputs.since)} <= ts < {iso_utc(run.inputs.until)}; trained on those "
        f"in the first {1 - opts.holdout_fraction:.0%} of each device's readings, those in "
        f"the last {opts.holdout_fraction:.0%} held out for the gate"
    )
    built = _Built(
        directory,
        name,
        "heavy",
        "fp32",
        pm.urgent,
        {"f1_macro": f1, "production_f1_macro": f1_prod, **metrics},
    )
    version, signed = _package_and_register(
        job,
        built,
        pm,
        reference=(x, data.y[fit]),
        test_pool=(hx, hy),
        lineage=(parent.version, window, data.sha256),
    )
    job.run = dataclasses.replace(job.run, heavy_candidate=version)
    job.detail = (
        f"{name} {version} registered as a candidate, {signed}; parent {parent.version}; "
        f"ok {gate}; {trained}; an operator promotes it ('edgeloop-hub models promote "
        f"{name} {version} production')"
    )


def _canary(job: _Job, version: str) -> None:
    from cloud_hub.ota.rollout import RolloutError  # noqa: PLC0415
    from cloud_hub.ota.rollouts import StartRequest, check_start, new_rollout_id  # noqa: PLC0415

    run = job.run
    if run.trigger == "admin":
        job.outcome = "skipped"
        job.detail = "an admin run registers a candidate only; start a rollout by hand"
        return
    if not job.settings.canary:
        job.outcome = "skipped"
        job.detail = "automatic runs start no canary on this hub (--pipeline-canary false)"
        return
    req = StartRequest(run.model, version, job.settings.cohorts)
    now = time.time()
    rollout_id = new_rollout_id(run.model, version, now)
    try:
        devices = check_start(job.store, req)
        job.store.add_rollout_command(rollout_id, "start", req.to_json(), now)
    except (RolloutError, EdgeloopError, OSError, ValueError) as exc:
        # The candidate stays registered (a candidate changes nothing on devices), and
        # the run with it: it did register; the step says why no canary started.
        job.outcome = "failed"
        job.detail = f"the canary rollout cannot start: {exc}; start one by hand when it can"
        return
    job.run = dataclasses.replace(job.run, rollout=rollout_id)
    job.detail = (
        f"rollout {rollout_id} of {run.model} {version} queued for the hub's rollout manager: "
        f"{len(devices)} device(s), cohorts {','.join(f'{c:g}' for c in req.cohorts)} (the "
        "first is the canary)"
    )
