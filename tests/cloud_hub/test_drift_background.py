"""The drift monitor on its own thread (:class:`cloud_hub.drift.background.MonitorThread`),
with a real monitor and SQLite store: every queued reading is counted and flushed by stop;
a monitor that falls behind makes batches be shed (counted), never makes ``observe`` wait;
a monitor call that fails is counted and the next batch goes on; after stop, batches are
shed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from cloud_hub.drift.background import MonitorThread
from cloud_hub.drift.monitor import DriftMonitor, StoredTelemetry
from cloud_hub.drift.states import FleetAlarm
from cloud_hub.store import SQLiteStore
from shared.manifest import load_package
from simulators.drift import DriftSpec
from simulators.sensors import SENSORS
from tests.cloud_hub.test_drift_monitor import DRIFT_AT, N, _settings, _stream
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(120)

Counts = Counter[tuple[str | None, str]]


def _batches(paths: ModelPaths) -> list[list[StoredTelemetry]]:
    manifest = load_package(paths.edge).manifest
    sensor = SENSORS[0]
    scale = manifest.reference_sensors[sensor.name].scale
    drifted = _stream(paths, 1, (DriftSpec("offset", sensor.name, DRIFT_AT, 4.0 * scale),))
    twin = _stream(paths, 2, ())
    name, version = manifest.name, manifest.version
    # Received over the last minutes, by the clock the monitor's fleet rule reads.
    t0 = time.time() - len(drifted)
    return [
        [
            StoredTelemetry("drifted", name, version, fa, sa, sb[:0], t0 + k),
            StoredTelemetry("twin", name, version, fb, sb, sb, t0 + k),
        ]
        for k, ((fa, sa), (fb, sb)) in enumerate(zip(drifted, twin, strict=True))
    ]


def _until(monitor: MonitorThread, counts: Counts, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60.0
    while not done() and time.monotonic() < deadline:
        counts.update(monitor.observe([]))
        time.sleep(0.05)


def test_every_queued_reading_is_tracked_and_stop_flushes(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    alarms: list[FleetAlarm] = []
    monitor = MonitorThread(DriftMonitor(edge_store, _settings(), on_fleet_alarm=alarms.append))
    monitor.start()
    counts: Counts = Counter()
    try:
        for batch in _batches(model_packages):
            counts.update(monitor.observe(batch))
        _until(monitor, counts, lambda: bool(alarms))
    finally:
        monitor.stop(30.0)
    assert not monitor.running
    # A worker that did not stop in time: its batches are shed, counted.
    late = monitor.observe(_batches(model_packages)[0])
    assert late.pop(("twin", "drift:shed_readings")) == 50
    assert late.pop(("drifted", "drift:shed_readings")) == 50
    counts.update(late)  # and the counters the monitor produced last
    assert counts[("drifted", "drift:drifting")] == 1
    assert counts[("twin", "drift:drifting")] == 0
    assert sum(v for (_, k), v in counts.items() if k == "drift:shed_readings") == 0
    assert [a.devices for a in alarms] == [("drifted",)]
    states = {r.device: r for r in edge_store.drift_states()}
    # Every reading counted, the last buffers by stop's flush; detectors saved by it.
    assert states["drifted"].readings == states["twin"].readings == N
    assert states["drifted"].state == "drifting" and states["twin"].state == "ok"
    manifest = load_package(model_packages.edge).manifest
    assert edge_store.drift_detector("twin", manifest.name, manifest.version) is not None


class _Stuck(DriftMonitor):
    """Fault: the first call with readings blocks until released (a monitor far behind)."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store, _settings())
        self.release = threading.Event()
        self.entered = threading.Event()

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        if batch and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(60.0)
        return super().observe(batch)


def test_a_monitor_far_behind_sheds_batches_counted_and_never_blocks_ingest(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    batches = _batches(model_packages)[:40]  # 100 readings each
    stuck = _Stuck(edge_store)
    monitor = MonitorThread(stuck, queue_max_readings=1000)
    monitor.start()
    counts: Counts = Counter()
    try:
        counts.update(monitor.observe(batches[0]))
        assert stuck.entered.wait(30.0)
        # The monitor is stuck on batch 0 (its 100 readings still count as queued): 9
        # more batches fit, the other 30 are shed, and each call returns at once.
        for batch in batches[1:]:
            counts.update(monitor.observe(batch))
        stuck.release.set()
    finally:
        monitor.stop(30.0)
    shed = {d: counts[(d, "drift:shed_readings")] for d in ("drifted", "twin")}
    assert shed == {"drifted": 30 * 50, "twin": 30 * 50}
    states = {r.device: r for r in edge_store.drift_states()}
    assert states["drifted"].readings == states["twin"].readings == 10 * 50


class _Failing(DriftMonitor):
    """Fault: the first call with readings raises."""

    failed = False

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        if batch and not self.failed:
            self.failed = True
            raise RuntimeError("injected")
        return super().observe(batch)


def test_a_failing_monitor_call_is_counted_and_the_next_batch_goes_on(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    batches = _batches(model_packages)[:3]
    monitor = MonitorThread(_Failing(edge_store, _settings()))
    monitor.start()
    counts: Counts = Counter()
    try:
        counts.update(monitor.observe(batches[0]))
        _until(monitor, counts, lambda: counts[(None, "drift:errors")] > 0)
        for batch in batches[1:]:
            counts.update(monitor.observe(batch))
    finally:
        monitor.stop(30.0)
    assert counts[(None, "drift:errors")] == 1
    states = {r.device: r for r in edge_store.drift_states()}
    assert states["drifted"].readings == 2 * 50


def test_queue_bound_must_be_positive(edge_store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="queue_max_readings"):
        MonitorThread(DriftMonitor(edge_store), queue_max_readings=0)
