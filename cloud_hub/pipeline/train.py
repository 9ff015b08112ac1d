"""Seeded training of the two default models, and their holdout evaluation.

- The **edge** model is small enough to run per reading on a Raspberry-Pi class
  device once quantized: ``StandardScaler`` then an ``MLPClassifier`` (two
  hidden ReLU layers, early stopping on a seeded validation split). Its dense
  layers are plain MatMuls in ONNX, which is what int8 dynamic quantization
  targets.
- The **heavy** model runs in the hub, batched, in fp32: a
  ``HistGradientBoostingClassifier`` (skl2onnx converts it to a
  ``TreeEnsembleClassifier``), stronger on these tabular features and cheap to
  score in bulk.

Both are seeded, so the same data and seed give the same model. Both must see
every class: a model that never saw a class has no column for it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from shared.errors import EdgeloopError

__all__ = [
    "RARE_CLASS_HEAVY",
    "EdgeTrainingConfig",
    "HeavyTrainingConfig",
    "PipelineError",
    "choose_urgent_threshold",
    "holdout_metrics",
    "train_edge",
    "train_heavy",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class PipelineError(EdgeloopError):
    """The training pipeline cannot produce a model it would stand behind."""


@dataclass(frozen=True, slots=True)
class EdgeTrainingConfig:
    """Hyper-parameters of the edge MLP."""

    hidden_layers: tuple[int, ...] = (32, 16)
    alpha: float = 1e-4
    # Mini-batches of 512 rather than sklearn's 200: the same holdout F1 on
    # the default data in under half the time (fewer Python-level steps).
    batch_size: int = 512
    max_iter: int = 200
    validation_fraction: float = 0.1
    n_iter_no_change: int = 5


@dataclass(frozen=True, slots=True)
class HeavyTrainingConfig:
    """Hyper-parameters of the heavy gradient-boosted trees."""

    max_iter: int = 200
    # A higher rate than sklearn's 0.1 and a shorter patience: about half the
    # trees for the same holdout F1 on the default data.
    learning_rate: float = 0.2
    max_leaf_nodes: int = 31
    l2_regularization: float = 0.0
    validation_fraction: float = 0.1
    n_iter_no_change: int = 5
    class_weight: str | None = None
    """``"balanced"`` weighs each class by the inverse of its share, so a rare
    urgent class counts as much as the normal one (and keeps early stopping
    from ending before the trees have learned it)."""


RARE_CLASS_HEAVY: Final = HeavyTrainingConfig(
    max_iter=300, learning_rate=0.1, n_iter_no_change=20, class_weight="balanced"
)
"""The heavy model's settings for ``models train`` on recorded data, where the
urgent class is often rare: balanced class weights, sklearn's learning rate and a
patience of 20 iterations. The default simulator build keeps its own
:class:`HeavyTrainingConfig` (its packages do not change)."""


def _check_labels(y: I64, n_classes: int, what: str) -> None:
    counts = np.bincount(y, minlength=n_classes)
    if counts.shape[0] != n_classes or not np.all(counts > 0):
        raise PipelineError(
            f"{what}: the training labels must cover classes 0..{n_classes - 1}, "
            f"got counts {counts.tolist()}; give it data that covers every class: more "
            "devices or readings, or, for a retraining run, a longer window or operator "
            "labels of the missing classes (POST /v1/labels)"
        )


def train_edge(
    x: F32, y: I64, seed: int, n_classes: int = 3, config: EdgeTrainingConfig | None = None
) -> Pipeline:
    """Fit the edge ``Pipeline(StandardScaler, MLPClassifier)``; returns the fitted pipeline."""
    cfg = config or EdgeTrainingConfig()
    _check_labels(y, n_classes, "edge model")
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=cfg.hidden_layers,
                    alpha=cfg.alpha,
                    batch_size=cfg.batch_size,
                    max_iter=cfg.max_iter,
                    early_stopping=True,
                    validation_fraction=cfg.validation_fraction,
                    n_iter_no_change=cfg.n_iter_no_change,
                    random_state=seed,
                ),
            ),
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            log.warning("edge MLP did not converge in %d iterations: %s", cfg.max_iter, w.message)
    log.info(
        "edge MLP %s trained in %d iterations on %d rows",
        cfg.hidden_layers,
        model.named_steps["mlp"].n_iter_,
        x.shape[0],
    )
    return model


def train_heavy(
    x: F32, y: I64, seed: int, n_classes: int = 3, config: HeavyTrainingConfig | None = None
) -> HistGradientBoostingClassifier:
    """Fit the heavy ``HistGradientBoostingClassifier``; returns the fitted model."""
    cfg = config or HeavyTrainingConfig()
    _check_labels(y, n_classes, "heavy model")
    model = HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes,
        l2_regularization=cfg.l2_regularization,
        early_stopping=True,
        validation_fraction=cfg.validation_fraction,
        n_iter_no_change=cfg.n_iter_no_change,
        class_weight=cfg.class_weight,
        random_state=seed,
    )
    model.fit(x, y)
    log.info("heavy gradient boosting trained: %d iterations on %d rows", model.n_iter_, x.shape[0])
    return model


def choose_urgent_threshold(
    urgent_scores: npt.NDArray[np.floating[Any]], is_urgent: npt.NDArray[np.bool_]
) -> float:
    """The urgent-score threshold that maximises F1 of urgent-vs-rest.

    Candidates are a 0.01 grid over [0.05, 0.95]: never so low that noise fires
    the actuator nor so high that float rounding decides. When several
    thresholds share the best F1 (common when the classes separate cleanly), the
    one nearest 0.5 wins, leaving the widest margin on both sides.

    >>> choose_urgent_threshold(np.array([0.02, 0.1, 0.9, 0.97]), np.array([0, 0, 1, 1]) == 1)
    0.5
    """
    if not is_urgent.any() or is_urgent.all():
        raise PipelineError(
            "choosing the urgent threshold needs both urgent and non-urgent holdout rows"
        )
    grid = np.round(np.linspace(0.05, 0.95, 91), 2)
    best: tuple[float, float] = (-1.0, 0.0)  # (F1, -distance to 0.5)
    threshold = 0.5
    for t in grid.tolist():
        pred = urgent_scores >= t
        tp = float(np.sum(pred & is_urgent))
        f1 = 2 * tp / (float(pred.sum()) + float(is_urgent.sum()))
        key = (round(f1, 12), -abs(t - 0.5))
        if key > best:
            best, threshold = key, t
    return float(threshold)


def holdout_metrics(
    scores: F32, y: I64, urgent_index: int, urgent_threshold: float
) -> dict[str, float]:
    """Holdout figures for a manifest: macro one-vs-rest AUC, macro F1 and
    accuracy of the arg-max class, and urgent precision/recall/F1 of the urgent
    rule (score of the urgent class >= ``urgent_threshold``)."""
    n_classes = scores.shape[1]
    present = np.bincount(y, minlength=n_classes)
    if not np.all(present > 0):
        raise PipelineError(
            f"the holdout lacks a class (rows per class {present.tolist()}), so its AUC is "
            "undefined; give it more data that covers every class (more devices or readings, "
            "a longer window, operator labels), or hold out a larger fraction"
        )
    pred = scores.argmax(axis=1)
    # Rows of float32 probabilities sum to 1 only within rounding; roc_auc_score
    # checks that strictly, so renormalise in float64.
    p64 = scores.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)
    urgent_pred = scores[:, urgent_index] >= urgent_threshold
    is_urgent = y == urgent_index
    # Two classes: sklearn takes the second class's score (one column), and the
    # one-vs-rest AUC of either class is that same figure.
    if n_classes == 2:
        auc = roc_auc_score(y, p64[:, 1])
    else:
        auc = roc_auc_score(y, p64, multi_class="ovr", average="macro")
    return {
        "auc_macro": float(auc),
        "f1_macro": float(f1_score(y, pred, average="macro")),
        "accuracy": float(np.mean(pred == y)),
        "urgent_precision": float(precision_score(is_urgent, urgent_pred, zero_division=0)),
        "urgent_recall": float(recall_score(is_urgent, urgent_pred, zero_division=0)),
        "urgent_f1": float(f1_score(is_urgent, urgent_pred, zero_division=0)),
    }
