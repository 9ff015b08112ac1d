"""The send queue: seqs, FIFO order, the bound and what it drops, acks, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.outbox import MemoryOutbox
from shared.messages import Event, Telemetry

pytestmark = pytest.mark.timeout(30)

DEVICE, EPOCH = "pi-07", 3


def telemetry(seq: int, n: int = 2) -> Telemetry:
    return Telemetry(
        DEVICE,
        EPOCH,
        seq,
        "1.0.0",
        np.arange(n, dtype=np.float64),
        np.zeros((n, 4), dtype=np.float32),
        np.full((n, 3), 1 / 3, dtype=np.float32),
    )


def event(seq: int) -> Event:
    return Event(DEVICE, EPOCH, seq, 1.0, "1.0.0", "score", 0.9, None, None, "log", True, "logged")


def drain(box: MemoryOutbox) -> list[int]:
    seqs = []
    while (msg := box.take()) is not None:
        seqs.append(msg.seq)
    return seqs


def test_seqs_start_at_one_contiguous_fifo() -> None:
    box = MemoryOutbox(100)
    assert box.last_seq == 0
    assert box.take() is None
    made = [box.emit(telemetry) if i % 3 else box.emit(event) for i in range(10)]
    assert [m.seq for m in made] == list(range(1, 11))
    assert box.last_seq == 10
    assert len(box) == 10
    out = []
    while (msg := box.take()) is not None:
        out.append(msg)
    assert out == made  # same objects, same order
    assert len(box) == 0
    assert box.emit(event).seq == 11  # seqs are never reused


def test_emit_wakes_the_link() -> None:
    wake = threading.Event()
    box = MemoryOutbox(5, wake)
    box.emit(event)
    assert wake.is_set()


def test_bound_drops_oldest_telemetry_and_counts_it() -> None:
    box = MemoryOutbox(4)
    box.emit(event)  # 1
    box.emit(lambda s: telemetry(s, n=3))  # 2
    box.emit(event)  # 3
    box.emit(lambda s: telemetry(s, n=5))  # 4
    assert box.dropped == {}
    box.emit(event)  # 5: drops telemetry 2
    assert len(box) == 4
    assert box.dropped == {"outbox_full_telemetry": 1, "outbox_full_readings": 3}
    box.emit(event)  # 6: drops telemetry 4
    assert box.dropped == {"outbox_full_telemetry": 2, "outbox_full_readings": 8}
    assert drain(box) == [1, 3, 5, 6]  # every event kept while telemetry was left


def test_bound_with_only_events_drops_the_oldest_event() -> None:
    box = MemoryOutbox(2)
    for _ in range(3):
        box.emit(event)
    assert box.dropped == {"outbox_full_events": 1}
    assert drain(box) == [2, 3]


def test_bound_holds_under_a_long_outage() -> None:
    box = MemoryOutbox(10)
    events = []
    for i in range(1000):
        msg = box.emit(event if i % 50 == 0 else telemetry)
        if isinstance(msg, Event):
            events.append(msg.seq)
        assert len(box) <= 10
    # Telemetry goes first; once the queue is all events, the oldest event goes. The newest
    # telemetry batch then keeps one slot, the newest events the rest.
    assert drain(box) == [*events[-9:], 1000]
    assert box.dropped["outbox_full_events"] == len(events) - 9
    assert box.dropped["outbox_full_telemetry"] == 990 - (len(events) - 9)
    assert box.dropped["outbox_full_readings"] == 2 * box.dropped["outbox_full_telemetry"]


def test_give_back_puts_at_the_front() -> None:
    box = MemoryOutbox(10)
    for _ in range(3):
        box.emit(event)
    first = box.take()
    assert first is not None
    box.give_back(first)
    assert drain(box) == [1, 2, 3]


def test_ack_never_exceeds_last_seq_and_never_goes_back() -> None:
    box = MemoryOutbox(10)
    box.acked(5)
    assert box.acked_seq == 0
    for _ in range(3):
        box.emit(event)
    box.acked(2)
    assert box.acked_seq == 2
    box.acked(1)
    assert box.acked_seq == 2
    box.acked(99)
    assert box.acked_seq == 3


def test_outbox_must_hold_something() -> None:
    with pytest.raises(ValueError):
        MemoryOutbox(0)


def test_concurrent_emitters_get_unique_contiguous_seqs() -> None:
    box = MemoryOutbox(100_000)
    threads, per_thread = 8, 500
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        for j in range(per_thread):
            box.emit(event if (i + j) % 2 else telemetry)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seqs = drain(box)
    assert seqs == list(range(1, threads * per_thread + 1))  # unique, contiguous, in order
    assert box.last_seq == threads * per_thread
