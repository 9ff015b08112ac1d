"""Miscalibrated simulated devices, and ``edgeloop-sim bench baseline`` end to end, small."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from simulators.drift import SimConfigError
from simulators.harness import child_env
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import SENSORS
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(120)


def test_calibration_changes_what_sensors_report_never_the_machine_or_its_labels() -> None:
    true = MachineConfig(seed=4, device_index=2, urgent_rate=0.01)
    skew = dataclasses.replace(true, calibration=(0.2, 0.3))
    a, b = SimulatedMachine(true), SimulatedMachine(skew)
    ra, rb = list(a.readings(500)), list(b.readings(500))
    assert [r.label for r in ra] == [r.label for r in rb]
    gains = np.array([g for g, _ in b.calibration()])
    offsets = np.array([o for _, o in b.calibration()])
    assert ((gains >= 1 / 1.3) & (gains <= 1.3)).all() and not np.allclose(gains, 1.0)
    low = np.array([s.min for s in SENSORS])
    high = np.array([s.max for s in SENSORS])
    for x, y in zip(ra, rb, strict=True):
        expected = np.clip(gains * x.values + offsets, low, high)
        assert np.allclose(y.values, expected, equal_nan=True)
    # The draws are the device's own: the same seed and index, the same calibration.
    assert SimulatedMachine(skew).calibration() == b.calibration()
    assert a.calibration() == tuple((1.0, 0.0) for _ in SENSORS)
    with pytest.raises(SimConfigError, match="calibration"):
        MachineConfig(seed=1, calibration=(-0.1, 0.0))


def test_bench_baseline_runs_and_its_json_holds_together(model_packages: ModelPaths) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "simulators", "bench", "baseline"),
            *("--devices", "2", "--readings", "3000", "--commission", "1000"),
            *("--urgent-rate", "0.01", "--models-dir", str(model_packages.edge.parent.parent)),
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    scenarios = [out[k] for k in ("identical", "miscalibrated", "baselines")]
    # The same machine streams, scored on the same readings after commissioning.
    assert (
        len({(s["readings"], s["urgent_episodes"], s["normal_readings"]) for s in scenarios}) == 1
    )
    assert scenarios[0]["readings"] == 2 * (3000 - 1000) and scenarios[0]["urgent_episodes"] > 0
    assert out["recall_drop_with"] == pytest.approx(
        scenarios[0]["recall"] - scenarios[2]["recall"], abs=1e-4
    )
    assert isinstance(out["meets_target"], bool)
    assert out["step_us"]["with"]["p50"] > 0 and out["commission_readings"] == 1000
