"""Per-device baselines, pure: statistics, the map onto the reference, the file form."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from shared.baseline import (
    Baseline,
    BaselineError,
    BaselineMap,
    TooFewReadingsError,
    compute_baseline,
    robust_stats,
)
from shared.manifest import SensorReference

pytestmark = pytest.mark.timeout(30)

SENSORS = ("temp", "flow")
REFERENCE = {
    "temp": SensorReference(60.0, 5.0, 40.0, 90.0),
    "flow": SensorReference(50.0, 20.0, 5.0, 120.0),
}


def _regimes(rng: np.random.Generator, n: int, idle_share: float) -> np.ndarray:
    """A two-regime machine's normal: idle or loaded, in the given mix."""
    idle = rng.random(n) < idle_share
    temp = np.where(idle, 45.0, 70.0) + rng.normal(0.0, 1.0, n)
    flow = np.where(idle, 20.0, 80.0) + rng.normal(0.0, 3.0, n)
    return np.column_stack([temp, flow])


def _baseline(values: np.ndarray, **kw: Any) -> Baseline:
    args: dict[str, Any] = {"device": "pi-07", "model": "m", "since": 0.0, "until": 9.0}
    return compute_baseline(values, SENSORS, **{**args, **kw})


def test_the_file_form_round_trips_through_json() -> None:
    b = _baseline(_regimes(np.random.default_rng(1), 500, 0.4), created="2026-11-26T20:00:00Z")
    again = Baseline.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again == b
    assert again.readings == 500 and list(again.sensors) == list(SENSORS)


def test_apply_maps_a_miscalibrated_devices_normal_onto_the_reference() -> None:
    rng = np.random.default_rng(2)
    fleet = _regimes(rng, 20_000, 0.4)
    reference = {s: _ref(robust_stats(fleet[:, j])) for j, s in enumerate(SENSORS)}
    # Another machine of the kind, another regime mix, its sensors off by a gain and an offset.
    gain, offset = np.array([1.3, 0.7]), np.array([-12.0, 25.0])
    own = _regimes(rng, 5000, 0.25) * gain + offset
    m = _baseline(own).mapping(reference, SENSORS)
    mapped = np.array([m.apply(row).copy() for row in own])
    for j, s in enumerate(SENSORS):
        got = robust_stats(mapped[:, j])
        assert got.location == pytest.approx(reference[s].location, abs=0.1 * reference[s].scale)
        assert got.scale == pytest.approx(reference[s].scale, rel=0.05)
    # The map is gain * x + offset, and the model's ranges map back into the device's units.
    assert np.allclose(m.gain, 1.0 / gain, rtol=0.05)
    (lo, hi), _ = m.device_ranges([(40.0, 90.0), (5.0, 120.0)])
    assert m.apply(np.array([lo, 50.0]))[0] == pytest.approx(40.0)
    assert m.apply(np.array([hi, 50.0]))[0] == pytest.approx(90.0)


def _ref(stats: Any) -> SensorReference:
    return SensorReference(stats.location, stats.scale, stats.low, stats.high)


def test_missing_values_are_ignored_and_a_constant_sensor_gets_the_floor() -> None:
    values = np.column_stack([np.full(100, 50.0), np.linspace(0.0, 10.0, 100)])
    values[::7, 1] = math.nan
    b = _baseline(values)
    assert b.sensors["temp"].scale == pytest.approx(1e-3 * 50.0)  # floor: 1e-3 x the level
    assert robust_stats(np.full(10, 0.0)).scale == pytest.approx(1e-3)  # floor: at least 1e-3
    assert math.isfinite(b.mapping(REFERENCE, SENSORS).gain[0])
    assert robust_stats(values[:, 1]).count == 100 - len(range(0, 100, 7))


def test_too_few_readings_says_how_many() -> None:
    with pytest.raises(TooFewReadingsError, match="40 readings; a baseline needs at least 50"):
        _baseline(np.ones((40, 2)), min_readings=50)
    values = np.ones((60, 2))
    values[:30, 1] = math.nan
    with pytest.raises(TooFewReadingsError, match="'flow' has 30 valid values") as err:
        _baseline(values, min_readings=50)
    assert err.value.field == "sensors.flow" and err.value.count == 30


GOOD = {
    "format": 1,
    "device": "pi-07",
    "model": "m",
    "sensors": {"temp": {"location": 60.0, "scale": 4.0}, "flow": {"location": 5, "scale": 1}},
    "since": 0.0,
    "until": 10.0,
    "readings": 100,
    "created": "2026-11-26T20:00:00Z",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format": 2}, "format"),
        ({"device": "no spaces"}, "device"),
        ({"model": 3}, "model"),
        ({"sensors": {}}, "sensors"),
        ({"sensors": {"temp": {"location": 1.0, "scale": 0.0}}}, "sensors.temp.scale"),
        ({"sensors": {"temp": {"location": "hot", "scale": 1.0}}}, "sensors.temp.location"),
        ({"sensors": {"temp": {"scale": 1.0}}}, "sensors.temp.location"),
        ({"since": 20.0}, "since"),
        ({"readings": 0}, "readings"),
        ({"readings": True}, "readings"),
        ({"colour": "blue"}, "colour"),
        ({"created": None}, "created"),
    ],
)
def test_a_bad_file_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BaselineError) as err:
        Baseline.from_dict({**GOOD, **change}, "b.json")
    assert err.value.field == field and f"'{field}'" in str(err.value)
    assert str(err.value).startswith("b.json: ")


def test_a_baseline_of_another_device_model_or_sensors_is_refused() -> None:
    b = Baseline.from_dict(GOOD)
    b.check_for("pi-07", "m", ("flow", "temp"), "b.json")  # order does not matter
    for args, field in [
        (("pi-08", "m", SENSORS), "device"),
        (("pi-07", "other", SENSORS), "model"),
        (("pi-07", "m", ("temp", "flow", "speed")), "sensors.speed"),
        (("pi-07", "m", ("temp",)), "sensors.flow"),
    ]:
        with pytest.raises(BaselineError) as err:
            b.check_for(*args, where="b.json")
        assert err.value.field == field


def test_a_map_needs_positive_finite_gains() -> None:
    with pytest.raises(ValueError, match="gain"):
        BaselineMap(np.array([0.0]), np.array([1.0]))
