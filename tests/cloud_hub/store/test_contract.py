"""The store contract, run against every backend (DESIGN.md section 7).

Written against :class:`cloud_hub.store.Store` only: a new backend (PostgreSQL)
joins by adding a factory to :data:`BACKENDS`; nothing else here changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_hub.store import BatchJob, SQLiteStore, Store, TelemetryRows
from cloud_hub.store.base import DeviceStateRow, DriftEventRow, DriftStateRow, DriftWindowRow
from shared.manifest import manifest_file_bytes
from tests.cloud_hub.store.samples import (
    T0,
    dead_letter,
    event,
    health,
    manifest,
    ota,
    status,
    tele,
)

pytestmark = pytest.mark.timeout(60)

BackendFactory = Callable[[Path], Store]


def _sqlite(tmp: Path) -> Store:
    return SQLiteStore(tmp / "hub.db")


BACKENDS: list[object] = [pytest.param(_sqlite, id="sqlite")]
"""Every backend the contract runs against: a factory taking an empty directory."""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> BackendFactory:
    factory: BackendFactory = request.param
    return factory


@pytest.fixture
def store(backend: BackendFactory, tmp_path: Path) -> Iterator[Store]:
    s = backend(tmp_path)
    try:
        yield s
    finally:
        s.close()


def all_readings(
    store: Store, device: str, since: float = 0.0, until: float = 1e12
) -> TelemetryRows:
    """Every stored reading of ``device`` in the range, pages concatenated (limit 1000)."""
    pages, cursor = [], None
    while True:
        page = store.telemetry(device, since, until, limit=1000, cursor=cursor)
        pages.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    if not pages:
        empty32 = np.empty((0, 0), np.float32)
        return TelemetryRows(device, 0, 0, "", "", np.empty(0), empty32, empty32, empty32, 0.0)
    return TelemetryRows(
        device,
        0,
        0,
        "",
        "",
        np.concatenate([p.ts for p in pages]),
        np.concatenate([p.features for p in pages]),
        np.concatenate([p.edge_scores for p in pages]),
        np.concatenate([p.heavy_scores for p in pages]),
        0.0,
    )


# --------------------------------------------------------------------------- idempotency


def test_replayed_messages_are_duplicates_and_store_nothing(store: Store) -> None:
    first = store.write_stream([tele("pi-01", 1, 1), tele("pi-01", 1, 2), event("pi-01", 1, 3)])
    assert (first.stored, first.readings, first.duplicates) == (3, 10, [])
    counters_before = store.counters()

    again = store.write_stream([tele("pi-01", 1, 2), event("pi-01", 1, 3), ota("pi-01", 1, 1)])

    assert again.stored == 0
    assert again.readings == 0
    assert again.duplicates == [("pi-01", 1, 2), ("pi-01", 1, 3), ("pi-01", 1, 1)]
    assert [(w.device, w.epoch, w.seq) for w in again.watermarks] == [("pi-01", 1, 3)]
    assert len(all_readings(store, "pi-01")) == 10
    assert len(store.events("pi-01", 0, 1e12, limit=100).items) == 1
    assert store.counters() == counters_before  # counting duplicates is the caller's job


def test_duplicates_within_one_call(store: Store) -> None:
    result = store.write_stream(
        [
            tele("pi-01", 1, 1),
            tele("pi-01", 1, 1),
            event("pi-01", 1, 2),
            ota("pi-01", 1, 2),  # another kind, same seq: still the same stream message
            tele("pi-01", 1, 4),
            tele("pi-01", 1, 4),
            tele("pi-02", 1, 1),
        ]
    )
    assert result.stored == 4
    assert result.readings == 15
    assert result.duplicates == [("pi-01", 1, 1), ("pi-01", 1, 2), ("pi-01", 1, 4)]
    assert {(w.device, w.epoch, w.seq) for w in result.watermarks} == {
        ("pi-01", 1, 2),
        ("pi-02", 1, 1),
    }
    assert len(all_readings(store, "pi-01")) == 10


def test_empty_write(store: Store) -> None:
    result = store.write_stream([])
    assert (result.stored, result.readings, result.duplicates, result.watermarks) == (0, 0, [], [])


# --------------------------------------------------------------------------- gaps and watermarks


def test_gaps_appear_and_close_when_replay_fills_them(store: Store) -> None:
    result = store.write_stream([tele("pi-01", 1, s) for s in (1, 2, 5, 6, 9)])
    assert [w.seq for w in result.watermarks] == [2]
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(3, 4), (7, 8)]
    assert {g.device for g in store.gaps()} == {"pi-01"}

    result = store.write_stream([tele("pi-01", 1, 4), tele("pi-01", 1, 3)])
    assert (result.stored, [w.seq for w in result.watermarks]) == (2, [6])
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(7, 8)]

    store.write_stream([tele("pi-01", 1, 8)])
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(7, 7)]
    assert store.watermark("pi-01", 1) == 6

    result = store.write_stream([tele("pi-01", 1, 7), tele("pi-01", 1, 9), tele("pi-01", 1, 5)])
    assert result.stored == 1
    assert result.duplicates == [("pi-01", 1, 9), ("pi-01", 1, 5)]
    assert [w.seq for w in result.watermarks] == [9]
    assert store.gaps() == []
    assert store.watermark("pi-01", 1) == 9
    assert len(all_readings(store, "pi-01")) == 45


def test_out_of_order_within_one_call(store: Store) -> None:
    result = store.write_stream([tele("pi-01", 1, s) for s in (3, 1, 4, 2, 6)])
    assert result.stored == 5
    assert [w.seq for w in result.watermarks] == [4]
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(5, 5)]


def test_gaps_filter_and_limit(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, 3), tele("pi-02", 1, 2), tele("pi-02", 2, 5)])
    assert [(g.device, g.epoch, g.first_seq, g.last_seq) for g in store.gaps()] == [
        ("pi-01", 1, 1, 2),
        ("pi-02", 1, 1, 1),
        ("pi-02", 2, 1, 4),
    ]
    assert [(g.epoch, g.first_seq) for g in store.gaps("pi-02")] == [(1, 1), (2, 1)]
    assert len(store.gaps(limit=1)) == 1
    assert store.gaps("nobody") == []


def test_watermark_is_per_epoch(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, s) for s in (1, 2, 3)])
    result = store.write_stream([tele("pi-01", 2, 1), tele("pi-01", 1, 4)])
    assert {(w.epoch, w.seq) for w in result.watermarks} == {(2, 1), (1, 4)}
    assert store.watermark("pi-01", 1) == 4
    assert store.watermark("pi-01", 2) == 1
    assert store.watermark("pi-01", 3) == 0
    assert store.watermark("nobody", 1) == 0
    assert store.watermarks("pi-01") == {1: 4, 2: 1} and store.watermarks("nobody") == {}
    # A new epoch starts from nothing: seq 1 of epoch 3 is new, not a duplicate.
    assert store.write_stream([event("pi-01", 3, 1)]).stored == 1


def test_ack_watermark_is_highest_contiguous_even_for_duplicate_only_writes(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, s) for s in (1, 2, 4)])
    result = store.write_stream([tele("pi-01", 1, 2)])
    assert [(w.device, w.epoch, w.seq) for w in result.watermarks] == [("pi-01", 1, 2)]


@pytest.mark.parametrize("backend_factory", BACKENDS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.lists(st.integers(1, 30), min_size=1, max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_any_arrival_order_stores_each_seq_once(
    backend_factory: BackendFactory,
    tmp_path_factory: pytest.TempPathFactory,
    data: list[int],
    cuts: list[int],
) -> None:
    """Replays and reorderings across any batching: each seq stored once, the
    watermark is the highest contiguous seq, the gaps are exactly what is missing."""
    store = backend_factory(tmp_path_factory.mktemp("prop"))
    try:
        bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        stored: set[int] = set()
        for lo, hi in itertools.pairwise(bounds):
            batch = data[lo:hi]
            result = store.write_stream([event("pi-01", 1, s) for s in batch])
            new = [s for s in dict.fromkeys(batch) if s not in stored]
            assert result.stored == len(new)
            assert len(result.duplicates) == len(batch) - len(new)
            stored.update(batch)
            wm = next(i for i in itertools.count(1) if i not in stored) - 1
            assert [w.seq for w in result.watermarks] == [wm]
        missing = sorted(set(range(1, max(stored) + 1)) - stored)
        assert (
            sorted(s for g in store.gaps() for s in range(g.first_seq, g.last_seq + 1)) == missing
        )
        assert len(store.events(None, 0, 1e12, limit=1000).items) == len(stored)
    finally:
        store.close()


# --------------------------------------------------------------------------- telemetry


def test_telemetry_round_trip_is_bit_exact(store: Store) -> None:
    msg = tele("pi-01", 3, 1, n=6, n_features=5, received_at=T0 + 0.125)
    tricky = np.array(
        [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1 / 3],
        dtype=np.float32,
    )
    msg.features[0, :] = tricky
    msg.ts[:] = T0 + np.array([0.1, 0.2, 0.3, 1e-6, 0.5, 0.6]) + 1 / 3  # float64 digits matter
    store.write_stream([msg])

    page = store.telemetry("pi-01", 0, 1e12, limit=100)
    assert page.next_cursor is None
    [got] = page.items
    assert (got.device, got.epoch, got.seq) == ("pi-01", 3, 1)
    assert (got.edge_model_version, got.heavy_model_version) == ("1.0.0", "2.0.0")
    assert got.received_at == T0 + 0.125
    assert got.ts.dtype == np.float64
    for name in ("features", "edge_scores", "heavy_scores"):
        assert getattr(got, name).dtype == np.float32
        assert getattr(got, name).shape == getattr(msg, name).shape
        assert getattr(got, name).tobytes() == getattr(msg, name).tobytes(), name
    assert got.ts.tobytes() == msg.ts.tobytes()


def test_telemetry_time_range_is_half_open(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, 1, n=10, t0=100.0, step=1.0)])  # ts 100..109
    ts = all_readings(store, "pi-01", since=103.0, until=107.0).ts
    assert ts.tolist() == [103.0, 104.0, 105.0, 106.0]
    assert len(all_readings(store, "pi-01", since=110.0, until=200.0)) == 0
    assert len(all_readings(store, "pi-01", since=0.0, until=100.0)) == 0
    assert len(all_readings(store, "pi-01", since=105.0, until=105.0)) == 0


def test_telemetry_of_one_device_only(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, 1), tele("pi-02", 1, 1, n=3)])
    assert len(all_readings(store, "pi-02")) == 3
    assert store.telemetry("nobody", 0, 1e12, limit=10).items == []


@pytest.mark.parametrize("limit", [1, 3, 7, 10, 1000])
def test_telemetry_pages_cover_every_reading_exactly_once(store: Store, limit: int) -> None:
    # 12 messages of 7 readings, arriving out of time order and in several writes.
    msgs = [tele("pi-01", 1, s, n=7, t0=1000.0 + 10 * s, step=1.0) for s in range(1, 13)]
    order = [5, 1, 12, 2, 3, 4, 6, 11, 7, 8, 9, 10]
    store.write_stream([msgs[s - 1] for s in order[:6]])
    store.write_stream([msgs[s - 1] for s in order[6:]])
    since, until = 1013.0, 1105.0  # starts and ends inside a message
    expected = np.concatenate([m.ts[(m.ts >= since) & (m.ts < until)] for m in msgs])
    expected_features = np.concatenate([m.features[(m.ts >= since) & (m.ts < until)] for m in msgs])

    seen_ts, seen_features, cursor, pages = [], [], None, 0
    while True:
        page = store.telemetry("pi-01", since, until, limit=limit, cursor=cursor)
        pages += 1
        n = sum(len(rows) for rows in page.items)
        assert 0 < n <= limit
        for rows in page.items:
            seen_ts.append(rows.ts)
            seen_features.append(rows.features)
            assert rows.seq == int((rows.ts[0] - 1000.0) // 10)
        if page.next_cursor is None:
            break
        assert n == limit
        cursor = page.next_cursor
    assert np.concatenate(seen_ts).tolist() == expected.tolist()
    assert np.concatenate(seen_features).tobytes() == expected_features.tobytes()
    assert pages == -(-len(expected) // limit)


def test_telemetry_bad_arguments(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, 1)])
    with pytest.raises(ValueError, match="cursor"):
        store.telemetry("pi-01", 0, 1e12, limit=10, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        store.telemetry("pi-01", 0, 1e12, limit=0)


# --------------------------------------------------------------------------- events


def test_events_listing_filters_and_pages(store: Store) -> None:
    before = time.time()
    store.write_stream([event("pi-01", 1, s, ts=100.0 + s) for s in range(1, 8)])
    store.write_stream([event("pi-02", 1, s, ts=100.5 + s) for s in range(1, 4)])
    after = time.time()

    everything = store.events(None, 0, 1e12, limit=100)
    assert everything.next_cursor is None
    assert [(r.event.device, r.event.ts) for r in everything.items] == sorted(
        [("pi-01", 100.0 + s) for s in range(1, 8)] + [("pi-02", 100.5 + s) for s in range(1, 4)],
        key=lambda x: x[1],
    )
    assert all(before <= r.received_at <= after for r in everything.items)
    assert everything.items[0].event == event("pi-01", 1, 1, ts=101.0)  # every field round-trips
    assert everything.items[1].event == event("pi-02", 1, 1, ts=101.5)

    one = store.events("pi-01", 103.0, 106.0, limit=100).items
    assert [r.event.seq for r in one] == [3, 4, 5]

    got, cursor = [], None
    while True:
        page = store.events("pi-01", 0, 1e12, limit=2, cursor=cursor)
        assert len(page.items) <= 2
        got += [r.event.seq for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert got == list(range(1, 8))

    assert store.events("nobody", 0, 1e12, limit=10).items == []
    with pytest.raises(ValueError, match="cursor"):
        store.events(None, 0, 1e12, limit=10, cursor="!!")


def test_events_with_equal_timestamps_page_without_loss(store: Store) -> None:
    store.write_stream([event("pi-01", 1, s, ts=50.0) for s in range(1, 6)])
    got, cursor = [], None
    while True:
        page = store.events(None, 0, 100, limit=2, cursor=cursor)
        got += [r.event.seq for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(got) == [1, 2, 3, 4, 5]


def test_events_newest_first_page_without_loss(store: Store) -> None:
    # Equal timestamps too: the id breaks ties, in the same order both ways.
    store.write_stream([event("pi-01", 1, s, ts=50.0 + s // 2) for s in range(1, 8)])
    store.write_stream([event("pi-02", 1, 1, ts=52.0)])
    oldest = [(r.event.device, r.event.seq) for r in store.events(None, 0, 100, 100).items]
    got, cursor = [], None
    for _ in range(20):
        page = store.events(None, 0, 100, limit=3, cursor=cursor, newest_first=True)
        got += [(r.event.device, r.event.seq) for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert got == oldest[::-1]
    window = store.events("pi-01", 51.0, 53.0, 10, newest_first=True).items
    assert [r.event.seq for r in window] == [5, 4, 3, 2]


# --------------------------------------------------------------------------- devices


def test_provisioned_device_is_never_seen(store: Store) -> None:
    store.add_device("pi-01")
    store.add_device("pi-01")
    [rec] = store.devices()
    assert (rec.device, rec.state, rec.epoch) == ("pi-01", "never_seen", 0)
    assert (rec.first_seen, rec.last_seen, rec.last_health) == (None, None, None)
    assert store.device("nobody") is None


def test_status_health_and_touch(store: Store) -> None:
    store.add_device("pi-01")
    store.record_status(status("pi-01", 4, "online", agent_version="0.2.0"), received_at=T0)
    rec = store.device("pi-01")
    assert rec is not None
    assert (rec.state, rec.epoch, rec.agent_version, rec.model_version) == (
        "online",
        4,
        "0.2.0",
        "1.0.0",
    )
    assert rec.first_seen == rec.last_seen == T0

    store.record_health(health("pi-01", 4, model_version="1.1.0"), received_at=T0 + 5)
    rec = store.device("pi-01")
    assert rec is not None
    assert rec.last_health == health("pi-01", 4, model_version="1.1.0").to_dict()
    assert rec.model_version == "1.1.0"
    assert rec.last_seen == T0 + 5

    store.touch("pi-01", T0 + 9)
    store.touch("pi-01", T0 + 7)  # late arrival: last_seen never goes back
    rec = store.device("pi-01")
    assert rec is not None
    assert (rec.last_seen, rec.first_seen) == (T0 + 9, T0)

    store.record_status(status("pi-01", 4, "offline"), received_at=T0 + 10)
    rec = store.device("pi-01")
    assert rec is not None
    assert (rec.state, rec.epoch) == ("offline", 4)


def model_of(store: Store, device: str) -> tuple[str | None, str | None]:
    rec = store.device(device)
    assert rec is not None
    return rec.model, rec.model_version


def test_the_model_comes_from_births_and_heartbeats_name_and_version_together(
    store: Store,
) -> None:
    store.record_status(status("pi-01", 4, model="rig-edge"), received_at=T0)
    assert model_of(store, "pi-01") == ("rig-edge", "1.0.0")
    # A will is composed at connect: it may name a model the agent has left since.
    will = status("pi-01", 4, "offline", model="will-edge", model_version="0.9.0")
    store.record_status(will, received_at=T0 + 1)
    assert model_of(store, "pi-01") == ("rig-edge", "1.0.0")
    stale = status("pi-01", 3, model="old-edge", model_version="0.1.0")
    store.record_status(stale, received_at=T0 + 2)
    assert model_of(store, "pi-01") == ("rig-edge", "1.0.0")
    store.record_status(status("pi-01", 5, model="machine-edge"), received_at=T0 + 3)
    assert model_of(store, "pi-01") == ("machine-edge", "1.0.0")
    assert store.device("pi-01") == next(d for d in store.devices() if d.device == "pi-01")
    # A heartbeat of the device's epoch moves name and version together; an older one neither.
    store.record_health(health("pi-01", 5, model="rig-edge", model_version="2.0.0"), T0 + 4)
    assert model_of(store, "pi-01") == ("rig-edge", "2.0.0")
    store.record_health(health("pi-01", 4, model="old-edge", model_version="0.1.0"), T0 + 5)
    assert model_of(store, "pi-01") == ("rig-edge", "2.0.0")
    # A device first heard of by a heartbeat gets its model from it.
    store.record_health(health("pi-02", 1, model="rig-edge", model_version="3.0.0"), T0 + 6)
    assert model_of(store, "pi-02") == ("rig-edge", "3.0.0")


def test_stale_will_of_an_older_epoch_does_not_mark_offline(store: Store) -> None:
    store.record_status(status("pi-01", 5, "online"), received_at=T0)
    store.record_status(status("pi-01", 4, "offline"), received_at=T0 + 1)
    rec = store.device("pi-01")
    assert rec is not None
    assert (rec.state, rec.epoch) == ("online", 5)


def test_any_record_creates_the_device_and_updates_last_seen(store: Store) -> None:
    store.add_device("pi-00")
    store.touch("pi-01", T0)
    store.write_stream([tele("pi-02", 1, 1, received_at=T0 + 3)])
    store.write_stream([tele("pi-00", 1, 1, received_at=T0 + 4)])
    store.record_health(health("pi-03", 2), received_at=T0 + 4)
    names = [d.device for d in store.devices()]
    assert names == ["pi-00", "pi-01", "pi-02", "pi-03"]
    by_name = {d.device: d for d in store.devices()}
    assert by_name["pi-00"].state == "online"  # it has sent something now
    assert by_name["pi-00"].last_seen == T0 + 4
    assert by_name["pi-01"].last_seen == T0
    assert by_name["pi-02"].last_seen == T0 + 3
    assert by_name["pi-03"].epoch == 2


def test_devices_carry_their_counters(store: Store) -> None:
    store.add_device("pi-01")
    store.add_counters({("pi-01", "duplicates"): 2, (None, "invalid:not_json"): 1})
    [rec] = store.devices()
    assert rec.counters == {"duplicates": 2}
    one = store.device("pi-01")
    assert one is not None
    assert one.counters == {"duplicates": 2}


# --------------------------------------------------------------------------- counters


def test_counters_add_up(store: Store) -> None:
    store.add_counters({("pi-01", "duplicates"): 2, ("pi-02", "duplicates"): 5})
    store.add_counters({("pi-01", "duplicates"): 1, (None, "invalid:not_json"): 4})
    store.add_counters({(None, "invalid:not_json"): 1, ("pi-02", "invalid:not_json"): 2})
    store.add_counters({})
    assert store.counters("pi-01") == {"duplicates": 3}
    assert store.counters("pi-02") == {"duplicates": 5, "invalid:not_json": 2}
    assert store.counters() == {"duplicates": 8, "invalid:not_json": 7}
    assert store.counters("nobody") == {}


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_are_bounded_dropping_the_oldest(store: Store) -> None:
    store.add_dead_letters([dead_letter(i) for i in range(3)], keep=4)
    store.add_dead_letters([dead_letter(i) for i in range(3, 6)], keep=4)
    got = store.dead_letters(limit=100)
    assert [d.error for d in got] == ["letter 5", "letter 4", "letter 3", "letter 2"]
    assert got[0] == dead_letter(5)
    assert [d.error for d in store.dead_letters(limit=2)] == ["letter 5", "letter 4"]


def test_dead_letters_by_device_and_payload_head_cut(store: Store) -> None:
    big = dataclasses.replace(dead_letter(3), payload_head=b"x" * 5000, payload_size=10_000_000)
    store.add_dead_letters([dead_letter(1, device=None), dead_letter(2, device="pi-02"), big], 100)
    assert [d.error for d in store.dead_letters(device="pi-02")] == ["letter 2"]
    newest = store.dead_letters()[0]
    assert (newest.payload_head, newest.payload_size) == (b"x" * 1024, 10_000_000)
    assert store.dead_letters()[-1].device is None


# --------------------------------------------------------------------------- models


def test_models_register_list_get(store: Store) -> None:
    m1 = manifest("bearing-fault", "1.9.0")
    m2 = manifest("bearing-fault", "1.10.0")
    heavy = manifest("bearing-fault-heavy", "1.0.0", variant="heavy")
    rec = store.register_model(m1, "/models/bf/1.9.0", registered_at=T0)
    assert (rec.name, rec.version, rec.variant, rec.path, rec.registered_at) == (
        "bearing-fault",
        "1.9.0",
        "edge",
        "/models/bf/1.9.0",
        T0,
    )
    assert rec.manifest == m1
    store.register_model(heavy, "/models/bfh/1.0.0", registered_at=T0 + 2)
    store.register_model(m2, "/models/bf/1.10.0", registered_at=T0 + 1)

    assert [(r.name, r.version) for r in store.models()] == [
        ("bearing-fault", "1.9.0"),
        ("bearing-fault", "1.10.0"),
        ("bearing-fault-heavy", "1.0.0"),
    ]
    got = store.model("bearing-fault-heavy", "1.0.0")
    assert got is not None
    assert (got.variant, got.manifest) == ("heavy", heavy)
    assert store.model("bearing-fault", "9.9.9") is None


def test_register_model_is_idempotent_and_refuses_a_changed_manifest(store: Store) -> None:
    m = manifest("bearing-fault", "1.0.0")
    first = store.register_model(m, "/models/a", registered_at=T0)
    again = store.register_model(manifest("bearing-fault", "1.0.0"), "/models/a", T0 + 60)
    assert again == first
    assert len(store.models()) == 1

    changed = manifest("bearing-fault", "1.0.0", metrics={"holdout_auc": 0.5})
    with pytest.raises(ValueError, match=r"bearing-fault.*1\.0\.0"):
        store.register_model(changed, "/models/a", T0 + 120)
    stored = store.model("bearing-fault", "1.0.0")
    assert stored is not None
    assert stored.manifest == m


def test_register_model_keeps_the_manifest_bytes_it_is_given(store: Store) -> None:
    m = manifest("bearing-fault", "1.0.0")
    # The same manifest as a file with other whitespace: a signature covers these bytes.
    exact = json.dumps(m.to_dict(), indent=1).encode() + b"\n"
    assert exact != manifest_file_bytes(m)
    # An older build registered it without bytes (the canonical form is kept).
    assert store.register_model(m, "/models/a", T0).manifest_bytes == manifest_file_bytes(m)
    rec = store.register_model(m, "/models/a", T0 + 1, manifest_bytes=exact)
    assert rec.manifest_bytes == exact and rec.registered_at == T0
    stored = store.model("bearing-fault", "1.0.0")
    assert stored is not None and stored.manifest_bytes == exact and stored.manifest == m
    assert [r.manifest_bytes for r in store.models()] == [exact]
    # Registered again without bytes: the exact ones stay.
    assert store.register_model(m, "/models/b", T0 + 2).manifest_bytes == exact
    with pytest.raises(ValueError, match="do not hold the manifest"):
        store.register_model(
            m, "/models/a", T0, manifest_bytes=manifest_file_bytes(manifest("other", "1.0.0"))
        )
    with pytest.raises(ValueError, match="do not hold the manifest"):
        store.register_model(m, "/models/a", T0, manifest_bytes=b"{not json")


# --------------------------------------------------------------------------- retention


def test_prune_counts_from_arrival_and_keeps_the_dedupe_record(store: Store) -> None:
    day = 86_400.0
    now = T0 + 400 * day
    store.write_stream(
        [
            # A recording of a year ago, replayed today: kept.
            tele("pi-01", 1, 1, n=10, t0=T0, step=1.0, received_at=now),
            # Readings stamped today that arrived 8 days ago: pruned.
            tele("pi-01", 1, 2, n=10, t0=now, step=1.0, received_at=now - 8 * day),
            tele("pi-01", 1, 3, n=10, t0=now, step=1.0, received_at=now - 6 * day),
            tele("pi-02", 1, 1, n=4, t0=T0, received_at=now - 9 * day),
            event("pi-01", 1, 4, ts=10.0),
        ]
    )
    removed = store.prune_telemetry(received_before=now - 7 * day)
    assert removed == 10 + 4
    kept = store.telemetry("pi-01", 0.0, 1e12, limit=1000).items
    assert sorted((m.seq, m.received_at) for m in kept) == [(1, now), (3, now - 6 * day)]
    assert len(all_readings(store, "pi-01")) == 20
    assert len(all_readings(store, "pi-02")) == 0
    assert len(store.events("pi-01", 0, 1e12, limit=10).items) == 1  # events are not pruned

    replay = store.write_stream([tele("pi-01", 1, 2, n=10, t0=now, step=1.0, received_at=now)])
    assert replay.duplicates == [("pi-01", 1, 2)]
    assert len(all_readings(store, "pi-01")) == 20
    assert store.watermark("pi-01", 1) == 4
    assert store.prune_telemetry(received_before=now - 7 * day) == 0


# --------------------------------------------------------------------------- threads


def test_readers_read_while_the_writer_writes(store: Store) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    batches = 150

    def writer() -> None:
        try:
            for b in range(batches):
                store.write_stream(
                    [tele(f"pi-{d:02d}", 1, b + 1, n=20, n_features=8) for d in range(4)]
                )
                store.touch("pi-00", T0 + b)
                store.add_counters({("pi-00", "stored"): 1})
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            last = 0
            while not done.is_set():
                wm = store.watermark("pi-00", 1)
                assert wm >= last  # watermarks never go back
                last = wm
                page = store.telemetry("pi-00", 0, 1e12, limit=500)
                assert sum(len(r) for r in page.items) <= 500
                store.devices()
                store.counters()
                store.gaps()
                store.events(None, 0, 1e12, limit=10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not errors, errors
    assert store.watermark("pi-03", 1) == batches
    assert len(all_readings(store, "pi-03")) == batches * 20
    assert store.counters("pi-00") == {"stored": batches}


def test_a_permanent_gap_keeps_the_dedupe_record_small(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, s) for s in range(1, 11)])
    for start in range(13, 10_013, 500):  # seqs 11 and 12 never come
        store.write_stream([tele("pi-01", 1, s, n=1) for s in range(start, start + 500)])
    assert store.watermark("pi-01", 1) == 10
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(11, 12)]
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            rows = db.execute("SELECT length(ledger) FROM watermarks").fetchall()
        assert len(rows) == 1 and rows[0][0] < 200  # O(gaps), not O(messages)
    # A duplicate far above the watermark is still a duplicate.
    assert store.write_stream([tele("pi-01", 1, 9_000)]).duplicates == [("pi-01", 1, 9_000)]


def test_declared_seqs_close_the_gap_and_advance_the_watermark(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, s) for s in (1, 2, 5, 6)])
    closed = store.close_seqs("pi-01", 1, 2, 4)  # 2 is stored already: only 3..4 close
    assert (closed.ranges, closed.count, closed.watermark) == ([(3, 4)], 2, 6)
    assert store.gaps() == []
    assert store.write_stream([tele("pi-01", 1, 3)]).duplicates == [("pi-01", 1, 3)]
    tail = store.close_seqs("pi-01", 1, 7, 9)  # a dropped tail: nothing after it yet
    assert (tail.ranges, tail.watermark) == ([(7, 9)], 9)


def test_a_seq_far_ahead_is_refused_not_a_giant_gap(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, 1)])
    result = store.write_stream([tele("pi-01", 1, 2**62), tele("pi-01", 1, 2)], max_ahead=1000)
    assert result.too_far == [("pi-01", 1, 2**62)]
    assert result.stored == 1 and store.gaps() == []


def test_an_issued_tail_is_a_gap_until_it_comes_or_expires(store: Store) -> None:
    store.write_stream([tele("pi-01", 1, s) for s in (1, 2)])
    store.note_issued("pi-01", 1, 5, at=T0)
    assert [(g.first_seq, g.last_seq) for g in store.gaps()] == [(3, 5)]
    store.write_stream([tele("pi-01", 1, 3)])
    assert store.expire_gaps(before=T0 - 1) == []
    expired = store.expire_gaps(before=T0 + 1)
    assert [(c.device, c.epoch, c.ranges, c.watermark) for c in expired] == [
        ("pi-01", 1, [(4, 5)], 5)
    ]
    assert store.gaps() == [] and store.watermark("pi-01", 1) == 5
    store.note_issued("pi-01", 1, 4, at=T0)  # behind the watermark: nothing opens
    assert store.gaps() == []


def test_batch_jobs_round_trip_and_unfinished_ones_fail(store: Store) -> None:
    queued = BatchJob("j1", "queued", ("pi-01", "pi-02"), 10.0, math.inf, "m", "1.0.0", 100.0)
    store.save_batch_job(queued)
    assert store.batch_job("j1") == queued
    running = dataclasses.replace(queued, id="j2", state="running", created_at=101.0, rows_done=5)
    done = dataclasses.replace(queued, id="j3", state="done", created_at=102.0, result_path="r")
    store.save_batch_job(running)
    store.save_batch_job(done)
    assert [j.id for j in store.batch_jobs()] == ["j3", "j2", "j1"]
    assert store.batch_job("nope") is None
    assert store.fail_unfinished_batch_jobs("the hub stopped", 200.0) == ["j1", "j2"]
    failed = store.batch_job("j2")
    assert failed is not None and failed.state == "failed" and failed.error == "the hub stopped"
    assert failed.rows_done == 5 and failed.finished_at == 200.0
    assert store.batch_job("j3") == done


def test_a_device_has_one_baseline_the_latest_recorded(store: Store) -> None:
    from shared.baseline import Baseline, SensorBaseline  # noqa: PLC0415

    def baseline(device: str, location: float) -> Baseline:
        sensors = {"temperature": SensorBaseline(location, 2.0)}
        return Baseline(
            device, "machine-edge", sensors, T0, T0 + 99.9, 1000, "2026-11-26T20:00:00Z"
        )

    assert store.baseline("pi-01") is None and store.baselines() == []
    store.put_baseline(baseline("pi-02", 60.0), T0)
    store.put_baseline(baseline("pi-01", 61.0), T0)
    store.put_baseline(baseline("pi-01", 62.0), T0 + 1)  # recommissioned: replaces
    assert store.baseline("pi-01") == baseline("pi-01", 62.0)
    assert [b.device for b in store.baselines()] == ["pi-01", "pi-02"]
    assert store.device("pi-02") is not None  # a baseline's device is known to the store


def test_labels_are_kept_and_found_by_overlap(store: Store) -> None:
    from cloud_hub.store.base import LabelRecord  # noqa: PLC0415

    a = store.add_label(LabelRecord(0, "pi-01", "machine-edge", 10.0, 20.0, "fault", T0, "api"))
    b = store.add_label(LabelRecord(0, "pi-02", "machine-edge", 15.0, 30.0, "urgent", T0, "api"))
    assert a.id > 0 and b.id > a.id and a.label == "fault"
    assert store.labels() == [a, b]
    assert store.labels("pi-01") == [a]
    assert store.labels(None, 20.0, 25.0) == [b]  # [10, 20) ends where the range starts
    assert store.labels(None, 0.0, 10.0) == []
    assert store.labels("pi-02", -math.inf, math.inf) == [b]


def test_two_runs_of_one_model_never_run_at_once(store: Store) -> None:
    from cloud_hub.store.base import PipelineRunRow  # noqa: PLC0415

    def row(run_id: str, model: str, at: float, state: str = "running") -> PipelineRunRow:
        return PipelineRunRow(run_id, model, state, json.dumps({"id": run_id}), at, at + 100)

    assert store.start_pipeline_run(row("r1", "m", 1.0), 1.0) is None
    assert store.start_pipeline_run(row("r2", "m", 2.0), 2.0) == "r1"  # nothing inserted
    assert store.pipeline_run("r2") is None
    assert store.start_pipeline_run(row("r3", "other", 3.0), 3.0) is None
    store.save_pipeline_run(row("r1", "m", 1.0, "failed"))
    assert store.start_pipeline_run(row("r4", "m", 4.0), 4.0) is None
    # A running run past its deadline (its process lost) does not block the next one.
    assert store.start_pipeline_run(row("r5", "other", 500.0), 500.0) is None
    assert [r.id for r in store.pipeline_runs()] == ["r5", "r4", "r3", "r1"]
    assert [r.id for r in store.pipeline_runs("m", limit=1)] == ["r4"]
    got = store.pipeline_run("r1")
    assert got is not None and got.state == "failed" and got.deadline == 101.0


def test_drift_states_events_and_windows_round_trip(store: Store) -> None:
    state = DriftStateRow("d1", "m", "1.0.0", "drifting", T0 + 5, {"temp": T0 + 5}, 400, T0 + 9)
    events = [
        DriftEventRow(
            0,
            T0 + 5,
            "device",
            "d1",
            "m",
            "1.0.0",
            "drifting",
            "ok",
            ("temp",),
            {"psi": {"temp": 0.3}},
        ),
        DriftEventRow(
            0, T0 + 6, "fleet", None, "m", "1.0.0", "drifting", "ok", ("temp",), {"devices": ["d1"]}
        ),
    ]
    window = DriftWindowRow(
        "d1", "m", "1.0.0", T0, T0 + 9, 300, {"temp": 0.3}, {"temp": 11.5}, 0.02
    )
    store.record_drift([state], events, [window])
    assert store.drift_states() == [state]
    # Insert-or-replace by (device, model, version).
    recovered = dataclasses.replace(state, state="recovered", streams={}, readings=900)
    store.record_drift([recovered], [], [])
    assert store.drift_states() == [recovered]
    page = store.drift_events(None, 0.0, T0 + 100, 1)
    assert [e.scope for e in page.items] == ["device"] and page.next_cursor is not None
    rest = store.drift_events(None, 0.0, T0 + 100, 10, cursor=page.next_cursor)
    assert [e.scope for e in rest.items] == ["fleet"] and rest.next_cursor is None
    assert rest.items[0].device is None and rest.items[0].detail == {"devices": ["d1"]}
    assert [e.device for e in store.drift_events("d1", 0.0, T0 + 100, 10).items] == ["d1"]
    assert len(store.drift_events(None, 0.0, T0 + 100, 10, scope="fleet").items) == 1
    stored = page.items[0]
    assert stored.id > 0 and stored.streams == ("temp",) and stored.detail == {"psi": {"temp": 0.3}}
    assert store.drift_windows("d1", 0.0, 10) == [window]
    assert store.drift_windows("d1", T0 + 10, 10) == []
    assert store.drift_windows("other", 0.0, 10) == []
    with pytest.raises(ValueError, match="cursor"):
        store.drift_events(None, 0.0, T0 + 100, 10, cursor="not-a-cursor")


def test_device_states_are_stored_with_their_changes(store: Store) -> None:
    store.touch("d1", T0)
    store.touch("d2", T0)
    before = store.device("d1")
    assert before is not None and before.judged_state is None
    changes = [
        DeviceStateRow(0, T0 + 1, "d1", "degraded", "online", "latency p99 41 ms over the budget"),
        DeviceStateRow(0, T0 + 2, "d2", "stale", "online", "silent for 31 s"),
        DeviceStateRow(0, T0 + 3, "d1", "online", "degraded", "heartbeat: no new errors"),
    ]
    store.record_device_states(changes)
    d1 = store.device("d1")
    assert d1 is not None
    assert (d1.judged_state, d1.state_reason, d1.state_since) == (
        "online",
        "heartbeat: no new errors",
        T0 + 3,
    )
    by_name = {r.device: r for r in store.devices()}
    assert by_name["d2"].judged_state == "stale" and by_name["d2"].state_since == T0 + 2
    page = store.device_state_events(None, 0.0, T0 + 100, 2)
    assert [(e.device, e.state) for e in page.items] == [("d1", "degraded"), ("d2", "stale")]
    assert page.next_cursor is not None and all(e.id > 0 for e in page.items)
    rest = store.device_state_events(None, 0.0, T0 + 100, 2, cursor=page.next_cursor)
    assert [(e.previous, e.state) for e in rest.items] == [("degraded", "online")]
    assert rest.next_cursor is None
    assert [e.at for e in store.device_state_events("d1", 0.0, T0 + 100, 10).items] == [
        T0 + 1,
        T0 + 3,
    ]
    assert store.device_state_events("d1", T0 + 2, T0 + 3, 10).items == []
    with pytest.raises(ValueError, match="cursor"):
        store.device_state_events(None, 0.0, T0 + 100, 10, cursor="not-a-cursor")
    # The same state for a newer reason: the reason only, no event, since unchanged.
    store.record_device_states(
        [DeviceStateRow(0, T0 + 4, "d1", "online", "online", "heartbeat: quiet")]
    )
    d1 = store.device("d1")
    assert d1 is not None
    assert (d1.judged_state, d1.state_reason, d1.state_since) == (
        "online",
        "heartbeat: quiet",
        T0 + 3,
    )
    assert len(store.device_state_events("d1", 0.0, T0 + 100, 10).items) == 2


def test_prune_takes_device_state_changes_before_the_cut(store: Store) -> None:
    day = 86_400.0
    store.touch("d1", T0)
    store.record_device_states(
        [
            DeviceStateRow(0, T0 + 1, "d1", "online", "never_seen", "birth"),
            DeviceStateRow(0, T0 + 9 * day, "d1", "stale", "online", "silent for 31 s"),
        ]
    )
    store.prune_telemetry(received_before=T0 + 2 * day)
    left = store.device_state_events(None, 0.0, T0 + 100 * day, 10).items
    assert [(e.state, e.at) for e in left] == [("stale", T0 + 9 * day)]
    d1 = store.device("d1")  # the device's current state stays
    assert d1 is not None and d1.judged_state == "stale"


def test_a_devices_ota_reports_newest_first(store: Store) -> None:
    store.write_stream([ota("pi-01", 1, s) for s in (1, 2, 3)] + [ota("pi-02", 1, 1)])
    store.write_stream([ota("pi-01", 1, 4)])
    assert [r.ota.seq for r in store.device_ota_reports("pi-01", 10)] == [4, 3, 2, 1]
    assert [r.ota.seq for r in store.device_ota_reports("pi-01", 2)] == [4, 3]
    assert [r.ota.device for r in store.device_ota_reports("pi-02", 10)] == ["pi-02"]
    assert store.device_ota_reports("nobody", 10) == []
    with pytest.raises(ValueError, match="limit"):
        store.device_ota_reports("pi-01", 0)


def test_newest_telemetry_takes_whole_messages_from_the_end_and_counts_the_range(
    store: Store,
) -> None:
    # 12 messages of 7 readings (ts 1010.., 1020.., ...), arriving out of time order.
    msgs = [tele("pi-01", 1, s, n=7, t0=1000.0 + 10 * s, step=1.0) for s in range(1, 13)]
    store.write_stream([msgs[s - 1] for s in (5, 1, 12, 2, 3, 4, 6, 11, 7, 8, 9, 10)])
    since, until = 1013.0, 1105.0  # starts and ends inside a message
    inside = np.concatenate([m.ts[(m.ts >= since) & (m.ts < until)] for m in msgs])
    got = store.newest_telemetry("pi-01", since, until, limit=10)
    assert got.readings == len(inside)
    ts = np.concatenate([r.ts for r in got.rows])
    # The last message holds 1100..1104 (5 in range), the one before all 7: 12 >= 10.
    assert ts.tolist() == inside[-12:].tolist()
    everything = store.newest_telemetry("pi-01", since, until, limit=10_000)
    assert np.concatenate([r.ts for r in everything.rows]).tolist() == inside.tolist()
    assert store.newest_telemetry("nobody", 0, 1e12, limit=5).readings == 0
    assert store.newest_telemetry("pi-01", 2000.0, 3000.0, limit=5).rows == []
