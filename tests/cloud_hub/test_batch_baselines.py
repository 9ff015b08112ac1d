"""``batch score --baseline FILE`` and ``--device-baselines``: a recording scored by
batch gets, row for row, what its agent computes with the same baseline
(:class:`edge_agent.reading.ReadingPath`, the agent's own reading path)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import main
from cloud_hub.store import open_store
from edge_agent.engine import load_edge_model
from edge_agent.reading import ReadingPath
from shared import __version__
from shared.baseline import Baseline, compute_baseline
from shared.manifest import ModelManifest
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

T0 = 1_763_719_200.0
N = 300  # rows per device; the edge model scores row by row


def _device_values(manifest: ModelManifest, seed: int, gain: float, offset: float) -> np.ndarray:
    """A device whose sensors read ``gain`` x the fleet's reference plus ``offset``,
    with dropouts and a hard-limit crossing (temperature) in raw units."""
    rng = np.random.default_rng(seed)
    ref = manifest.reference_sensors
    names = manifest.input.sensor_names
    loc = np.array([ref[s].location for s in names])
    scale = np.array([ref[s].scale for s in names])
    x = (loc + rng.normal(0.0, 1.0, size=(N, len(names))) * scale) * gain + offset
    x[N // 2 : N // 2 + 10, names.index("temperature")] = 140.0
    x[rng.random(x.shape) < 0.02] = np.nan
    return x


def _baseline(manifest: ModelManifest, device: str, x: np.ndarray) -> Baseline:
    normal = x[: N // 3]  # its commissioning period, before the crossing
    return compute_baseline(
        normal,
        manifest.input.sensor_names,
        device=device,
        model=manifest.name,
        since=T0,
        until=T0 + N // 3,
    )


def _agent(
    model_packages: ModelPaths, x: np.ndarray, baseline: Baseline | None
) -> tuple[list[float], list[int]]:
    """The urgent score and urgent (0/1) of each reading, as the agent computes them."""
    model = load_edge_model(model_packages.edge, __version__)
    path = ReadingPath(model, baseline)
    scores, urgent = [], []
    for row in x:
        _, s, decisions = path.step(row.copy())
        scores.append(float(s[model.manifest.output.urgent_index]))
        urgent.append(int(bool(decisions)))
    return scores, urgent


def _write(path: Path, manifest: ModelManifest, rows: list[tuple[str, np.ndarray]]) -> None:
    with path.open("w") as fh:
        fh.write("ts,machine," + ",".join(manifest.input.sensor_names) + "\n")
        for i, (device, values) in enumerate(rows):
            cells = ",".join("" if np.isnan(v) else repr(float(v)) for v in values)
            fh.write(f"{T0 + i:.1f},{device},{cells}\n")


def _score(
    model_packages: ModelPaths, tmp_path: Path, data: Path, *extra: str
) -> list[dict[str, str]]:
    out = tmp_path / "scored.csv"
    args = ["batch", "score", "--models-dir", str(model_packages.edge.parent.parent)]
    args += ["--data-dir", str(tmp_path / "hub"), "--model", "machine-edge"]
    args += ["--input", str(data), "--output", str(out), "--chunk-rows", "64", *extra]
    assert main(args) == 0
    with out.open() as fh:
        return list(csv.DictReader(fh))


def _assert_same(rows: list[dict[str, str]], scores: list[float], urgent: list[int]) -> None:
    np.testing.assert_allclose(
        [float(r["urgent_score"]) for r in rows], scores, rtol=1e-5, atol=1e-7
    )
    assert [int(r["urgent"]) for r in rows] == urgent


def test_a_baseline_file_maps_every_row_as_the_agent_does(
    model_packages: ModelPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_edge_model(model_packages.edge, __version__).manifest
    x = _device_values(manifest, seed=3, gain=1.3, offset=4.0)
    baseline = _baseline(manifest, "pi-07", x)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline.to_dict()))
    data = tmp_path / "rec.csv"
    _write(data, manifest, [("pi-07", row) for row in x])

    rows = _score(model_packages, tmp_path, data, "--baseline", str(path))
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    scores, urgent = _agent(model_packages, x, baseline)
    _assert_same(rows, scores, urgent)
    assert summary["baselines"] == 1 and summary["rows"] == N
    assert sum(urgent) >= 1  # the raw temperature crossing, judged on raw values

    # Without the baseline the same rows score differently: the mapping matters here.
    plain = _score(model_packages, tmp_path, data)
    assert [r["urgent_score"] for r in plain] != [r["urgent_score"] for r in rows]
    raw_scores, raw_urgent = _agent(model_packages, x, None)
    _assert_same(plain, raw_scores, raw_urgent)


def test_device_baselines_come_from_the_store_per_device(
    model_packages: ModelPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_edge_model(model_packages.edge, __version__).manifest
    a = _device_values(manifest, seed=4, gain=0.8, offset=-2.0)
    b = _device_values(manifest, seed=5, gain=1.0, offset=0.0)
    store = open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        store.put_baseline(_baseline(manifest, "dev-a", a), time.time())  # b has none
    finally:
        store.close()
    data = tmp_path / "rec.csv"
    _write(data, manifest, [(d, v[i]) for i in range(N) for d, v in (("dev-a", a), ("dev-b", b))])

    extra = ("--device-column", "machine", "--device-baselines")
    rows = _score(model_packages, tmp_path, data, *extra)
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads(printed[-1])
    assert summary["baselines"] == 1 and summary["series"] == 2
    assert "1 of 2 device(s) mapped with their commissioned baseline" in printed[-2]
    for device, values, baseline in (
        ("dev-a", a, _baseline(manifest, "dev-a", a)),
        ("dev-b", b, None),
    ):
        mine = [r for r in rows if r["device"] == device]
        _assert_same(mine, *_agent(model_packages, values, baseline))


def test_baseline_options_refuse_what_cannot_work(
    model_packages: ModelPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_edge_model(model_packages.edge, __version__).manifest
    x = _device_values(manifest, seed=6, gain=1.0, offset=0.0)
    data = tmp_path / "rec.csv"
    _write(data, manifest, [("pi-07", row) for row in x])
    base = ["batch", "score", "--models-dir", str(model_packages.edge.parent.parent)]
    base += ["--data-dir", str(tmp_path / "hub"), "--model", "machine-edge"]
    base += ["--input", str(data), "--output", str(tmp_path / "out.csv")]

    with pytest.raises(SystemExit) as info:
        main([*base, "--device-baselines"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--device-baselines" in err and "--device-column" in err, err

    wrong = _baseline(manifest, "pi-07", x).to_dict()
    wrong["sensors"] = {"vib_rms_g": {"location": 1.0, "scale": 0.1}}
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(wrong))
    assert main([*base, "--baseline", str(path)]) != 0
    err = capsys.readouterr().err
    assert f"baseline file {path}" in err and "field 'sensors'" in err, err
    assert not (tmp_path / "out.csv").exists()
