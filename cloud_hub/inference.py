"""The hub's ONNX inference engine: batched scoring with onnxruntime.

This is the hub's only inference engine (DESIGN.md section 2). It opens its
sessions with the options of :mod:`shared.session_options`, as the edge agent's
engine does, so hub and devices run a model the same way: a fixed, small number
of intra-op threads that sleep instead of spinning when idle (the hub shares its
cores with a broker and its workers), one inter-op thread, sequential
execution, full graph optimisation, CPU only. The hub scores whole
micro-batches at once, so :meth:`OnnxScorer.scores` takes a feature matrix and
makes one ``session.run`` for it.

A dynamically quantized (int8) model computes its activation scales from the
batch it is given, so its scores for a row depend slightly on the other rows of
the batch. The edge agent scores one reading at a time; to reproduce what a
device sees, score with ``batch_size=1``.

Errors::

    ManifestError   the model file is missing, is not ONNX, or its input or
                    scores output is not named as the manifest says
    ValueError      a feature matrix of the wrong shape
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from shared.errors import ManifestError
from shared.manifest import ModelPackage
from shared.session_options import PROVIDERS, configure_session, unloadable_model

__all__ = ["OnnxScorer"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def _fixed_dim(dim: object) -> int | None:
    """A graph dimension as an int, or None when it is symbolic (``"N"``) or unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxScorer:
    """Scores feature matrices with one ONNX model, returning class probabilities.

    ``input_name`` and ``scores_output`` are the graph names the manifest gives
    (``model.input_name``, ``model.scores_output``); a model whose names differ
    is refused at construction, not at the first batch.

    >>> scorer = OnnxScorer.from_package(load_package(path))  # doctest: +SKIP
    >>> scorer.scores(features).shape  # doctest: +SKIP
    (512, 3)
    """

    def __init__(
        self, model_path: Path, input_name: str, scores_output: str, threads: int = 1
    ) -> None:
        if threads < 1:
            raise ValueError(f"OnnxScorer for {model_path}: threads must be >= 1, got {threads}")
        self.model_path = Path(model_path)
        self.input_name = input_name
        self.scores_output = scores_output
        self.threads = threads
        if not self.model_path.is_file():
            raise ManifestError(
                f"ONNX model {str(self.model_path)!r} does not exist or is not a file",
                path=str(self.model_path),
            )
        opts = configure_session(ort.SessionOptions(), threads)
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=list(PROVIDERS)
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise unloadable_model(self.model_path, exc) from None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if input_name not in inputs:
            raise ManifestError(
                f"{self.model_path}: the graph has no input {input_name!r} "
                f"(it has {sorted(inputs)}); the manifest's model.input_name does not match the model",
                path=str(self.model_path),
                field="model.input_name",
            )
        if len(inputs) != 1:
            raise ManifestError(
                f"{self.model_path}: the graph has {len(inputs)} inputs {sorted(inputs)}; "
                "a scorer feeds exactly one, the feature matrix",
                path=str(self.model_path),
                field="model.input_name",
            )
        if scores_output not in outputs:
            raise ManifestError(
                f"{self.model_path}: the graph has no output {scores_output!r} "
                f"(it has {sorted(outputs)}); the manifest's model.scores_output does not match "
                "the model",
                path=str(self.model_path),
                field="model.scores_output",
            )
        in_shape = inputs[input_name].shape
        out_shape = outputs[scores_output].shape
        if len(in_shape) != 2 or len(out_shape) != 2:
            raise ManifestError(
                f"{self.model_path}: input {input_name!r} has shape {in_shape} and output "
                f"{scores_output!r} has shape {out_shape}; both must be 2-D (rows, columns)",
                path=str(self.model_path),
            )
        self.n_features: int | None = _fixed_dim(in_shape[1])
        """Columns the model reads, or None when the graph leaves it open."""
        self.n_classes: int | None = _fixed_dim(out_shape[1])
        """Columns of the scores, or None when the graph leaves it open."""
        self._outputs = [scores_output]
        log.debug(
            "loaded %s (%s -> %s, %d thread(s))",
            self.model_path,
            input_name,
            scores_output,
            threads,
        )

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the session runs with (threads, spinning, optimisation)."""
        return self._session.get_session_options()

    @classmethod
    def from_package(cls, package: ModelPackage, threads: int = 1) -> OnnxScorer:
        """A scorer for a loaded package's model, with the names its manifest gives."""
        m = package.manifest.model
        return cls(package.model_path, m.input_name, m.scores_output, threads)

    def scores(self, features: F32, batch_size: int | None = None) -> F32:
        """Class probabilities for every row of ``features`` (float32 ``(n, n_features)``).

        One ``session.run`` for the whole matrix by default; ``batch_size`` splits
        it into runs of at most that many rows (``1`` scores each row alone, as
        the edge agent does). Returns float32 ``(n, n_classes)``.
        """
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or (self.n_features is not None and x.shape[1] != self.n_features):
            want = self.n_features if self.n_features is not None else "n_features"
            raise ValueError(
                f"{self.model_path}: scores() needs a matrix of shape (n, {want}), got {x.shape}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"{self.model_path}: batch_size must be >= 1, got {batch_size}")
        n = x.shape[0]
        step = n if batch_size is None else batch_size
        if n == 0:
            return np.empty((0, self.n_classes or 0), dtype=np.float32)
        parts: list[F32] = []
        for start in range(0, n, step):
            (out,) = self._session.run(self._outputs, {self.input_name: x[start : start + step]})
            parts.append(np.asarray(out, dtype=np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __repr__(self) -> str:
        return (
            f"OnnxScorer({str(self.model_path)!r}, {self.input_name!r} -> "
            f"{self.scores_output!r}, threads={self.threads})"
        )
