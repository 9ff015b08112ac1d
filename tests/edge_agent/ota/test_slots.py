"""The agent's model slots and OTA files on disk (edge_agent.ota.slots), on a real directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.ota.machine import Breadcrumb, Target
from edge_agent.ota.slots import ModelSlots, SlotName
from shared.ota import OtaState


def _package(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(text)
    (directory / "model.onnx").write_bytes(b"\0" * 8)
    (directory / ".target").write_text("leftover of the download")  # not copied
    return directory


def test_install_current_and_prune_keep_only_the_committed_model(tmp_path: Path) -> None:
    slots = ModelSlots(tmp_path / "state")
    slots.prepare()
    assert slots.current() is None  # never committed: the factory model runs
    old = slots.install(_package(tmp_path / "a", "old"), "pump", "1.0.0")
    new = slots.install(_package(tmp_path / "b", "new"), "pump", "1.1.0")
    assert sorted(p.name for p in new.iterdir()) == ["manifest.json", "model.onnx"]
    assert (old / "manifest.json").read_text() == "old"

    slots.set_current("pump", "1.1.0")
    assert slots.current() == SlotName("pump", "1.1.0")
    assert json.loads((slots.ota / "current.json").read_text()) == {
        "name": "pump",
        "version": "1.1.0",
    }
    assert slots.prune(SlotName("pump", "1.1.0")) == [SlotName("pump", "1.0.0")]
    assert not old.exists() and new.is_dir()

    # A discarded package goes, unless it is one to keep (running, committed).
    slots.remove("pump", "1.1.0", keep={SlotName("pump", "1.1.0")})
    assert new.is_dir()
    slots.remove("pump", "1.1.0", keep=set())
    assert not new.exists()


def test_a_half_copied_slot_is_removed_at_start(tmp_path: Path) -> None:
    slots = ModelSlots(tmp_path)
    half = tmp_path / "models" / "pump" / ".1.2.0.tmp"
    half.mkdir(parents=True)
    (half / "model.onnx").write_bytes(b"\0")
    slots.prepare()
    assert not half.exists()


def test_unusable_files_are_reported_and_do_not_stop_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slots = ModelSlots(tmp_path)
    slots.prepare()
    (slots.ota / "current.json").write_text('{"name": "pump"}')
    assert slots.current() is None
    assert "current.json is unreadable" in caplog.text and "factory model" in caplog.text
    (slots.ota / "current.json").write_text('{"name": "..", "version": "1"}')
    assert slots.current() is None  # never a path out of the models directory
    with pytest.raises(ValueError, match="path component"):
        slots.slot("pump", "../../etc")

    (slots.ota / "breadcrumb.json").write_text("{not json")
    assert slots.breadcrumb() is None
    assert not (slots.ota / "breadcrumb.json").exists()


def test_the_breadcrumb_round_trips_and_clears(tmp_path: Path) -> None:
    slots = ModelSlots(tmp_path)
    slots.prepare()
    crumb = Breadcrumb(
        OtaState.TRIAL, Target("pump", "1.1.0", "ab" * 32, "/v1/models/pump/1.1.0", size=9), "1.0.0"
    )
    slots.write_breadcrumb(crumb)
    assert slots.breadcrumb() == crumb
    slots.clear_breadcrumb()
    assert slots.breadcrumb() is None
    slots.clear_breadcrumb()  # twice is fine
