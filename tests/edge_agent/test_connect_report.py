"""An agent that cannot reach its broker says so: what it tried, what happened, what to check.

Real agent processes against a closed port, a real HTTP server (uvicorn, as the
hub's API port would be) and real brokers with a wrong password; the pacing of
the reports is checked on :class:`ConnectReport` with explicit times.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from edge_agent.transport import ConnectFailure, ConnectReport
from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from tests.agents import start_agent
from tests.brokers import HOST, free_port
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0
SECRET = "not-a-real-secret-42"
REPORT = "cannot connect to the broker at"


class Output:
    """Every line a process prints, with a wait for the first line that contains a text."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace"))
                self._cond.notify_all()

    def wait_for(self, text: str) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, WAIT):
                raise AssertionError(f"no line with {text!r} in:\n{''.join(self.lines)}")
            line = found()
            assert line is not None
            return line

    def text(self) -> str:
        self._thread.join(WAIT)
        with self._cond:
            return "".join(self.lines)


@contextmanager
def _agent(endpoint: BrokerEndpoint, model: Path, state: Path) -> Iterator[Output]:
    proc = start_agent(
        endpoint,
        Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}"),
        model,
        state,
        "--reconnect-min-s",
        "1",
        "--reconnect-max-s",
        "1",
    )
    output = Output(proc)
    try:
        yield output
    finally:
        proc.kill()
        proc.wait(10)


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
    with live_server(FastAPI()) as port:
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
