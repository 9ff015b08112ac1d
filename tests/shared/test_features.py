"""The one feature function: FeatureWindow against a brute-force numpy reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.features import (
    DEFAULT_WINDOW,
    STATS,
    FeatureWindow,
    InputCheck,
    SensorSpec,
    expected_range,
    feature_names,
    features_for_stream,
)
from simulators.sensors import FEATURE_NAMES, SENSOR_NAMES, SENSORS

pytestmark = pytest.mark.timeout(30)

SETTINGS = settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
NOMINAL = np.array([s.fallback for s in SENSORS])
N = len(SENSORS)


def window_of(window: int = DEFAULT_WINDOW, nominal: npt.ArrayLike | None = None) -> FeatureWindow:
    """A window over the simulated machine's sensors unless ``nominal`` says otherwise."""
    return FeatureWindow(window, NOMINAL if nominal is None else np.asarray(nominal).tolist())


def stream_features(
    stream: npt.NDArray[np.float64],
    window: int = DEFAULT_WINDOW,
    nominal: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    return features_for_stream(
        stream, window, NOMINAL if nominal is None else np.asarray(nominal).tolist()
    )


def reference(
    stream: npt.NDArray[np.float64], window: int, nominal: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """Features by the definition: carry the last valid value forward (the nominal
    value before the first), pad the window with the first reading, then per sensor
    last, mean, population std and last - oldest."""
    filled = []
    last_valid = nominal.astype(np.float64)
    for raw in stream:
        row = np.where(np.isfinite(raw), raw, last_valid)
        filled.append(row)
        last_valid = row
    out = []
    for i in range(len(filled)):
        win = np.array([filled[max(j, 0)] for j in range(i - window + 1, i + 1)])
        assert win.shape == (window, len(nominal))
        stats = [win[-1], win.mean(axis=0), win.std(axis=0), win[-1] - win[0]]
        out.append(np.concatenate(stats).astype(np.float32))
    return np.array(out, dtype=np.float32).reshape(len(filled), 4 * len(nominal))


_values = st.floats(-1e4, 1e4, allow_nan=False)
_maybe_missing = st.one_of(_values, _values, _values, st.just(math.nan))


@st.composite
def streams(
    draw: st.DrawFn, elements: st.SearchStrategy[float] = _maybe_missing
) -> tuple[int, npt.NDArray[np.float64]]:
    window = draw(st.integers(2, 20))
    n = draw(st.integers(1, 60))
    stream = draw(arrays(np.float64, (n, N), elements=elements))
    return window, stream


def _assert_close(
    got: npt.NDArray[np.float32], want: npt.NDArray[np.float32], stream: npt.NDArray[np.float64]
) -> None:
    scale = 1.0 + float(np.nanmax(np.abs(np.concatenate([stream.ravel(), NOMINAL]))))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


# --------------------------------------------------------------------------- against the reference


@given(streams())
@SETTINGS
def test_matches_brute_force_reference(case: tuple[int, npt.NDArray[np.float64]]) -> None:
    window, stream = case
    fw = window_of(window)
    got = np.array([fw.push(row) for row in stream])
    want = reference(stream, window, NOMINAL)
    _assert_close(got, want, stream)
    # last and delta involve no arithmetic beyond one subtraction: they agree exactly
    np.testing.assert_array_equal(got[:, :N], want[:, :N])
    np.testing.assert_array_equal(got[:, 3 * N :], want[:, 3 * N :])
    assert fw.imputed == int(np.isnan(stream).sum())
    assert np.isfinite(got).all()


@given(streams(elements=_values))
@SETTINGS
def test_features_for_stream_equals_pushing_one_by_one(
    case: tuple[int, npt.NDArray[np.float64]],
) -> None:
    window, stream = case
    fw = window_of(window)
    one_by_one = np.array([fw.push(row) for row in stream])
    batch = stream_features(stream, window)
    assert batch.dtype == np.float32 and batch.shape == (len(stream), len(FEATURE_NAMES))
    np.testing.assert_array_equal(batch, one_by_one)


def test_features_for_stream_with_nan_and_custom_nominal() -> None:
    nominal = np.array([1.0, 2.0, 3.0])
    stream = np.array([[np.nan, 5.0, np.nan], [4.0, np.nan, 6.0], [np.nan, np.nan, np.nan]])
    got = stream_features(stream, window=3, nominal=nominal)
    np.testing.assert_allclose(got, reference(stream, 3, nominal), rtol=1e-6)
    np.testing.assert_array_equal(got[:, :3], [[1.0, 5.0, 3.0], [4.0, 5.0, 6.0], [4.0, 5.0, 6.0]])
    assert stream_features(np.empty((0, N))).shape == (0, len(FEATURE_NAMES))


@pytest.mark.parametrize("window", [2, 3, DEFAULT_WINDOW, 50])
def test_window_slides_over_many_wraps(window: int) -> None:
    rng = np.random.default_rng(window)
    stream = rng.normal(NOMINAL, 1.0 + NOMINAL / 10, size=(5 * window + 3, N))
    stream[rng.random(stream.shape) < 0.05] = np.nan
    got = stream_features(stream, window)
    _assert_close(got, reference(stream, window, NOMINAL), stream)


# --------------------------------------------------------------------------- missing values


def test_nan_is_carried_forward_and_counted() -> None:
    fw = window_of(window=4)
    first = NOMINAL + 1.0
    fw.push(first)
    assert fw.imputed == 0
    second = first + 2.0
    second[2] = np.nan
    x = fw.push(second)
    assert x[2] == np.float32(first[2])  # the last valid pressure, not NaN
    assert x[0] == np.float32(second[0])
    assert fw.imputed == 1
    third = np.full(N, np.nan)
    x = fw.push(third)
    np.testing.assert_array_equal(
        x[:N], np.where(np.isnan(second), first, second).astype(np.float32)
    )
    assert fw.imputed == 1 + N
    assert np.isfinite(x).all()


def test_leading_nan_uses_the_nominal_value() -> None:
    reading = NOMINAL * 2
    reading[[0, 5]] = np.nan
    x = window_of().push(reading)
    assert x[0] == np.float32(SENSORS[0].fallback) == np.float32(65.0)
    assert x[5] == np.float32(SENSORS[5].fallback)
    assert x[1] == np.float32(reading[1])
    # a constant window at start: mean == last, std == delta == 0
    np.testing.assert_array_equal(x[N : 2 * N], x[:N])
    assert not x[2 * N :].any()


def test_leading_nan_uses_a_custom_nominal() -> None:
    fw = window_of(window=3, nominal=[7.5, -1.0])
    assert fw.n_sensors == 2 and fw.n_features == 8
    x = fw.push(np.array([np.nan, 4.0]))
    np.testing.assert_array_equal(x[:2], [7.5, 4.0])
    assert fw.imputed == 1


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_infinite_value_counts_as_missing(bad: float) -> None:
    fw = window_of(window=3)
    fw.push(NOMINAL + 1.0)
    reading = NOMINAL + 2.0
    reading[3] = bad
    x = fw.push(reading)
    assert np.isfinite(x).all()
    assert x[3] == np.float32(NOMINAL[3] + 1.0)
    assert fw.imputed == 1


@pytest.mark.parametrize("bad", [1e200, -1e300, 1.7e308])
@pytest.mark.parametrize("escalate", ["warnings", "seterr"])
def test_a_value_whose_square_overflows_counts_as_missing(bad: float, escalate: str) -> None:
    # The quick test squares the values; past 1e154 that overflows, and numpy's
    # overflow warning may be an error (warning filters, np.seterr). Same answer.
    fw = window_of(window=3)
    fw.push(NOMINAL + 1.0)
    reading = NOMINAL + 2.0
    reading[0] = bad
    with warnings.catch_warnings(), np.errstate(over="raise" if escalate == "seterr" else "warn"):
        warnings.simplefilter("error")
        x = fw.push(reading)
    assert x[0] == np.float32(NOMINAL[0] + 1.0)
    assert np.isfinite(x).all()
    assert fw.imputed == 1


def test_caller_may_reuse_its_reading_array() -> None:
    """Agents read sensors into one buffer; the window must not keep a reference to it."""
    fw, ref = window_of(window=3), window_of(window=3)
    buf = NOMINAL + 1.0
    fw.push(buf)
    ref.push(buf.copy())
    buf[:] = np.nan
    buf[1] = 3.0
    np.testing.assert_array_equal(fw.push(buf), ref.push(buf.copy()))
    buf[:] = np.nan
    np.testing.assert_array_equal(fw.push(buf), ref.push(buf.copy()))
    assert np.isfinite(fw.push(buf)).all()


def test_returned_features_are_not_overwritten_by_the_next_push() -> None:
    fw = window_of(window=3)
    x1 = fw.push(NOMINAL)
    saved = x1.copy()
    fw.push(NOMINAL * 3)
    np.testing.assert_array_equal(x1, saved)


def test_input_is_not_modified() -> None:
    reading = NOMINAL.copy()
    reading[0] = np.nan
    window_of().push(reading)
    assert np.isnan(reading[0])


# --------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize(
    "reading",
    [
        np.zeros(N - 1),
        np.zeros(N + 1),
        np.zeros((1, N)),
        np.zeros((N, 1)),
        np.zeros(0),
        np.float64(1.0),
    ],
    ids=["short", "long", "row-matrix", "column", "empty", "scalar"],
)
def test_wrong_length_reading(reading: npt.NDArray[np.float64]) -> None:
    fw = window_of()
    with pytest.raises(ValueError, match=f"needs {N} values"):
        fw.push(reading)
    assert fw.imputed == 0
    fw.push(NOMINAL)  # the window is still usable


@pytest.mark.parametrize("window", [1, 0, -3])
def test_window_too_small(window: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        window_of(window)


@given(st.integers(2, 20), st.integers(1, 40))
@settings(max_examples=30, deadline=None, database=None)
def test_output_dtype_and_shape(window: int, n: int) -> None:
    fw = window_of(window)
    rng = np.random.default_rng(n)
    for _ in range(n):
        x = fw.push(rng.normal(NOMINAL, 1.0))
        assert x.dtype == np.float32
        assert x.shape == (len(FEATURE_NAMES),) == (fw.n_features,)


def test_integer_and_float32_readings() -> None:
    whole = np.round(NOMINAL)
    a = window_of(3).push(whole.astype(np.int64))
    b = window_of(3).push(whole.astype(np.float32))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, window_of(3).push(whole))


# --------------------------------------------------------------------------- constant signals


@given(
    c=st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.1, 1 / 3, 1800.0, 1e-300, -0.0]),
    window=st.integers(2, 20),
    extra=st.integers(0, 25),
)
@settings(max_examples=100, deadline=None, database=None)
def test_constant_signal_has_std_exactly_zero(c: float, window: int, extra: int) -> None:
    fw = window_of(window, nominal=[c, c])
    for _ in range(window + extra):
        x = fw.push(np.array([c, c]))
        std, delta = x[4:6], x[6:8]
        assert (std == 0).all(), std  # no NaN (sqrt of a negative) and no rounding residue
        assert (delta == 0).all()
        assert x[0] == np.float32(c)


@given(a=st.floats(-1e4, 1e4), b=st.floats(-1e4, 1e4), window=st.integers(2, 12))
@settings(max_examples=80, deadline=None, database=None)
def test_std_returns_to_zero_once_the_window_is_constant_again(
    a: float, b: float, window: int
) -> None:
    fw = window_of(window, nominal=[a])
    fw.push(np.array([a]))
    for _ in range(window):
        x = fw.push(np.array([b]))
    assert x[2] == 0.0 and x[3] == 0.0
    assert x[0] == x[1] or math.isclose(x[1], b, rel_tol=1e-6)


def test_large_offset_small_noise_std_is_accurate() -> None:
    """E[x^2] - E[x]^2 on raw values loses every digit here; the window must not."""
    rng = np.random.default_rng(0)
    stream = 1e7 + rng.normal(0.0, 0.01, size=(40, 1))
    got = stream_features(stream, window=10, nominal=[1e7])
    want = reference(stream, 10, np.array([1e7]))
    np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=1e-3)


# --------------------------------------------------------------------------- names


def test_feature_names_are_stats_by_sensors() -> None:
    assert STATS == ("last", "mean", "std", "delta")
    assert tuple(s.name for s in SENSORS) == SENSOR_NAMES
    assert tuple(f"{sensor}_{stat}" for stat in STATS for sensor in SENSOR_NAMES) == FEATURE_NAMES
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == len(STATS) * N
    assert FEATURE_NAMES[0] == "temperature_last"
    assert FEATURE_NAMES[N] == "temperature_mean"
    assert FEATURE_NAMES[-1] == f"{SENSOR_NAMES[-1]}_delta"
    assert feature_names(["a", "b"]) == (
        "a_last",
        "b_last",
        "a_mean",
        "b_mean",
        "a_std",
        "b_std",
        "a_delta",
        "b_delta",
    )


def test_values_sit_where_their_names_say() -> None:
    rng = np.random.default_rng(7)
    stream = rng.normal(NOMINAL, 1.0, size=(12, N))
    x = stream_features(stream, window=5)[-1]
    win = stream[-5:]
    by_name = dict(zip(FEATURE_NAMES, x, strict=True))
    for j, sensor in enumerate(SENSOR_NAMES):
        assert by_name[f"{sensor}_last"] == np.float32(win[-1, j])
        assert math.isclose(by_name[f"{sensor}_mean"], win[:, j].mean(), rel_tol=1e-6)
        assert math.isclose(by_name[f"{sensor}_std"], win[:, j].std(), rel_tol=1e-4)
        assert by_name[f"{sensor}_delta"] == np.float32(win[-1, j] - win[0, j])


def test_sensor_specs() -> None:
    assert len(set(SENSOR_NAMES)) == N
    for s in SENSORS:
        assert s.unit and math.isfinite(s.fallback)


# -- InputCheck: what the agent counts before the features -------------------------------------

CHECKED = [
    SensorSpec("t", "degC", -40.0, 200.0, 20.0),
    SensorSpec("p", "bar", 0.0, 10.0, 5.0),
]


def test_input_check_passes_a_normal_reading_through_untouched() -> None:
    ic = InputCheck(CHECKED, [(15.0, 25.0), (4.0, 6.0)])
    values = np.array([20.0, 5.0])
    assert ic.check(values) is values
    assert ic.counts() == {}


def test_input_check_counts_each_kind_per_sensor() -> None:
    ic = InputCheck(CHECKED, [(15.0, 25.0), (4.0, 6.0)])
    out = ic.check(np.array([250.0, math.nan]))  # t beyond its valid range; p missing
    assert math.isnan(out[0]) and math.isnan(out[1])
    out = ic.check(np.array([40.0, 9.0]))  # both valid, both far outside the training range
    assert out.tolist() == [40.0, 9.0]
    ic.check(np.array([29.0, 6.9]))  # within half a span of the training range: fine
    assert ic.counts() == {
        "missing:p": 1,
        "out_of_range:t": 1,
        "out_of_distribution:t": 1,
        "out_of_distribution:p": 1,
    }


def test_input_check_without_training_ranges_checks_validity_only() -> None:
    ic = InputCheck(CHECKED)
    assert ic.check(np.array([150.0, 0.0])).tolist() == [150.0, 0.0]
    assert np.isnan(ic.check(np.array([150.0, -1.0]))[1])
    assert ic.counts() == {"out_of_range:p": 1}


def test_input_check_does_not_change_the_callers_array() -> None:
    values = np.array([500.0, 5.0])
    InputCheck(CHECKED).check(values)
    assert values.tolist() == [500.0, 5.0]


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(10.0, 20.0, (5.0, 25.0)), (3.0, 3.0, (3.0 - 5e-7 * 3, 3.0 + 5e-7 * 3))],
)
def test_expected_range(low: float, high: float, expected: tuple[float, float]) -> None:
    assert expected_range(low, high) == pytest.approx(expected)


def test_sensor_spec_problems() -> None:
    assert SensorSpec("t", "u", 0.0, 1.0, 0.5).problem() is None
    assert "min < max" in (SensorSpec("t", "u", 1.0, 1.0, 1.0).problem() or "")
    assert "fallback" in (SensorSpec("t", "u", 0.0, 1.0, 2.0).problem() or "")


@pytest.mark.parametrize("n", [3, 30], ids=["python-path", "numpy-path"])
def test_input_check_paths_agree_on_random_readings(n: int) -> None:
    """Few sensors are checked in Python, many with numpy: the same counts either way."""
    sensors = [SensorSpec(f"s{i}", "u", -10.0, 10.0, 0.0) for i in range(n)]
    fast, slow = InputCheck(sensors, [(-2.0, 2.0)] * n), InputCheck(sensors, [(-2.0, 2.0)] * n)
    slow._in_python = not fast._in_python  # the other path, on the same bounds
    rng = np.random.default_rng(n)
    for _ in range(300):
        values = rng.normal(0.0, 3.0, n)
        values[rng.random(n) < 0.05] = math.nan
        values[rng.random(n) < 0.02] = 50.0
        a, b = fast.check(values), slow.check(values)
        np.testing.assert_array_equal(a, b)
    assert fast.counts() == slow.counts() and fast.counts()
