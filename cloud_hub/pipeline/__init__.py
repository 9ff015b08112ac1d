"""The training pipeline: data -> train -> convert -> quantize -> gate -> package.

Only this package imports scikit-learn and skl2onnx (DESIGN.md section 2); it
runs in the hub, never on a device. Modules, in data-flow order:

- :mod:`.train` — seeded training of the edge MLP and the heavy trees, holdout
  metrics and the urgent threshold;
- :mod:`.convert` — scikit-learn -> ONNX, int8 quantization, the int8/fp32 gate;
- :mod:`.package` — reference statistics, test vectors, the package on disk;
- :mod:`.anomaly` — the anomaly models for data without labels, their ONNX
  graphs, and the threshold from a false-alarm budget;
- :mod:`.trainer` — one trainer for every pair: train, convert, quantize, gate,
  threshold, package and publish, with or without labels;
- :mod:`.recorded` — recorded CSV as training data: series, sensors, time splits;
- :mod:`.sample` — the bounded sample of a streamed recording: every k-th reading;
- :mod:`.build` — the default simulator build, one call of the trainer.

Errors::

    EdgeloopError
     └── PipelineError          the data or a model is not good enough to ship
          └── GateError         a release gate failed (gate, measured, threshold)
"""

from cloud_hub.pipeline.build import (
    DEFAULT_VERSION,
    EDGE_NAME,
    HEAVY_NAME,
    BuildResult,
    DataSettings,
    build_default_models,
    retrain_edge_sklearn,
)
from cloud_hub.pipeline.convert import (
    INPUT_NAME,
    SCORES_OUTPUT,
    GateError,
    gate_int8_agreement,
    quantize_int8,
    sklearn_to_onnx,
)
from cloud_hub.pipeline.package import complete_package, save_model
from cloud_hub.pipeline.train import PipelineError, train_edge, train_heavy

__all__ = [
    "DEFAULT_VERSION",
    "EDGE_NAME",
    "HEAVY_NAME",
    "INPUT_NAME",
    "SCORES_OUTPUT",
    "BuildResult",
    "DataSettings",
    "GateError",
    "PipelineError",
    "build_default_models",
    "complete_package",
    "gate_int8_agreement",
    "quantize_int8",
    "retrain_edge_sklearn",
    "save_model",
    "sklearn_to_onnx",
    "train_edge",
    "train_heavy",
]
