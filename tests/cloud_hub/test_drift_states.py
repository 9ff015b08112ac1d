"""The drift state rules (cloud_hub.drift.states), pure: device states and the fleet rule."""

from __future__ import annotations

import pytest

from cloud_hub.drift.states import (
    DeviceDrift,
    DeviceView,
    DriftRules,
    DriftState,
    FleetAlarm,
    FleetRules,
    StreamVerdict,
    fleet_alarms,
    fleet_still_drifts,
)

pytestmark = pytest.mark.timeout(10)


def _alarm(stream: str) -> StreamVerdict:
    return StreamVerdict(stream, True, 0.4, 12.0)


def test_no_verdict_counts_before_min_readings() -> None:
    d = DeviceDrift(DriftRules(min_readings=100, recovery_readings=50))
    assert d.observe([_alarm("temp")], 60, at=1.0) is None
    assert d.state is DriftState.OK
    change = d.observe([_alarm("temp")], 60, at=2.0)
    assert change is not None and change.state is DriftState.DRIFTING
    assert change.previous is DriftState.OK and change.streams == ("temp",)
    assert d.since == 2.0 and d.streams_since() == {"temp": 2.0}


def test_drifting_then_recovered_after_quiet_readings_then_drifting_again() -> None:
    d = DeviceDrift(DriftRules(min_readings=0, recovery_readings=100))
    assert d.observe([_alarm("temp")], 10, at=1.0) is not None
    # A second stream joins: a change (same state, a stream more).
    joined = d.observe([_alarm("flow")], 10, at=2.0)
    assert joined is not None and joined.state is DriftState.DRIFTING
    assert joined.streams == ("flow", "temp")
    # temp has been quiet 90 readings (10 after 'flow' joined ... ): not cleared yet.
    assert d.observe([], 80, at=3.0) is None
    cleared = d.observe([], 10, at=4.0)  # temp: 100 quiet; flow: 90
    assert cleared is not None and cleared.cleared == ("temp",)
    assert cleared.state is DriftState.DRIFTING and cleared.streams == ("flow",)
    recovered = d.observe([], 10, at=5.0)
    assert recovered is not None and recovered.state is DriftState.RECOVERED
    assert recovered.streams == () and d.since == 5.0
    again = d.observe([_alarm("temp")], 1, at=6.0)
    assert again is not None and again.previous is DriftState.RECOVERED
    assert again.state is DriftState.DRIFTING


def test_a_new_alarm_resets_the_quiet_count() -> None:
    d = DeviceDrift(DriftRules(min_readings=0, recovery_readings=100))
    d.observe([_alarm("temp")], 1, at=1.0)
    d.observe([], 99, at=2.0)
    assert d.observe([_alarm("temp")], 1, at=3.0) is None  # same stream, same state
    assert d.observe([], 99, at=4.0) is None
    assert d.state is DriftState.DRIFTING
    assert d.streams_since() == {"temp": 1.0}


def test_restore_keeps_the_streams_and_their_start() -> None:
    d = DeviceDrift(DriftRules(min_readings=0, recovery_readings=5))
    d.state, d.since = DriftState.DRIFTING, 7.0
    d.restore({"temp": 7.0, "flow": 8.0})
    assert d.streams_since() == {"temp": 7.0, "flow": 8.0}
    # A detector in its start judges nothing: no reading counts towards recovery.
    assert d.observe([], 100, at=9.0, judging=False) is None
    assert d.state is DriftState.DRIFTING
    change = d.observe([], 5, at=10.0)
    assert change is not None and change.state is DriftState.RECOVERED


def test_a_persisting_drift_whose_statistic_climbs_back_stays_drifting() -> None:
    d = DeviceDrift(DriftRules(min_readings=0, recovery_readings=200, quiet_statistic=0.25))
    d.observe([_alarm("temp")], 1, at=0.0)
    # Between re-alarms the CUSUM climbs back: quiet only while it is under 0.25.
    for k in range(50):
        level = (k % 10) / 10  # 0.0 .. 0.9, then an alarm resets it
        assert d.observe([], 40, at=1.0 + k, statistics={"temp": level}) is None
    assert d.state is DriftState.DRIFTING
    # Back in control: the statistic stays low, the stream clears.
    assert d.observe([], 100, at=100.0, statistics={"temp": 0.0}) is None
    change = d.observe([], 100, at=101.0, statistics={"temp": 0.1})
    assert change is not None and change.state is DriftState.RECOVERED


def test_bad_rules_and_readings_are_refused() -> None:
    with pytest.raises(ValueError, match="recovery_readings"):
        DriftRules(recovery_readings=0)
    with pytest.raises(ValueError, match="share"):
        FleetRules(share=0.0)
    with pytest.raises(ValueError, match="readings"):
        DeviceDrift(DriftRules()).observe([], -1, at=0.0)


def _view(
    device: str, drifting: dict[str, float], version: str = "1.0.0", seen: float = 100.0
) -> DeviceView:
    return DeviceView(device, "m", version, seen, drifting)


def test_fleet_alarm_needs_the_share_on_one_stream_within_the_window() -> None:
    rules = FleetRules(share=0.3, window_s=50.0, min_devices=2)
    views = [
        _view("a", {"temp": 90.0}),
        _view("b", {"temp": 95.0}),
        _view("c", {"flow": 95.0}),
        *[_view(f"ok{i}", {}) for i in range(3)],
    ]
    alarms = fleet_alarms(views, rules, now=100.0)
    assert len(alarms) == 1
    a = alarms[0]
    assert (a.model, a.version, a.streams, a.devices) == ("m", "1.0.0", ("temp",), ("a", "b"))
    assert a.active_devices == 6 and a.share == pytest.approx(2 / 6)
    # Two streams with one device each: no alarm, even though 3 of 6 drift.
    assert (
        fleet_alarms([_view("a", {"x": 90.0}), _view("b", {"y": 90.0}), *views[3:]], rules, 100.0)
        == []
    )


def test_fleet_rule_ignores_old_drifts_silent_devices_and_other_versions() -> None:
    rules = FleetRules(share=0.5, window_s=50.0, min_devices=2)
    views = [
        _view("a", {"temp": 10.0}),  # started before the window
        _view("b", {"temp": 95.0}),
        _view("c", {"temp": 95.0}, seen=10.0),  # silent since before the window
        _view("d", {"temp": 95.0}, version="2.0.0"),
        _view("e", {}),
    ]
    assert fleet_alarms(views, rules, now=100.0) == []
    views.append(_view("f", {"temp": 99.0}))
    alarms = fleet_alarms(views, rules, now=100.0)
    assert [a.devices for a in alarms] == [("b", "f")]


def test_an_open_fleet_alarm_closes_only_under_half_the_share() -> None:
    rules = FleetRules(share=0.4, window_s=50.0, min_devices=1)
    alarm = FleetAlarm("m", "1.0.0", ("temp",), ("a", "b"), 5, 0.4)
    # The drifts started long before the window: they no longer open an alarm...
    views = [_view("a", {"temp": 1.0}), *[_view(f"ok{i}", {}) for i in range(4)]]
    assert fleet_alarms(views, rules, now=100.0) == []
    # ... but 1 of 5 (0.2 >= 0.4 / 2) keeps the open one open.
    assert fleet_still_drifts(alarm, views, rules, now=100.0)
    views.append(_view("ok9", {}))  # 1 of 6 < 0.2
    assert not fleet_still_drifts(alarm, views, rules, now=100.0)
    # Devices on another version, or silent, do not count.
    assert not fleet_still_drifts(alarm, [_view("a", {"temp": 1.0}, version="2.0.0")], rules, 100.0)
