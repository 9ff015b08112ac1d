"""The whole loop as operators run it: ``edgeloop-hub serve`` and real agents.

Once with the hub's embedded broker, once with Mosquitto as an external
broker. Five agents run a bounded stream each (urgent conditions included);
one more is killed with SIGKILL. Everything is checked through the hub's
HTTP API, as an operator would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import HUB_SECRET, HUB_USER, free_port
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(240)
READINGS = 400
AGENTS = 5


@dataclass
class RunningHub:
    api: str
    token: str
    process: subprocess.Popen[bytes]
    provision: Callable[[str], dict[str, str]]
    """Agent environment for a new device, made as an operator would make it."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.api + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except OSError:
                pass
            assert self.process.poll() is None, f"the hub exited while waiting for {what}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def hub(
    request: pytest.FixtureRequest, tmp_path: Path, model_packages: ModelPaths
) -> Iterator[RunningHub]:
    read, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    root = f"edgeloop-test/{uuid.uuid4().hex[:8]}"
    http_port = free_port()
    flags = [
        "--data-dir",
        str(tmp_path / "hub"),
        "--models-dir",
        str(model_packages.edge.parent.parent),
        "--http-port",
        str(http_port),
        "--root",
        root,
        "--read-token",
        read,
        "--admin-token",
        admin,
    ]
    if request.param == "embedded":
        flags += ["--broker-port", str(free_port())]
    else:
        mosquitto = request.getfixturevalue("mosquitto_broker")
        flags += ["--broker", replace(mosquitto, username=HUB_USER, password=HUB_SECRET).url]
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub", "serve", *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if request.param == "embedded":
        add_flags = [
            "--data-dir",
            str(tmp_path / "hub"),
            "--root",
            root,
            "--broker-port",
            flags[flags.index("--broker-port") + 1],
        ]

        def provision(device: str) -> dict[str, str]:
            done = subprocess.run(
                [sys.executable, "-m", "cloud_hub", "devices", "add", device, *add_flags],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return dict(
                line.split("=", 1)
                for line in done.stdout.splitlines()
                if line.startswith("EDGELOOP_AGENT_")
            )
    else:

        def provision(device: str) -> dict[str, str]:
            # Mosquitto's accounts are the test fixture's; devices share one here.
            return {
                "EDGELOOP_AGENT_DEVICE": device,
                "EDGELOOP_AGENT_BROKER": mosquitto.url,
                "EDGELOOP_AGENT_ROOT": root,
            }

    running = RunningHub(f"http://127.0.0.1:{http_port}", read, process, provision)
    try:
        running.wait_for("the API", lambda: bool(running.get("/healthz")))
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        assert process.returncode == 0, out.decode(errors="replace")[-3000:]


def _agent(
    hub: RunningHub, device: str, model: Path, state: Path, *args: str
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "edge_agent",
        "--model",
        str(model),
        "--state-dir",
        str(state / device),
        *args,
    ]
    env = {**os.environ, **hub.provision(device)}
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_hub_and_agents_store_every_reading_once_with_both_predictions(
    hub: RunningHub, model_packages: ModelPaths, tmp_path: Path
) -> None:
    agents = {
        f"e2e-{i}": _agent(
            hub,
            f"e2e-{i}",
            model_packages.edge,
            tmp_path,
            "--source",
            "sim",
            "--rate-hz",
            "400",
            "--readings",
            str(READINGS),
            "--sim-seed",
            str(i),
            "--sim-urgent-rate",
            "0.02",
            "--max-batch",
            "25",
            "--heartbeat-s",
            "0.5",
        )
        for i in range(AGENTS)
    }
    victim = _agent(
        hub, "e2e-victim", model_packages.edge, tmp_path, "--source", "sim", "--rate-hz", "50"
    )
    for name, proc in agents.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, out.decode(errors="replace")[-2000:])

    def all_stored() -> bool:
        return all(
            hub.get(f"/v1/devices/{name}")["counters"].get("stored_readings", 0) >= READINGS
            for name in agents
        )

    hub.wait_for("every reading stored", all_stored)
    hub.wait_for(
        "the victim online", lambda: hub.get("/v1/devices/e2e-victim")["state"] == "online"
    )
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    hub.wait_for(
        "the victim offline through its will",
        lambda: hub.get("/v1/devices/e2e-victim")["state"] == "offline",
    )

    events = 0
    for name in agents:
        detail = hub.get(f"/v1/devices/{name}")
        assert detail["state"] == "offline" and detail["gaps"] == [], detail
        assert (
            detail["counters"]["stored_readings"] == READINGS
            and detail["counters"].get("duplicates", 0) == 0
        )
        seen: list[float] = []
        cursor = ""
        while True:
            page = hub.get(f"/v1/devices/{name}/telemetry?since=0&limit=150{cursor}")
            for reading in page["readings"]:
                assert len(reading["edge_scores"]) == 3 and len(reading["heavy_scores"]) == 3
                seen.append(reading["ts"])
            if not page.get("next_cursor"):
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert len(seen) == READINGS and len(set(seen)) == READINGS, name
        events += len(hub.get(f"/v1/events?device={name}&since=0&limit=1000")["events"])
    assert events > 0, "urgent events were expected at an urgent rate of 2 %"
    stats = hub.get("/v1/stats/ingest")
    assert stats["duplicates"] == 0 and stats["invalid_total"] == 0, stats
