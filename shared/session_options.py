"""How edgeloop runs an ONNX model: the session options of both inference engines.

Pure: no I/O, no threads, and no onnxruntime. Only the inference engines
(:mod:`edge_agent.engine` on a device, :mod:`cloud_hub.inference` on the hub)
import onnxruntime; each makes a ``SessionOptions``, has
:func:`configure_session` set it, opens the session with :data:`PROVIDERS`, and
reports a model that will not load with :func:`unloadable_model`. So a model
runs with the same options on a device and on the hub, decided here once.

The options: ``threads`` intra-op threads (one on a device), one inter-op
thread, and idle threads that sleep instead of spinning: a device has few
cores, and the hub shares its own with a broker and its workers. Sequential
execution and full graph optimisation are onnxruntime's defaults and are kept;
both engines' tests check them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Protocol, TypeVar

from shared.errors import ManifestError

__all__ = ["PROVIDERS", "SessionOptionsLike", "configure_session", "unloadable_model"]

PROVIDERS: Final = ("CPUExecutionProvider",)
"""Where a model runs: the CPU, on a device and on the hub."""

NO_SPINNING: Final = (
    ("session.intra_op.allow_spinning", "0"),
    ("session.inter_op.allow_spinning", "0"),
)


class SessionOptionsLike(Protocol):
    """The part of ``onnxruntime.SessionOptions`` that :func:`configure_session` sets."""

    intra_op_num_threads: int
    inter_op_num_threads: int

    def add_session_config_entry(self, key: str, value: str, /) -> None: ...


_O = TypeVar("_O", bound=SessionOptionsLike)


def configure_session(opts: _O, threads: int) -> _O:
    """Set edgeloop's options on a fresh ``onnxruntime.SessionOptions``; returns it."""
    if threads < 1:
        raise ValueError(f"an ONNX session needs at least one intra-op thread, got {threads}")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    for key, value in NO_SPINNING:
        opts.add_session_config_entry(key, value)
    return opts


def unloadable_model(model_path: Path, exc: BaseException) -> ManifestError:
    """The error for a model file onnxruntime refused, naming the file and its first complaint."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return ManifestError(
        f"{model_path}: onnxruntime cannot load it as an ONNX model ({first_line}); "
        "is it the model.onnx of a package built by 'edgeloop-hub models build'?",
        path=str(model_path),
    )
