"""The drift detector on the simulator's streams and on a recording replayed from CSV.

Calibration at a test-sized budget (ARL0 = 20,000 readings): the false alarms on
stationary streams, operating regimes included, stay within what the budget
allows; a drift injected into one sensor is found and named. The 10^6-reading
budget is measured by ``edgeloop-sim bench drift``, not here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.pipeline.package import sensor_references
from edge_agent.sources.csv_replay import CsvReplaySource
from shared.drift.detector import DetectorSettings, DriftDetector
from shared.features import DEFAULT_WINDOW, BlockFeatureWindow
from simulators.drift import DriftSpec
from simulators.generate import write_csv
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import FEATURE_NAMES, SENSOR_NAMES, SENSORS

ARL0 = 20_000.0
START = 30_000  # the detector's default fit + scale readings
WATCHED = 25_000


def _features(values: np.ndarray) -> np.ndarray:
    window = BlockFeatureWindow(DEFAULT_WINDOW, [s.fallback for s in SENSORS])
    return window.push_block(values).astype(np.float64)


def _values(config: MachineConfig, n: int) -> np.ndarray:
    return np.array([r.values for r in SimulatedMachine(config).readings(n)])


@pytest.fixture(scope="module")
def references() -> dict[str, object]:
    train = np.vstack(
        [
            _features(_values(MachineConfig(seed=501, device_index=d, fault_rate=0.0), 20_000))
            for d in range(2)
        ]
    )
    return dict(sensor_references(train.astype(np.float32), SENSORS))


def _budget(readings: int) -> int:
    """Most false alarms a calibrated detector may raise: 3x the budget's mean, plus 3."""
    return int(3 * readings / ARL0) + 3


@pytest.mark.timeout(90)
def test_stationary_streams_with_regimes_stay_within_the_budget(references: dict) -> None:
    alarms = 0
    for device in range(4):
        values = _values(
            MachineConfig(seed=77, device_index=device, fault_rate=0.0), START + WATCHED
        )
        speed = values[START:, SENSOR_NAMES.index("speed")]
        assert np.nanmin(speed) < 900 and np.nanmax(speed) > 1600  # idle and full load both seen
        det = DriftDetector(FEATURE_NAMES, references, DetectorSettings(arl0=ARL0))
        alarms += len(det.update(_features(values)).alarms)
    assert alarms <= _budget(4 * WATCHED), alarms


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "sensor", "channel"),
    [("offset", "temperature", "temperature:level"), ("stuck", "flow", "flow:scale")],
)
def test_a_drift_is_found_and_named(references: dict, kind: str, sensor: str, channel: str) -> None:
    start = START + 1234
    magnitude = references[sensor].scale if kind == "offset" else 0.0  # 1 sigma
    config = MachineConfig(
        seed=78, fault_rate=0.0, drifts=(DriftSpec(kind, sensor, start, magnitude),)
    )  # type: ignore[arg-type]
    det = DriftDetector(FEATURE_NAMES, references)  # the default budget, 10^6 readings
    alarms = det.update(_features(_values(config, start + 600))).alarms
    assert alarms, "the drift was not found"
    assert start <= alarms[0].reading < start + 300
    assert channel in alarms[0].channels


@pytest.mark.timeout(90)
def test_a_recording_replayed_from_csv_stays_within_the_budget(
    tmp_path: Path, references: dict
) -> None:
    # A device with its own calibration (offsets and gains), recorded to CSV with
    # 6 significant digits and read back as the agent's CSV replay reads it.
    path = tmp_path / "recording.csv"
    config = MachineConfig(seed=79, device_index=3, fault_rate=0.0, calibration=(0.05, 0.05))
    write_csv(path, config, START + WATCHED)
    source = CsvReplaySource(path, SENSOR_NAMES, pace="fast")
    values = np.array([r.values for r in source.readings(threading.Event())])
    assert values.shape == (START + WATCHED, len(SENSORS))
    det = DriftDetector(FEATURE_NAMES, references, DetectorSettings(arl0=ARL0))
    assert len(det.update(_features(values)).alarms) <= _budget(WATCHED)
