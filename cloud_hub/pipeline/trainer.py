"""The trainer: feature rows -> an edge (int8) and heavy (fp32) package pair.

One engine for every model the hub builds: the default simulator build
(:func:`cloud_hub.pipeline.build.build_default_models`) and ``models train`` on
recorded data (:mod:`cloud_hub.pipeline.recorded`) both end in one call here.
Two paths:

- :func:`train_classifier_pair` (labelled data): the edge MLP and the heavy
  gradient-boosted trees (:mod:`.train`), the urgent threshold that maximises
  urgent F1 on the *validation* rows, metrics on the *holdout* rows;
- :func:`train_anomaly_pair` (data said to be normal, no labels): an
  autoencoder's reconstruction error, small for the edge and wider for the
  heavy model (:mod:`.anomaly`), the urgent
  threshold from a false-alarm budget on the validation rows, the false-alarm
  rate measured on the holdout rows and the recall on synthetic anomalies.

Both then run the same steps: convert, quantize the edge model to int8, gate it
(int8/fp32 class agreement >= ``min_agreement``), score, package (reference
statistics, test vectors, lineage) in hidden staging directories, and publish
both packages by renaming them into place only when everything passed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from sklearn.metrics import roc_auc_score

from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline import anomaly
from cloud_hub.pipeline.convert import (
    INPUT_NAME,
    SCORES_OUTPUT,
    GateError,
    agreement,
    gate_int8_agreement,
    quantize_int8,
    sklearn_to_onnx,
)
from cloud_hub.pipeline.package import (
    MIN_AGENT_VERSION,
    complete_package,
    pick_test_rows,
    save_model,
)
from cloud_hub.pipeline.recorded import FAULT_SIGMAS
from cloud_hub.pipeline.train import (
    EdgeTrainingConfig,
    HeavyTrainingConfig,
    choose_urgent_threshold,
    holdout_metrics,
    train_edge,
    train_heavy,
)
from shared.features import SensorSpec
from shared.manifest import DEFAULT_LATENCY_BUDGET_MS, Lineage, UrgentSpec

__all__ = [
    "DEFAULT_FALSE_ALARM_BUDGET",
    "FALSE_ALARM_P_VALUE",
    "MIN_REFUSED_ALARMS",
    "MIN_SYNTHETIC_RECALL",
    "PairSpec",
    "Split",
    "TrainResult",
    "false_alarm_p_value",
    "publish",
    "train_anomaly_pair",
    "train_classifier_pair",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DEFAULT_FALSE_ALARM_BUDGET: Final = 1e-4
"""At most one false alarm per 10,000 normal readings."""
TEST_VECTORS: Final = 8
HEAVY_AUTOENCODER_OUTER: Final = 4
"""The heavy autoencoder's outer layers are this many bottlenecks wide (the edge's: 2)."""
MIN_REFUSED_ALARMS: Final = 3
FALSE_ALARM_P_VALUE: Final = 1e-3
"""An anomaly model is refused when its held-out false alarms are at least
:data:`MIN_REFUSED_ALARMS` and a model exactly at the budget would raise that many
with probability below this (Poisson): 1 alarm in 1,000 readings at 1e-4 is noise,
60 in 471 is not."""
MIN_SYNTHETIC_RECALL: Final = 0.5
"""An anomaly model must find at least this share of the synthetic faults. They
are steps of :data:`.recorded.FAULT_SIGMAS` (6) robust standard deviations, which
a useful detector finds nearly all of (>= 0.9 on clean rig data); below half, the
threshold sits above gross faults, so the model would stay silent when it matters.
The margin leaves room for noisy sensors whose budget forces a high threshold."""
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Split:
    """Feature rows in three parts that share no reading: train, validation
    (thresholds are chosen here) and holdout (metrics are reported here).
    ``*_y`` are class indices; ``holdout_series`` says which series each holdout
    row is from (alarms are counted per series)."""

    train_x: F32
    train_y: I64
    validation_x: F32
    validation_y: I64
    holdout_x: F32
    holdout_y: I64
    holdout_series: I64 | None = None


@dataclass(frozen=True, slots=True)
class PairSpec:
    """What to call the pair and what its manifests declare."""

    edge_name: str
    heavy_name: str
    version: str
    sensors: tuple[SensorSpec, ...]
    window: int
    classes: tuple[str, ...]
    urgent_class: str
    normal_class: str
    data_window: str
    data_hash: str
    hard_limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    consecutive: int = 1
    release: int = 1
    min_agreement: float = 0.99
    seed: int = 7
    threads: int = 1
    run_prefix: str = "build"
    latency_budget_ms: float | None = DEFAULT_LATENCY_BUDGET_MS
    """Written into both manifests (None: none): the latency p99 per reading over which
    the hub shows a device running the model as degraded."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What the trainer produced (or found, when ``reused``).

    ``metrics`` holds each package's manifest metrics under ``"edge"`` and
    ``"heavy"``; ``steps`` the seconds each step took (empty when reused);
    ``details`` what the report shows beyond the manifests (thresholds and
    why, confusion matrices); empty for the default build.
    """

    edge: Path
    heavy: Path
    version: str
    metrics: dict[str, dict[str, float]]
    elapsed_s: float
    dataset_sha256: str
    run_id: str
    reused: bool
    steps: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        out = {
            "edge": str(self.edge),
            "heavy": str(self.heavy),
            "version": self.version,
            "metrics": self.metrics,
            "elapsed_s": round(self.elapsed_s, 3),
            "dataset_sha256": self.dataset_sha256,
            "run_id": self.run_id,
            "reused": self.reused,
            "steps": {k: round(v, 3) for k, v in self.steps.items()},
        }
        if self.details:
            out["details"] = self.details
        return out


def publish(stage: Path, target: Path) -> None:
    """Move a complete staged package into place, replacing what was there."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    stage.rename(target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


class _Steps:
    def __init__(self, progress: Progress | None) -> None:
        self.times: dict[str, float] = {}
        self._progress = progress
        self._mark = time.perf_counter()

    def done(self, name: str, next_step: str | None = None) -> None:
        now = time.perf_counter()
        self.times[name] = now - self._mark
        self._mark = now
        log.info("build step %-9s %.2f s", name, self.times[name])
        if self._progress is not None and next_step is not None:
            self._progress(next_step)


@dataclass(frozen=True, slots=True)
class _Scored:
    """What the evaluation of the shipped models decided."""

    thresholds: dict[str, float]
    edge_metrics: dict[str, float]
    heavy_metrics: dict[str, float]
    test_inputs: F32
    details: dict[str, Any]


def _ship(
    out_dir: Path,
    spec: PairSpec,
    *,
    edge_fp32: onnx.ModelProto,
    heavy_fp32: onnx.ModelProto,
    gate_x: F32,
    reference_x: F32,
    reference_normal: npt.NDArray[np.bool_] | None,
    evaluate: Callable[[OnnxScorer, OnnxScorer, OnnxScorer, float], _Scored],
    steps: _Steps,
    t0: float,
) -> TrainResult:
    """Quantize, gate, evaluate, package and publish (the steps both paths share)."""
    edge_dir = out_dir / spec.edge_name / spec.version
    heavy_dir = out_dir / spec.heavy_name / spec.version
    edge_int8 = quantize_int8(edge_fp32)
    steps.done("convert", "gate")
    created = datetime.now(UTC)
    run_id = f"{spec.run_prefix}-{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    # The folders this run makes, removed again (when still empty) if it fails.
    made = [d for d in (out_dir, edge_dir.parent, heavy_dir.parent) if not d.exists()]
    for d in (edge_dir, heavy_dir):
        d.parent.mkdir(parents=True, exist_ok=True)
    edge_stage = edge_dir.with_name(f".staging-{spec.version}-{run_id}")
    heavy_stage = heavy_dir.with_name(f".staging-{spec.version}-{run_id}")
    threads = spec.threads
    try:
        with tempfile.TemporaryDirectory(prefix="edgeloop-twin-") as tmp:
            twin_path = Path(tmp, "fp32-twin.onnx")
            twin_path.write_bytes(edge_fp32.SerializeToString())
            twin = OnnxScorer(twin_path, INPUT_NAME, SCORES_OUTPUT, threads)
            edge = OnnxScorer(save_model(edge_stage, edge_int8), INPUT_NAME, SCORES_OUTPUT, threads)
            heavy = OnnxScorer(
                save_model(heavy_stage, heavy_fp32), INPUT_NAME, SCORES_OUTPUT, threads
            )
            int8_agreement = gate_int8_agreement(
                edge, twin, gate_x, spec.min_agreement, spec.edge_name
            )
            steps.done("gate", "score")
            scored = evaluate(edge, heavy, twin, int8_agreement)
        steps.done("score", "package")
        lineage = Lineage(
            parent=None, data_window=spec.data_window, data_hash=spec.data_hash, pipeline_run=run_id
        )
        common: dict[str, Any] = {
            "version": spec.version,
            "sensors": spec.sensors,
            "window": spec.window,
            "classes": spec.classes,
            "urgent_class": spec.urgent_class,
            "normal_class": spec.normal_class,
            "reference_x": reference_x,
            "reference_normal": reference_normal,
            "lineage": lineage,
            "test_inputs": scored.test_inputs,
            "min_agent_version": MIN_AGENT_VERSION,
            "created": created,
            "latency_budget_ms": spec.latency_budget_ms,
        }
        edge_ref = edge.scores(reference_x, batch_size=1)
        heavy_ref = heavy.scores(reference_x)
        packages = {}
        for variant, stage, name, quant, ref, metrics in (
            ("edge", edge_stage, spec.edge_name, "int8-dynamic", edge_ref, scored.edge_metrics),
            ("heavy", heavy_stage, spec.heavy_name, "fp32", heavy_ref, scored.heavy_metrics),
        ):
            packages[variant] = complete_package(
                stage,
                name=name,
                variant="edge" if variant == "edge" else "heavy",
                quantization="int8-dynamic" if quant == "int8-dynamic" else "fp32",
                urgent=UrgentSpec(
                    scored.thresholds[variant],
                    spec.consecutive,
                    dict(spec.hard_limits),
                    spec.release,
                ),
                reference_scores=ref,
                metrics=metrics,
                **common,
            )
        steps.done("package", "publish")
        publish(edge_stage, edge_dir)
        publish(heavy_stage, heavy_dir)
        steps.done("publish")
    finally:
        for stage in (edge_stage, heavy_stage):
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):  # not empty: a package was published
                d.rmdir()
    elapsed = time.perf_counter() - t0
    log.info(
        "built %s and %s %s in %.1f s (run %s)",
        spec.edge_name,
        spec.heavy_name,
        spec.version,
        elapsed,
        run_id,
    )
    return TrainResult(
        edge=edge_dir,
        heavy=heavy_dir,
        version=spec.version,
        metrics={k: dict(p.manifest.metrics) for k, p in packages.items()},
        elapsed_s=elapsed,
        dataset_sha256=spec.data_hash,
        run_id=run_id,
        reused=False,
        steps=steps.times,
        details=scored.details,
    )


def _confusion(scores: F32, y: I64, classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``{true class: {predicted class: rows}}`` of the arg-max class."""
    pred = scores.argmax(axis=1)
    return {
        c: {d: int(np.sum((y == i) & (pred == j))) for j, d in enumerate(classes)}
        for i, c in enumerate(classes)
    }


def train_classifier_pair(
    out_dir: Path,
    spec: PairSpec,
    split: Split,
    *,
    edge_config: EdgeTrainingConfig | None = None,
    heavy_config: HeavyTrainingConfig | None = None,
    progress: Progress | None = None,
    report: bool = True,
    require_urgent_recall: bool = False,
    t0: float | None = None,
) -> TrainResult:
    """Train, gate, package and publish the labelled pair (see the module docstring).

    The urgent threshold maximises urgent-vs-rest F1 on ``split.validation_*``
    (:func:`.train.choose_urgent_threshold`); the metrics are measured on
    ``split.holdout_*``, rows the threshold never saw. ``report`` adds the confusion matrices and the
    thresholds' reasons to ``details``. With ``require_urgent_recall`` a model
    that flags none of the holdout's urgent rows fails a gate (:class:`GateError`)
    and nothing is published: it would only ever say "all is well".
    """
    start = time.perf_counter() if t0 is None else t0
    steps = _Steps(progress)
    if progress is not None:
        progress("train")
    seed, n_classes = spec.seed, len(spec.classes)
    urgent_index = spec.classes.index(spec.urgent_class)
    edge_sk = train_edge(split.train_x, split.train_y, seed, n_classes, edge_config)
    heavy_sk = train_heavy(split.train_x, split.train_y, seed, n_classes, heavy_config)
    steps.done("train", "convert")
    n_features = split.train_x.shape[1]
    edge_fp32 = sklearn_to_onnx(edge_sk, n_features, spec.edge_name)
    heavy_fp32 = sklearn_to_onnx(heavy_sk, n_features, spec.heavy_name)
    hold_x, hold_y = split.holdout_x, split.holdout_y

    def evaluate(edge: OnnxScorer, heavy: OnnxScorer, twin: OnnxScorer, int8: float) -> _Scored:
        twin_sklearn = agreement(
            twin.scores(hold_x), edge_sk.predict_proba(hold_x).astype(np.float32)
        )
        # The edge model scores one reading at a time on a device; evaluate it so.
        edge_hold, heavy_hold = edge.scores(hold_x, batch_size=1), heavy.scores(hold_x)
        edge_val = edge.scores(split.validation_x, batch_size=1)
        heavy_val = heavy.scores(split.validation_x)
        heavy_sklearn = agreement(heavy_hold, heavy_sk.predict_proba(hold_x).astype(np.float32))
        is_urgent = split.validation_y == urgent_index
        thresholds = {
            "edge": choose_urgent_threshold(edge_val[:, urgent_index], is_urgent),
            "heavy": choose_urgent_threshold(heavy_val[:, urgent_index], is_urgent),
        }
        sizes = {
            "train_rows": float(split.train_y.size),
            "validation_rows": float(split.validation_y.size),
            "holdout_rows": float(hold_y.size),
        }
        edge_metrics = {
            **holdout_metrics(edge_hold, hold_y, urgent_index, thresholds["edge"]),
            "int8_fp32_agreement": int8,
            "onnx_sklearn_agreement": twin_sklearn,
            **sizes,
        }
        heavy_metrics = {
            **holdout_metrics(heavy_hold, hold_y, urgent_index, thresholds["heavy"]),
            "onnx_sklearn_agreement": heavy_sklearn,
            **sizes,
        }
        if require_urgent_recall:
            for variant, metrics in (("edge", edge_metrics), ("heavy", heavy_metrics)):
                _gate_urgent_recall(spec, variant, metrics, hold_y == urgent_index)
        details: dict[str, Any] = {}
        if report:
            why = (
                f"maximises urgent F1 on the validation rows ({split.validation_y.size}, "
                "before the holdout in time); the metrics are on the holdout rows"
            )
            details = {
                "kind": "classifier",
                "classes": list(spec.classes),
                "urgent_class": spec.urgent_class,
                "threshold_reason": why,
                "confusion": {
                    "edge": _confusion(edge_hold, hold_y, spec.classes),
                    "heavy": _confusion(heavy_hold, hold_y, spec.classes),
                },
            }
        test_rows = pick_test_rows(hold_y, n_classes, TEST_VECTORS, seed)
        return _Scored(thresholds, edge_metrics, heavy_metrics, hold_x[test_rows], details)

    return _ship(
        out_dir,
        spec,
        edge_fp32=edge_fp32,
        heavy_fp32=heavy_fp32,
        gate_x=hold_x,
        reference_x=split.train_x,
        # Baselines map a device's normal onto the model's: its normal rows' statistics.
        reference_normal=split.train_y == spec.classes.index(spec.normal_class),
        evaluate=evaluate,
        steps=steps,
        t0=start,
    )


def _gate_urgent_recall(
    spec: PairSpec, variant: str, metrics: dict[str, float], is_urgent: npt.NDArray[np.bool_]
) -> None:
    """Refuse a model that finds none of the holdout's urgent rows."""
    n_urgent = int(is_urgent.sum())
    if n_urgent == 0 or metrics["urgent_recall"] > 0:
        return
    name = spec.edge_name if variant == "edge" else spec.heavy_name
    raise GateError(
        f"{name}: urgent recall 0 on the holdout: none of its {n_urgent} {spec.urgent_class!r} "
        f"rows (of {is_urgent.size}) reaches the urgent threshold (precision "
        f"{metrics['urgent_precision']:.3g}, macro AUC {metrics['auc_macro']:.3g}); nothing was "
        "published. Give more labelled fault data (more or longer urgent windows in the "
        "training slice), check that the urgent label marks readings that differ from normal, "
        "or move the cut with --holdout-fraction/--validation-fraction",
        gate="urgent_recall",
        measured=0.0,
        threshold=1.0 / n_urgent,
    )


def _alarms(over: npt.NDArray[np.bool_], series: I64 | None, spec: PairSpec) -> int:
    """Alarms as the manifest's rule raises them (``consecutive``, ``release``), per series."""
    if series is None:
        return anomaly.alarm_count(over, spec.consecutive, spec.release)
    return sum(
        anomaly.alarm_count(over[series == s], spec.consecutive, spec.release)
        for s in np.unique(series).tolist()
    )


def train_anomaly_pair(
    out_dir: Path,
    spec: PairSpec,
    split: Split,
    anomalies: F32,
    *,
    budget: float = DEFAULT_FALSE_ALARM_BUDGET,
    progress: Progress | None = None,
    t0: float | None = None,
) -> TrainResult:
    """Train the unsupervised pair on normal rows (every ``split`` part is normal).

    ``anomalies`` are feature rows of synthetic faults (see
    :func:`cloud_hub.pipeline.recorded.inject_faults`): the int8 gate runs on
    the holdout and on them, and their recall is reported. Each model's urgent
    threshold comes from ``budget`` (false alarms per normal reading) on the
    validation rows scored by the shipped model (:func:`.anomaly.tail_threshold`).
    """
    start = time.perf_counter() if t0 is None else t0
    if not 0.0 < budget < 0.5:
        raise ValueError(f"the false-alarm budget must be in (0, 0.5), got {budget!r}")
    steps = _Steps(progress)
    if progress is not None:
        progress("train")
    x, n_features = split.train_x, split.train_x.shape[1]
    # The choice and its figures: docs/architecture.md, "Training from your data".
    small = anomaly.fit_autoencoder(x, spec.seed)
    wide = anomaly.fit_autoencoder(x, spec.seed, outer=HEAVY_AUTOENCODER_OUTER)
    steps.done("train", "convert")
    val = split.validation_x
    s0 = {
        "edge": anomaly.tail_threshold(anomaly.autoencoder_raw(small, val), budget)[0],
        "heavy": anomaly.tail_threshold(anomaly.autoencoder_raw(wide, val), budget)[0],
    }
    edge_fp32 = anomaly.autoencoder_onnx(small, n_features, s0["edge"], spec.edge_name)
    heavy_fp32 = anomaly.autoencoder_onnx(wide, n_features, s0["heavy"], spec.heavy_name)
    hold_x = split.holdout_x
    gate_x = np.concatenate([hold_x, anomalies]).astype(np.float32)
    urgent_index = spec.classes.index(spec.urgent_class)

    def evaluate(edge: OnnxScorer, heavy: OnnxScorer, twin: OnnxScorer, int8: float) -> _Scored:
        thresholds: dict[str, float] = {}
        edge_metrics: dict[str, float] = {}
        heavy_metrics: dict[str, float] = {}
        details: dict[str, Any] = {
            "kind": "anomaly",
            "classes": list(spec.classes),
            "false_alarm_budget": budget,
            "consecutive": spec.consecutive,
            "release": spec.release,
            "thresholds": {},
        }
        for variant, scorer, metrics in (
            ("edge", edge, edge_metrics),
            ("heavy", heavy, heavy_metrics),
        ):
            batch = 1 if variant == "edge" else None
            p_val = _urgent(scorer, val, batch, urgent_index)
            raw_t, why = anomaly.tail_threshold(
                anomaly.raw_from_probability(p_val, s0[variant]), budget
            )
            t = raw_t / (raw_t + s0[variant])
            thresholds[variant] = float(min(t, 1.0))
            p_hold = _urgent(scorer, hold_x, batch, urgent_index)
            p_anom = _urgent(scorer, anomalies, batch, urgent_index)
            alarms = _alarms(p_hold >= t, split.holdout_series, spec)
            metrics.update(
                {
                    "false_alarm_rate": alarms / max(1, hold_x.shape[0]),
                    "false_alarm_budget": budget,
                    "holdout_urgent_share": float(np.mean(p_hold >= t)),
                    "synthetic_anomaly_recall": float(np.mean(p_anom >= t)),
                    "auc_synthetic": _auc(p_hold, p_anom),
                    "train_rows": float(x.shape[0]),
                    "validation_rows": float(val.shape[0]),
                    "holdout_rows": float(hold_x.shape[0]),
                    "synthetic_anomaly_rows": float(anomalies.shape[0]),
                }
            )
            _gate_anomaly(
                spec.edge_name if variant == "edge" else spec.heavy_name,
                alarms=alarms,
                readings=int(hold_x.shape[0]),
                budget=budget,
                recall=metrics["synthetic_anomaly_recall"],
            )
            details["thresholds"][variant] = {
                "threshold": thresholds[variant],
                "raw_threshold": raw_t,
                "raw_scale": s0[variant],
                "why": f"false-alarm budget {budget:g} per reading on {val.shape[0]} validation "
                f"rows of normal data: {why}",
                "holdout_false_alarms": alarms,
            }
        edge_metrics["int8_fp32_agreement"] = int8
        y = np.concatenate(
            [np.zeros(hold_x.shape[0], np.int64), np.ones(anomalies.shape[0], np.int64)]
        )
        twin_scores = twin.scores(gate_x)
        details["confusion"] = {
            "edge": _confusion(edge.scores(gate_x, batch_size=1), y, ("normal", "anomaly")),
            "heavy": _confusion(heavy.scores(gate_x), y, ("normal", "anomaly")),
            "edge_fp32": _confusion(twin_scores, y, ("normal", "anomaly")),
        }
        details["confusion_rows"] = "holdout normal rows vs synthetic anomaly rows, arg-max class"
        test_rows = pick_test_rows(y, 2, TEST_VECTORS, spec.seed)
        return _Scored(thresholds, edge_metrics, heavy_metrics, gate_x[test_rows], details)

    return _ship(
        out_dir,
        spec,
        edge_fp32=edge_fp32,
        heavy_fp32=heavy_fp32,
        gate_x=gate_x,
        reference_x=x,
        reference_normal=None,  # trained on normal data only
        evaluate=evaluate,
        steps=steps,
        t0=start,
    )


def false_alarm_p_value(alarms: int, readings: int, budget: float) -> float:
    """P(X >= ``alarms``) for X ~ Poisson(``budget`` * ``readings``): how likely a
    model within its budget is to raise this many false alarms by chance.

    >>> round(false_alarm_p_value(1, 1000, 1e-4), 4)
    0.0952
    """
    lam = budget * readings
    if alarms <= 0:
        return 1.0

    def pmf(k: int) -> float:
        return math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1)) if lam > 0 else 0.0

    if alarms <= lam:  # the upper tail is large: 1 - the (short) lower sum
        return max(0.0, 1.0 - sum(pmf(k) for k in range(alarms)))
    total, k = 0.0, alarms
    while k < alarms + 10_000:  # terms fall faster than geometrically beyond the mean
        term = pmf(k)
        total += term
        if term <= total * 1e-16:
            break
        k += 1
    return total


def _gate_anomaly(name: str, *, alarms: int, readings: int, budget: float, recall: float) -> None:
    """Refuse an anomaly model whose held-out false alarms are clearly over the
    budget, or which finds too few synthetic faults (see the constants)."""
    p = false_alarm_p_value(alarms, readings, budget)
    todo = (
        "give more normal data, pick the normal stretch with another --normal-from/"
        "--normal-to (it must hold no faults), raise --false-alarm-budget, or train with "
        "--label COLUMN if the data has labels"
    )
    if alarms >= MIN_REFUSED_ALARMS and p < FALSE_ALARM_P_VALUE:
        raise GateError(
            f"{name}: {alarms} false alarms in {readings} held-out normal readings (rate "
            f"{alarms / readings:.3g}, {alarms / (budget * readings):.3g}x the budget {budget:g}; "
            f"a model within budget raises that many with probability {p:.2g}); nothing was "
            f"published: the held-out readings do not look like the training ones. {todo}",
            gate="false_alarm_rate",
            measured=alarms / readings,
            threshold=budget,
        )
    if recall < MIN_SYNTHETIC_RECALL:
        raise GateError(
            f"{name}: finds {recall:.1%} of the synthetic faults (steps of "
            f"{FAULT_SIGMAS:g} robust standard deviations injected into the held-out data), "
            f"below {MIN_SYNTHETIC_RECALL:.0%}; nothing was published: the threshold is so high "
            f"that gross faults pass, usually because the training data hold faults or the "
            f"validation data are unlike it. {todo}",
            gate="synthetic_anomaly_recall",
            measured=recall,
            threshold=MIN_SYNTHETIC_RECALL,
        )


def _urgent(scorer: OnnxScorer, x: F32, batch: int | None, urgent_index: int) -> F32:
    scores = scorer.scores(x, batch_size=batch) if batch else scorer.scores(x)
    out: F32 = scores[:, urgent_index]
    return out


def _auc(normal: F32, anomalous: F32) -> float:
    """Probability that a random anomaly scores above a random normal row (ties half)."""
    y = np.concatenate([np.zeros(normal.size), np.ones(anomalous.size)])
    return float(roc_auc_score(y, np.concatenate([normal, anomalous])))
