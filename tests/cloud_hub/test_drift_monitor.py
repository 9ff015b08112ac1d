"""The hub's drift monitor on a real store, the default edge model's manifest and the
simulator's streams: a drifted device becomes 'drifting' on the drifted sensor, its twin
stays 'ok', the fleet alarm fires and names both, windows and states are stored and a
restart takes the states back."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest

from cloud_hub.drift.monitor import DriftMonitor, DriftSettings, StoredTelemetry
from cloud_hub.drift.states import DriftRules, FleetAlarm, FleetRules
from cloud_hub.inference import OnnxScorer
from cloud_hub.store import SQLiteStore
from shared.drift.detector import DetectorSettings
from shared.features import DEFAULT_WINDOW, BlockFeatureWindow
from shared.manifest import load_package
from simulators.drift import DriftSpec
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import SENSORS
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(120)

N = 9000
DRIFT_AT = 7000
BATCH = 50


def _stream(
    paths: ModelPaths, index: int, drifts: tuple[DriftSpec, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    machine = SimulatedMachine(
        MachineConfig(seed=3, device_index=index, fault_rate=0.0, drifts=drifts)
    )
    values = np.array([r.values for r in machine.readings(N)])
    features = BlockFeatureWindow(DEFAULT_WINDOW, [s.fallback for s in SENSORS]).push_block(values)
    scores = OnnxScorer.from_package(load_package(paths.edge)).scores(features)
    return [(features[i : i + BATCH], scores[i : i + BATCH]) for i in range(0, N, BATCH)]


def _settings() -> DriftSettings:
    return DriftSettings(
        window_readings=1000,
        # A large drift against a high threshold: found at once, no false alarm on the twin.
        detector=DetectorSettings(fit_readings=3000, scale_readings=3000, threshold=40.0),
        rules=DriftRules(min_readings=100, recovery_readings=100_000),
        fleet=FleetRules(share=0.5, window_s=1e9, min_devices=1),
        fleet_check_s=0.0,
    )


def test_a_drifted_sensor_makes_its_device_drift_and_the_fleet_alarm(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    manifest = load_package(model_packages.edge).manifest
    sensor = SENSORS[0]
    scale = manifest.reference_sensors[sensor.name].scale
    drifted = _stream(model_packages, 1, (DriftSpec("offset", sensor.name, DRIFT_AT, 4.0 * scale),))
    twin = _stream(model_packages, 2, ())
    alarms: list[FleetAlarm] = []
    clock = itertools.count(1000.0, 1.0)
    monitor = DriftMonitor(
        edge_store, _settings(), on_fleet_alarm=alarms.append, clock=lambda: next(clock)
    )
    counts: Counter[tuple[str | None, str]] = Counter()
    name, version = manifest.name, manifest.version
    for k, ((fa, sa), (fb, sb)) in enumerate(zip(drifted, twin, strict=True)):
        at = 1000.0 + k
        batch = [
            StoredTelemetry("drifted", name, version, fa, sa, sb[:0], at),
            StoredTelemetry("twin", name, version, fb, sb, sb, at),
        ]
        counts.update(monitor.observe(batch))
    monitor.flush()
    assert counts[("drifted", "drift:drifting")] == 1
    assert counts[("twin", "drift:drifting")] == 0
    states = {r.device: r for r in edge_store.drift_states()}
    assert states["twin"].state == "ok" and states["twin"].streams == {}
    assert states["drifted"].state == "drifting"
    assert f"{sensor.name}:level" in states["drifted"].streams
    assert states["drifted"].readings == N
    events = edge_store.drift_events("drifted", 0.0, 1e12, 100).items
    # One change of state; any later event adds a stream (a coupled sensor's prediction
    # moves too) and stays drifting.
    assert events[0].state == "drifting" and events[0].previous == "ok"
    assert all(e.state == e.previous == "drifting" for e in events[1:])
    assert counts[("drifted", "drift:streams_changed")] == len(events) - 1
    # The alarm came after the drift began: batch k carries readings k*50 .. k*50+49.
    assert events[0].at >= 1000.0 + DRIFT_AT // BATCH
    fleet = edge_store.drift_events(None, 0.0, 1e12, 100, scope="fleet").items
    assert [e.state for e in fleet] == ["drifting"]
    assert alarms and alarms[0].devices == ("drifted",) and alarms[0].share == 0.5
    windows = edge_store.drift_windows("twin", 0.0, 100)
    # Windows close at the first count past 1000 readings (counts go by buffer).
    assert len(windows) >= N // 1200 and sum(w.readings for w in windows) <= N
    assert all(1000 <= w.readings < 1200 and w.disagreement is not None for w in windows)
    assert set(windows[0].psi) >= set(manifest.input.features) | {"score"}
    assert edge_store.drift_windows("drifted", 0.0, 1)[0].disagreement is None  # no heavy scores
    # A new monitor (a hub restart) takes the states and the saved detectors back: the
    # device stays drifting on more drifted readings (its detector is not blind, so it
    # alarms again rather than learning the drift as normal and calling it recovered).
    assert edge_store.drift_detector("drifted", name, version) is not None
    again = DriftMonitor(edge_store, _settings(), clock=lambda: 5000.0)
    again.restore()
    for k, (fa, sa) in enumerate(drifted[-60:]):
        again.observe([StoredTelemetry("drifted", name, version, fa, sa, sa[:0], 5000.0 + k)])
    again.flush()
    after = {r.device: r for r in edge_store.drift_states()}["drifted"]
    assert after.state == "drifting"
    assert set(states["drifted"].streams) <= set(after.streams)
    assert "recovered" not in [
        e.state for e in edge_store.drift_events("drifted", 0.0, 1e12, 100).items
    ]
    # Its detector went on testing (a restarted one would be in its start: all zeros).
    later = edge_store.drift_windows("drifted", 5000.0, 10)
    assert later and all(max(w.statistic.values()) > 0 for w in later)
    # The device moves to another version: its state on the old one goes, its events stay.
    edge_store.register_model(
        dataclasses.replace(manifest, version="9.0.0"), str(model_packages.edge), 0.0
    )
    fa, sa = drifted[0]
    again.observe([StoredTelemetry("drifted", name, "9.0.0", fa, sa, sa[:0], 6000.0)])
    again.flush()
    assert [(r.version, r.state) for r in edge_store.drift_states("drifted")] == [("9.0.0", "ok")]
    assert edge_store.drift_detector("drifted", name, version) is None
    assert edge_store.drift_events("drifted", 0.0, 1e12, 100).items


def test_unregistered_versions_and_malformed_rows_are_counted_not_raised(
    edge_store: SQLiteStore,
) -> None:
    monitor = DriftMonitor(edge_store, _settings())
    x = np.zeros((5, 3), dtype=np.float32)
    s = np.full((5, 2), 0.5, dtype=np.float32)
    counts = monitor.observe([StoredTelemetry("d", "nobody", "9.9.9", x, s, s, 1.0)])
    assert counts[("d", "drift:no_reference")] == 1
    manifest_name = next(r for r in edge_store.models()).manifest
    counts = monitor.observe(
        [StoredTelemetry("d", manifest_name.name, manifest_name.version, x, s, s, 1.0)]
    )
    assert counts[("d", "drift:bad_input")] == 1
    assert edge_store.drift_states() == []


def test_a_non_finite_message_is_counted_and_its_neighbours_are_still_counted(
    edge_store: SQLiteStore,
) -> None:
    """Values are checked once per flush, on the device's buffered messages together:
    one bad message must cost only itself."""
    manifest = next(r for r in edge_store.models()).manifest
    monitor = DriftMonitor(edge_store, dataclasses.replace(_settings(), flush_readings=150))
    width, classes = len(manifest.input.features), len(manifest.output.classes)
    x = np.zeros((50, width), dtype=np.float32)
    s = np.full((50, classes), 1.0 / classes, dtype=np.float32)
    bad = x.copy()
    bad[7, 3] = np.nan
    batch = [
        StoredTelemetry("d", manifest.name, manifest.version, f, s, s, 1.0 + i)
        for i, f in enumerate((x, bad, x, x))
    ]
    counts = monitor.observe(batch)
    assert counts[("d", "drift:bad_input")] == 1
    # The first three messages filled the buffer: the two good ones were counted.
    assert [r.readings for r in edge_store.drift_states("d")] == [100]
    monitor.flush()
    assert [r.readings for r in edge_store.drift_states("d")] == [150]
