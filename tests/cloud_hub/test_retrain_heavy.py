"""The pipeline run's heavy step on a real SQLite store with real models: a heavy
candidate where the operators' labels allow it, skipped with the reason where they do
not, rejected when it is worse, and the production heavy model untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.registry.stages import Stage
from cloud_hub.retrain.job import JobSettings, execute
from cloud_hub.retrain.runs import PipelineInputs, PipelineOptions, PipelineRun, new_run
from cloud_hub.store.base import LabelRecord, PipelineRunRow
from shared.manifest import load_package
from tests.cloud_hub.retrain_fleet import EDGE, T0, Fleet, label_truth, seed_fleet
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)

HEAVY = "machine-heavy"
TOLERANCE = 0.15
"""As in test_retrain_job: these tests are about the pipeline, not the models. Trees
trained on these 4 devices' 4,764 labelled readings reach macro-F1 0.93 on the 1,164
labelled held-out ones, the production heavy model (64,000 readings) 1.00."""


@pytest.fixture
def labelled_fleet(tmp_path: Path, model_packages: ModelPaths) -> Iterator[Fleet]:
    """Four devices (seed 11: every class in the training and the held-out part, at least
    200 and 50 readings of each), every reading labelled with its ground truth."""
    fleet = seed_fleet(tmp_path, model_packages, devices=4)
    label_truth(fleet)
    try:
        yield fleet
    finally:
        fleet.store.close()


def _run(fleet: Fleet, **options: Any) -> PipelineRun:
    options.setdefault("f1_tolerance", TOLERANCE)
    run = new_run(
        "run-heavy",
        EDGE,
        "admin",
        PipelineInputs(T0, fleet.until, fleet.devices, fleet.version),
        T0,
        options=PipelineOptions(**options),
    )
    row = PipelineRunRow(run.id, EDGE, run.state, json.dumps(run.to_dict()), T0, 2e9)
    assert fleet.store.start_pipeline_run(row, T0) is None
    done = execute(fleet.store, JobSettings(fleet.store_url, fleet.data_dir, None), run.id)
    stored = fleet.store.pipeline_run(run.id)
    assert stored is not None and PipelineRun.from_dict(json.loads(stored.body)) == done
    return done


def _heavies(fleet: Fleet) -> dict[str, Stage]:
    return {r.version: r.stage for r in fleet.store.models() if r.name == HEAVY}


def test_labels_that_allow_it_register_a_heavy_candidate_with_lineage(
    labelled_fleet: Fleet,
) -> None:
    fleet = labelled_fleet
    (production,) = _heavies(fleet)
    run = _run(fleet)
    heavy = run.step("heavy")
    assert heavy.status == "ok", heavy.detail
    assert run.state == "succeeded" and run.candidate is not None, run.why
    assert run.heavy_candidate == "1.1.1"  # the next patch above the highest machine-heavy
    assert f"{HEAVY} 1.1.1" in run.decision and "heavy step ok" in run.why
    assert _heavies(fleet) == {production: Stage.PRODUCTION, "1.1.1": Stage.CANDIDATE}
    record = fleet.store.model(HEAVY, "1.1.1")
    assert record is not None and record.variant == "heavy" and record.signature is not None
    assert record.registered_by == f"pipeline:{run.id}"
    m = load_package(Path(record.path)).manifest
    assert m.model.quantization == "fp32"
    assert m.lineage.parent == production and m.lineage.pipeline_run == run.id
    edge = fleet.store.model(EDGE, run.candidate)
    assert edge is not None and m.lineage.data_hash == edge.manifest.lineage.data_hash
    assert "operator-labelled" in m.lineage.data_window
    # Trained on labelled training rows only; gated on the labelled held-out ones.
    assert (
        run.metrics["heavy_train_rows"]
        <= run.metrics["train_rows"] + run.metrics["validation_rows"]
    )
    assert run.metrics["heavy_holdout_rows"] == run.metrics["holdout_rows"]
    assert m.metrics["f1_macro"] >= m.metrics["production_f1_macro"] - TOLERANCE


def test_too_few_labels_skip_the_heavy_step_saying_why(fleet: Fleet) -> None:
    # An operator labelled pi-00's first 120 readings normal, and nothing else.
    fleet.store.add_label(
        LabelRecord(0, "pi-00", EDGE, T0 - 0.05, T0 + 11.95, "normal", T0, "test")
    )
    before = _heavies(fleet)
    run = _run(fleet)
    heavy = run.step("heavy")
    assert heavy.status == "skipped"
    assert "120 labelled readings of class normal in the training part, 200 needed" in (
        heavy.detail
    )
    assert "0 labelled readings of class fault in the held-out part, 50 needed" in heavy.detail
    assert "POST /v1/labels" in heavy.detail and "heavy step skipped" in run.why
    assert run.state == "succeeded" and run.heavy_candidate is None  # the edge part stands
    assert _heavies(fleet) == before


def test_the_options_set_how_many_labels_the_heavy_step_needs(labelled_fleet: Fleet) -> None:
    run = _run(labelled_fleet, heavy_min_holdout_labels=100_000)
    detail = run.step("heavy").detail
    assert run.step("heavy").status == "skipped"
    assert "in the held-out part, 100000 needed" in detail and "training part" not in detail
    with pytest.raises(ValueError, match="heavy_min_train_labels"):
        PipelineOptions(heavy_min_train_labels=0).check()


def test_a_worse_heavy_candidate_is_rejected_and_production_untouched(
    labelled_fleet: Fleet,
) -> None:
    fleet = labelled_fleet
    before = _heavies(fleet)
    run = _run(fleet, sabotage_labels=0.6)
    heavy = run.step("heavy")
    assert heavy.status == "rejected", heavy.detail
    assert "FAILED macro-F1" in heavy.detail and "stays in production" in heavy.detail
    assert run.metrics["heavy_f1_macro"] < run.metrics["heavy_production_f1_macro"] - TOLERANCE
    assert run.heavy_candidate is None and _heavies(fleet) == before
    # The sabotaged edge student is rejected too, each part recorded on its own.
    assert run.state == "rejected" and run.step("gate").status == "rejected"
    assert "heavy step rejected" in run.why


def test_a_heavy_step_that_breaks_leaves_the_edge_candidate(
    labelled_fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_hub.pipeline import train  # noqa: PLC0415

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: the trees cannot be trained")

    monkeypatch.setattr(train, "train_heavy", broken)
    before = _heavies(labelled_fleet)
    run = _run(labelled_fleet)
    assert run.step("heavy").status == "failed" and "injected" in run.step("heavy").detail
    assert run.state == "succeeded" and run.candidate is not None
    assert _heavies(labelled_fleet) == before


@pytest.mark.timeout(10)
def test_the_hub_settings_give_the_heavy_label_minimums() -> None:
    import argparse  # noqa: PLC0415

    from cloud_hub.retrain.runner import runner_settings  # noqa: PLC0415
    from cloud_hub.settings import OPTIONS, resolve_settings  # noqa: PLC0415

    def defaults(*flags: str) -> PipelineOptions:
        parser = OPTIONS.add_to(argparse.ArgumentParser())
        args = parser.parse_args(["--insecure-dev", "true", *flags])
        return runner_settings(resolve_settings(args, env={}, serving=True), None).defaults

    d = defaults()
    assert (d.heavy_min_train_labels, d.heavy_min_holdout_labels) == (200, 50)
    d = defaults("--pipeline-heavy-min-train-labels", "500")
    assert (d.heavy_min_train_labels, d.heavy_min_holdout_labels) == (500, 50)
