"""The agent's side of an OTA switch, in process with real models: the batch in flight is
sealed, every batch names the model that scored it, the feature window carries over."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import build_source, ota_config
from edge_agent.engine import EdgeModel, load_edge_model
from edge_agent.ota.machine import Target
from edge_agent.ota.runner import OtaRunner
from edge_agent.settings import load_settings
from shared import __version__
from shared.manifest import MANIFEST_FILE, load_package
from shared.messages import Ota, Telemetry, decode_as
from shared.ota import OtaState
from shared.topics import Kind
from tests.conftest import ModelPaths


def _newer(model: Path, tmp_path: Path, version: str) -> EdgeModel:
    dest = tmp_path / version
    shutil.copytree(model, dest)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return EdgeModel(load_package(dest))


def _agent(model_packages: ModelPaths, tmp_path: Path) -> Agent:
    settings = load_settings(
        [
            "--device",
            "sw-1",
            "--model",
            str(model_packages.edge),
            "--state-dir",
            str(tmp_path / "state"),
            "--outbox",
            "memory",
            "--max-batch",
            "50",
        ],
        env={},
    )
    model = load_edge_model(model_packages.edge, __version__)
    source, _ = build_source(settings, model.manifest.input.sensors)
    return Agent(settings, model, source, [])


def test_a_switch_seals_the_batch_in_flight_and_each_batch_names_its_model(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    agent = _agent(model_packages, tmp_path)
    old = agent.model
    new = _newer(model_packages.edge, tmp_path, "9.0.0")
    rng = np.random.default_rng(3)
    n_sensors = len(old.manifest.input.sensors)
    centre = np.array([s.fallback for s in old.manifest.input.sensors])

    for i in range(7):
        agent.process(float(i), centre + rng.normal(0, 0.01, n_sensors))
    window = agent.path.features
    figures = agent.switch_model(new)
    assert figures.readings == 7 and figures.latency_p99_us > 0
    assert agent.model is new and agent.path.features is window  # same input: same window
    for i in range(7, 10):
        agent.process(float(i), centre + rng.normal(0, 0.01, n_sensors))
    sealed = agent.batcher.seal_if_due(0.0, force=True)
    assert sealed is not None
    agent._emit_batch(sealed)

    agent.outbox.flush()
    batches = [
        decode_as(Telemetry, m.payload) for m in agent.outbox.unsent(10) if m.kind is Kind.TELEMETRY
    ]
    assert [(b.model, b.model_version, len(b.ts)) for b in batches] == [
        (old.manifest.name, old.version, 7),
        (new.manifest.name, "9.0.0", 3),
    ]
    agent.outbox.close()


def test_an_error_in_the_update_turns_updates_off_and_the_readings_go_on(
    model_packages: ModelPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(model_packages, tmp_path)
    agent.enable_ota(ota_config(agent.settings, agent.source_sensors))

    def broken(self: OtaRunner, urgent_on: bool) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(OtaRunner, "poll", broken)
    fallback = np.array([s.fallback for s in agent.model.manifest.input.sensors])
    agent.process(0.0, fallback)
    agent.process(1.0, fallback)
    assert agent.ota is None and agent.readings == 2
    assert agent.counters.snapshot()["ota_errors"] == 1
    agent.outbox.close()


def test_a_stop_while_the_download_hangs_ends_the_update_and_leaves_no_breadcrumb(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    """A clean stop is no crash (the machine's rule 5): the update ends ``stopped`` at once,
    even with the worker stuck in a download, so the next start does not take it for one."""
    agent = _agent(model_packages, tmp_path)
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers
    try:
        hub_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = ota_config(agent.settings, agent.source_sensors)
        agent.enable_ota(dataclasses.replace(config, hub_url=hub_url))
        ota = agent.ota
        assert ota is not None
        ota.start()
        name = agent.model.manifest.name
        ota.desired(Target(name, "9.0.0", "a" * 64, f"/v1/models/{name}/9.0.0"))
        ota.poll(False)
        assert ota.machine.state is OtaState.DOWNLOADING
        crumb = tmp_path / "state" / "ota" / "breadcrumb.json"
        deadline = time.monotonic() + 10
        while not crumb.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert crumb.exists()

        ota.stop(timeout=0.2)  # the worker waits on the silent server meanwhile
        assert not crumb.exists()
        assert ota.machine.state is OtaState.REJECTED
        agent.outbox.flush()
        reports = [decode_as(Ota, m.payload) for m in agent.outbox.unsent(10) if m.kind is Kind.OTA]
        assert [(r.state, r.reason) for r in reports] == [
            ("downloading", "ok"),
            ("rejected", "stopped"),
        ]
        assert "stopped in state downloading" in reports[-1].detail
    finally:
        silent.close()
        agent.outbox.close()
