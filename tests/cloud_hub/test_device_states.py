"""Device states: the pure rules (cloud_hub.devices.states) and the tracker that applies
them to arriving messages, on a real SQLite store."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.devices import states
from cloud_hub.devices.states import (
    OFFLINE_REASON,
    Beat,
    StateRules,
    count_states,
    judge_beat,
    shown,
    stale_verdict,
)
from cloud_hub.devices.tracker import StateTracker
from cloud_hub.store import SQLiteStore
from cloud_hub.store.base import DeviceRecord
from shared.epochs import REPLAY_EPOCH_MIN
from shared.messages import Health, Status

pytestmark = pytest.mark.timeout(30)

RULES = StateRules(stale_after_s=30.0, buffering_outbox_messages=1000, latency_budget_ms=20.0)


def test_doctests() -> None:
    result = doctest.testmod(states, report=False)
    assert result.failed == 0 and result.attempted > 0


def test_a_quiet_heartbeat_is_online() -> None:
    beat = Beat(epoch=5, latency_p99_us=1234.0, outbox_depth=3, invalid={"missing:flow": 9})
    v = judge_beat(beat, None, rules=RULES)
    assert v.state == "online"
    assert v.reason == "heartbeat: no new errors, latency p99 1.23 ms, outbox 3 messages"


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
    assert v == states.Verdict("degraded", "latency p99 41 ms over the 20 ms budget")
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


def test_tracker_records_each_change_once_with_its_reason(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        tracker = StateTracker(store, RULES)
        tracker.load()
        store.record_status(_status("online"), 100.0)
        tracker.status(_status("online"), 100.0)
        changes = tracker.changes(100.0)
        assert [(c.previous, c.state, c.reason) for c in changes] == [
            ("never_seen", "online", "birth: agent 0.1.0, model m 1.0.0")
        ]
        store.record_device_states(changes)
        tracker.heartbeat(_health(), 105.0)
        assert tracker.changes(105.0) == []  # still online: no event
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 3}), 110.0)
        (degraded,) = tracker.changes(110.0)
        assert degraded.state == "degraded" and "3 inputs out of range" in degraded.reason
        tracker.resent("pi-1", 2)
        tracker.heartbeat(_health(invalid={"out_of_range:temperature": 3}), 115.0)
        (buffering,) = tracker.changes(115.0)
        assert buffering.reason == "resending: 2 messages the hub already had"
        # Silent past the timeout: only the periodic check sees it.
        assert tracker.changes(150.0) == []
        (stale,) = tracker.check_stale(150.0)
        assert (stale.previous, stale.state) == ("buffering", "stale")
        assert tracker.check_stale(151.0) == []
        # A late will of an earlier run changes nothing; this run's will does.
        tracker.status(_status("offline", epoch=9), 152.0)
        assert [c.state for c in tracker.changes(152.0)] == ["buffering"]  # heard from again
        will = Status("pi-1", 10, 0, "offline", "0.1.0", "1.0.0", 100.0, "m")
        tracker.status(will, 153.0)
        (off,) = tracker.changes(153.0)
        assert off.state == "offline" and off.reason.startswith("its last will")
        assert tracker.check_stale(1000.0) == []  # offline does not go stale


def test_tracker_starts_from_what_the_store_recorded(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "hub.db") as store:
        first = StateTracker(store, RULES)
        first.load()
        store.record_status(_status("online"), 100.0)
        health = _health(latency_p99_us=50_000.0)
        store.record_health(health, 101.0)
        first.status(_status("online"), 100.0)
        first.heartbeat(health, 101.0)
        store.record_device_states(first.changes(101.0))
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
    for option in ("--stale-after-s", "--buffering-outbox-messages", "--latency-budget-ms"):
        assert option in done.stdout, option
