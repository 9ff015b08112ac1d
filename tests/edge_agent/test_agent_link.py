"""The agent's link thread keeps its deadlines while the reading loop wakes it only when needed.

The reading loop wakes the link thread for a new batch only when the link thread
would otherwise sleep past that batch's deadline (at 60,000 readings/s, a wake
per batch cost the reading loop its p99), and the outbox lets staged telemetry
wait ``write_delay_ms`` to share a write. A slow source must still see each batch
sealed by ``--max-delay-ms`` and sent, even while heartbeats are far apart.
"""

from __future__ import annotations

import uuid

import pytest

from shared.endpoint import BrokerEndpoint
from shared.messages import Telemetry
from shared.topics import Topics
from tests.conftest import StartAgent
from tests.edge_agent.test_agent_broker import Recorder, _check_stream, _count, _status

pytestmark = pytest.mark.timeout(90)


def test_a_slow_source_s_batches_go_out_by_their_deadline(
    start_agent: StartAgent, amqtt_broker: BrokerEndpoint
) -> None:
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")
    recorder = Recorder(amqtt_broker, topics, "dev-a")
    # 20 readings/s into batches of up to 50 sealed after 100 ms: two or three
    # readings each. Heartbeats every 60 s leave the link thread little else to
    # wake up for (an fsync a second after a write): a batch it is not told of
    # waits up to a second, and holds up to twenty readings. The bound leaves
    # a loaded machine 400 ms of slack.
    proc = start_agent(
        amqtt_broker,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "20",
        "--max-delay-ms",
        "100",
        "--heartbeat-s",
        "60",
    )
    try:
        recorder.wait_for("twelve telemetry messages", _count(Telemetry, 12), timeout=20)
    finally:
        recorder.close()
        proc.kill()
    sizes = [len(t) for t in recorder.of(Telemetry)]
    assert max(sizes) <= 10, f"batches waited past their deadline: {sizes}\n{proc.output()}"


def test_every_message_leaves_through_a_paho_queue_of_one(
    start_agent: StartAgent, amqtt_broker: BrokerEndpoint
) -> None:
    # paho refuses all but one message at a time, so the link thread's pump stops
    # at nearly every message and must be woken to go on (by the broker's
    # acknowledgement, or the next write); nothing may be left behind or reordered.
    topics = Topics(f"edgeloop-test/{uuid.uuid4().hex[:10]}")
    recorder = Recorder(amqtt_broker, topics, "dev-a")
    proc = start_agent(
        amqtt_broker,
        topics,
        "--source",
        "sim",
        "--rate-hz",
        "1000",
        "--readings",
        "1500",
        "--max-batch",
        "10",
        "--mqtt-queue",
        "1",
        "--inflight",
        "1",
        "--heartbeat-s",
        "60",
    )
    try:
        assert proc.wait(60) == 0, proc.output()
        recorder.wait_for("the offline status", _status("offline"))
    finally:
        recorder.close()
        proc.kill()
    assert sum(len(t) for t in recorder.of(Telemetry)) == 1500, proc.output()
    _check_stream(recorder, complete=True)
