"""Commissioning per-device baselines through a real hub, its API and its CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge_agent.reading import load_baseline
from shared.baseline import Baseline
from shared.manifest import load_package
from simulators.harness import AgentProcess, HubProcess, child_env
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)

COMMISSION = 150
READINGS = 300


def _hub_cli(hub: HubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub", *args, "--data-dir", str(hub.data_dir)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _provision(hub: HubProcess, device: str) -> dict[str, str]:
    """The agent's environment, from ``devices add`` as an operator runs it."""
    added = _hub_cli(hub, "devices", "add", device, *hub.devices_add_flags)
    assert added.returncode == 0, added.stderr
    return dict(
        line.split("=", 1)
        for line in added.stdout.splitlines()
        if line.startswith("EDGELOOP_AGENT_")
    )


def test_the_hub_commissions_after_n_readings_and_the_cli_recommissions_over_a_range(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    device = "comm-1"
    hub = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        root=f"edgeloop-test/{uuid.uuid4().hex[:8]}",
        args=["--baseline-readings", str(COMMISSION), "--baseline-check-s", "0.2"],
    )
    run = ("--source", "sim", "--rate-hz", "400", "--max-batch", "25", "--heartbeat-s", "0.3")
    with hub:
        env = _provision(hub, device)
        first = AgentProcess(model_packages.edge, tmp_path / "a1", env=env, args=run)
        with first.start():
            hub.wait_until(
                "the first readings stored",
                lambda: (
                    hub.api.get(f"/v1/devices/{device}").status == 200
                    and hub.api.get_json(f"/v1/devices/{device}")["counters"].get(
                        "stored_readings", 0
                    )
                    >= READINGS
                ),
                timeout=90,
            )
        hub.wait_until(
            "a baseline commissioned",
            lambda: hub.api.get(f"/v1/devices/{device}/baseline").status == 200,
            timeout=30,
        )
        served = Baseline.from_dict(hub.api.get_json(f"/v1/devices/{device}/baseline"))
        manifest = load_package(model_packages.edge).manifest
        assert (served.device, served.model, served.readings) == (
            device,
            manifest.name,
            COMMISSION,
        )
        assert list(served.sensors) == list(manifest.input.sensor_names)

        # Too few readings in the range: the count, and what to do.
        few = _hub_cli(hub, "devices", "baseline", device, "--baseline-readings", "1000000")
        assert few.returncode == 2
        assert "stored readings from the start to the end" in few.stderr, few.stderr
        assert "a baseline needs at least 1000000" in few.stderr
        assert "Widen the range" in few.stderr

        # Over every stored reading, with the hub running; then the agent runs with it.
        out = tmp_path / f"{device}.json"
        made = _hub_cli(
            hub, "devices", "baseline", device, "--out", str(out), "--baseline-readings", "200"
        )
        assert made.returncode == 0, made.stderr
        baseline = load_baseline(out, device, manifest)
        assert baseline.readings >= READINGS > served.readings
        assert Baseline.from_dict(hub.api.get_json(f"/v1/devices/{device}/baseline")) == baseline

        second = AgentProcess(
            model_packages.edge, tmp_path / "a2", env=env, args=(*run, "--baseline", str(out))
        )
        with second.start():
            hub.wait_until(
                "a heartbeat naming the baseline",
                lambda: (
                    (hub.api.get_json(f"/v1/devices/{device}")["last_health"] or {}).get("baseline")
                    == baseline.created
                ),
                timeout=30,
            )
        # Its readings are now mapped values: a baseline over them is warned about.
        again = _hub_cli(
            hub, "devices", "baseline", device, "--baseline-readings", "200", "--out", str(out)
        )
        assert again.returncode == 0, again.stderr
        assert f"maps readings with the baseline created {baseline.created}" in again.stderr
