"""The broker's supervisor and ``/healthz``'s parts: the pure rules, then a real broker killed."""

from __future__ import annotations

import doctest
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

import cloud_hub.broker.restart
import cloud_hub.broker.supervisor
import cloud_hub.health
from cloud_hub.api import ApiConfig, create_app
from cloud_hub.broker.auth import add_user
from cloud_hub.broker.embedded import EmbeddedBroker
from cloud_hub.broker.restart import RestartPolicy
from cloud_hub.broker.supervisor import BrokerSupervisor, describe_exit
from cloud_hub.health import PartHealth, down_parts
from cloud_hub.store import open_store
from simulators.harness import wait_until
from tests.cloud_hub.api.conftest import ADMIN_TOKEN, READ_TOKEN
from tests.cloud_hub.api.server import live_server

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "module", [cloud_hub.broker.restart, cloud_hub.broker.supervisor, cloud_hub.health]
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, report=False)  # type: ignore[arg-type]
    assert result.attempted and not result.failed


def test_restart_delays_double_to_the_cap_and_reset_after_a_stable_run() -> None:
    policy = RestartPolicy(min_s=0.5, max_s=4.0, stable_s=10.0)
    assert [policy.next_delay(ran_s=0.2) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.next_delay(ran_s=9.9) == 4.0  # not stable yet
    assert policy.next_delay(ran_s=10.0) == 0.5
    assert policy.next_delay(ran_s=0.1) == 1.0
    with pytest.raises(ValueError, match="min_s <= max_s"):
        RestartPolicy(min_s=2.0, max_s=1.0)


def test_exits_are_described_by_signal_or_status() -> None:
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"
    assert describe_exit(1) == "exited with status 1"


def test_healthz_is_503_naming_the_parts_that_are_down(tmp_path: Path) -> None:
    parts = {
        "broker_link": PartHealth(up=True, since=1.0, counts={"disconnects": 0}),
        "embedded_broker": PartHealth(up=True, since=1.0),
    }
    assert down_parts(parts) == []
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    app = create_app(
        store, ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN), parts=lambda: parts
    )
    try:
        with live_server(app) as anon:
            ok = anon.get("/healthz")
            assert ok.status == 200 and ok.json()["down"] == []
            assert ok.json()["parts"]["broker_link"]["counts"] == {"disconnects": 0}
            parts["broker_link"] = PartHealth(
                up=False, since=2.0, reason="the connection to the broker was lost", check="x"
            )
            parts["embedded_broker"] = PartHealth(up=False, since=2.0, reason="killed")
            down = anon.get("/healthz")
            body = down.json()
            assert down.status == 503
            assert body["status"] == "degraded" and body["store"] == "ok"
            assert body["down"] == ["broker_link", "embedded_broker"]
            assert body["parts"]["broker_link"]["reason"] == "the connection to the broker was lost"
            spec = anon.get("/openapi.json").json()
            described = spec["paths"]["/healthz"]["get"]["responses"]["503"]["description"]
            assert "broker_link" in described
    finally:
        store.close()


def test_a_killed_broker_is_restarted_on_its_port_and_counted(tmp_path: Path) -> None:
    password_file = tmp_path / "passwd"
    add_user(password_file, "hub", "hub-secret-0123456789")
    with EmbeddedBroker(password_file=password_file, log_path=tmp_path / "broker.log") as broker:
        supervisor = BrokerSupervisor(broker, RestartPolicy(min_s=0.2, max_s=1.0), poll_s=0.05)
        supervisor.start()
        try:
            first, port = broker.pid, broker.port
            assert first is not None and supervisor.health().up
            os.kill(first, signal.SIGKILL)
            wait_until(
                "the supervisor to see it",
                lambda: supervisor.health().counts["exits"] == 1,
                timeout=30,
            )
            wait_until("the broker back", lambda: supervisor.health().up, timeout=30)
            health = supervisor.health()
            assert health.counts == {"exits": 1, "restarts": 1}
            assert health.reason is not None and "SIGKILL" in health.reason
            assert broker.pid != first and broker.port == port and broker.is_running
            time.sleep(0.3)  # a running broker is left alone
            assert supervisor.health().counts["exits"] == 1
        finally:
            supervisor.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_broker_that_cannot_start_again_is_retried_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, log_format: str
) -> None:
    password_file = tmp_path / "passwd"
    add_user(password_file, "hub", "hub-secret-0123456789")
    log_path = tmp_path / "broker.log"
    with EmbeddedBroker(
        password_file=password_file, log_path=log_path, log_format=log_format
    ) as broker:
        supervisor = BrokerSupervisor(broker, RestartPolicy(min_s=1.0, max_s=1.0), poll_s=0.05)
        supervisor.start()
        squatter = socket.socket()
        try:
            first = broker.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            wait_until("the exit seen", lambda: not supervisor.health().up, timeout=30)
            # Another program takes the port before the broker is back (1 s from now).
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((broker.host, broker.port))
            squatter.listen()
            wait_until(
                "a failed restart reported",
                lambda: "does not start again" in (supervisor.health().reason or ""),
                timeout=30,
            )
            assert not supervisor.health().up
            squatter.close()
            wait_until("the broker back", lambda: supervisor.health().up, timeout=30)
            assert supervisor.health().counts == {"exits": 1, "restarts": 1}
            assert broker.is_running and broker.pid != first
        finally:
            squatter.close()
            supervisor.stop()
    failed = [r.getMessage() for r in caplog.records if "did not start again" in r.getMessage()]
    assert failed
    # The broker's log is in the format asked for; the hub's message quotes it as text.
    quoted = failed[0].partition("(last lines) ---\n")[2]
    assert "already in use" in quoted, failed[0]
    assert not any(line.startswith("{") for line in quoted.splitlines()), quoted
    lines = log_path.read_text().splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
        assert any("already in use" in r["message"] for r in records)
    else:
        assert not any(line.startswith("{") for line in lines)
