"""``edgeloop-sim bench anomaly``: the candidate anomaly models of ``models train`` compared.

On the simulator's labelled data (:func:`simulators.dataset.build_training_set`),
split by device: each candidate is fitted on the *normal* readings of the
training devices only (as ``models train`` without labels is), its urgent
threshold set from the false-alarm budget on the normal readings of other
devices (validation, :func:`cloud_hub.pipeline.anomaly.tail_threshold`), and it
is measured on held-out devices: the false-alarm rate on their normal readings
(alarms as the agent raises them, ``consecutive`` = 1), the recall of their
urgent and fault readings, and the AUC of urgent vs normal. For the candidates
with MatMuls, the int8 model's class agreement with its fp32 twin on the
holdout (each row scored alone, as on a device). Fit time, and scoring time per
row in numpy/scikit-learn (not ONNX). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HELP = "compare the anomaly models of 'models train' on simulated data with faults"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--devices", type=int, default=24)
    parser.add_argument("--readings-per-device", type=int, default=4000)
    parser.add_argument("--budget", type=float, default=1e-4, help="false alarms per reading")


def _int8_agreement(proto_fp32: Any, x: np.ndarray) -> float:
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from cloud_hub.pipeline.convert import (  # noqa: PLC0415
        INPUT_NAME,
        SCORES_OUTPUT,
        agreement,
        quantize_int8,
    )

    int8 = quantize_int8(proto_fp32)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        a, b = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        a.write_bytes(proto_fp32.SerializeToString())
        b.write_bytes(int8.SerializeToString())
        fp = OnnxScorer(a, INPUT_NAME, SCORES_OUTPUT).scores(x)
        q = OnnxScorer(b, INPUT_NAME, SCORES_OUTPUT).scores(x, batch_size=1)
    return agreement(q, fp)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    from cloud_hub.pipeline import anomaly  # noqa: PLC0415
    from simulators.dataset import build_training_set  # noqa: PLC0415

    data = build_training_set(
        args.seed, devices=args.devices, readings_per_device=args.readings_per_device
    )
    rest, holdout = data.split(0.25, args.seed)
    train, validation = rest.split(0.2, args.seed + 1)
    normal, fault, urgent = (data.classes.index(c) for c in ("normal", "fault", "urgent"))
    fit_x, val_x = train.X[train.y == normal], validation.X[validation.y == normal]
    n_features = fit_x.shape[1]
    candidates: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any], Any]] = {
        "mahalanobis": (anomaly.Mahalanobis.fit, lambda m, x: m.raw(x), anomaly.mahalanobis_onnx),
        "autoencoder": (
            lambda x: anomaly.fit_autoencoder(x, args.seed),
            anomaly.autoencoder_raw,
            anomaly.autoencoder_onnx,
        ),
        "autoencoder_wide": (
            lambda x: anomaly.fit_autoencoder(x, args.seed, outer=4),
            anomaly.autoencoder_raw,
            anomaly.autoencoder_onnx,
        ),
        "isolation_forest": (
            lambda x: anomaly.fit_isolation_forest(x, args.seed),
            anomaly.isolation_forest_raw,
            None,
        ),
    }
    out: dict[str, Any] = {
        "train_normal_rows": int(fit_x.shape[0]),
        "validation_normal_rows": int(val_x.shape[0]),
        "holdout_rows": {c: int(n) for c, n in holdout.class_counts().items()},
        "budget": args.budget,
    }
    hold_normal = holdout.y == normal
    for name, (fit, raw, to_onnx) in candidates.items():
        t0 = time.perf_counter()
        model = fit(fit_x)
        fit_s = time.perf_counter() - t0
        threshold, _ = anomaly.tail_threshold(raw(model, val_x), args.budget)
        t0 = time.perf_counter()
        s = raw(model, holdout.X)
        score_us = (time.perf_counter() - t0) / len(holdout) * 1e6
        alarms = sum(
            anomaly.alarm_count(s[hold_normal & (holdout.device == d)] >= threshold, 1)
            for d in np.unique(holdout.device).tolist()
        )
        keep = holdout.y != fault

        def recall(cls: int, s: np.ndarray = s, threshold: float = threshold) -> float | None:
            rows = holdout.y == cls
            return float(np.mean(s[rows] >= threshold)) if rows.any() else None

        figures = {
            "false_alarm_rate": alarms / int(hold_normal.sum()),
            "urgent_recall": recall(urgent),
            "fault_recall": recall(fault),
            "auc_urgent_vs_normal": float(roc_auc_score(holdout.y[keep] == urgent, s[keep])),
            "fit_s": round(fit_s, 2),
            "score_us_per_row": round(score_us, 2),
        }
        if to_onnx is not None:
            proto = to_onnx(model, n_features, threshold, name)
            figures["int8_fp32_agreement"] = _int8_agreement(proto, holdout.X)
        out[name] = figures
        print(name, figures, flush=True)
    return out
