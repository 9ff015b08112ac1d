"""The drift monitor in its own process (:class:`cloud_hub.drift.background.MonitorProcess`),
with a real monitor and SQLite store: every queued reading is counted and flushed by stop,
the fleet alarm comes back to the hub's process; a monitor that falls behind makes batches
be shed (counted), never makes ``observe`` wait; a monitor call that fails is counted and the
next batch goes on; a killed monitor process is started again and takes its state back."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.drift.background import MonitorProcess
from cloud_hub.drift.monitor import DriftMonitor, DriftSettings, StoredTelemetry
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
    # Received over the last minutes, by the clock the child's fleet rule reads.
    t0 = time.time() - len(drifted)
    return [
        [
            StoredTelemetry("drifted", name, version, fa, sa, sb[:0], t0 + k),
            StoredTelemetry("twin", name, version, fb, sb, sb, t0 + k),
        ]
        for k, ((fa, sa), (fb, sb)) in enumerate(zip(drifted, twin, strict=True))
    ]


def _url(store: SQLiteStore) -> str:
    return f"sqlite:///{store.path}"


def _until(monitor: MonitorProcess, counts: Counts, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60.0
    while not done() and time.monotonic() < deadline:
        counts.update(monitor.observe([]))
        time.sleep(0.05)


def test_every_queued_reading_is_tracked_and_stop_flushes(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    alarms: list[FleetAlarm] = []
    monitor = MonitorProcess(
        edge_store, _url(edge_store), _settings(), on_fleet_alarm=alarms.append
    )
    monitor.start()
    counts: Counts = Counter()
    try:
        for batch in _batches(model_packages):
            counts.update(monitor.observe(batch))
        _until(monitor, counts, lambda: bool(alarms))
    finally:
        monitor.stop(30.0)
    assert not monitor.running
    # A worker that did not stop in time: its batches are shed, no monitor starts again.
    late = monitor.observe(_batches(model_packages)[0])
    assert late[("twin", "drift:shed_readings")] == 50 and not monitor.running
    assert counts[("drifted", "drift:drifting")] == 1
    assert counts[("twin", "drift:drifting")] == 0
    assert sum(v for (_, k), v in counts.items() if k == "drift:shed_readings") == 0
    # The child's fleet alarm reached the hub's process.
    assert [a.devices for a in alarms] == [("drifted",)]
    states = {r.device: r for r in edge_store.drift_states()}
    # Every reading counted, the last buffers by stop's flush; detectors saved by it.
    assert states["drifted"].readings == states["twin"].readings == N
    assert states["drifted"].state == "drifting" and states["twin"].state == "ok"
    manifest = load_package(model_packages.edge).manifest
    assert edge_store.drift_detector("twin", manifest.name, manifest.version) is not None


class StuckMonitor(DriftMonitor):
    """Fault: the first call with readings waits until a file appears (a monitor far
    behind ingest). Module level, so that the spawned child can import it."""

    release: Path

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        if batch and not getattr(self, "stuck_once", False):
            self.stuck_once = True
            self.release.with_suffix(".entered").touch()
            for _ in range(600):
                if self.release.exists():
                    break
                time.sleep(0.1)
        return super().observe(batch)


def stuck_monitor(release: Path) -> Callable[..., DriftMonitor]:
    return _Factory(StuckMonitor, release=release)


class _Factory:
    """A picklable factory that sets attributes on the monitor it builds."""

    def __init__(self, cls: type[DriftMonitor], **attrs: Any) -> None:
        self.cls, self.attrs = cls, attrs

    def __call__(self, *args: Any, **kwargs: Any) -> DriftMonitor:
        monitor = self.cls(*args, **kwargs)
        for k, v in self.attrs.items():
            setattr(monitor, k, v)
        return monitor


def _wait_file(path: Path) -> bool:
    for _ in range(600):
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def test_a_monitor_far_behind_sheds_batches_counted_and_never_blocks_ingest(
    edge_store: SQLiteStore, model_packages: ModelPaths, tmp_path: Path
) -> None:
    batches = _batches(model_packages)[:40]  # 100 readings each
    release = tmp_path / "release"
    monitor = MonitorProcess(
        edge_store,
        _url(edge_store),
        _settings(),
        queue_max_readings=1000,
        factory=stuck_monitor(release),
    )
    monitor.start()
    counts: Counts = Counter()
    try:
        counts.update(monitor.observe(batches[0]))
        assert _wait_file(release.with_suffix(".entered"))
        # The child is stuck on batch 0 (its 100 readings still count as queued): 9 more
        # batches fit, the other 30 are shed, and each call returns at once.
        for batch in batches[1:]:
            counts.update(monitor.observe(batch))
        release.touch()
    finally:
        monitor.stop(30.0)
    shed = {d: counts[(d, "drift:shed_readings")] for d in ("drifted", "twin")}
    assert shed == {"drifted": 30 * 50, "twin": 30 * 50}
    states = {r.device: r for r in edge_store.drift_states()}
    assert states["drifted"].readings == states["twin"].readings == 10 * 50


class FailingMonitor(DriftMonitor):
    """Fault: the first call with readings raises."""

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counts:
        if batch and not getattr(self, "failed", False):
            self.failed = True
            raise RuntimeError("injected")
        return super().observe(batch)


def test_a_failing_monitor_call_is_counted_and_the_next_batch_goes_on(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    batches = _batches(model_packages)[:3]
    monitor = MonitorProcess(edge_store, _url(edge_store), _settings(), factory=FailingMonitor)
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


def test_a_killed_monitor_process_starts_again_and_takes_its_state_back(
    edge_store: SQLiteStore, model_packages: ModelPaths
) -> None:
    batches = _batches(model_packages)
    alarms: list[FleetAlarm] = []
    monitor = MonitorProcess(
        edge_store, _url(edge_store), _settings(), on_fleet_alarm=alarms.append, restart_s=0.0
    )
    monitor.start()
    counts: Counts = Counter()
    try:
        for batch in batches:
            counts.update(monitor.observe(batch))
        _until(monitor, counts, lambda: bool(alarms))
        first = monitor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _until(monitor, counts, lambda: monitor.pid != first and monitor.running)
        assert counts[(None, "drift:monitor_restarts")] == 1
        # The new child restored the stored state: more drifted readings keep the device
        # drifting (no second ok -> drifting change), and they are counted.
        before = {r.device: r.readings for r in edge_store.drift_states()}["drifted"]
        for batch in batches[-40:]:
            counts.update(monitor.observe(batch))
    finally:
        monitor.stop(30.0)
    after = {r.device: r for r in edge_store.drift_states()}["drifted"]
    assert after.state == "drifting"
    assert after.readings > before
    assert counts[("drifted", "drift:drifting")] == 1


def test_settings_that_cannot_work_are_refused(edge_store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="queue_max_readings"):
        MonitorProcess(edge_store, _url(edge_store), DriftSettings(), queue_max_readings=0)
