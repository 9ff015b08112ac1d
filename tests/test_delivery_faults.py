"""Delivery under real faults: the hub killed and restarted while agents keep reading.

Mosquitto (the production broker) carries the traffic; the hub is a real
``edgeloop-hub serve`` process, killed with SIGKILL and later stopped with
SIGTERM, each time started again on the same data directory. Every reading
the agents produced must be stored exactly once: the agents keep what the hub
has not acked in their outbox and send it again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from simulators.harness import HUB_USER, HubProcess, Mosquitto, wait_until
from tests.brokers import HUB_SECRET
from tests.conftest import ModelPaths, StartAgent
from tests.readings import count_readings

pytestmark = [pytest.mark.timeout(240), pytest.mark.mosquitto]
AGENTS = 3
READINGS = 1500


def _stats(hub: HubProcess) -> dict[str, Any]:
    stats: dict[str, Any] = hub.api.get_json("/v1/stats/ingest")
    return stats


def test_hub_killed_and_restarted_loses_and_duplicates_nothing(
    mosquitto_process: Mosquitto,
    mosquitto_broker: BrokerEndpoint,
    model_packages: ModelPaths,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:8]}")
    hub = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        broker=mosquitto_process.endpoint(HUB_USER, HUB_SECRET),
        root=topics.root,
        log_level="INFO",
    )
    with hub:  # started here, stopped at the end
        agents = [
            start_agent(
                mosquitto_broker,
                topics,
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
        wait_until("readings stored", lambda: _stats(hub)["stored_readings"] > 300, timeout=90)
        hub.kill()  # SIGKILL: whatever it had queued and not stored is gone from it
        time.sleep(1.5)  # the outage: agents keep reading into their outboxes
        hub.restart()
        stored = _stats(hub)["stored_readings"]
        wait_until(
            "more readings stored",
            lambda: _stats(hub)["stored_readings"] > stored + 300,
            timeout=90,
        )
        assert hub.stop() == 0, hub.output()[-3000:]  # SIGTERM: a clean restart
        hub.restart()
        for agent in agents:
            assert agent.wait(180) == 0, agent.output()[-3000:]
        stats = _stats(hub)
        per_device = [count_readings(hub, f"fault-{i}") for i in range(AGENTS)]
    assert stats["stored_readings"] == AGENTS * READINGS, (stats, hub.output()[-3000:])
    assert stats["lost_unexplained_messages"] == 0
    assert stats["lost_at_edge_readings"] == {}
    assert stats["gaps"]["count"] == 0, stats["gaps"]
    assert per_device == [READINGS] * AGENTS  # through the API: each stored once
