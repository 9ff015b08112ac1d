"""The hub's drift settings: checked together, turned into the monitor's settings."""

from __future__ import annotations

import argparse

import pytest

from cloud_hub.service import drift_settings
from cloud_hub.settings import OPTIONS, HubSettings, resolve_settings
from shared.errors import ConfigError

pytestmark = pytest.mark.timeout(10)


def _settings(*flags: str) -> HubSettings:
    args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(["--insecure-dev", "true", *flags])
    return resolve_settings(args, env={}, serving=True)


def test_defaults_make_the_calibrated_detector_and_the_rules() -> None:
    d = drift_settings(_settings())
    assert d.window_readings == 300 and d.detector.arl0 == 1e6 and d.detector.threshold is None
    assert (d.detector.fit_readings, d.detector.scale_readings) == (20_000, 10_000)
    assert (d.rules.min_readings, d.rules.recovery_readings) == (200, 3000)
    assert (d.fleet.share, d.fleet.window_s, d.fleet.min_devices) == (0.2, 3600.0, 2)


def test_other_start_lengths_need_a_threshold() -> None:
    with pytest.raises(ConfigError, match="--drift-threshold"):
        _settings("--drift-fit-readings", "1000")
    with pytest.raises(ConfigError, match="drift_scale_readings"):
        _settings("--drift-scale-readings", "500")
    d = drift_settings(
        _settings(
            "--drift-fit-readings",
            "1000",
            "--drift-scale-readings",
            "1000",
            "--drift-threshold",
            "30",
        )
    )
    assert (d.detector.fit_readings, d.detector.threshold) == (1000, 30.0)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--fleet-drift-share", "0", "share in (0, 1]"),
        ("--fleet-drift-share", "1.5", "share in (0, 1]"),
        ("--drift-arl0", "10", "at least 100"),
        ("--drift-window-readings", "0", ""),
        ("--fleet-drift-min-devices", "0", ""),
    ],
)
def test_bad_values_are_refused_by_name(flag: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=flag.removeprefix("--").replace("-", "_")) as err:
        _settings(flag, value)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--latency-budget-ms", "abc", "= 'abc' is invalid: not a number; must be a number > 0"),
        ("--drift-window-readings", "3e2", "is invalid: not an integer; must be an integer >= 1"),
    ],
)
def test_a_value_that_is_not_a_number_says_so_and_what_to_give(
    flag: str, value: str, words: str
) -> None:
    # It said "could not convert string to float: 'abc'", Python's words.
    with pytest.raises(ConfigError) as err:
        _settings(flag, value)
    assert words in str(err.value) and "could not convert" not in str(err.value)
