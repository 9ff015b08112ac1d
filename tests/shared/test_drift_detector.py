"""The drift detector and its calibration helpers on small synthetic streams (no simulator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.drift.calibration import alarm_counts, calibration_points, threshold_from_points
from shared.drift.detector import (
    CALIBRATION,
    DetectorSettings,
    DriftDetector,
    cusum,
    threshold_for,
)
from shared.manifest import SensorReference

pytestmark = pytest.mark.timeout(30)

NAMES = ("a_last", "b_last", "c_last", "a_mean")
REF = SensorReference(location=0.0, scale=1.0, low=-3.0, high=3.0)
REFS = {"a": REF, "b": REF, "c": REF}
SETTINGS = DetectorSettings(fit_readings=5000, scale_readings=5000, threshold=20.0)


def _stream(n: int = 30000, seed: int = 0) -> np.ndarray:
    """Three sensors moved together by a regime that switches every 100 readings."""
    rng = np.random.default_rng(seed)
    regime = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=n // 100), 100)
    x = regime[:, None] * [1.0, 2.0, 0.5] + rng.normal(scale=0.05, size=(n, 3))
    return np.column_stack([x, x[:, 0]])  # a_mean: a column the detector does not read


def test_a_shift_of_one_sensor_is_found_and_named() -> None:
    x = _stream()
    x[25000:, 1] += 0.5
    det = DriftDetector(NAMES, REFS, SETTINGS)
    out = det.update(x)
    assert det.ready and out.values.shape[1] == 6
    assert all(a.reading >= 25000 for a in out.alarms)
    first = out.alarms[0]
    assert first.reading < 25000 + 300 and first.channels == ("b:level",)
    assert first.statistic >= 1.0


def test_a_stuck_sensor_is_found_on_its_noise_channel() -> None:
    x = _stream()
    x[25000:, 2] = x[25000, 2]
    out = DriftDetector(NAMES, REFS, SETTINGS).update(x)
    assert out.alarms and out.alarms[0].reading < 25000 + 300
    assert "c:scale" in out.alarms[0].channels


def test_batches_of_any_size_give_what_one_batch_gives() -> None:
    x = _stream()
    x[22000:, 0] -= 0.3
    whole = DriftDetector(NAMES, REFS, SETTINGS).update(x)
    det = DriftDetector(NAMES, REFS, SETTINGS)
    parts = []
    rng = np.random.default_rng(1)
    i = 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 700))
        parts.append(det.update(x[i : i + n]))
        i += n
    assert tuple(a for p in parts for a in p.alarms) == whole.alarms
    # Equal up to rounding: the fit sums its design rows by one matrix product per
    # batch, and a different split adds them in another order.
    np.testing.assert_allclose(np.vstack([p.values for p in parts]), whole.values, atol=1e-9)
    np.testing.assert_array_equal(np.concatenate([p.readings for p in parts]), whole.readings)
    assert det.readings == x.shape[0]


def test_alarm_counts_agree_with_the_detectors_cusum() -> None:
    u = [np.random.default_rng(3).normal(size=(5000, 4)), np.zeros((10, 4))]
    hs = np.array([3.0, 5.0])
    counts = alarm_counts(u, 0.5, hs)
    for h, c in zip(hs, counts, strict=True):
        n = sum(len(cusum(p, 0.5, float(h), np.zeros(4), np.zeros(4))) for p in u)
        assert n == c


def test_calibration_points_and_threshold() -> None:
    points = calibration_points(np.array([1.0, 2.0, 3.0, 4.0]), np.array([900, 90, 9, 1]), 1000)
    assert points == ((1.0, round(math.log(1000 / 900), 4)), (2.0, 2.4079), (3.0, 4.7105))
    assert threshold_from_points(points, 2.4079) == pytest.approx(2.0)
    # Beyond the last point: along the tail, never below the last threshold.
    assert threshold_from_points(points, 10.0) > 3.0
    hs = [threshold_for(a) for a in (1e3, 1e4, 1e5, 1e6, 1e7, 1e8)]
    assert hs == sorted(hs) and CALIBRATION[0][0] < hs[3] < CALIBRATION[-1][0]
    with pytest.raises(ValueError, match="needs 2"):
        calibration_points(np.array([1.0, 2.0]), np.array([9, 1]), 1000)


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (np.zeros((5, 3)), r"must be \(n, 4\)"),
        (np.zeros(4), r"must be \(n, 4\)"),
        (np.zeros((0, 4)), "empty batch"),
        (np.array([[0.0, np.nan, 0.0, 0.0]]), "row 0, feature b_last is nan"),
        (np.array([[0.0, 0.0, np.inf, 0.0]]), "row 0, feature c_last is inf"),
    ],
)
def test_bad_batches_are_refused_and_change_nothing(batch: np.ndarray, words: str) -> None:
    det = DriftDetector(NAMES, REFS, SETTINGS)
    det.update(_stream(200)[:120])
    with pytest.raises(ValueError, match=words):
        det.update(batch)
    assert det.readings == 120


def test_bad_set_ups_are_refused() -> None:
    with pytest.raises(ValueError, match=r"no reference location/scale for sensor\(s\) \['c'\]"):
        DriftDetector(NAMES, {"a": REF, "b": REF}, SETTINGS)
    with pytest.raises(ValueError, match="no '<sensor>_last' feature"):
        DriftDetector(("a_mean",), REFS, SETTINGS)
    with pytest.raises(ValueError, match="give threshold"):
        DetectorSettings(batch=40)
    with pytest.raises(ValueError, match=r"DetectorSettings\.k"):
        DetectorSettings(k=6.0)
    with pytest.raises(ValueError, match=r"DetectorSettings\.arl0"):
        DetectorSettings(arl0=10.0)


@pytest.mark.parametrize("cut", [1000, 5000, 7025, 26000])
def test_a_saved_detector_goes_on_as_if_never_stopped(cut: int) -> None:
    x = _stream()
    x[25000:, 1] += 0.5
    a = DriftDetector(NAMES, REFS, SETTINGS)
    a.update(x[:cut])
    b = DriftDetector(NAMES, REFS, SETTINGS)
    b.load(a.save())
    assert (b.ready, b.readings) == (a.ready, a.readings)
    first, second = a.update(x[cut:]), b.update(x[cut:])
    assert [(al.reading, al.channels) for al in first.alarms] == [
        (al.reading, al.channels) for al in second.alarms
    ]
    assert first.alarms and np.allclose(first.values, second.values)


def test_a_saved_state_of_another_detector_or_junk_is_refused() -> None:
    a = DriftDetector(NAMES, REFS, SETTINGS)
    a.update(_stream(2000))
    other = DriftDetector(("a_last", "b_last"), {"a": REF, "b": REF}, SETTINGS)
    with pytest.raises(ValueError, match="channels"):
        other.load(a.save())
    with pytest.raises(ValueError, match="not a saved drift detector"):
        a.load(b"junk")
    assert a.readings == 2000
