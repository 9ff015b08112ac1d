"""A model trained on a recording of other sensors runs in an agent, into a hub.

``models train`` on a generated rig's normal CSV (';', ISO ``datetime``, four
sensors of other names and units) registers ``rig-edge`` and ``rig-heavy`` in a
hub's registry; the hub serves with its default models; an agent runs
``rig-edge`` on another recording of the rig with a fault in it. The hub scores
that device's telemetry with ``rig-heavy``, the heavy partner of its edge
model, and what it stores must be what the models give when called directly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.inference import OnnxScorer
from edge_agent.engine import load_edge_model
from shared import __version__
from shared.features import features_for_stream
from shared.manifest import load_package
from simulators.harness import AgentProcess, HubProcess
from simulators.rig import rig_values, write_rig_csv
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(240)
ROWS = 600


def test_a_trained_model_runs_in_an_agent_into_a_hub(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    models, hub_dir = tmp_path / "models", tmp_path / "hub"
    # The hub's default models, as its first start would build them.
    for pkg in (model_packages.edge, model_packages.heavy):
        shutil.copytree(pkg, models / pkg.parent.name / pkg.name)
    normal = write_rig_csv(tmp_path / "rig-normal.csv", rig_values(5000, 4))
    argv = ["models", "train", "--data", str(normal), "--ts-column", "datetime", "--name", "rig"]
    assert main([*argv, "--data-dir", str(hub_dir), "--models-dir", str(models)]) == 0
    capsys.readouterr()
    edge_pkg, heavy_pkg = models / "rig-edge" / "1.0.0", models / "rig-heavy" / "1.0.0"

    values = rig_values(ROWS, 5)
    values[400:480, 3] += 5.0  # temp_in up: a fault the models never saw
    recording = write_rig_csv(tmp_path / "rig-live.csv", values)
    values = np.array([[float(f"{v:.5g}") for v in row] for row in values.tolist()])  # as written

    root = f"edgeloop-test/{uuid.uuid4().hex[:8]}"
    hub = HubProcess(
        hub_dir,
        models,
        root=root,
        log_level="INFO",
        args=["--retention-days", "0"],
    )
    agent: AgentProcess | None = None
    with hub:
        done = subprocess.run(
            [sys.executable, "-m", "cloud_hub", "devices", "add", "rig-1", *hub.devices_add_flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        env = dict(
            line.split("=", 1)
            for line in done.stdout.splitlines()
            if line.startswith("EDGELOOP_AGENT_")
        )
        agent = AgentProcess(
            edge_pkg,
            tmp_path / "agent",
            env=env,
            args=(
                "--source",
                "csv",
                "--csv-path",
                str(recording),
                "--csv-ts-column",
                "datetime",
                "--csv-pace",
                "fast",
                "--max-batch",
                "25",
            ),
            log_level="INFO",
        )
        try:
            agent.start()
            assert agent.wait(120) == 0, agent.log_tail(40)
            hub.wait_until(
                "every reading stored",
                lambda: (
                    hub.api.get_json("/v1/devices/rig-1")["counters"].get("stored_readings", 0)
                    >= ROWS
                ),
                timeout=60,
                ignore=(OSError,),
            )
            readings: list[dict[str, object]] = []
            cursor = ""
            for _ in range(100):
                page = hub.api.get_json(f"/v1/devices/rig-1/telemetry?since=0&limit=200{cursor}")
                readings += page["readings"]
                if not page.get("next_cursor"):
                    break
                cursor = f"&cursor={page['next_cursor']}"
            events = hub.api.get_json("/v1/events?device=rig-1&since=0&limit=100")["events"]
        finally:
            agent.kill()
    assert hub.returncode == 0, hub.log_tail(40)

    assert len(readings) == ROWS
    got_features = np.array([r["features"] for r in readings], dtype=np.float32)
    got_edge = np.array([r["edge_scores"] for r in readings], dtype=np.float32)
    got_heavy = np.array([r["heavy_scores"] for r in readings], dtype=np.float32)
    assert {r["heavy_model_version"] for r in readings} == {"1.0.0"}

    edge = load_edge_model(edge_pkg, __version__)
    manifest = edge.manifest
    features = features_for_stream(values, manifest.input.window, manifest.input.fallback)
    assert np.array_equal(got_features, features)
    assert np.array_equal(got_edge, np.stack([edge.score(f) for f in features]))
    heavy = OnnxScorer.from_package(load_package(heavy_pkg))
    np.testing.assert_allclose(got_heavy, heavy.scores(features), atol=1e-6, rtol=0)

    # The fault raised urgent events, and nothing else did.
    assert events, "the fault at readings 400-480 should raise an urgent event"
    ts = sorted(float(str(e["ts"])) for e in events)
    fault_start, fault_end = float(readings[400]["ts"]), float(readings[489]["ts"])  # type: ignore[arg-type]
    assert all(fault_start <= t <= fault_end for t in ts), ts
