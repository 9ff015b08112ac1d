"""``/v1/labels`` and ``/v1/pipeline/runs`` on a real SQLite store and a real uvicorn
server, with the real runner: each run's work in its own spawned process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.retrain.job import JobSettings
from cloud_hub.retrain.runner import PipelineRunner, RunnerSettings
from cloud_hub.retrain.runs import PipelineInputs, PipelineOptions, PipelineRun, new_run
from cloud_hub.store.base import PipelineRunRow
from simulators.harness import HubApi
from tests.cloud_hub.api.server import live_server
from tests.cloud_hub.retrain_fleet import EDGE, T0, Fleet

READ = "read-token-for-pipeline-tests-0123"
ADMIN = "admin-token-for-pipeline-tests-0123"
RUN_WAIT_S = 150.0
OPTIONS = {"f1_tolerance": 0.15}
"""As in test_retrain_job: a small window's student is a little behind production."""


@dataclass(frozen=True)
class Api:
    fleet: Fleet
    runner: PipelineRunner
    read: HubApi
    admin: HubApi


def _settings(fleet: Fleet, **kwargs: Any) -> RunnerSettings:
    job = JobSettings(fleet.store_url, fleet.data_dir, None, canary=kwargs.pop("canary", False))
    return RunnerSettings(job, max_s=120.0, **kwargs)


@pytest.fixture
def api(fleet: Fleet) -> Iterator[Api]:
    runner = PipelineRunner(fleet.store, _settings(fleet))
    runner.start()
    app = create_app(fleet.store, ApiConfig(read_token=READ, admin_token=ADMIN), pipeline=runner)
    try:
        with live_server(app) as anon:
            yield Api(fleet, runner, anon.with_token(READ), anon.with_token(ADMIN))
    finally:
        runner.stop()


def _label(device: str = "pi-00", since: float = T0, until: float = T0 + 10, **kw: Any) -> Any:
    return {"device": device, "from": since, "to": until, "class": "fault", **kw}


@pytest.mark.timeout(30)
def test_labels_are_stored_and_bad_ones_refused_with_what_to_do(api: Api) -> None:
    ok = api.admin.post("/v1/labels", json_body=_label())
    assert ok.status == 201, ok.body
    got = ok.json()
    assert (got["device"], got["model"], got["class"], got["from"]) == ("pi-00", EDGE, "fault", T0)
    listed = api.read.get_json("/v1/labels?device=pi-00")
    assert listed["count"] == 1 and listed["labels"][0]["id"] == got["id"]
    unknown = api.read.get("/v1/labels?device=pi-99")  # was 200 with no labels
    assert unknown.status == 404 and "unknown to this hub" in unknown.json()["detail"]
    assert api.read.post("/v1/labels", json_body=_label()).status == 403
    refusals = {
        "unknown_device": (_label(device="pi-99"), 404, "unknown to this hub"),
        "empty_range": (_label(since=T0 + 10, until=T0 + 10), 422, "must be before 'to'"),
        "unknown_class": (_label(**{"class": "broken"}), 422, "normal, fault, urgent"),
        "no_telemetry": (_label(since=T0 - 100, until=T0 - 50), 422, "stored no reading"),
        "unknown_model": (_label(model="no-such-model"), 404, "not registered"),
    }
    for reason, (body, code, words) in refusals.items():
        reply = api.admin.post("/v1/labels", json_body=body)
        assert reply.status == code, (reason, reply.body)
        assert words in reply.json()["detail"], (reason, reply.body)
    # The range's bounds are shown as a client writes them (ISO), not as bare floats.
    inverted = api.admin.post("/v1/labels", json_body=_label(since=T0 + 10, until=T0))
    assert inverted.status == 422
    assert (
        "'from' (2023-11-14T22:13:30Z) must be before 'to' (2023-11-14T22:13:20Z)"
        in (inverted.json()["detail"])
    )
    counters = api.fleet.store.counters()
    assert counters["labels_stored"] == 1
    assert all(counters[f"labels_refused:{r}"] == 1 + (r == "empty_range") for r in refusals)


@pytest.mark.timeout(30)
def test_run_requests_that_cannot_start_are_refused(api: Api) -> None:
    window = {"from": T0, "to": api.fleet.until}
    cases = [
        ({"model": "nope", "window": window}, 404, "not registered"),
        ({"model": EDGE, "window": window, "devices": ["pi-99"]}, 404, "pi-99"),
        # The bounds in ISO as the client may have written them (they were bare floats).
        ({"model": EDGE, "window": {"from": T0 + 10, "to": T0}}, 422, "from < to"),
        ({"model": EDGE, "window": {"from": T0, "to": T0}}, 422, "got from=2023-11-14T22:13:20Z"),
        ({"model": EDGE, "window": window, "options": {"learning": 1}}, 422, "the options are"),
        ({"model": EDGE, "window": window, "options": {"holdout_fraction": 0.9}}, 422, "out of"),
    ]
    for body, code, words in cases:
        reply = api.admin.post("/v1/pipeline/runs", json_body=body)
        assert reply.status == code, (body, reply.body)
        assert words in reply.json()["detail"], (body, reply.body)
    assert api.read.post("/v1/pipeline/runs", json_body=cases[0][0]).status == 403
    assert api.read.get_json("/v1/pipeline/runs")["count"] == 0
    counters = api.fleet.store.counters()
    refused = {k: v for k, v in counters.items() if k.startswith("pipeline_runs_refused:")}
    assert refused == {
        "pipeline_runs_refused:unknown_model": 1,
        "pipeline_runs_refused:unknown_device": 1,
        "pipeline_runs_refused:bad_window": 2,
        "pipeline_runs_refused:bad_option": 2,
    }


@pytest.mark.timeout(RUN_WAIT_S + 30)
def test_an_admin_run_is_recorded_step_by_step_and_never_overlaps(api: Api) -> None:
    body = {"model": EDGE, "window": {"from": T0, "to": api.fleet.until}, "options": OPTIONS}
    first = api.admin.post("/v1/pipeline/runs", json_body=body)
    assert first.status == 202, first.body
    run_id = first.json()["id"]
    second = api.admin.post("/v1/pipeline/runs", json_body=body)
    assert second.status == 409 and run_id in second.json()["detail"]
    assert api.fleet.store.counters()["pipeline_runs_refused:overlap"] == 1
    done = api.runner.wait(run_id, RUN_WAIT_S)
    assert done.state == "succeeded", done.why
    shown = api.read.get_json(f"/v1/pipeline/runs/{run_id}")
    assert shown["state"] == "succeeded" and shown["trigger"] == "admin"
    assert shown["inputs"]["parent"] == api.fleet.version
    assert shown["inputs"]["devices"] == list(api.fleet.devices)
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [
        ("assemble", "ok"),
        ("train", "ok"),
        ("convert", "ok"),
        ("quantize", "ok"),
        ("gate", "ok"),
        ("register", "ok"),
        ("canary", "skipped"),
        ("heavy", "skipped"),  # too few operator labels
    ]
    assert shown["candidate"] == "1.1.1" and shown["rollout"] is None
    assert shown["heavy_candidate"] is None
    assert api.fleet.store.model(EDGE, "1.1.1") is not None
    listed = api.read.get_json(f"/v1/pipeline/runs?model={EDGE}")
    assert [r["id"] for r in listed["runs"]] == [run_id]
    # Once it has ended, the next run of the model may start.
    again = api.admin.post("/v1/pipeline/runs", json_body={**body, "window": {"from": 0, "to": 1}})
    assert again.status == 202
    failed = api.runner.wait(again.json()["id"], RUN_WAIT_S)
    assert failed.state == "failed" and failed.decision == "failed at step assemble"
    assert "no stored readings" in failed.why
    assert sorted(r.version for r in api.fleet.store.models() if r.name == EDGE) == [
        "1.1.0",
        "1.1.1",
    ]


def _stored(fleet: Fleet, run: PipelineRun) -> None:
    row = PipelineRunRow(run.id, run.model, run.state, json.dumps(run.to_dict()), T0, 4e9)
    assert fleet.store.start_pipeline_run(row, T0) is None


@pytest.mark.timeout(30)
def test_a_restarted_hub_fails_the_run_it_left_running(fleet: Fleet) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    inputs = PipelineInputs(T0, fleet.until, fleet.devices, fleet.version)
    left = new_run("run-left", EDGE, "admin", inputs, T0, owner_pid=int(gone.stdout))
    _stored(fleet, left)
    # An earlier runner of this very process (a hub stopped and started in one test).
    mine = new_run("run-mine", "other-edge", "drift", inputs, T0, owner_pid=os.getpid())
    _stored(fleet, mine)
    runner = PipelineRunner(fleet.store, _settings(fleet))
    assert sorted(runner.start()) == ["run-left", "run-mine"]
    for run_id in ("run-left", "run-mine"):
        row = fleet.store.pipeline_run(run_id)
        assert row is not None
        run = PipelineRun.from_dict(json.loads(row.body))
        assert run.state == "failed" and "hub restarted" in run.why
        assert run.decision == "failed before its first step"
        assert all(s.status == "skipped" for s in run.steps)
    runner.stop()


@pytest.mark.timeout(RUN_WAIT_S + 30)
def test_the_drift_entry_point_starts_an_automatic_run_with_a_canary(fleet: Fleet) -> None:
    clock = lambda: fleet.until  # noqa: E731  (the window ends at the last reading)
    defaults = PipelineOptions(**OPTIONS)
    off = PipelineRunner(fleet.store, _settings(fleet, defaults=defaults), clock=clock)
    refused = off.request_run(EDGE, trigger="drift", reason="fleet alarm")
    assert refused.run is None and "--pipeline-on-drift" in refused.why
    on = PipelineRunner(
        fleet.store,
        _settings(fleet, canary=True, on_drift=True, window_s=3600, defaults=defaults),
        clock=clock,
    )
    got = on.request_run(EDGE, trigger="drift", reason="fleet alarm: temperature_mean")
    assert got.run is not None and got.run.trigger == "drift"
    busy = on.request_run(EDGE, trigger="drift", reason="again")
    assert busy.run is None and got.run.id in busy.why
    done = on.wait(got.run.id, RUN_WAIT_S)
    assert done.state == "succeeded", done.why
    assert done.reason == "fleet alarm: temperature_mean"
    assert done.step("canary").status == "ok" and done.rollout is not None
    (command,) = fleet.store.take_rollout_commands()
    assert command.rollout == done.rollout and command.command == "start"
    assert json.loads(command.args)["version"] == done.candidate
    on.stop()


@pytest.mark.timeout(RUN_WAIT_S + 30)
def test_the_schedule_asks_for_runs_of_its_model(fleet: Fleet) -> None:
    # The last hour before now holds no telemetry (the fleet's is from 2023): the run
    # is recorded, with its trigger, and fails at assemble.
    runner = PipelineRunner(
        fleet.store, _settings(fleet, schedule_s=0.2, schedule_model=EDGE, window_s=3600)
    )
    runner.start()
    try:
        run_id = None
        for _ in range(200):  # bounded: 200 x 0.1 s
            rows = fleet.store.pipeline_runs(EDGE)
            if rows:
                run_id = rows[-1].id
                break
            time.sleep(0.1)
        assert run_id is not None, "the schedule started no run"
        done = runner.wait(run_id, RUN_WAIT_S)
        assert done.trigger == "schedule" and done.state == "failed"
        assert "no stored readings" in done.why
    finally:
        runner.stop()


@pytest.mark.timeout(60)
def test_a_run_over_its_time_limit_is_stopped_and_recorded_failed(fleet: Fleet) -> None:
    runner = PipelineRunner(fleet.store, dataclasses.replace(_settings(fleet), max_s=0.5))
    try:
        run = runner.submit(EDGE, T0, fleet.until, options=OPTIONS)
        done = runner.wait(run.id, 30.0)
        assert done.state == "failed" and "longer than 0.5 s" in done.why
        assert "--pipeline-max-s" in done.why
        assert sorted(r.version for r in fleet.store.models() if r.name == EDGE) == ["1.1.0"]
    finally:
        runner.stop()
