"""``shared`` is pure: no heavy or I/O dependencies, no imports of either side, and
its docstring examples hold."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
# Every module of the package, so a new one is held to the same rules.
MODULES = [
    "shared",
    *sorted(f"shared.{p.stem}" for p in (REPO / "shared").glob("*.py") if p.stem != "__init__"),
]
FORBIDDEN = [
    "onnxruntime",
    "paho",
    "sklearn",
    "skl2onnx",
    "onnx",
    "fastapi",
    "uvicorn",
    "amqtt",
    "edge_agent",
    "cloud_hub",
    "simulators",
]


def _modules_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter that ran ``code`` from the repo root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=True,
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", MODULES)
def test_importing_shared_pulls_in_nothing_heavy(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"import {module} loaded {bad}"


def test_shared_never_imports_either_side_in_its_source() -> None:
    for path in sorted((REPO / "shared").glob("*.py")):
        text = path.read_text()
        for side in ("edge_agent", "cloud_hub", "simulators"):
            assert f"import {side}" not in text and f"from {side}" not in text, path


def test_public_names() -> None:
    shared = importlib.import_module("shared")
    for name in shared.__all__:
        assert hasattr(shared, name), name
    assert sorted(shared.__all__) == sorted(set(shared.__all__))


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, verbose=False, report=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests of {module} failed"


def test_there_are_doctests() -> None:
    attempted = sum(
        doctest.testmod(importlib.import_module(m), verbose=False, report=False).attempted
        for m in MODULES
    )
    assert attempted >= 8
