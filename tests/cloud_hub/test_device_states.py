"""Device states: the pure rules (cloud_hub.devices.states) and the tracker that applies
them to arriving messages, on a real SQLite store."""

from __future__ import annotations

import dataclasses
import doctest
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from cloud_hub.devices import states
from cloud_hub.devices.budgets import ManifestBudgets
from cloud_hub.devices.states import (
    OFFLINE_REASON,
    Beat,
    Hold,
    LatencyBudget,
    StateRules,
    Verdict,
    count_states,
    judge_beat,
    settle,
    shown,
    stale_verdict,
)
from cloud_hub.devices.tracker import StateTracker
from cloud_hub.registry.register import register_built
from cloud_hub.store import SQLiteStore
from cloud_hub.store.base import DeviceRecord, DeviceStateRow, Store
from shared.epochs import REPLAY_EPOCH_MIN
from shared.manifest import MANIFEST_FILE, load_package, write_manifest
from shared.messages import Health, Status
from tests.cloud_hub.ingest.conftest import FailingStore
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(30)

RULES = StateRules(stale_after_s=30.0, buffering_outbox_messages=1000, latency_budget_ms=20.0)
CLEAR_AT_ONCE = StateRules(stale_after_s=30.0, degraded_clear_heartbeats=1)


def test_doctests() -> None:
    result = doctest.testmod(states, report=False)
    assert result.failed == 0 and result.attempted > 0


def test_a_quiet_heartbeat_is_online() -> None:
    beat = Beat(epoch=5, latency_p99_us=1234.0, outbox_depth=3, invalid={"missing:flow": 9})
    v = judge_beat(beat, None, rules=RULES)
    assert v.state == "online"
    # The limits, not the figures: the same text from one quiet heartbeat to the next.
    assert v.reason == (
        "heartbeat: no new errors, latency p99 within the 20 ms budget (--latency-budget-ms), "
        "outbox at most 1,000 messages"
    )
    assert judge_beat(Beat(epoch=5, latency_p99_us=9.0), None, rules=RULES) == v


def test_errors_are_counted_since_the_previous_heartbeat_of_the_same_run() -> None:
    before = Beat(epoch=5, dropped={"outbox_full": 4}, invalid={"stdin_bad_line": 1})
    now = Beat(epoch=5, dropped={"outbox_full": 7}, invalid={"stdin_bad_line": 1})
    v = judge_beat(now, before, rules=RULES)
    assert v.state == "degraded"
    assert v.reason == "heartbeat: 3 errors since the last one (dropped outbox_full 3)"
    # Another run of the agent (its counters start again): all of them are new.
    v = judge_beat(Beat(epoch=6, invalid={"stdin_bad_line": 2}), before, rules=RULES)
    assert v.reason == "heartbeat: 2 errors since the agent started (invalid stdin_bad_line 2)"
    # Nothing new: online again.
    assert judge_beat(now, now, rules=RULES).state == "online"


def test_missing_and_out_of_distribution_inputs_are_not_errors_but_out_of_range_is() -> None:
    quiet = {"missing:flow": 50, "out_of_distribution:temperature": 9}
    assert judge_beat(Beat(epoch=1, invalid=quiet), None, rules=RULES).state == "online"
    bad = {**quiet, "out_of_range:temperature": 12, "out_of_range:flow": 1}
    v = judge_beat(Beat(epoch=1, invalid=bad), None, rules=RULES)
    assert v.state == "degraded"
    assert v.reason == (
        "heartbeat: 13 inputs out of range (temperature 12, flow 1) since the agent started"
    )


def test_latency_over_the_budget_is_degraded() -> None:
    v = judge_beat(Beat(epoch=1, latency_p99_us=41_000.0), None, rules=RULES)
    assert v == states.Verdict(
        "degraded", "latency p99 41 ms over the 20 ms budget (--latency-budget-ms)"
    )
    assert judge_beat(Beat(epoch=1, latency_p99_us=20_000.0), None, rules=RULES).state == "online"


def test_buffering_on_a_deep_outbox_or_resends() -> None:
    v = judge_beat(Beat(epoch=1, outbox_depth=1200), None, rules=RULES)
    assert v == states.Verdict("buffering", "outbox 1,200 messages > 1,000")
    assert judge_beat(Beat(epoch=1, outbox_depth=1000), None, rules=RULES).state == "online"
    v = judge_beat(Beat(epoch=1), None, rules=RULES, resent=4)
    assert v == states.Verdict("buffering", "resending: 4 messages the hub already had")


def test_degraded_wins_over_buffering_and_names_it() -> None:
    beat = Beat(epoch=1, outbox_depth=5000, invalid={"out_of_range:temperature": 1})
    v = judge_beat(beat, None, rules=RULES, resent=2)
    assert v.state == "degraded"
    assert v.reason.endswith(
        "; also buffering: outbox 5,000 messages > 1,000; resending: 2 messages the hub already had"
    )


def test_a_will_is_told_from_a_clean_stop_by_its_age() -> None:
    assert states.offline_reason(1000.0, 1001.0).endswith("a clean stop")
    will = states.offline_reason(1000.0, 1060.0)
    assert will.startswith("its last will: the connection dropped") and "60 s before" in will
    # No time, or a device clock far ahead: the hub does not guess.
    assert states.offline_reason(0.0, 1060.0) == OFFLINE_REASON
    assert states.offline_reason(1100.0, 1060.0) == OFFLINE_REASON


def test_stale_after_the_timeout_only() -> None:
    assert stale_verdict(100.0, 130.0, 30.0) is None
    stale = stale_verdict(100.0, 130.5, 30.0)
    assert stale is not None and stale.state == "stale"


def _record(**kw: object) -> DeviceRecord:
    base: dict[str, object] = {
        "device": "pi-1",
        "state": "online",
        "epoch": 1,
        "agent_version": "0.1.0",
        "model_version": "1.0.0",
        "first_seen": 0.0,
        "last_seen": 100.0,
        "last_health": None,
    }
    base.update(kw)
    return DeviceRecord(**base)  # type: ignore[arg-type]


def test_shown_applies_precedence_to_the_stored_state() -> None:
    degraded = _record(judged_state="degraded", state_reason="latency", state_since=90.0)
    assert shown(degraded, 110.0, 30.0) == states.Shown("degraded", "latency", 90.0)
    # Silent past the timeout: stale before the worker records it, since the timeout.
    assert shown(degraded, 200.0, 30.0).state == "stale"
    assert shown(degraded, 200.0, 30.0).since == 130.0
    # The link said offline: offline, whatever was judged before.
    off = _record(state="offline", judged_state="degraded", state_reason="x")
    assert shown(off, 110.0, 30.0) == states.Shown("offline", OFFLINE_REASON, 100.0)
    assert shown(_record(state="never_seen", last_seen=None), 1e9, 30.0).state == "never_seen"
    # Recorded stale, heard from since (the worker has not judged it yet): online.
    assert shown(_record(judged_state="stale", state_reason="s"), 110.0, 30.0).state == "online"
    assert count_states(["online", "stale", "online"]) == {
        "online": 2,
        "degraded": 0,
        "buffering": 0,
        "offline": 0,
        "stale": 1,
        "never_seen": 0,
    }


# --------------------------------------------------------------------------- the tracker


def _status(state: str, epoch: int = 10) -> Status:
    return Status("pi-1", epoch, 0, state, "0.1.0", "1.0.0", 0.0, "m")  # type: ignore[arg-type]


def _health(epoch: int = 10, **kw: object) -> Health:
    fields: dict[str, object] = {
        "device": "pi-1",
        "epoch": epoch,
        "seq": 0,
        "ts": 0.0,
        "model": "m",
        "model_version": "1.0.0",
        "uptime_s": 1.0,
        "readings": 10,
        "latency_p50_us": 100.0,
        "latency_p99_us": 200.0,
        "cpu_pct": 1.0,
        "rss_mb": 30.0,
        "outbox_depth": 0,
        "acked_seq": 0,
    }
    fields.update(kw)
    return Health(**fields)  # type: ignore[arg-type]


def _stored(tracker: StateTracker, rows: list[DeviceStateRow]) -> list[DeviceStateRow]:
    """Store ``rows`` as the ingest worker does (write, then commit); the changes."""
    tracker.store.record_device_states(rows)
    tracker.commit(rows)
    return [r for r in rows if r.is_change]


def test_tracker_records_each_change_once_with_its_reason(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, CLEAR_AT_ONCE)
        tracker.load()
        store.record_status(_status("online"), 100.0)
        tracker.status(_status("online"), 100.0)
        changes = _stored(tracker, tracker.changes(100.0))
        assert [(c.previous, c.state, c.reason) for c in changes] == [
            ("never_seen", "online", "birth: agent 0.1.0, model m 1.0.0")
        ]
        tracker.heartbeat(_health(), 105.0)
        assert _stored(tracker, tracker.changes(105.0)) == []  # still online: no event
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 3}), 110.0)
        (degraded,) = _stored(tracker, tracker.changes(110.0))
        assert degraded.state == "degraded" and "3 inputs out of range" in degraded.reason
        tracker.resent("pi-1", 2)
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 3}), 115.0)
        (buffering,) = _stored(tracker, tracker.changes(115.0))
        assert buffering.reason == "resending: 2 messages the hub already had"
        # Silent past the timeout: only the periodic check sees it.
        assert tracker.changes(150.0) == []
        (stale,) = _stored(tracker, tracker.check_stale(150.0))
        assert (stale.previous, stale.state) == ("buffering", "stale")
        assert tracker.check_stale(151.0) == []
        # A late will of an earlier run changes nothing; this run's will does.
        tracker.status(_status("offline", epoch=9), 152.0)
        heard = _stored(tracker, tracker.changes(152.0))
        assert [c.state for c in heard] == ["buffering"]  # heard from again
        will = Status("pi-1", 10, 0, "offline", "0.1.0", "1.0.0", 100.0, "m")
        tracker.status(will, 153.0)
        (off,) = _stored(tracker, tracker.changes(153.0))
        assert off.state == "offline" and off.reason.startswith("its last will")
        assert tracker.check_stale(1000.0) == []  # offline does not go stale
        assert len(store.device_state_events("pi-1", 0.0, 1e12, 100).items) == 6


def test_tracker_starts_from_what_the_store_recorded(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        first = StateTracker(store, RULES)
        first.load()
        store.record_status(_status("online"), 100.0)
        health = _health(latency_p99_us=50_000.0)
        store.record_health(health, 101.0)
        first.status(_status("online"), 100.0)
        first.heartbeat(health, 101.0)
        _stored(first, first.changes(101.0))
        assert store.device("pi-1").judged_state == "degraded"  # type: ignore[union-attr]
        # A restarted hub: the same state, no new event for it.
        again = StateTracker(store, RULES)
        again.seen("pi-1", 102.0)
        assert again.changes(102.0) == []
        # A replayed recording's birth is not the device's run: it changes nothing.
        again.status(_status("online", epoch=REPLAY_EPOCH_MIN + 5), 103.0)
        assert again.changes(103.0) == []


def test_serve_help_shows_the_state_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloud_hub", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in (
        "--stale-after-s",
        "--buffering-outbox-messages",
        "--latency-budget-ms",
        "--degraded-clear-heartbeats",
    ):
        assert option in done.stdout, option


# --------------------------------------------------------------------------- hysteresis


def _run(verdicts: list[Verdict], rules: StateRules) -> list[str]:
    hold, out = Hold(), []
    for v in verdicts:
        shown_, hold = settle(v, hold, rules=rules)
        out.append(shown_.state)
    return out


def test_a_held_state_clears_only_after_enough_clean_heartbeats_in_a_row() -> None:
    bad, slow, ok = (
        Verdict("degraded", "heartbeat: 1 error"),
        Verdict("buffering", "outbox 1,200 messages > 1,000"),
        Verdict("online", "quiet"),
    )
    three = StateRules(degraded_clear_heartbeats=3)
    assert _run([ok, bad, ok, ok, ok], three) == [
        "online",
        "degraded",
        "degraded",
        "degraded",
        "online",
    ]
    # A heartbeat that is not clean shows at once and starts the count again.
    assert _run([bad, ok, ok, slow, ok, ok, ok], three) == [
        "degraded",
        "degraded",
        "degraded",
        "buffering",
        "buffering",
        "buffering",
        "online",
    ]
    assert _run([bad, ok], StateRules(degraded_clear_heartbeats=1)) == ["degraded", "online"]
    held, _ = settle(ok, Hold(bad), rules=three)
    assert held.reason == "heartbeat: 1 error; clearing: 1 of 3 clean heartbeats in a row"
    # A restarted hub holds what it stored, without the note on clearing.
    assert Hold.of("degraded", held.reason) == Hold(bad)
    assert Hold.of("online", "quiet") == Hold()
    with pytest.raises(ValueError, match="degraded_clear_heartbeats must be >= 1"):
        StateRules(degraded_clear_heartbeats=0)


def test_one_bad_heartbeat_is_one_change_not_two(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, StateRules(stale_after_s=30.0))  # 3 clean heartbeats
        tracker.load()
        store.record_status(_status("online"), 100.0)
        tracker.status(_status("online"), 100.0)
        tracker.heartbeat(_health(), 101.0)
        _stored(tracker, tracker.changes(101.0))
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 1}), 102.0)
        assert [c.state for c in _stored(tracker, tracker.changes(102.0))] == ["degraded"]
        for at in (103.0, 104.0):
            tracker.heartbeat(_health(invalid={"out_of_range:temperature": 1}), at)
            assert _stored(tracker, tracker.changes(at)) == []
        assert store.device("pi-1").state_reason.endswith(  # type: ignore[union-attr]
            "; clearing: 2 of 3 clean heartbeats in a row"
        )
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 1}), 105.0)
        assert [c.state for c in _stored(tracker, tracker.changes(105.0))] == ["online"]


# --------------------------------------------------------------------------- stored reasons


def test_the_stored_reason_follows_a_state_that_holds_without_events(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, RULES)
        tracker.load()

        def stored() -> tuple[str | None, str | None, float | None, int]:
            r = store.device("pi-1")
            assert r is not None
            events = store.device_state_events("pi-1", 0.0, 1e12, 100).items
            return r.judged_state, r.state_reason, r.state_since, len(events)

        store.record_status(_status("online"), 100.0)
        tracker.status(_status("online"), 100.0)
        _stored(tracker, tracker.changes(100.0))
        assert stored() == ("online", "birth: agent 0.1.0, model m 1.0.0", 100.0, 1)
        # Its first heartbeat: still online, now for the heartbeat's reason.
        tracker.heartbeat(_health(latency_p99_us=900.0), 105.0)
        rows = tracker.changes(105.0)
        assert [(r.previous, r.state, r.is_change) for r in rows] == [("online", "online", False)]
        _stored(tracker, rows)
        online = judge_beat(Beat(epoch=10), None, rules=RULES).reason
        assert stored() == ("online", online, 100.0, 1)
        # Another quiet one (other figures, the same text): nothing to write.
        tracker.heartbeat(_health(latency_p99_us=1500.0), 110.0)
        assert tracker.changes(110.0) == []
        # Degraded, then degraded for another cause: one event, the reason follows.
        tracker.heartbeat(_health(latency_p99_us=41_000.0), 115.0)
        _stored(tracker, tracker.changes(115.0))
        assert stored() == (
            "degraded",
            "latency p99 41 ms over the 20 ms budget (--latency-budget-ms)",
            115.0,
            2,
        )
        tracker.heartbeat(_health(dropped={"outbox_full": 2}), 120.0)
        _stored(tracker, tracker.changes(120.0))
        assert stored() == (
            "degraded",
            "heartbeat: 2 errors since the last one (dropped outbox_full 2)",
            115.0,
            2,
        )


# --------------------------------------------------------------------------- failed writes


def test_a_change_the_store_did_not_take_is_judged_again(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, RULES)
        tracker.load()
        failing = cast(Store, FailingStore(store, 1, "record_device_states"))
        store.record_status(_status("online"), 100.0)
        tracker.status(_status("online"), 100.0)
        rows = tracker.changes(100.0)
        with pytest.raises(sqlite3.OperationalError, match="injected"):
            failing.record_device_states(rows)  # no commit: the tracker did not move
        again = tracker.changes(101.0)
        assert [(r.previous, r.state) for r in again] == [("never_seen", "online")]
        failing.record_device_states(again)
        tracker.commit(again)
        assert tracker.changes(102.0) == []
        assert store.device("pi-1").judged_state == "online"  # type: ignore[union-attr]
        # A stale check the store did not take is made again at the next check.
        assert [r.state for r in tracker.check_stale(200.0)] == ["stale"]
        assert [r.state for r in _stored(tracker, tracker.check_stale(205.0))] == ["stale"]
        assert store.device("pi-1").judged_state == "stale"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- clean stops


def test_a_clean_stop_that_says_so_is_one_however_late_it_arrives(tmp_path: Path) -> None:
    assert states.offline_reason(1000.0, 5000.0, clean=True).endswith("a clean stop")
    assert states.offline_reason(1000.0, 5000.0).startswith("its last will")
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, RULES)
        tracker.load()
        tracker.status(_status("online"), 100.0)
        _stored(tracker, tracker.changes(100.0))
        late = Status("pi-1", 10, 0, "offline", "0.1.0", "1.0.0", 100.0, "m", clean=True)
        tracker.status(late, 900.0)  # queued while the hub was down
        (off,) = _stored(tracker, tracker.changes(900.0))
        assert off.reason == "its status said offline as it stopped: a clean stop"


# --------------------------------------------------------------------------- latency budgets


def test_a_budget_given_to_the_rule_wins_over_the_hub_setting_and_is_named() -> None:
    slow = Beat(epoch=1, latency_p99_us=8_000.0)  # 8 ms: within the hub's 20 ms
    manifest = LatencyBudget(5.0, "model m 1.0.1's manifest")
    v = judge_beat(slow, None, rules=RULES, budget=manifest)
    assert v == Verdict(
        "degraded", "latency p99 8 ms over the 5 ms budget (model m 1.0.1's manifest)"
    )
    assert judge_beat(slow, None, rules=RULES).state == "online"
    fallback = LatencyBudget.fallback(RULES, "model m 0.9.0's manifest declares none")
    assert judge_beat(
        Beat(epoch=1, latency_p99_us=30_000.0), None, rules=RULES, budget=fallback
    ) == (
        Verdict(
            "degraded",
            "latency p99 30 ms over the 20 ms budget "
            "(--latency-budget-ms; model m 0.9.0's manifest declares none)",
        )
    )
    with pytest.raises(ValueError, match="latency budget must be > 0 ms"):
        LatencyBudget(0.0, "x")


def _register(
    store: SQLiteStore, data_dir: Path, edge: Path, version: str, budget: float | None
) -> None:
    """A copy of the default edge package as ``version`` with ``budget`` in its manifest,
    registered in the hub's registry."""
    root = data_dir / "built" / version
    shutil.copytree(edge, root)
    (root / "manifest.sig").unlink(missing_ok=True)
    manifest = load_package(root).manifest
    write_manifest(root, dataclasses.replace(manifest, version=version, latency_budget_ms=budget))
    assert (b'"latency_budget_ms"' in (root / MANIFEST_FILE).read_bytes()) == (budget is not None)
    register_built(store, data_dir, None, [root], by="test")


@pytest.mark.timeout(60)
def test_a_device_is_judged_by_its_model_versions_manifest_budget(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    name = load_package(model_packages.edge).manifest.name
    with SQLiteStore(tmp_path / "hub.db") as store:
        _register(store, tmp_path, model_packages.edge, "2.0.0", 5.0)  # tighter than the hub
        _register(store, tmp_path, model_packages.edge, "2.0.1", 50.0)  # looser
        _register(store, tmp_path, model_packages.edge, "2.0.2", None)  # an older package
        tracker = StateTracker(store, CLEAR_AT_ONCE, ManifestBudgets(store, CLEAR_AT_ONCE))
        tracker.load()

        def judged(version: str, latency_ms: float, at: float) -> tuple[str, str]:
            device = f"pi-{version}"
            birth = Status(device, 10, 0, "online", "0.1.0", version, 0.0, name)
            store.record_status(birth, at)
            tracker.status(birth, at)
            health = dataclasses.replace(
                _health(), device=device, model=name, model_version=version
            )
            health = dataclasses.replace(health, latency_p99_us=latency_ms * 1000.0)
            tracker.heartbeat(health, at)
            _stored(tracker, tracker.changes(at))
            record = store.device(device)
            assert record is not None and record.state_reason is not None
            return str(record.judged_state), record.state_reason

        # 8 ms: under the hub's 20 ms, over this version's 5 ms: degraded, naming the manifest.
        assert judged("2.0.0", 8.0, 100.0) == (
            "degraded",
            f"latency p99 8 ms over the 5 ms budget (model {name} 2.0.0's manifest)",
        )
        # 30 ms: over the hub's 20 ms, within this version's 50 ms: online.
        state, reason = judged("2.0.1", 30.0, 101.0)
        assert state == "online"
        assert f"latency p99 within the 50 ms budget (model {name} 2.0.1's manifest)" in reason
        # No budget in the manifest, or no manifest at all: the hub's setting, saying why.
        assert judged("2.0.2", 30.0, 102.0) == (
            "degraded",
            "latency p99 30 ms over the 20 ms budget "
            f"(--latency-budget-ms; model {name} 2.0.2's manifest declares none)",
        )
        state, reason = judged("9.9.9", 30.0, 103.0)
        assert (state, reason) == (
            "degraded",
            "latency p99 30 ms over the 20 ms budget "
            f"(--latency-budget-ms; model {name} 9.9.9 is not in the registry)",
        )
        events = store.device_state_events("pi-2.0.0", 0.0, 1e12, 100).items
        assert [(e.previous, e.state, e.reason[:35]) for e in events] == [
            ("never_seen", "degraded", "latency p99 8 ms over the 5 ms budg")
        ]


def test_budget_lookups_are_remembered_for_a_while_and_bounded(tmp_path: Path) -> None:
    now = [0.0]
    with SQLiteStore(tmp_path / "hub.db") as store:
        budgets = ManifestBudgets(
            store, RULES, refresh_s=30.0, max_versions=2, clock=lambda: now[0]
        )
        reads: list[tuple[str, str]] = []
        real = store.model

        def counted(name: str, version: str):  # type: ignore[no-untyped-def]
            reads.append((name, version))
            return real(name, version)

        store.model = counted  # type: ignore[method-assign]
        assert budgets("m", "1.0.0").ms == 20.0
        assert budgets("m", "1.0.0").source.endswith("m 1.0.0 is not in the registry")
        assert reads == [("m", "1.0.0")]  # remembered
        now[0] = 31.0
        budgets("m", "1.0.0")
        assert len(reads) == 2  # looked up again: a version registered since is seen
        budgets("m", "1.0.1")
        budgets("m", "1.0.2")
        assert len(budgets._known) == 2
