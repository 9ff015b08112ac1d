"""``shared`` is pure: no heavy or I/O dependencies, no imports of either side, and
its docstring examples hold. The two sides meet only in ``shared``: the hub
imports nothing of the agent, nor the agent of the hub."""

from __future__ import annotations

import ast
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
# Every module of the package and its subpackages (shared.drift), so a new one is
# held to the same rules.
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "shared").rglob("*.py")
)
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
    for path in sorted((REPO / "shared").rglob("*.py")):
        text = path.read_text()
        for side in ("edge_agent", "cloud_hub", "simulators"):
            assert f"import {side}" not in text and f"from {side}" not in text, path


def test_public_names() -> None:
    shared = importlib.import_module("shared")
    for name in shared.__all__:
        assert hasattr(shared, name), name
    assert sorted(shared.__all__) == sorted(set(shared.__all__))


def _imported(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever in the file (inside
    functions and ``if TYPE_CHECKING:`` too), and of ``import_module("...")`` calls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "other"),
    [("cloud_hub", "edge_agent"), ("edge_agent", "cloud_hub")],
    ids=["hub-imports-no-agent", "agent-imports-no-hub"],
)
def test_one_side_never_imports_the_other(package: str, other: str) -> None:
    # What both need lives in shared/; a hub that imported agent internals would
    # break whenever the agent changed them, and pull the agent into every hub.
    offenders = [
        str(path.relative_to(REPO)) for path in _sources(package) if other in _imported(path)
    ]
    assert _sources(package), f"no sources found under {package}/"
    assert not offenders, f"{package} modules that import {other}: {offenders}"


def test_shared_source_imports_nothing_forbidden_even_lazily() -> None:
    for path in _sources("shared"):
        bad = sorted(_imported(path) & set(FORBIDDEN))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_import_finder_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import a.b\nfrom c.d import e\nfrom . import f\n"
        "def g():\n    import h\n    importlib.import_module('i.j')\n    __import__('k')\n"
        "if TYPE_CHECKING:\n    from l import m\n",
        encoding="utf-8",
    )
    assert _imported(probe) == {"a", "c", "h", "i", "k", "l"}


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
