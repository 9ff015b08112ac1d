"""A replayed recording's epoch: the file and what shapes its messages, nothing else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edge_agent.replay_identity import replay_identity, stream_shape
from edge_agent.settings import load_settings
from shared.epochs import is_replay_epoch
from shared.errors import ConfigError
from shared.manifest import ModelManifest, load_package
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(30)

SHAPE = {"model": "machine-edge 1.1.0", "max_batch": 50, "max_delay_ms": 1000}


def test_same_content_same_epoch_wherever_the_file_is(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "sub" / "b.csv"
    b.parent.mkdir()
    a.write_text("ts,x\n1,2\n3,4\n")
    b.write_text("ts,x\n1,2\n3,4\n")
    ida, idb = replay_identity(a, SHAPE), replay_identity(b, SHAPE)
    assert ida.epoch == idb.epoch
    assert is_replay_epoch(ida.epoch)
    assert ida.file_sha256 == idb.file_sha256


def test_one_byte_or_one_setting_makes_another_replay(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("ts,x\n1,2\n3,4\n")
    base = replay_identity(a, SHAPE).epoch
    assert replay_identity(a, {**SHAPE, "max_batch": 51}).epoch != base
    a.write_text("ts,x\n1,2\n3,5\n")
    assert replay_identity(a, SHAPE).epoch != base


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.csv"):
        replay_identity(tmp_path / "missing.csv", SHAPE)


def test_the_baseline_file_and_the_model_file_are_in_the_identity(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    manifest = load_package(model_packages.edge).manifest
    base = ["--model", str(model_packages.edge), "--source", "csv", "--csv-path", "x.csv"]
    baseline = tmp_path / "baseline.json"

    def shape(*args: str, of: ModelManifest = manifest) -> str:
        return json.dumps(stream_shape(load_settings([*base, *args], env={}), of), default=str)

    shapes = {shape()}
    baseline.write_text('{"sensors": {"a": 1}}')
    shapes.add(shape("--baseline", str(baseline)))
    assert shape("--baseline", str(baseline)) in shapes  # the same content, the same replay
    baseline.write_text('{"sensors": {"a": 2}}')
    shapes.add(shape("--baseline", str(baseline)))
    other = dataclasses.replace(manifest.model, sha256="0" * 64)
    shapes.add(shape(of=dataclasses.replace(manifest, model=other)))
    urgent = dataclasses.replace(manifest.urgent, consecutive=manifest.urgent.consecutive + 1)
    shapes.add(shape(of=dataclasses.replace(manifest, urgent=urgent)))
    assert len(shapes) == 5
    with pytest.raises(ConfigError, match=r"baseline file .*missing\.json"):
        shape("--baseline", str(tmp_path / "missing.json"))
