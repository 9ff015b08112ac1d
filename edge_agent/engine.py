"""The edge inference engine: one model package, one reading at a time.

The only agent module that imports onnxruntime. The session runs on one thread
with spinning off: a device has few cores, and a spinning thread would burn one
while the agent waits for the next reading.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.ota.checks import smoke_verdict
from shared.errors import ManifestError
from shared.manifest import ModelPackage, load_package, parse_version
from shared.session_options import PROVIDERS, configure_session, unloadable_model

__all__ = ["EdgeModel", "load_edge_model", "open_session"]

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


def open_session(model_path: Path) -> Any:
    """A one-thread onnxruntime CPU session with edgeloop's options, or :class:`ManifestError`.

    The options are :mod:`shared.session_options`'s, which the hub's batch
    scorer uses too, so both sides run a model the same way.
    """
    import onnxruntime as ort  # noqa: PLC0415 - keep import time free of the runtime

    opts = configure_session(ort.SessionOptions(), threads=1)
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=list(PROVIDERS))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise unloadable_model(model_path, exc) from None


class _Binding:
    """One thread's way to score a row: the model's input and output bound to its own buffers.

    A one-row ``InferenceSession.run`` spends most of its 7 us outside the
    model: checking the feed (names, device, graph capture), turning the numpy
    input into a tensor and allocating the output. With an IOBinding to fixed
    buffers, and the bound C++ session called directly, scoring costs 5.5 us
    here. The feed is checked once, when the model loads. Should an onnxruntime
    release drop the private attributes used for that, the public
    ``run_with_iobinding`` is used instead.
    """

    __slots__ = ("_buffers", "binding", "features", "run", "run_options", "scores")

    def __init__(
        self, session: Any, input_name: str, output_name: str, n_features: int, n_classes: int
    ) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - loaded already by open_session

        features: F32 = np.zeros((1, n_features), dtype=np.float32)
        scores: F32 = np.zeros((1, n_classes), dtype=np.float32)
        binding = session.io_binding()
        # Raw pointers: the buffers live as long as this object, which holds both.
        binding.bind_input(input_name, "cpu", 0, np.float32, [1, n_features], features.ctypes.data)
        binding.bind_output(output_name, "cpu", 0, np.float32, [1, n_classes], scores.ctypes.data)
        self.features: F32 = features[0]
        self.scores: F32 = scores[0]
        self.run_options = ort.RunOptions()
        c_session = getattr(session, "_sess", None)
        c_binding = getattr(binding, "_iobinding", None)
        if c_session is not None and c_binding is not None:
            self.run, self.binding = c_session.run_with_iobinding, c_binding
        else:
            self.run, self.binding = session.run_with_iobinding, binding
        self._buffers = (features, scores)


class EdgeModel:
    """An ONNX model from a checked package, scoring single feature rows."""

    def __init__(self, package: ModelPackage) -> None:
        self.package = package
        self.manifest = package.manifest
        self._session = open_session(package.model_path)
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        spec = self.manifest.model
        if spec.input_name not in inputs or spec.scores_output not in outputs:
            raise ManifestError(
                f"{package.model_path}: the manifest names input {spec.input_name!r} and output "
                f"{spec.scores_output!r}, but the graph has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}",
                path=str(package.model_path),
                field="model",
            )
        self._input = spec.input_name
        self._outputs = [spec.scores_output]
        self._local = threading.local()
        self.version = self.manifest.version
        self.n_classes = len(self.manifest.output.classes)
        self.n_features = len(self.manifest.input.features)

    def score(self, features: F32) -> F32:
        """Class probabilities for one feature row, shape ``(n_classes,)``.

        Safe to call from many threads at once: each has its own binding.
        """
        try:
            bound: _Binding = self._local.bound
        except AttributeError:
            bound = self._local.bound = _Binding(
                self._session, self._input, self._outputs[0], self.n_features, self.n_classes
            )
        if features.shape != bound.features.shape or features.dtype != np.float32:
            raise ValueError(
                f"a feature row is float32 of shape {bound.features.shape}; "
                f"got {features.dtype} of shape {features.shape}"
            )
        bound.features[...] = features
        bound.run(bound.binding, bound.run_options)
        row: F32 = bound.scores.copy()
        return row

    def score_batch(self, features: F32) -> F32:
        """Class probabilities for many rows, shape ``(n, n_classes)``."""
        out: F32 = self._session.run(self._outputs, {self._input: features})[0]
        return out

    def smoke_test(self) -> float:
        """Run the manifest's test vectors; raise if any score is off. Returns the max error.

        The verdict is :func:`edge_agent.ota.checks.smoke_verdict`'s, the OTA's too.
        """
        tv = self.manifest.test_vectors
        # Row by row, as the reading loop scores: a dynamically quantized model's output
        # depends on the batch, and the manifest's expected scores are for batches of one.
        got = np.stack([self.score(row) for row in np.asarray(tv.inputs, dtype=np.float32)])
        result = smoke_verdict(got, tv.expected_scores, tv.atol)
        if result.reason is not None:
            raise ManifestError(
                f"model {self.manifest.name} {self.version}: smoke test failed, {result.detail}; "
                "the model file does not match its manifest or the runtime computes differently",
                path=str(self.package.path),
                field="test_vectors",
            )
        return result.max_error


def load_edge_model(path: Path, agent_version: str, window: int | None = None) -> EdgeModel:
    """Load, check and smoke-test the package at ``path`` for this agent.

    Refuses a package that needs a newer agent, or whose test vectors do not
    reproduce. The sensors it reads are the manifest's (``manifest.input``); the
    source must provide them (checked when the source is built).
    """
    package = load_package(path)
    m = package.manifest
    if window is not None and m.input.window != window:
        raise ManifestError(
            f"model {m.name} {m.version} wants a window of {m.input.window}, agent uses {window}",
            path=str(path),
            field="input.window",
        )
    if parse_version(m.min_agent_version) > parse_version(agent_version):
        raise ManifestError(
            f"model {m.name} {m.version} needs agent >= {m.min_agent_version}; this agent is "
            f"{agent_version}. Upgrade the agent first.",
            path=str(path),
            field="min_agent_version",
        )
    model = EdgeModel(package)
    err = model.smoke_test()
    log.info(
        "model %s %s loaded from %s (%s), smoke test max error %.2g",
        m.name,
        m.version,
        path,
        m.model.quantization,
        err,
    )
    return model
