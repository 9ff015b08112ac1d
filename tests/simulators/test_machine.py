"""Tests for simulators.machine and simulators.drift: determinism, labels,
urgent injection, the stop action and its log, every drift kind, dropouts and
config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ConfigError
from simulators import (
    CLASSES,
    DRIFT_KINDS,
    NOISE_SIGMA,
    DriftSpec,
    MachineConfig,
    SimConfigError,
    SimulatedMachine,
    parse_drift,
)
from simulators.sensors import SENSOR_NAMES

TEMP = SENSOR_NAMES.index("temperature")
VIB = SENSOR_NAMES.index("vibration")
SPEED = SENSOR_NAMES.index("speed")
CURRENT = SENSOR_NAMES.index("current")


def run(config: MachineConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = SimulatedMachine(config)
    rows = list(m.readings(n))
    return np.array([r.values for r in rows]), np.array([r.label for r in rows])


# --- determinism -----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_same_seed_same_stream() -> None:
    cfg = MachineConfig(seed=11, device_index=3, fault_rate=1e-3, urgent_rate=5e-3)
    v1, y1 = run(cfg, 3000)
    v2, y2 = run(cfg, 3000)
    assert np.array_equal(v1, v2, equal_nan=True)
    assert np.array_equal(y1, y2)


@pytest.mark.timeout(30)
def test_different_seed_or_device_different_stream() -> None:
    base, _ = run(MachineConfig(seed=11), 500)
    other_seed, _ = run(MachineConfig(seed=12), 500)
    other_device, _ = run(MachineConfig(seed=11, device_index=1), 500)
    assert not np.array_equal(base, other_seed, equal_nan=True)
    assert not np.array_equal(base, other_device, equal_nan=True)


@pytest.mark.timeout(30)
def test_reading_fields() -> None:
    m = SimulatedMachine(MachineConfig(seed=0, rate_hz=4.0))
    for k, r in enumerate(m.readings(50)):
        assert r.index == k
        assert r.sim_time == k / 4.0
        assert r.values.shape == (len(SENSOR_NAMES),)
        assert r.values.dtype == np.float64
        assert not r.values.flags.writeable
        assert r.label in (0, 1, 2)
    assert m.index == 50
    assert CLASSES == ("normal", "fault", "urgent")


# --- labels ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_label_proportions_follow_the_rates() -> None:
    rate, (lo, hi) = 0.01, (5, 20)
    values, labels = [], []
    for d in range(4):
        v, y = run(MachineConfig(seed=2, device_index=d, fault_rate=1e-3, urgent_rate=rate), 5000)
        values.append(v)
        labels.append(y)
        # A developing fault never heals: once labelled fault, never normal again.
        if (y == 1).any():
            assert not (y[int(np.argmax(y == 1)) :] == 0).any()
    y = np.concatenate(labels)
    # Urgent episodes start at `rate` per non-urgent reading and last (lo+hi)/2.
    expected = rate * (lo + hi) / 2 / (1 + rate * (lo + hi) / 2)
    assert (y == 2).mean() == pytest.approx(expected, rel=0.25)
    assert (y == 1).mean() > 0.3  # onsets after ~1000 readings, 5000 per device
    assert (y == 0).mean() > 0.05


@pytest.mark.timeout(60)
def test_urgent_label_matches_urgent_thresholds() -> None:
    # The invariant an edge urgent rule relies on: label 2 <=> over a threshold.
    v, y = run(MachineConfig(seed=4, fault_rate=1e-3, urgent_rate=0.01, dropout_prob=0.0), 20000)
    over = (v[:, TEMP] > 110.0) | (v[:, VIB] > 15.0)
    assert np.array_equal(over, y == 2)
    assert (y == 1).any() and (y == 2).any()


@pytest.mark.timeout(30)
def test_zero_rates_give_only_normal_labels() -> None:
    _, y = run(MachineConfig(seed=9, fault_rate=0.0, urgent_rate=0.0), 5000)
    assert (y == 0).all()


# --- urgent injection ------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["overheat", "vibration_spike"])
def test_injected_urgent_shows_on_next_reading_and_persists(kind: str) -> None:
    m = SimulatedMachine(MachineConfig(seed=1, urgent_rate=0.0, urgent_duration=(4, 4)))
    before = list(m.readings(30))
    assert all(r.label != 2 for r in before)
    m.inject_urgent(kind)  # type: ignore[arg-type]
    assert m.urgent == kind
    shown = list(m.readings(4))
    for r in shown:
        assert r.label == 2
        if kind == "overheat":
            assert r.values[TEMP] > 110.0
        else:
            assert r.values[VIB] > 15.0
    after = m.step()
    assert after.label != 2
    assert after.values[TEMP] < 110.0 and after.values[VIB] < 15.0
    assert ("inject", 29, kind) in m.log


@pytest.mark.timeout(30)
def test_inject_unknown_kind_is_a_value_error() -> None:
    m = SimulatedMachine(MachineConfig(seed=1))
    with pytest.raises(ValueError, match="overheat, vibration_spike"):
        m.inject_urgent("fire")  # type: ignore[arg-type]


# --- stop / start and the log ----------------------------------------------------


@pytest.mark.timeout(30)
def test_stop_drops_speed_and_current_and_is_logged_between_readings() -> None:
    m = SimulatedMachine(MachineConfig(seed=3, urgent_rate=0.0, dropout_prob=0.0))
    *_, last = m.readings(42)
    k = last.index
    m.inject_urgent("overheat")
    m.stop("overheat on device 0")
    assert m.stopped
    nxt = m.step()
    assert nxt.index == k + 1
    assert nxt.label != 2  # stopping cleared the injected condition
    assert nxt.values[CURRENT] < 1.0 < last.values[CURRENT]
    assert nxt.values[SPEED] < last.values[SPEED]
    log = m.log
    i = log.index(("reading", k, ""))
    assert log[i:] == [
        ("reading", k, ""),
        ("inject", k, "overheat"),
        ("stop", k, "overheat on device 0"),
        ("reading", k + 1, ""),
    ]
    rest = list(m.readings(1500))
    assert rest[20].values[SPEED] < 30.0
    # Temperatures cool toward ambient (25 degC) with their lag.
    assert rest[-1].values[TEMP] < min(last.values[TEMP], 30.0)
    assert all(r.label != 2 for r in rest)
    m.start()
    assert not m.stopped
    again = list(m.readings(50))
    assert again[-1].values[SPEED] > 500.0
    assert m.log[-51] == ("start", k + 1501, "")


@pytest.mark.timeout(30)
def test_inject_while_stopped_shows_once() -> None:
    m = SimulatedMachine(MachineConfig(seed=3, urgent_rate=0.0, urgent_duration=(5, 5)))
    m.stop("maintenance")
    m.inject_urgent("vibration_spike")
    labels = [r.label for r in m.readings(5)]
    assert labels[0] == 2 and 2 not in labels[1:]


@pytest.mark.timeout(30)
def test_log_is_bounded_and_ordered() -> None:
    m = SimulatedMachine(MachineConfig(seed=3, log_size=16))
    assert m.log == []
    m.stop("before any reading")
    assert m.log == [("stop", -1, "before any reading")]
    list(m.readings(100))
    m.start()
    log = m.log
    assert len(log) == 16
    assert log[-1] == ("start", 99, "")
    assert log[-2] == ("reading", 99, "")
    readings = [e[1] for e in log if e[0] == "reading"]
    assert readings == list(range(85, 100))


@pytest.mark.timeout(30)
def test_random_onsets_are_logged_before_their_reading() -> None:
    m = SimulatedMachine(MachineConfig(seed=5, fault_rate=0.01, urgent_rate=0.05, log_size=4096))
    rows = list(m.readings(1000))
    log = m.log
    kinds = [e[0] for e in log]
    assert "fault" in kinds and "urgent" in kinds
    for pos, (kind, idx, detail) in enumerate(log):
        if kind == "urgent":
            assert log[pos + 1] == ("reading", idx, "")
            assert detail in ("overheat", "vibration_spike")
            assert rows[idx].label == 2
        elif kind == "fault":
            assert log[pos + 1] == ("reading", idx, "")
            assert all(r.label != 1 for r in rows[:idx])
            assert all(r.label != 0 for r in rows[idx:])


# --- drift -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DRIFT_KINDS)
@pytest.mark.parametrize("sensor", ["temperature", "flow"])
def test_drift_changes_only_its_sensor_from_start(kind: str, sensor: str) -> None:
    start, n = 700, 2000
    cfg = MachineConfig(seed=21, fault_rate=1e-3, urgent_rate=2e-3)
    twin, twin_y = run(cfg, n)
    spec = DriftSpec(kind, sensor, start, 2.5)  # type: ignore[arg-type]
    drifted, y = run(MachineConfig(seed=21, fault_rate=1e-3, urgent_rate=2e-3, drifts=(spec,)), n)
    k = SENSOR_NAMES.index(sensor)
    assert np.array_equal(y, twin_y)  # drift is in the sensor, not the machine
    assert np.array_equal(drifted[:start], twin[:start], equal_nan=True)
    others = [j for j in range(len(SENSOR_NAMES)) if j != k]
    assert np.array_equal(drifted[:, others], twin[:, others], equal_nan=True)
    ok = ~np.isnan(drifted[start:, k]) & ~np.isnan(twin[start:, k])
    diff = drifted[start:, k][ok] - twin[start:, k][ok]
    if kind == "stuck":
        assert diff[0] == 0.0  # the held value is the value at start ...
        assert np.all(drifted[start:, k][ok] == twin[start, k])
        assert np.count_nonzero(diff) > 0.9 * diff.size  # ... and then it differs
    else:
        assert np.all(diff != 0.0)
    if kind == "offset":
        assert diff == pytest.approx(2.5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sensor", SENSOR_NAMES)
def test_one_sigma_mean_shift_moves_the_mean_by_sigma(sensor: str) -> None:
    start, n = 500, 4000
    k = SENSOR_NAMES.index(sensor)
    spec = parse_drift(f"mean_shift:{sensor}:{start}:1.0")
    twin, _ = run(MachineConfig(seed=8), n)
    drifted, _ = run(MachineConfig(seed=8, drifts=(spec,)), n)
    shift = np.nanmean(drifted[start:, k]) - np.nanmean(twin[start:, k])
    assert shift == pytest.approx(NOISE_SIGMA[sensor], rel=0.02)
    assert np.nanmean(drifted[:start, k]) == np.nanmean(twin[:start, k])


@pytest.mark.timeout(60)
def test_variance_drift_scales_the_noise() -> None:
    start, n, mag = 200, 5000, 3.0
    twin, _ = run(MachineConfig(seed=8, dropout_prob=0.0), n)
    spec = DriftSpec("variance", "pressure", start, mag)
    drifted, _ = run(MachineConfig(seed=8, dropout_prob=0.0, drifts=(spec,)), n)
    k = SENSOR_NAMES.index("pressure")
    extra = drifted[start:, k] - twin[start:, k]  # (mag - 1) x the sensor's noise
    assert np.std(extra) == pytest.approx((mag - 1) * NOISE_SIGMA["pressure"], rel=0.05)


@pytest.mark.timeout(30)
def test_drift_spec_validation_names_the_field_and_choices() -> None:
    with pytest.raises(SimConfigError, match="valid sensors: temperature, vibration") as e:
        DriftSpec("offset", "humidity", 0, 1.0)
    assert e.value.setting == "DriftSpec.sensor"
    with pytest.raises(ValueError, match=r"DriftSpec\.start"):
        DriftSpec("offset", "flow", -1, 1.0)
    with pytest.raises(ValueError, match=r"DriftSpec\.kind"):
        DriftSpec("drift", "flow", 0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DriftSpec\.magnitude"):
        DriftSpec("offset", "flow", 0, math.nan)
    with pytest.raises(ValueError, match=r"DriftSpec\.magnitude"):
        DriftSpec("variance", "flow", 0, -1.0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("", "kind"),
        ("mean_shift:temperature:500", "4 parts"),
        ("mean_shift:temp:500:1.0", "sensor 'temp'"),
        ("mean_shift:temperature:-1:1.0", "start"),
        ("mean_shift:temperature:5.5:1.0", "start '5.5'"),
        ("mean_shift:temperature:5:big", "magnitude 'big'"),
        ("mean_shift:temperature:5:inf", "magnitude"),
        ("offset:flow:1:2:3", "4 parts"),
    ],
)
def test_parse_drift_errors_say_what_is_wrong(text: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        parse_drift(text)


@st.composite
def drift_specs(
    draw: st.DrawFn, max_magnitude: float = math.inf, max_start: int = 10**12
) -> DriftSpec:
    kind = draw(st.sampled_from(DRIFT_KINDS))
    low = 0.0 if kind == "variance" else -max_magnitude
    magnitude = draw(
        st.floats(low, max_magnitude, allow_nan=False, allow_infinity=False)
        | st.sampled_from([0.0, 1.0, 2.5])
    )
    return DriftSpec(
        kind,  # type: ignore[arg-type]
        draw(st.sampled_from(SENSOR_NAMES)),
        draw(st.integers(min_value=0, max_value=max_start)),
        magnitude,
    )


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(spec=drift_specs())
def test_parse_drift_reads_back_str(spec: DriftSpec) -> None:
    assert parse_drift(str(spec)) == spec


@pytest.mark.timeout(60)
@settings(max_examples=500, deadline=None)
@given(
    text=st.text()
    | st.lists(
        st.sampled_from([*DRIFT_KINDS, *SENSOR_NAMES, "1", "-3", "0.5", "nan", "", " x ", "1e999"]),
        max_size=6,
    ).map(":".join)
)
def test_parse_drift_raises_only_value_error_on_garbage(text: str) -> None:
    try:
        spec = parse_drift(text)
    except ValueError:
        return
    assert isinstance(spec, DriftSpec)
    assert spec.start >= 0 and math.isfinite(spec.magnitude)


# --- dropouts --------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("p", [0.0, 0.002, 0.05])
def test_dropouts_are_nan_at_the_configured_rate(p: float) -> None:
    n = 20000
    v, _ = run(MachineConfig(seed=6, dropout_prob=p), n)
    missing = np.isnan(v)
    expected = p * v.size
    assert abs(missing.sum() - expected) <= 5 * math.sqrt(expected) + 1
    assert np.isfinite(v[~missing]).all()


# --- config ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("seed", 1.5),
        ("device_index", -2),
        ("rate_hz", 0.0),
        ("rate_hz", math.inf),
        ("dropout_prob", 1.0),
        ("dropout_prob", -0.1),
        ("fault_rate", math.nan),
        ("urgent_rate", 2),
        ("drifts", ["mean_shift:temperature:1:1"]),
        ("regime_dwell", 0.5),
        ("fault_ramp", 0),
        ("urgent_duration", (5, 2)),
        ("urgent_duration", 5),
        ("log_size", 0),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"seed": 1, field: value}
    with pytest.raises(SimConfigError, match=rf"MachineConfig\.{field}") as e:
        MachineConfig(**kwargs)  # type: ignore[arg-type]
    assert e.value.setting == f"MachineConfig.{field}"
    assert isinstance(e.value, ValueError) and isinstance(e.value, ConfigError)


configs = st.builds(
    MachineConfig,
    seed=st.integers(0, 2**63),
    device_index=st.integers(0, 10_000),
    rate_hz=st.floats(0.1, 1000.0),
    dropout_prob=st.floats(0.0, 0.5),
    fault_rate=st.floats(0.0, 0.05),
    urgent_rate=st.floats(0.0, 0.2),
    drifts=st.lists(drift_specs(max_magnitude=1e6, max_start=300), max_size=3).map(tuple),
    regime_dwell=st.floats(1.0, 1000.0),
    fault_ramp=st.integers(1, 5000),
    urgent_duration=st.tuples(st.integers(1, 5), st.integers(5, 30)),
)


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None)
@given(cfg=configs)
def test_any_valid_config_gives_sane_readings(cfg: MachineConfig) -> None:
    m = SimulatedMachine(cfg)
    for r in m.readings(300):
        assert r.label in (0, 1, 2)
        assert not np.isinf(r.values).any()
        assert r.sim_time == r.index / cfg.rate_hz
