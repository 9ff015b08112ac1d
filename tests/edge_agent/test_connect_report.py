"""An agent that cannot reach its broker says so: what it tried, what happened, what to check.

Real agent processes against a closed port, a real HTTP server (uvicorn, as the
hub's API port would be) and real brokers with a wrong password; the pacing of
the reports is checked on :class:`ConnectReport` with explicit times. A run that
ends without ever connecting exits non-zero and says so.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from edge_agent.agent import EXIT_NEVER_CONNECTED, EXIT_NO_READINGS
from edge_agent.transport import ConnectFailure, ConnectReport
from shared.endpoint import BrokerEndpoint
from simulators.harness import HOST, AgentProcess, AmqttBroker, free_port, wait_until
from simulators.sensors import SENSOR_NAMES
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths
from tests.edge_agent.agent_cli import run_agent_cli

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0
SECRET = "not-a-real-secret-42"
REPORT = "cannot connect to the broker at"


class Output:
    """An agent process's log, with a wait for the first line that contains a text."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent

    def _find(self, text: str) -> str | None:
        return next((ln for ln in self.agent.output().splitlines() if text in ln), None)

    def wait_for(self, text: str) -> str:
        wait_until(f"a line with {text!r}", lambda: self._find(text) is not None, timeout=WAIT)
        line = self._find(text)
        assert line is not None
        return line

    def text(self) -> str:
        return self.agent.output()


@contextmanager
def _agent(endpoint: BrokerEndpoint, model: Path, state: Path) -> Iterator[Output]:
    agent = AgentProcess(
        model,
        state / "agent",
        broker=endpoint,
        device=endpoint.username or "dev-a",
        root=f"edgeloop-test/{uuid.uuid4().hex[:10]}",
        args=("--reconnect-min-s", "1", "--reconnect-max-s", "1"),
        log_level="INFO",
    )
    agent.start(wait=False)  # it never connects: that is the point
    try:
        yield Output(agent)
    finally:
        agent.kill()


def test_closed_port_is_reported_with_the_address_the_error_and_what_to_check(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    port = free_port()
    endpoint = BrokerEndpoint(HOST, port, "dev-a", SECRET)
    with _agent(endpoint, model_packages.edge, tmp_path) as output:
        line = output.wait_for(REPORT)
    assert f"mqtt://dev-a:***@{HOST}:{port}" in line, line
    assert f"connection refused: nothing listens on port {port}" in line, line
    assert "--broker" in line and "1883" in line, line
    assert SECRET not in output.text()


def test_an_http_port_is_reported_as_not_an_mqtt_broker(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    with live_server(FastAPI()) as api:
        port = api.port
        endpoint = BrokerEndpoint(HOST, port, "dev-a", SECRET)
        with _agent(endpoint, model_packages.edge, tmp_path) as output:
            line = output.wait_for(REPORT)
    assert f"mqtt://dev-a:***@{HOST}:{port}" in line, line
    assert "did not answer as an MQTT broker" in line and "Protocol error" in line, line
    assert "HTTP" in line, line
    assert SECRET not in output.text()


def test_a_refused_password_is_reported_once_as_refused(
    broker: BrokerEndpoint, model_packages: ModelPaths, tmp_path: Path
) -> None:
    endpoint = BrokerEndpoint(broker.host, broker.port, broker.username, SECRET)
    with _agent(endpoint, model_packages.edge, tmp_path) as output:
        line = output.wait_for(REPORT)
    assert "the broker refused the session" in line and "password" in line, line
    # The broker closes the connection after refusing it: that is not a second failure.
    assert "closed the connection" not in output.text()
    assert SECRET not in output.text()


FAILURE = ConnectFailure("connection refused", "the port")


def test_report_says_the_first_failure_at_once_then_at_most_once_per_interval() -> None:
    report = ConnectReport(30.0)
    assert report.due(0.0) is None and report.next_due(0.0) is None
    report.failed(FAILURE)
    assert report.next_due(100.0) == 0.0
    assert report.due(100.0) == (FAILURE, 1, 1)
    for _ in range(5):
        report.failed(FAILURE)
    assert report.due(110.0) is None
    assert report.next_due(110.0) == 20.0
    assert report.due(129.9) is None
    assert report.due(130.0) == (FAILURE, 5, 6)
    assert report.due(200.0) is None, "nothing new failed: nothing to say"


def test_report_after_a_connection_says_the_next_failure_at_once() -> None:
    report = ConnectReport(30.0)
    report.failed(FAILURE)
    assert report.due(100.0) is not None
    report.failed(FAILURE)
    assert report.connected() == 2
    later = ConnectFailure("protocol error", "the port")
    report.failed(later)
    assert report.due(101.0) == (later, 1, 1)


def test_a_device_id_other_than_its_account_is_named_in_the_report(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    """A device account may connect only with its own name as client id (the topic rules)."""
    with AmqttBroker(tmp_path / "amqtt", users={"pi-07": SECRET}) as broker:
        endpoint = broker.endpoint("pi-07")
        agent = AgentProcess(
            model_packages.edge,
            tmp_path / "agent",
            broker=endpoint,
            device="pi-08",
            args=("--reconnect-min-s", "1", "--reconnect-max-s", "1"),
            log_level="INFO",
        )
        agent.start(wait=False)
        try:
            line = Output(agent).wait_for(REPORT)
        finally:
            agent.kill()
    assert "the broker refused the session" in line, line
    assert "it is 'pi-08' (--device) but the broker account is 'pi-07'" in line, line


def test_tls_to_the_embedded_brokers_plain_port_says_which_port_is_which(
    amqtt_broker: BrokerEndpoint, model_packages: ModelPaths, tmp_path: Path
) -> None:
    """amqtt does not answer a TLS hello on its plain port: the report says to check the port."""
    endpoint = dataclasses.replace(amqtt_broker, tls=True)
    with _agent(endpoint, model_packages.edge, tmp_path) as output:
        line = output.wait_for(REPORT)
    assert "TLS" in line and "8883" in line and "mqtt://" in line, line


@pytest.mark.parametrize("outbox", ["disk", "memory"])
def test_a_run_that_never_connects_exits_non_zero_saying_where_and_what_to_do(
    model_packages: ModelPaths, tmp_path: Path, outbox: str
) -> None:
    port = free_port()  # nothing listens there
    done = run_agent_cli(
        *("--model", str(model_packages.edge), "--device", "dev-a"),
        *("--broker", f"mqtt://{HOST}:{port}", "--state-dir", str(tmp_path / "s")),
        *("--readings", "10", "--rate-hz", "50", "--shutdown-timeout-s", "1"),
        *("--outbox", outbox),
    )
    assert done.returncode == EXIT_NEVER_CONNECTED, done.stderr[-2000:]
    line = next(ln for ln in done.stderr.splitlines() if "never connected" in ln)
    assert f"never connected to the broker at mqtt://{HOST}:{port}" in line, line
    assert f"connection refused: nothing listens on port {port}" in line, line
    assert "the 10 readings' messages" in line and "--broker" in line, line
    kept = "stay in the outbox" if outbox == "disk" else "are lost with the memory outbox"
    assert kept in line, line
    assert f"exit status {EXIT_NEVER_CONNECTED}" in line, line


def test_a_source_without_readings_is_blamed_not_the_broker(
    amqtt_broker: BrokerEndpoint, model_packages: ModelPaths, tmp_path: Path
) -> None:
    # A header-only CSV ended the run before the agent had connected: it exited 3
    # saying "never connected ... Start the broker" although the broker was up.
    csv = tmp_path / "header-only.csv"
    csv.write_text(",".join(["ts", *SENSOR_NAMES]) + "\n", encoding="utf-8")
    done = run_agent_cli(
        *("--model", str(model_packages.edge), "--device", amqtt_broker.username or "dev-a"),
        *("--state-dir", str(tmp_path / "s")),
        *("--source", "csv", "--csv-path", str(csv), "--csv-pace", "fast"),
        env={"EDGELOOP_AGENT_BROKER": amqtt_broker.url},
    )
    assert done.returncode == EXIT_NO_READINGS, done.stderr[-2000:]
    assert "it has a header but no data rows" in done.stderr, done.stderr[-2000:]
    line = next(ln for ln in done.stderr.splitlines() if "without giving a single reading" in ln)
    assert f"csv source ({csv})" in line and f"exit status {EXIT_NO_READINGS}" in line, line
    assert "never connected" not in done.stderr, done.stderr[-2000:]
