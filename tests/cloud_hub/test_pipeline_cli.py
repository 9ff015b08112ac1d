"""``edgeloop-hub pipeline run|list|show`` against a real store: progress step by step,
exit 0 for a registered candidate, 1 with the reason for a rejected run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli import main
from tests.cloud_hub.retrain_fleet import EDGE, T0, Fleet


@pytest.mark.timeout(300)
def test_run_shows_each_step_and_exits_by_the_outcome(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["pipeline", "run", EDGE, "--from", str(T0), "--to", str(fleet.until)]
    where = ["--data-dir", str(fleet.data_dir), "--option", "f1_tolerance=0.15"]
    assert main([*base, *where, "--reason", "by hand"]) == 0
    out = capsys.readouterr().out
    for step in ("assemble", "train", "convert", "quantize", "gate", "register", "canary"):
        assert f"  {step} " in out and step + " " in out
    assert "succeeded: registered machine-edge 1.1.1" in out
    assert main([*base, *where, "--option", "sabotage_labels=0.6"]) == 1
    captured = capsys.readouterr()
    assert "rejected" in captured.out and "macro-F1" in captured.err
    assert "nothing was registered" in captured.err
    assert main(["pipeline", "list", "--data-dir", str(fleet.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "rejected" in lines[0] and "succeeded" in lines[1]
    run_id = lines[0].split()[0]
    assert main(["pipeline", "show", run_id, "--data-dir", str(fleet.data_dir)]) == 0
    shown = capsys.readouterr().out
    assert "FAIL f1_macro_vs_production" in shown and "register  skipped" in shown
    assert main(["pipeline", "show", "nope", "--data-dir", str(fleet.data_dir)]) == 2


@pytest.mark.timeout(30)
def test_a_data_dir_without_a_hub_store_is_named_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped --data-dir used to make an empty store there and then say
    # "model 'machine-edge' is not registered; the edge models: none".
    typo = tmp_path / "hbu"
    window = ["--from", "2026-11-27", "--to", "2026-11-28", "--data-dir", str(typo)]
    for argv in (["pipeline", "run", EDGE, *window], ["pipeline", "list", *window[-2:]]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"there is no hub store at {typo / 'hub.db'}: check --data-dir" in err
    assert not typo.exists()
