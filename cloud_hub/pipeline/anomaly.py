"""Anomaly models for data without labels: trained on normal readings only.

Each model gives a raw anomaly score ``s >= 0`` per feature row (larger is
stranger). In ONNX the score leaves through the package's usual contract: two
classes ``("normal", "urgent")`` with probabilities ``(1 - p, p)``, where
``p = s / (s + s0)`` (:func:`with_probability_head`). ``p`` rises with ``s``,
so any threshold on ``s`` is a threshold on ``p``; ``s0`` is set to the score
threshold chosen on validation data, which puts the urgent decision at
``p = 0.5``, where the arg-max class changes too.

The candidates (``edgeloop-sim bench anomaly``; figures and the choice in
docs/architecture.md, "Training from your data"):

- **Autoencoder** (:func:`fit_autoencoder`): an ``MLPRegressor`` trained to
  reproduce the standardised features through a narrow layer; the score is the
  mean squared reconstruction error. MatMuls, so it quantizes to int8: the edge
  model, and a wider one in fp32 the heavy model.
- **Mahalanobis distance** (:class:`Mahalanobis`): the features standardised
  robustly (median, interquartile range), rotated onto the principal axes of
  the normal data and each axis scaled by its spread; the score is the mean
  squared distance. One MatMul. Compared, not shipped.
- **Isolation forest** (:func:`fit_isolation_forest`): scikit-learn's
  ``IsolationForest``; the score is ``-score_samples``. Compared, not shipped.

The urgent threshold comes from a false-alarm budget (:func:`tail_threshold`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.manifest import UrgentSpec
from shared.urgent import UrgentRule

__all__ = [
    "ANOMALY_CLASSES",
    "Mahalanobis",
    "alarm_count",
    "autoencoder_onnx",
    "autoencoder_raw",
    "fit_autoencoder",
    "fit_isolation_forest",
    "isolation_forest_raw",
    "mahalanobis_onnx",
    "raw_from_probability",
    "tail_threshold",
    "with_probability_head",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ANOMALY_CLASSES: Final = ("normal", "urgent")
_TAIL_QUANTILE: Final = 0.9
"""The tail of the validation scores above this quantile is fitted (see tail_threshold)."""
_EIGEN_FLOOR: Final = 1e-5
"""Principal axes whose variance is below this share of the largest are merged into one
residual axis: a tiny variance magnifies rounding (and int8 quantization) noise."""


@dataclass(frozen=True, slots=True)
class Mahalanobis:
    """A fitted robust Mahalanobis distance: ``mean(((x - center) * inv_scale) @ w) ** 2)``."""

    center: F64
    inv_scale: F64
    w: F64

    def raw(self, x: F32) -> F64:
        z = (x.astype(np.float64) - self.center) * self.inv_scale
        p = z @ self.w
        out: F64 = np.mean(p * p, axis=1)
        return out

    @classmethod
    def fit(cls, x: F32) -> Mahalanobis:
        """Fit on normal rows; refit once without the 1 % farthest rows (robustness
        to the odd glitch in data said to be normal)."""
        x64 = x.astype(np.float64)
        center = np.median(x64, axis=0)
        q25, q75 = np.quantile(x64, [0.25, 0.75], axis=0)
        spread = (q75 - q25) / 1.349
        std = x64.std(axis=0)
        scale = np.where(spread > 0, spread, std)
        floor = 1e-6 * np.maximum(1.0, np.abs(center))
        inv_scale = 1.0 / np.maximum(scale, floor)
        z = (x64 - center) * inv_scale
        model = cls._axes(center, inv_scale, z)
        d = model.raw(x)
        keep = d <= np.quantile(d, 0.99)
        return cls._axes(center, inv_scale, z[keep])

    @classmethod
    def _axes(cls, center: F64, inv_scale: F64, z: F64) -> Mahalanobis:
        mean = z.mean(axis=0)
        cov = np.cov(z - mean, rowvar=False)
        cov = np.atleast_2d(cov)
        vals, vecs = np.linalg.eigh(cov)
        vals = np.maximum(vals, 0.0)
        top = float(vals.max()) if vals.size else 1.0
        floor = max(top * _EIGEN_FLOOR, 1e-12)
        big = vals >= floor
        cols = [vecs[:, big] / np.sqrt(vals[big])]
        if (~big).any():
            # The small axes share one scale (their mean variance, floored): their
            # squared distances add up, as they would on one axis each.
            small = vecs[:, ~big]
            var = max(float(vals[~big].mean()), floor)
            cols.append(small / math.sqrt(var))
        w = np.concatenate(cols, axis=1)
        # Centre the rotation too: z's mean is not exactly 0 after the median.
        return cls(center + mean / inv_scale, inv_scale, w)


def mahalanobis_onnx(model: Mahalanobis, n_features: int, s0: float, name: str) -> onnx.ModelProto:
    """The distance as an ONNX graph (Sub, Mul, MatMul, ...) with the probability head."""
    from cloud_hub.pipeline.convert import INPUT_NAME, TARGET_OPSET  # noqa: PLC0415

    k = model.w.shape[1]
    inits = [
        numpy_helper.from_array(model.center.astype(np.float32), "center"),
        numpy_helper.from_array(model.inv_scale.astype(np.float32), "inv_scale"),
        numpy_helper.from_array(model.w.astype(np.float32), "axes"),
        numpy_helper.from_array(np.array([1.0 / k], dtype=np.float32), "inv_k"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "center"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
        helper.make_node("MatMul", ["z", "axes"], ["proj"]),
        helper.make_node("Mul", ["proj", "proj"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sum_sq"], keepdims=1),
        helper.make_node("Mul", ["sum_sq", "inv_k"], ["raw_score"]),
    ]
    return _finish(nodes, inits, n_features, s0=s0, name=name, opset=TARGET_OPSET[""])


def fit_isolation_forest(x: F32, seed: int, n_estimators: int = 100) -> Any:
    """scikit-learn's ``IsolationForest`` on normal rows (at most 256 rows per tree)."""
    from sklearn.ensemble import IsolationForest  # noqa: PLC0415

    return IsolationForest(n_estimators=n_estimators, random_state=seed).fit(x)


def isolation_forest_raw(model: Any, x: F32) -> F64:
    """The forest's anomaly score, ``-score_samples`` (in (0, 1); ~0.5 and up is odd)."""
    out: F64 = -model.score_samples(x).astype(np.float64)
    return out


def with_probability_head(proto: onnx.ModelProto, raw: str, s0: float) -> onnx.ModelProto:
    """Append ``p = s / (s + s0)`` and the output ``[1 - p, p]`` (float32, rows sum to 1)."""
    from cloud_hub.pipeline.convert import SCORES_OUTPUT  # noqa: PLC0415

    if not (math.isfinite(s0) and s0 > 0):
        raise ValueError(f"the probability head needs a finite s0 > 0, got {s0!r}")
    g = proto.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([s0], dtype=np.float32), "head_s0"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "head_one"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "head_zero"),
        ]
    )
    g.node.extend(
        [
            # A raw score below 0 (rounding of a distance) counts as 0.
            helper.make_node("Max", [raw, "head_zero"], ["head_s"]),
            helper.make_node("Add", ["head_s", "head_s0"], ["head_den"]),
            helper.make_node("Div", ["head_s", "head_den"], ["head_p"]),
            helper.make_node("Sub", ["head_one", "head_p"], ["head_q"]),
            helper.make_node("Concat", ["head_q", "head_p"], [SCORES_OUTPUT], axis=1),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(SCORES_OUTPUT, TensorProto.FLOAT, [None, 2]))
    onnx.checker.check_model(proto)
    return proto


def raw_from_probability(p: npt.NDArray[np.floating[Any]], s0: float) -> F64:
    """Invert the head: the raw score behind urgent probability ``p`` (``p < 1``)."""
    p64 = np.clip(p.astype(np.float64), 0.0, 1.0 - 1e-12)
    out: F64 = s0 * p64 / (1.0 - p64)
    return out


def tail_threshold(raw: F64, budget: float) -> tuple[float, str]:
    """The raw score above which at most ``budget`` of normal readings should fall,
    and how it was found.

    The empirical ``1 - budget`` quantile of ``raw`` (validation scores of normal
    data) is exact only with far more rows than ``1 / budget``; with fewer, the
    largest score seen is a coin toss against the next batch. So the tail above
    the 90 % quantile ``u`` is fitted with an exponential (peaks over threshold;
    the mean excess ``b`` estimates its scale) and extrapolated:
    ``u + b * ln(0.1 / budget)``. With enough rows to resolve the budget
    (``n * budget >= 1``) the threshold is at least the empirical quantile.
    With fewer, where the scores' tail is lighter than the fit the largest
    score seen is above it, and as many new normal readings beat that largest
    about half the time; so the threshold is at least the largest seen plus
    ``b * ln(10)``, which under the fitted tail they pass about one time in ten.

    >>> t, why = tail_threshold(np.random.default_rng(0).exponential(1.0, 20_000), 1e-4)
    >>> 8.0 < t < 11.0  # the exponential's true 1e-4 quantile: ln(1e4) = 9.2
    True
    """
    if raw.size < 20:
        raise ValueError(
            f"a threshold from a false-alarm budget needs >= 20 scores, got {raw.size}"
        )
    if not 0.0 < budget < _TAIL_QUANTILE:
        raise ValueError(f"the false-alarm budget must be in (0, 0.9), got {budget!r}")
    u = float(np.quantile(raw, _TAIL_QUANTILE))
    excess = raw[raw > u] - u
    b = float(excess.mean()) if excess.size else 0.0
    fitted = u + b * math.log((1.0 - _TAIL_QUANTILE) / budget)
    seen = float(raw.max())
    if raw.size * budget >= 1.0:
        empirical = float(np.quantile(raw, 1.0 - budget))
        if empirical > fitted:
            return empirical, f"the empirical 1 - {budget:g} quantile of {raw.size} scores"
        floor = fitted
    else:
        floor = seen + b * math.log(10.0)
    if fitted >= floor:
        why = (
            f"exponential tail fitted above the 90% quantile ({u:.4g}, mean excess {b:.4g}) "
            f"extrapolated to 1 - {budget:g}"
        )
        return fitted, why
    return (
        floor,
        f"the largest raw validation score ({seen:.4g}) plus ln(10) mean excesses ({b:.4g}); "
        f"the fitted tail's {fitted:.4g} is below the scores seen",
    )


def alarm_count(over: npt.NDArray[np.bool_], consecutive: int, release: int = 1) -> int:
    """Alarms as the agent's urgent rule raises them on one series: one per
    score episode, which starts after ``consecutive`` readings in a row over
    the threshold and ends after ``release`` readings in a row under it
    (:class:`shared.urgent.UrgentRule`, run on ``over`` as scores of 1 and 0).

    >>> alarm_count(np.array([1, 1, 0, 1, 1, 1, 0, 1], dtype=bool), 2)
    2
    >>> alarm_count(np.array([1, 1, 0, 1, 1, 1, 0, 1], dtype=bool), 2, release=2)
    1
    """
    if consecutive < 1 or release < 1:
        raise ValueError(f"consecutive and release must be >= 1, got {consecutive}, {release}")
    rule = UrgentRule(UrgentSpec(0.5, consecutive, {}, release), 0, ())
    fired = rule.check_block(np.zeros((over.size, 0)), over.astype(np.float64))
    return int(fired.sum())


def fit_autoencoder(x: F32, seed: int, outer: int = 2) -> Any:
    """An ``MLPRegressor`` that reproduces standardised features through a narrow
    layer (``outer * w, w, outer * w`` units, ``w`` half the features and at least
    8); returns ``(scaler, mlp)``."""
    from sklearn.neural_network import MLPRegressor  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    # A bottleneck of half the features, at least 8: narrower ones (a quarter) missed
    # a shifted sensor whose partners had not moved on the test rig's data.
    width = max(8, x.shape[1] // 2)
    mlp = MLPRegressor(
        hidden_layer_sizes=(outer * width, width, outer * width),
        batch_size=256,
        max_iter=300,
        early_stopping=True,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit(z, z)
    return scaler, mlp


def autoencoder_onnx(model: Any, n_features: int, s0: float, name: str) -> onnx.ModelProto:
    """The autoencoder's reconstruction error as an ONNX graph (MatMul, Add, Relu) with the head."""
    from cloud_hub.pipeline.convert import INPUT_NAME, TARGET_OPSET  # noqa: PLC0415

    scaler, mlp = model
    if mlp.activation != "relu":
        raise ValueError(f"autoencoder_onnx handles relu layers, not {mlp.activation!r}")
    inits = [
        numpy_helper.from_array(scaler.mean_.astype(np.float32), "center"),
        numpy_helper.from_array((1.0 / scaler.scale_).astype(np.float32), "inv_scale"),
        numpy_helper.from_array(np.array([1.0 / n_features], dtype=np.float32), "inv_n"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "center"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
    ]
    h = "z"
    last = len(mlp.coefs_) - 1
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"pre{i}"]),
        ]
        h = f"pre{i}"
        if i < last:
            nodes.append(helper.make_node("Relu", [h], [f"h{i}"]))
            h = f"h{i}"
    nodes += [
        helper.make_node("Sub", [h, "z"], ["err"]),
        helper.make_node("Mul", ["err", "err"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sum_sq"], keepdims=1),
        helper.make_node("Mul", ["sum_sq", "inv_n"], ["raw_score"]),
    ]
    return _finish(nodes, inits, n_features, s0=s0, name=name, opset=TARGET_OPSET[""])


def _finish(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    n_features: int,
    *,
    s0: float,
    name: str,
    opset: int,
) -> onnx.ModelProto:
    from cloud_hub.pipeline.convert import INPUT_NAME  # noqa: PLC0415

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("raw_score", TensorProto.FLOAT, [None, 1])],
        inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeloop"
    )
    proto.ir_version = 8  # onnxruntime 1.18 (the edge extra's floor) reads IR 8
    return with_probability_head(proto, "raw_score", s0)


def autoencoder_raw(model: Any, x: F32) -> F64:
    scaler, mlp = model
    z = scaler.transform(x)
    out: F64 = np.mean((mlp.predict(z) - z) ** 2, axis=1)
    return out
