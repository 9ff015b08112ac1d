"""Real agents (``python -m edge_agent`` processes) against a real hub link and worker.

Every reading the agents send is stored exactly once, with the edge scores
they computed and the hub's heavy scores, and the hub's acks reach them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.endpoint import BrokerEndpoint
from shared.messages import Ack, Message, Status
from shared.topics import Kind, Topics
from tests.cloud_hub.ingest.conftest import (
    WAIT,
    Client,
    Hub,
    hub_endpoint,
    settled,
    wait_until,
)
from tests.cloud_hub.ingest.test_worker import stored_rows
from tests.conftest import StartAgent

pytestmark = pytest.mark.timeout(120)

DEVICES = ("dev-0", "dev-1", "dev-2")
READINGS = 300


def _wills(msgs: list[Message]) -> dict[str, Status]:
    return {m.device: m for m in msgs if isinstance(m, Status) and m.state == "offline"}


def test_three_agents_every_reading_stored_once_with_both_scores_and_acked(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    hub: Hub,
) -> None:
    # The broker's rules: the hub's account reads statuses, a fleet account reads acks.
    wire = Client(hub_endpoint(broker), topics, subscribe=(topics.device_filter(Kind.STATUS),))
    acks = Client(broker, topics, subscribe=(topics.device_filter(Kind.ACK),))
    procs = {
        d: start_agent(
            broker,
            topics,
            "--heartbeat-s",
            "0.3",
            "--source",
            "sim",
            "--sim-seed",
            str(i + 1),
            "--readings",
            str(READINGS),
            "--rate-hz",
            "500",
            "--sim-urgent-rate",
            "0.01",
            device=d,
        )
        for i, d in enumerate(DEVICES)
    }
    logs: dict[str, str] = {}
    try:
        for proc in procs.values():
            assert proc.wait(WAIT) == 0, proc.output()
        wire.wait_for("every agent's will", lambda msgs: set(_wills(msgs)) == set(DEVICES))
        wills = _wills(wire.messages)
        # A will's seq is the last stream seq its agent issued: every one must be acked.
        acks.wait_for(
            "the ack of every agent's last seq",
            lambda msgs: all(Ack(d, w.epoch, w.seq) in msgs for d, w in wills.items()),
        )
    finally:
        for d, proc in procs.items():
            proc.kill()
            logs[d] = proc.output()
        wire.close()
        acks.close()
    store = hub.store

    def all_offline() -> bool:
        records = [store.device(d) for d in DEVICES]
        return all(r is not None and r.state == "offline" for r in records)

    wait_until("every will recorded", all_offline)
    for d, will in wills.items():
        rows = stored_rows(store, d)
        assert sum(len(r) for r in rows) == READINGS, logs[d]
        ts = np.concatenate([r.ts for r in rows])
        assert len(np.unique(ts)) == READINGS, "a reading was stored twice"
        for r in rows:
            assert r.edge_scores.shape == (len(r), 3) and r.heavy_scores.shape == (len(r), 3)
            assert np.allclose(r.edge_scores.sum(axis=1), 1.0, atol=1e-3)
            assert np.allclose(r.heavy_scores.sum(axis=1), 1.0, atol=1e-3)
            assert r.heavy_model_version == "1.0.0"
        assert store.watermark(d, will.epoch) == will.seq
        record = store.device(d)
        assert record is not None
        print(
            d,
            record.last_health and {k: record.last_health[k] for k in ("seq", "acked_seq")},
            will.seq,
        )
    assert store.gaps() == []
    stats = settled(
        hub.worker, "every reading counted", lambda s: s.stored_readings == READINGS * len(DEVICES)
    )
    assert stats.duplicates == 0 and stats.invalid == {} and stats.dropped == {}
    assert stats.stored_readings == READINGS * len(DEVICES)


def test_an_agents_heartbeat_reports_the_hubs_ack_of_its_last_seq(
    start_agent: StartAgent,
    broker: BrokerEndpoint,
    topics: Topics,
    hub: Hub,
) -> None:
    """The agent itself takes the acks in: its heartbeat's acked_seq reaches its last seq.

    A finite ``--readings`` run exits as soon as its last batch is with the
    broker, before the next heartbeat; a stdin source stays up until its input
    closes, so the test can wait for that heartbeat first.
    """
    proc = start_agent(
        broker,
        topics,
        "--heartbeat-s",
        "0.3",
        "--source",
        "stdin",
        "--max-batch",
        "50",
        device="dev-s",
        stdin_pipe=True,
    )
    store = hub.store

    def caught_up() -> bool:
        record = store.device("dev-s")
        beat = record.last_health if record is not None else None
        return beat is not None and beat["seq"] == beat["acked_seq"] == READINGS // 50

    try:
        assert proc.stdin is not None
        rng = np.random.default_rng(3)
        nominal = np.array([65, 2.5, 6, 18, 1800, 50, 100, 75])
        lines = [
            json.dumps(
                {"ts": 1_700_000_000 + i, "values": (nominal * rng.normal(1, 0.01, 8)).tolist()}
            )
            for i in range(READINGS)
        ]
        proc.stdin.write(("\n".join(lines) + "\n").encode())
        proc.stdin.flush()
        wait_until("a heartbeat with every batch acked", caught_up)
        proc.stdin.close()
        assert proc.wait(WAIT) == 0
    finally:
        proc.kill()
        log = proc.output()
    rows = stored_rows(store, "dev-s")
    assert sum(len(r) for r in rows) == READINGS, log
    assert sorted(r.seq for r in rows) == list(range(1, READINGS // 50 + 1))
