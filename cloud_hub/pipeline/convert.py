"""scikit-learn -> ONNX, fp32 -> int8, and the int8/fp32 agreement gate.

Every model leaves here with one float32 input, :data:`INPUT_NAME`
(``[None, n_features]``), and one output, :data:`SCORES_OUTPUT`, a plain float
tensor of class probabilities (``[None, n_classes]``; no ZipMap, and the
``label`` output skl2onnx adds is pruned, since the agent and the hub take the
arg-max themselves). The opsets are fixed (:data:`TARGET_OPSET`) so that
devices with an older onnxruntime (the ``edge`` extra allows 1.18) can load what
the hub builds.

Two traps handled here:

- skl2onnx can list the default opset domain twice in ``opset_import`` (it does
  for gradient-boosted trees); onnxruntime's quantizer then fails with "Failed
  to find proper ai.onnx domain". :func:`dedupe_opsets` keeps one entry per domain.
- int8 *dynamic* quantization computes activation scales from the batch it is
  given, so a row's scores depend a little on the rest of the batch. The edge
  agent scores one reading at a time, so the gate scores the int8 model row by
  row, as a device would.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType

from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.train import PipelineError

__all__ = [
    "INPUT_NAME",
    "QUANTIZED_OPS",
    "SCORES_OUTPUT",
    "TARGET_OPSET",
    "GateError",
    "agreement",
    "dedupe_opsets",
    "gate_int8_agreement",
    "keep_outputs",
    "quantize_int8",
    "sklearn_to_onnx",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

INPUT_NAME: Final = "features"
SCORES_OUTPUT: Final = "probabilities"
TARGET_OPSET: Final[dict[str, int]] = {"": 17, "ai.onnx.ml": 3}
QUANTIZED_OPS: Final = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
"""Operators that mark a graph as quantized."""


class GateError(PipelineError):
    """A candidate model failed a release gate; nothing was published.

    ``gate`` names the gate, ``measured`` and ``threshold`` are the figures.
    """

    def __init__(self, message: str, *, gate: str, measured: float, threshold: float) -> None:
        super().__init__(message)
        self.gate = gate
        self.measured = measured
        self.threshold = threshold


def dedupe_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep one ``opset_import`` entry per domain (the highest version), in place."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    if len(versions) != len(model.opset_import):
        log.debug(
            "de-duplicating opset_import %s", [(e.domain, e.version) for e in model.opset_import]
        )
        del model.opset_import[:]
        for domain, version in versions.items():
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return model


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Drop every graph output not in ``names`` and the nodes only they needed, in place."""
    graph = model.graph
    have = [o.name for o in graph.output]
    missing = [n for n in names if n not in have]
    if missing:
        raise PipelineError(f"the converted graph has no output {missing[0]!r} (it has {have})")
    needed = set(names)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):  # nodes are stored in topological order
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    outputs = [o for o in graph.output if o.name in names]
    inits = [t for t in graph.initializer if t.name in needed]
    infos = [v for v in graph.value_info if v.name in needed]
    for field, items in (
        ("node", kept[::-1]),
        ("output", outputs),
        ("initializer", inits),
        ("value_info", infos),
    ):
        repeated = getattr(graph, field)
        del repeated[:]
        repeated.extend(items)
    return model


def _final_estimator(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def sklearn_to_onnx(estimator: Any, n_features: int, name: str = "model") -> onnx.ModelProto:
    """Convert a fitted classifier (or pipeline ending in one) to an fp32 ONNX model.

    Input :data:`INPUT_NAME` float32 ``[None, n_features]``; single output
    :data:`SCORES_OUTPUT`, float32 probabilities ``[None, n_classes]``.
    """
    final = _final_estimator(estimator)
    with warnings.catch_warnings():
        # skl2onnx's tree converter passes bools where onnx wants ints; protobuf
        # 6 warns that protobuf 7 will refuse them (one more reason for the
        # protobuf<7 pin). The values are right, so keep the log clean.
        warnings.filterwarnings(
            "ignore", message=".*Expected an int, got a boolean", category=DeprecationWarning
        )
        model = to_onnx(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options={id(final): {"zipmap": False}},
            target_opset=dict(TARGET_OPSET),
        )
    model = keep_outputs(dedupe_opsets(model), [SCORES_OUTPUT])
    model.graph.name = name
    onnx.checker.check_model(model)
    return model


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 dynamic quantization of the MatMul layers (weights int8 per tensor,
    activations quantized on the fly), via onnxruntime's quantizer."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        fp32 = onnx.ModelProto()
        fp32.CopyFrom(model)
        onnx.save(dedupe_opsets(fp32), src)
        # Shape inference first: the quantizer needs every MatMul's types.
        # Not the optimisation step: it folds the Cast after the (ai.onnx.ml)
        # Scaler, whose output type ONNX cannot infer, and the quantizer then
        # fails ("Unable to find data type"). Symbolic shape inference is for
        # transformers and does not know the ai.onnx.ml operators.
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        quantize_dynamic(pre, out, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        quantized = dedupe_opsets(onnx.load(out))
    ops = {n.op_type for n in quantized.graph.node}
    if not ops & QUANTIZED_OPS:
        raise PipelineError(
            f"int8 quantization of {model.graph.name!r} quantized nothing (operators: "
            f"{sorted(ops)}); the edge model needs MatMul layers"
        )
    onnx.checker.check_model(quantized)
    return quantized


def agreement(a: F32, b: F32) -> float:
    """Share of rows whose arg-max class is the same in both score matrices."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"agreement needs two score matrices of one shape, got {a.shape} and {b.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError("agreement of zero rows is undefined")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def gate_int8_agreement(
    int8: OnnxScorer, fp32: OnnxScorer, x: F32, min_agreement: float, name: str = "edge model"
) -> float:
    """Class agreement of the int8 model with its fp32 twin on ``X``; raises
    :class:`GateError` (with the measured figure) when below ``min_agreement``.
    ``x`` are the holdout features.

    The int8 model scores each row alone, as on a device; the fp32 twin scores
    in one batch (its output does not depend on the batch).
    """
    if not (math.isfinite(min_agreement) and min_agreement >= 0.0):
        raise ValueError(f"min_agreement must be a finite number >= 0, got {min_agreement!r}")
    a, b = int8.scores(x, batch_size=1), fp32.scores(x)
    measured = agreement(a, b)
    agree = int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))
    log.info("%s: int8/fp32 agreement %.4f (%d/%d rows)", name, measured, agree, x.shape[0])
    if measured < min_agreement:
        raise GateError(
            f"{name}: int8/fp32 agreement gate failed: the int8 model agrees with its fp32 "
            f"twin on the class of {measured:.4f} of the holdout ({agree}/{x.shape[0]} rows), "
            f"below the minimum {min_agreement}; nothing was published. Retrain with another "
            "seed or more data, or lower the minimum (--min-agreement) knowingly",
            gate="int8_fp32_agreement",
            measured=measured,
            threshold=min_agreement,
        )
    return measured
