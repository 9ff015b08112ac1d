"""Delivery under real faults: the hub killed and restarted while agents keep reading.

Mosquitto (the production broker) carries the traffic; the hub is a real
``edgeloop-hub serve`` process, killed with SIGKILL and later stopped with
SIGTERM, each time started again on the same data directory. Every reading
the agents produced must be stored exactly once: the agents keep what the hub
has not acked in their outbox and send it again.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from tests.agents import start_agent, stop_agent
from tests.brokers import HUB_SECRET, HUB_USER, free_port
from tests.conftest import ModelPaths

pytestmark = [pytest.mark.timeout(240), pytest.mark.mosquitto]
AGENTS = 3
READINGS = 1500


class Hub:
    """An ``edgeloop-hub serve`` process that can be killed and started again."""

    def __init__(self, flags: list[str], api: str, token: str, log: Path) -> None:
        self.flags, self.api, self.token, self.log = flags, api, token, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub", "serve", *self.flags],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_for("the API", lambda: bool(self.get("/healthz")))

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.api + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.get("/v1/stats/ingest")
        return stats

    def wait_for(self, what: str, check: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except OSError:
                pass
            assert self.process is not None and self.process.poll() is None, (
                f"the hub exited while waiting for {what}:\n{self.tail()}"
            )
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")

    def stop(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_hub_killed_and_restarted_loses_and_duplicates_nothing(
    mosquitto_broker: BrokerEndpoint, model_packages: ModelPaths, tmp_path: Path
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:8]}")
    token = secrets.token_urlsafe(24)
    http_port = free_port()
    hub = Hub(
        [
            "--data-dir",
            str(tmp_path / "hub"),
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--http-port",
            str(http_port),
            "--root",
            topics.root,
            "--read-token",
            token,
            "--admin-token",
            secrets.token_urlsafe(24),
            "--broker",
            replace(mosquitto_broker, username=HUB_USER, password=HUB_SECRET).url,
        ],
        f"http://127.0.0.1:{http_port}",
        token,
        tmp_path / "hub.log",
    )
    hub.start()
    agents = [
        start_agent(
            mosquitto_broker,
            topics,
            model_packages.edge,
            tmp_path / f"agent-{i}",
            "--source",
            "sim",
            "--sim-seed",
            str(i),
            "--rate-hz",
            "100",
            "--readings",
            str(READINGS),
            "--max-batch",
            "20",
            "--max-delay-ms",
            "200",
            "--resend-after-s",
            "2",
            "--shutdown-timeout-s",
            "120",
            device=f"fault-{i}",
        )
        for i in range(AGENTS)
    ]
    try:
        hub.wait_for("readings stored", lambda: hub.stats()["stored_readings"] > 300)
        assert hub.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(1.5)  # the outage: agents keep reading into their outboxes
        hub.start()
        stored = hub.stats()["stored_readings"]
        hub.wait_for("more readings stored", lambda: hub.stats()["stored_readings"] > stored + 300)
        assert hub.stop(signal.SIGTERM) == 0, hub.tail()
        hub.start()
        for proc in agents:
            assert proc.wait(180) == 0, stop_agent(proc)
        stats = hub.stats()
        per_device = [count_readings(hub, f"fault-{i}") for i in range(AGENTS)]
    finally:
        logs = [stop_agent(p) for p in agents]
        if hub.process is not None and hub.process.poll() is None:
            hub.stop(signal.SIGTERM)
    produced = AGENTS * READINGS
    assert stats["stored_readings"] == produced, (stats, hub.tail(), logs[0][-3000:])
    assert stats["lost_unexplained_messages"] == 0
    assert stats["lost_at_edge_readings"] == {}
    assert stats["gaps"]["count"] == 0, stats["gaps"]
    assert per_device == [READINGS] * AGENTS  # through the API: each stored once


def count_readings(hub: Hub, device: str) -> int:
    """Count a device's stored readings through the telemetry API, page by page."""
    total, cursor = 0, ""
    for _ in range(1000):
        path = f"/v1/devices/{device}/telemetry?limit=1000" + (
            f"&cursor={cursor}" if cursor else ""
        )
        page = hub.get(path)
        total += len(page["readings"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return total
    raise AssertionError("telemetry pages never ended")
