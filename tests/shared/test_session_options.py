"""The session options both inference engines apply, on real onnxruntime options objects."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from shared.errors import ManifestError
from shared.session_options import configure_session, unloadable_model

pytestmark = pytest.mark.timeout(30)


def test_configures_threads_and_no_spinning() -> None:
    opts = ort.SessionOptions()
    assert configure_session(opts, threads=3) is opts
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    for pool in ("intra", "inter"):
        assert opts.get_session_config_entry(f"session.{pool}_op.allow_spinning") == "0"


def test_refuses_zero_threads() -> None:
    # onnxruntime reads 0 as "one per core": a device would lose its other cores.
    with pytest.raises(ValueError, match="at least one intra-op thread, got 0"):
        configure_session(ort.SessionOptions(), threads=0)


def test_unloadable_model_names_the_file_and_the_first_complaint() -> None:
    err = unloadable_model(Path("/m/model.onnx"), RuntimeError("[ONNXRuntimeError] bad\nmore"))
    assert isinstance(err, ManifestError)
    assert err.path == "/m/model.onnx"
    assert str(err).startswith("/m/model.onnx: onnxruntime cannot load it as an ONNX model (")
    assert "([ONNXRuntimeError] bad)" in str(err) and "more" not in str(err)
    assert "(RuntimeError)" in str(unloadable_model(Path("x"), RuntimeError()))
