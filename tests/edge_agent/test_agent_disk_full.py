"""The agent when its outbox cannot be written (a full disk): the link goes on, and so does shutdown.

The agent runs in-process against Mosquitto and a real hub; the full disk is
injected at the outbox's write seams (``Outbox.ack``, ``Outbox._insert``).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.cli import build_source
from edge_agent.engine import load_edge_model
from edge_agent.outbox import Outbox
from edge_agent.settings import load_settings
from shared import __version__
from shared.endpoint import BrokerEndpoint
from shared.topics import Topics
from simulators.harness import HUB_USER, HubProcess, Mosquitto, wait_until
from tests.brokers import HUB_SECRET
from tests.conftest import ModelPaths

pytestmark = [pytest.mark.timeout(120), pytest.mark.mosquitto]


def _agent(broker: BrokerEndpoint, topics: Topics, model: Path, state: Path, *args: str) -> Agent:
    settings = load_settings(
        [
            "--device",
            "disk-a",
            "--root",
            topics.root,
            "--model",
            str(model),
            "--state-dir",
            str(state),
            "--source",
            "sim",
            "--rate-hz",
            "200",
            "--max-batch",
            "20",
            "--max-delay-ms",
            "100",
            *args,
        ],
        env={"EDGELOOP_AGENT_BROKER": broker.url},
    )
    edge = load_edge_model(model, __version__)
    source, _ = build_source(settings, edge.manifest.input.sensors)
    return Agent(settings, edge, source, [])


def test_acks_that_cannot_be_written_do_not_stop_the_link(
    mosquitto_process: Mosquitto,
    mosquitto_broker: BrokerEndpoint,
    model_packages: ModelPaths,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:8]}")
    real_ack = Outbox.ack
    failures = {"left": 5}

    def ack_on_a_full_disk(self: Outbox, epoch: int, seq: int) -> str | None:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_ack(self, epoch, seq)

    monkeypatch.setattr(Outbox, "ack", ack_on_a_full_disk)
    hub = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        broker=mosquitto_process.endpoint(HUB_USER, HUB_SECRET),
        root=topics.root,
    )
    with hub:
        agent = _agent(
            mosquitto_broker,
            topics,
            model_packages.edge,
            tmp_path / "agent",
            "--readings",
            "600",
            "--resend-after-s",
            "1",
            "--shutdown-timeout-s",
            "60",
        )
        assert agent.run(threading.Event()) == 0

        def stored() -> Any:
            return hub.api.get_json("/v1/stats/ingest")["stored_readings"]

        wait_until("every reading stored", lambda: stored() == 600, timeout=30)
    assert failures["left"] == 0
    assert agent.counters.snapshot()["outbox_write_errors"] == 5
    assert agent.outbox.depth == 0  # the acks that came later were applied


def test_an_outbox_that_cannot_be_written_at_shutdown_still_shuts_down(
    mosquitto_broker: BrokerEndpoint,
    model_packages: ModelPaths,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:8]}")
    real_insert = Outbox._insert
    writes = {"left": 3}

    def insert_until_the_disk_fills(self: Outbox, rows: Any, readings: int) -> None:
        if not writes["left"]:
            raise sqlite3.OperationalError("database or disk is full")
        writes["left"] -= 1
        real_insert(self, rows, readings)

    monkeypatch.setattr(Outbox, "_insert", insert_until_the_disk_fills)
    agent = _agent(
        mosquitto_broker,
        topics,
        model_packages.edge,
        tmp_path / "agent",
        "--readings",
        "300",
        "--shutdown-timeout-s",
        "1",
    )
    assert agent.run(threading.Event()) == 0
    counts = agent.counters.snapshot()
    assert counts["outbox_write_errors"] >= 1
    # 300 readings in batches of 20: 15 messages, of which 3 were written.
    assert counts["dropped:unwritten_at_shutdown_messages"] == 12
    assert agent.outbox.last_seq == 3
