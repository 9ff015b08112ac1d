"""The hub's side of delivery on real brokers: declarations, refusals, far seqs, epochs."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from shared.messages import Dropped, Status, encode
from tests.cloud_hub.ingest.conftest import Client, Hub, settled, telemetry, wait_until
from tests.cloud_hub.ingest.test_worker import acked

pytestmark = pytest.mark.timeout(90)


def test_a_declared_range_closes_the_gap_counts_the_loss_and_moves_the_ack(
    hub: Hub, device_client: Client
) -> None:
    for seq in (1, 2, 6):
        device_client.send(telemetry("dev-a", seq, n=4))
    device_client.wait_for("the ack of seq 2", acked("dev-a", 2))
    # 3..5 dropped at the edge; 2 is stored already and must not count as lost.
    device_client.send(Dropped("dev-a", 1, 5, 2, "outbox_full", (4, 4, 0, 4)))
    device_client.wait_for("the ack past the declared range", acked("dev-a", 6))
    # Acks go out once the batch is durable; its counters follow: wait for all 4 taken in.
    settled(hub.worker, "4 messages counted", lambda st: st.received == 4)
    counters = hub.store.counters("dev-a")
    assert counters["lost_at_edge_messages:outbox_full"] == 3
    assert counters["lost_at_edge_readings:outbox_full"] == 8
    assert counters["stored_readings"] == 12
    assert hub.store.gaps() == []
    device_client.send(Dropped("dev-a", 1, 5, 2, "outbox_full", (4, 4, 0, 4)))  # again
    device_client.send(telemetry("dev-a", 7))
    device_client.wait_for("the ack of seq 7", acked("dev-a", 7))
    settled(hub.worker, "6 messages counted", lambda st: st.received == 6)
    assert hub.store.counters("dev-a")["lost_at_edge_messages:outbox_full"] == 3  # once


def test_a_declaration_about_another_device_is_refused(hub: Hub, device_client: Client) -> None:
    device_client.send(telemetry("dev-b", 1))
    forged = Dropped("dev-b", 1, 9, 2, "outbox_full", (1,) * 8)
    device_client.publish(device_client.topics.topic("dev-a", forged.kind), encode(forged))
    settled(hub.worker, "the forgery counted", lambda s: s.invalid.get("device_mismatch") == 1)
    assert not any(k.startswith("lost_at_edge") for k in hub.store.counters())
    assert hub.store.watermark("dev-b", 1) == 1


def test_bad_timestamps_are_kept_aside_and_their_seq_closed(
    hub: Hub, device_client: Client
) -> None:
    good = telemetry("dev-a", 1)
    future = dataclasses.replace(telemetry("dev-a", 2), ts=np.full(5, time.time() + 10 * 86400))
    absurd = dataclasses.replace(
        telemetry("dev-a", 3), ts=np.array([1.7e9, 1e300, 1.7e9, 1.7e9, 1.7e9])
    )
    ancient = dataclasses.replace(telemetry("dev-a", 4), ts=np.full(5, 1000.0))
    for msg in (good, future, absurd, ancient):
        device_client.send(msg)
    device_client.wait_for("the ack past the refused seqs", acked("dev-a", 4))
    # Acks go out once the batch is durable; its counters and dead letters follow.
    wait_until("the dead letters", lambda: len(hub.store.dead_letters(10, "dev-a")) == 3)
    wait_until("the counters", lambda: hub.store.counters("dev-a").get("invalid:ts_in_future") == 2)
    counters = hub.store.counters("dev-a")
    assert counters["invalid:ts_out_of_range"] == 1  # the ancient one
    assert counters["refused_readings:ts_out_of_range"] == 5
    assert counters["invalid:ts_in_future"] == 2  # 10 days ahead, and 1e300
    assert counters["refused_readings:ts_in_future"] == 10
    assert counters["stored_readings"] == 5
    letters = hub.store.dead_letters(10, "dev-a")
    assert {d.reason for d in letters} == {"ts_out_of_range", "ts_in_future"}
    assert any("clock" in d.error for d in letters)


def test_a_reading_from_the_future_beyond_the_setting_is_kept_aside_and_acked(
    hub: Hub, device_client: Client
) -> None:
    """``max_future_s`` is 300 s by default (the hub's --max-future-s): a clock a minute
    fast is tolerated, ten minutes is not; the refused message is acked all the same,
    so the device stops sending it."""
    now = time.time()
    soon = dataclasses.replace(telemetry("dev-a", 1), ts=np.full(5, now + 60.0))
    later = dataclasses.replace(telemetry("dev-a", 2), ts=np.linspace(now, now + 600.0, 5))
    for msg in (soon, later):
        device_client.send(msg)
    device_client.wait_for("the ack past the refused seq", acked("dev-a", 2))
    wait_until("the dead letter", lambda: len(hub.store.dead_letters(10, "dev-a")) == 1)
    wait_until("the counters", lambda: hub.store.counters("dev-a").get("invalid:ts_in_future") == 1)
    counters = hub.store.counters("dev-a")
    assert counters["stored_readings"] == 5
    assert counters["refused_readings:ts_in_future"] == 5
    (letter,) = hub.store.dead_letters(10, "dev-a")
    assert letter.reason == "ts_in_future" and "--max-future-s" in letter.error
    assert hub.store.gaps() == []


def test_a_seq_far_beyond_the_watermark_is_refused_not_a_giant_gap(
    hub: Hub, device_client: Client
) -> None:
    device_client.send(telemetry("dev-a", 1))
    far = dataclasses.replace(telemetry("dev-a", 2**62), ts=telemetry("dev-a", 2).ts)
    device_client.send(far)
    device_client.send(Dropped("dev-a", 1, 2**62, 2**62 - 1, "outbox_full", (1, 1)))
    device_client.send(telemetry("dev-a", 2))
    device_client.wait_for("the ack of seq 2", acked("dev-a", 2))
    settled(hub.worker, "the far seq counted", lambda s: s.invalid.get("seq_too_far_ahead") == 2)
    assert hub.store.gaps() == []


def test_a_birth_of_an_older_epoch_is_counted(hub: Hub, device_client: Client) -> None:
    device_client.send(
        Status("dev-a", 1_800_000_000, 0, "online", "0.1.0", "1.0.0", time.time(), "m-edge")
    )
    wait_until("the first birth", lambda: _epoch(hub) == 1_800_000_000)
    device_client.send(Status("dev-a", 5, 0, "online", "0.1.0", "1.0.0", time.time(), "m-edge"))
    wait_until(
        "the regression counted",
        lambda: hub.store.counters("dev-a").get("epoch_regressed") == 1,
    )
    assert _epoch(hub) == 1_800_000_000


def _epoch(hub: Hub) -> int | None:
    record = hub.store.device("dev-a")
    return None if record is None else record.epoch
