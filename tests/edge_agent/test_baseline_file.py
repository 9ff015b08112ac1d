"""``edgeloop-agent --baseline FILE``: refused at start when wrong; applied on the reading path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.engine import load_edge_model
from edge_agent.reading import ReadingPath, load_baseline
from shared import __version__
from shared.baseline import Baseline, BaselineError
from shared.manifest import load_package
from tests.conftest import ModelPaths
from tests.edge_agent.agent_cli import run_agent_cli

pytestmark = pytest.mark.timeout(60)


def _baseline_for(package: Path, change: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = load_package(package).manifest
    body: dict[str, Any] = {
        "format": 1,
        "device": "pi-07",
        "model": manifest.name,
        "sensors": {
            # This device reads 10 % high and 3 units over the fleet's reference.
            s: {"location": r.location * 1.1 + 3.0, "scale": r.scale * 1.1}
            for s, r in manifest.reference_sensors.items()
        },
        "since": 0.0,
        "until": 100.0,
        "readings": 1000,
        "created": "2026-11-26T20:00:00Z",
    }
    return {**body, **(change or {})}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"device": "pi-08"}, "field 'device' is 'pi-08', but this is device 'pi-07'"),
        ({"model": "other-edge"}, "field 'model' is 'other-edge'"),
        ({"sensors": {"vib_rms_g": {"location": 1.0, "scale": 0.1}}}, "field 'sensors' has"),
        ({"readings": -1}, "field 'readings' = -1 must be >= 1"),
    ],
)
def test_the_agent_refuses_a_wrong_baseline_file_at_start_naming_the_field(
    model_packages: ModelPaths, tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(_baseline_for(model_packages.edge, change)))
    done = run_agent_cli(
        *("--model", str(model_packages.edge), "--device", "pi-07"),
        *("--baseline", str(path), "--state-dir", str(tmp_path / "s")),
    )
    assert done.returncode == 2, done.stderr
    assert f"baseline file {path}" in done.stderr and named in done.stderr, done.stderr


def test_a_file_that_is_not_json_is_refused(model_packages: ModelPaths, tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text("device: pi-07\n")
    manifest = load_package(model_packages.edge).manifest
    with pytest.raises(BaselineError, match="is not valid JSON"):
        load_baseline(path, "pi-07", manifest)
    with pytest.raises(BaselineError, match="cannot be read"):
        load_baseline(tmp_path / "missing.json", "pi-07", manifest)


def test_the_reading_path_feeds_the_model_mapped_values_and_the_rule_raw_ones(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(_baseline_for(model_packages.edge)))
    model = load_edge_model(model_packages.edge, __version__)
    baseline = load_baseline(path, "pi-07", model.manifest)
    ref = model.manifest.reference_sensors
    names = model.manifest.input.sensor_names
    with_b, without = ReadingPath(model, baseline), ReadingPath(model, None)
    device_normal = np.array([ref[s].location * 1.1 + 3.0 for s in names])
    feats, _, _ = with_b.step(device_normal)
    assert np.allclose(feats[: len(names)], [ref[s].location for s in names], rtol=1e-4)
    # The hard limit (temperature above 110 degC) judges what the sensor reported.
    temp = names.index("temperature")
    hot = device_normal.copy()
    hot[temp] = 112.0  # maps to ~ (112 - 3) / 1.1 = 99 degC, still beyond the raw limit
    _, _, decisions = with_b.step(hot)
    assert [(d.rule, d.sensor) for d in decisions if d.rule == "hard_limit"] == [
        ("hard_limit", "temperature")
    ]
    _, _, plain = without.step(hot)
    assert any(d.rule == "hard_limit" for d in plain)
    assert isinstance(baseline, Baseline) and with_b.map is not None and without.map is None
