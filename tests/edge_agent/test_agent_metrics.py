"""The agent's ``--metrics-port`` (off by default) and ``--log-format json``, on real
agent processes against the embedded broker."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from simulators.harness import free_port, wait_until
from tests.conftest import StartAgent

pytestmark = pytest.mark.timeout(90)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels or s.name == "edgeloop_agent_info"
    }


def test_metrics_endpoint_serves_the_heartbeat_figures_and_json_logs_name_the_device(
    amqtt_broker: BrokerEndpoint, start_agent: StartAgent
) -> None:
    port = free_port()
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")
    agent = start_agent(
        amqtt_broker,
        topics,
        "--rate-hz",
        "50",
        "--metrics-port",
        str(port),
        "--log-format",
        "json",
        device="dev-m",
    )
    wait_until(
        "readings counted on /metrics",
        lambda: _scrape(port).get("edgeloop_agent_readings_total", 0) > 0,
        timeout=30,
    )
    figures = _scrape(port)
    assert agent.pid is not None
    assert figures["edgeloop_agent_info"] == 1
    assert "edgeloop_agent_outbox_messages" in figures
    assert figures["edgeloop_agent_resident_memory_bytes"] > 0
    assert "edgeloop_agent_urgent_events_total" in figures
    listening = [
        c.laddr for c in psutil.Process(agent.pid).net_connections("tcp") if c.status == "LISTEN"
    ]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
    agent.stop()
    lines = [json.loads(line) for line in agent.log_path.read_text().splitlines() if line]
    assert lines and all({"time", "level", "logger", "message"} <= r.keys() for r in lines)
    assert all(r["device"] == "dev-m" for r in lines)
    assert any(r.get("model_version") for r in lines)


def test_without_metrics_port_nothing_listens_and_prometheus_client_is_not_loaded(
    amqtt_broker: BrokerEndpoint, start_agent: StartAgent
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")
    agent = start_agent(amqtt_broker, topics, "--rate-hz", "50", device="dev-n")
    assert agent.pid is not None
    listening = [
        c for c in psutil.Process(agent.pid).net_connections("tcp") if c.status == "LISTEN"
    ]
    assert listening == []
    agent.stop()
    # What the agent imports to run (its CLI and the agent) does not pull the library in.
    probe = (
        "import sys, edge_agent.cli, edge_agent.agent; print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
