"""A device installs only what the agent needs: ``edgeloop[edge]`` pulls no hub stack."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "edgeloop"
FORBIDDEN = ("scikit-learn", "fastapi", "uvicorn", "amqtt", "skl2onnx")
# The simulator is for demos and tests: a device that does not choose it never loads it.
FORBIDDEN_MODULES = (
    "sklearn",
    "skl2onnx",
    "fastapi",
    "uvicorn",
    "amqtt",
    "cloud_hub",
    "simulators",
)

try:
    from packaging.markers import Marker as _Marker
    from packaging.requirements import Requirement as _Requirement
except ImportError:  # pragma: no cover - packaging ships with pip-based environments
    _Requirement = None  # type: ignore[assignment,misc]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str, extras: frozenset[str]) -> tuple[str, frozenset[str]] | None:
    """(name, requested extras) of a requirement that applies with ``extras``, else None."""
    if _Requirement is None:  # pragma: no cover
        return parse_small(text, extras)
    req = _Requirement(text)
    if req.marker is not None and not any(
        _Marker(str(req.marker)).evaluate({"extra": e}) for e in ("", *extras)
    ):
        return None
    return canonical(req.name), frozenset(req.extras)


def parse_small(text: str, extras: frozenset[str]) -> tuple[str, frozenset[str]] | None:
    """The fallback: ``name[extra,...] specifier ; marker``, where a marker naming
    ``extra == "x"`` applies only with that extra and any other marker is taken to apply."""
    spec, _, marker = text.partition(";")
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert m is not None, text
    wanted = re.findall(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
    if wanted and not set(wanted) & extras:
        return None
    return canonical(m[1]), frozenset(e.strip() for e in (m[2] or "").split(",") if e.strip())


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the repository root (so the source tree is importable)."""
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=25
    )


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]


def closure(extra: str) -> tuple[set[str], set[str]]:
    """Every distribution ``pip install edgeloop[extra]`` needs, as resolved in this
    environment; and the names that apply but are not installed here (not followed)."""
    project = pyproject()
    optional: dict[str, list[str]] = project["optional-dependencies"]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    missing: set[str] = set()
    todo = [(PROJECT, frozenset({extra}))]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name == PROJECT:  # our own extras, read from pyproject (installed or not)
            requires = list(project["dependencies"])
            for e in extras:
                requires += optional[e]
        else:
            names.add(name)
            try:
                requires = md.requires(name) or []
            except md.PackageNotFoundError:
                missing.add(name)
                continue
        for text in requires:
            parsed = parse_requirement(text, extras)
            if parsed is not None:
                todo.append(parsed)
    return names, missing


def test_edge_extra_pulls_no_hub_stack() -> None:
    names, missing = closure("edge")
    assert not missing, f"not installed here, so not checked: {sorted(missing)}"
    assert {"onnxruntime", "paho-mqtt", "numpy"} <= names
    pulled = sorted(set(FORBIDDEN) & names)
    assert not pulled, f"edgeloop[edge] pulls {pulled} (closure: {sorted(names)})"


def test_the_closure_sees_the_hub_stack_in_the_hub_extra() -> None:
    names, _ = closure("hub")  # the check above would be hollow if this found nothing
    assert set(FORBIDDEN) <= names


@pytest.mark.parametrize("parse", [parse_requirement, parse_small], ids=["packaging", "small"])
def test_requirement_parsers(parse: Any) -> None:
    cases = {
        "numpy>=1.26": ("numpy", frozenset()),
        "edgeloop[edge]": ("edgeloop", frozenset({"edge"})),
        "Paho_MQTT>=2.1,<3": ("paho-mqtt", frozenset()),
        "uvicorn[standard] >=0.29": ("uvicorn", frozenset({"standard"})),
        "sympy; extra == 'symbolic'": None,
        'pysocks ; (os_name == "nt") and extra == "proxy"': None,
    }
    for text, expected in cases.items():
        assert parse(text, frozenset()) == expected, text
    assert parse("sympy; extra == 'symbolic'", frozenset({"symbolic"})) == ("sympy", frozenset())


def _agent_start_up(source: str, actions: str) -> dict[str, Any]:
    """``sys.modules`` (top-level names) and root log handlers of a fresh interpreter that
    imported the agent and built what ``edgeloop-agent`` builds before it loads the model:
    the parser, the settings, the source and the actions."""
    code = (
        "import logging, sys, json\n"
        "import edge_agent.agent, edge_agent.cli, edge_agent.engine, edge_agent.transport\n"
        "from edge_agent.cli import build_actuators, build_source\n"
        "from edge_agent.settings import build_parser, load_settings\n"
        "build_parser()\n"
        f"argv = ['--model', 'no/such/model', '--source', {source!r}, '--actions', {actions!r}]\n"
        "settings = load_settings(argv, env={})\n"
        "from shared.features import SensorSpec\n"
        "sensors = tuple(SensorSpec(n, 'u', -1e9, 1e9, 0.0) for n in ("
        "'temperature', 'vibration', 'pressure', 'current', 'speed', 'oil_temp', 'flow', "
        "'acoustic'))\n"
        "source, machine = build_source(settings, sensors)\n"
        "build_actuators(settings, machine)\n"
        "print(json.dumps({'modules': sorted({m.split('.')[0] for m in sys.modules}),"
        " 'handlers': len(logging.getLogger().handlers)}))\n"
    )
    out = run("-c", code)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_importing_the_agent_imports_no_hub_or_simulator_module() -> None:
    result = _agent_start_up("stdin", "log")
    tops = set(result["modules"])
    assert not tops & set(FORBIDDEN_MODULES), sorted(tops & set(FORBIDDEN_MODULES))
    assert "onnxruntime" not in tops  # loaded with the first model, not at import
    assert "psutil" not in tops  # the heartbeat's figures come from the standard library
    assert result["handlers"] == 0  # no logging set-up at import time


def test_the_simulator_loads_when_chosen() -> None:
    # The check above would be hollow if nothing could load the simulator this way.
    tops = set(_agent_start_up("sim", "log,machine")["modules"])
    assert "simulators" in tops
    assert not tops & (set(FORBIDDEN_MODULES) - {"simulators"})


@pytest.mark.parametrize("package", ["edge_agent", "cloud_hub", "simulators"])
def test_python_m_help(package: str) -> None:
    out = run("-m", package, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ")
    assert "-h, --help" in out.stdout
    assert len(out.stdout.splitlines()) > 5  # describes its options, not just a usage line


@pytest.mark.parametrize("script", sorted(pyproject()["scripts"]))
def test_console_script_help(script: str) -> None:
    module, _, func = pyproject()["scripts"][script].partition(":")
    code = (
        f"import sys; from {module} import {func} as main\n"
        f"sys.argv = [{script!r}, '--help']\n"
        "raise SystemExit(main())\n"
    )
    out = run("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {script} ")


def test_agent_help_describes_its_options() -> None:
    out = run("-m", "edge_agent", "--help")
    for flag in ("--model", "--broker", "--source", "--actions", "--max-batch", "--config"):
        assert flag in out.stdout
    assert "EDGELOOP_AGENT_" in out.stdout
