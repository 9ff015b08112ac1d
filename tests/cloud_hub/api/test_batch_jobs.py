"""/v1/batch/jobs through a real uvicorn server: a job's life cycle, its results
against the model and UrgentRule called directly, refusals, and a job an earlier
hub left running marked failed at the next start."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.batch.jobs import BatchJobs
from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.store import BatchJob, open_store
from cloud_hub.store.base import Store, TelemetryRows
from shared.features import FeatureWindow
from shared.manifest import ModelPackage, load_package
from shared.urgent import UrgentRule
from simulators.harness import HubApi
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(90)

READ = "read-token-for-batch-tests-0123456789"
ADMIN = "admin-token-for-batch-tests-0123456789"
T0 = 1_700_000_000.0
N = 600


@dataclass
class Api:
    admin: HubApi
    read: HubApi
    store: Store
    features: np.ndarray
    ts: np.ndarray
    heavy: ModelPackage


def _seed(store: Store, edge: ModelPackage, heavy: ModelPackage) -> tuple[np.ndarray, np.ndarray]:
    m = edge.manifest
    rng = np.random.default_rng(3)
    fallback = np.array(m.input.fallback)
    raw = fallback + rng.normal(0.0, 0.02, size=(N, fallback.size)) * np.abs(fallback)
    raw[200:260, 0] = 130.0  # temperature beyond its hard limit: urgent
    raw[400:420, 1] *= 8.0
    fw = FeatureWindow(m.input.window, m.input.fallback)
    feats = np.stack([fw.push(r) for r in raw])
    ts = T0 + 0.5 * np.arange(N)
    scores = np.full((N, 3), 1 / 3, dtype=np.float32)
    items = [
        TelemetryRows(
            "pi-a",
            1,
            i // 50 + 1,
            m.version,
            heavy.manifest.version,
            ts[i : i + 50],
            feats[i : i + 50],
            scores[i : i + 50],
            scores[i : i + 50],
            time.time(),
        )
        for i in range(0, N, 50)
    ]
    # A device whose edge model sends 5 features: no model here reads those.
    items.append(
        TelemetryRows(
            "pi-odd",
            1,
            1,
            "9.9.9",
            DEFAULT_VERSION,
            ts[:10],
            np.zeros((10, 5), np.float32),
            scores[:10],
            scores[:10],
            time.time(),
        )
    )
    for pkg in (edge, heavy):
        store.register_model(pkg.manifest, str(pkg.path.resolve()), time.time())
    store.write_stream(items)
    return feats, ts


@pytest.fixture
def api(tmp_path: Path, model_packages: ModelPaths) -> Iterator[Api]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    edge, heavy = load_package(model_packages.edge), load_package(model_packages.heavy)
    feats, ts = _seed(store, edge, heavy)
    jobs = BatchJobs(store, tmp_path / "batch", None)
    jobs.start()
    app = create_app(store, ApiConfig(read_token=READ, admin_token=ADMIN), batch_jobs=jobs)
    try:
        with live_server(app) as anon:
            yield Api(anon.with_token(ADMIN), anon.with_token(READ), store, feats, ts, heavy)
    finally:
        jobs.stop()
        store.close()


def _wait(api: HubApi, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        job: dict[str, object] = api.get_json(f"/v1/batch/jobs/{job_id}")
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in 30 s")


def test_job_life_cycle_and_results_equal_the_model_and_the_rule(api: Api) -> None:
    body = {"devices": ["pi-a"], "from": T0, "to": None, "model": "machine-heavy"}
    assert api.read.post("/v1/batch/jobs", json_body=body).status == 403
    reply = api.admin.post("/v1/batch/jobs", json_body=body)
    assert reply.status == 202, reply.body
    job = reply.json()
    assert job["state"] in ("queued", "running", "done") and job["version"] == DEFAULT_VERSION
    early = api.admin.get(f"/v1/batch/jobs/{job['id']}/result")
    assert early.status in (200, 409)
    done = _wait(api.admin, job["id"])
    assert done["state"] == "done" and done["rows_done"] == N and done["progress"] == 1.0

    m = api.heavy.manifest
    scores = OnnxScorer.from_package(api.heavy).scores(api.features)
    rule = UrgentRule(m.urgent, m.output.urgent_index, m.input.sensor_names)
    s = len(m.input.sensors)
    urgent = [
        int(bool(rule.check(f[:s].astype(np.float64), float(u))))
        for f, u in zip(api.features, scores[:, m.output.urgent_index], strict=True)
    ]
    assert sum(urgent) >= 1 and done["urgent_rows"] == sum(urgent)

    text = api.admin.get(f"/v1/batch/jobs/{job['id']}/result?format=csv")
    assert text.status == 200 and text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.body.decode())))
    assert [float(r["ts"]) for r in rows] == api.ts.tolist()
    assert {r["device"] for r in rows} == {"pi-a"}
    assert [r["predicted_class"] for r in rows] == [m.output.classes[i] for i in scores.argmax(1)]
    assert [int(r["urgent"]) for r in rows] == urgent
    lines = api.admin.get(f"/v1/batch/jobs/{job['id']}/result?format=jsonl").body.splitlines()
    got = [json.loads(x) for x in lines]
    np.testing.assert_allclose(
        [g["urgent_score"] for g in got], scores[:, m.output.urgent_index], rtol=1e-6
    )
    assert [g["urgent"] for g in got] == urgent
    listed = api.admin.get_json("/v1/batch/jobs")
    assert listed["jobs"][0]["id"] == job["id"]


def test_refusals_name_what_is_wrong(api: Api) -> None:
    base = {"devices": ["pi-a"], "from": T0, "model": "machine-heavy"}
    reply = api.admin.post("/v1/batch/jobs", json_body={**base, "devices": ["nope"]})
    assert reply.status == 404 and "nope" in reply.detail
    reply = api.admin.post("/v1/batch/jobs", json_body={**base, "model": "nope"})
    assert reply.status == 404 and "machine-heavy" in reply.detail
    reply = api.admin.post("/v1/batch/jobs", json_body={**base, "to": T0 - 1})
    assert reply.status == 422
    assert api.admin.get("/v1/batch/jobs/unknown").status == 404
    reply = api.admin.post("/v1/batch/jobs", json_body={**base, "devices": ["pi-odd"]})
    failed = _wait(api.admin, reply.json()["id"])
    assert failed["state"] == "failed"
    assert "5 features" in str(failed["error"]) and "reads 32" in str(failed["error"])
    reply = api.admin.get(f"/v1/batch/jobs/{failed['id']}/result")
    assert reply.status == 409 and "failed" in reply.detail


def test_a_job_left_running_is_marked_failed_at_the_next_start(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    path = f"sqlite:///{tmp_path / 'hub.db'}"
    store = open_store(path)
    left = BatchJob(
        "j-left",
        "running",
        ("pi-a",),
        T0,
        float("inf"),
        "machine-heavy",
        DEFAULT_VERSION,
        time.time(),
        started_at=time.time(),
        rows_done=100,
    )
    store.save_batch_job(left)
    store.close()  # the hub "died" with the job running

    store = open_store(path)
    jobs = BatchJobs(store, tmp_path / "batch", None)
    try:
        assert jobs.start() == ["j-left"]
        app = create_app(store, ApiConfig(read_token=READ, admin_token=ADMIN), batch_jobs=jobs)
        with live_server(app) as anon:
            job = anon.with_token(ADMIN).get_json("/v1/batch/jobs/j-left")
        assert job["state"] == "failed" and job["rows_done"] == 100
        assert "hub stopped" in job["error"] and "submit it again" in job["error"]
    finally:
        jobs.stop()
        store.close()


def test_a_clean_stop_marks_the_running_job_failed(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    edge, heavy = load_package(model_packages.edge), load_package(model_packages.heavy)
    _seed(store, edge, heavy)
    jobs = BatchJobs(store, tmp_path / "batch", None, page_rows=1)  # 600 pages: a slow job
    try:
        jobs.start()
        record = store.model("machine-heavy", DEFAULT_VERSION)
        assert record is not None
        job = jobs.submit(["pi-a"], T0, float("inf"), record)
        deadline = time.monotonic() + 20.0
        while (state := store.batch_job(job.id)) is not None and state.state == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        jobs.stop()
        stopped = store.batch_job(job.id)
        assert stopped is not None and stopped.state == "failed"
        assert stopped.error is not None and "hub stopped during the job" in stopped.error
        assert not list((tmp_path / "batch").glob("*"))  # no partial result left
    finally:
        jobs.stop()
        store.close()
