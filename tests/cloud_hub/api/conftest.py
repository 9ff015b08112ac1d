"""One real hub API for the package: a real SQLite store filled through the Store
interface, the real model packages, a real uvicorn server on an ephemeral port."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.api.deps import RegistryFiles
from cloud_hub.batch.jobs import BatchJobs
from cloud_hub.commissioning import baseline_from_store
from cloud_hub.keys import sign_package
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.store import open_store
from cloud_hub.store.base import (
    BatchJob,
    DeadLetter,
    DeviceStateRow,
    DriftEventRow,
    DriftStateRow,
    DriftWindowRow,
    Store,
    TelemetryRows,
)
from shared.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest, ModelPackage, load_package
from shared.messages import Event, Health, Status
from shared.signing import SigningKey
from simulators.harness import HubApi
from simulators.sensors import FEATURE_NAMES
from tests.cloud_hub.api.server import live_server
from tests.conftest import ModelPaths

READ_TOKEN = "read-token-for-api-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-api-tests-0123456789"
STALE_AFTER_S = 30.0
MAX_PAGE = 200
PREDICT_MAX_ROWS = 64
T0 = 1_700_000_000.0
"""Timestamp of the first reading."""
JOB_ID = "job-1"
"""A batch job the seeded store holds as done, with its result files."""


@dataclass(frozen=True)
class Seeded:
    """What the store holds, for tests to compare the API's answers with."""

    now: float
    edge: ModelPackage
    heavy: ModelPackage
    ts: np.ndarray
    features: np.ndarray
    edge_scores: np.ndarray
    heavy_scores: np.ndarray
    seqs: np.ndarray
    """Seq of the message that carried each reading."""
    events: list[Event]
    broken_path: Path
    signer: SigningKey
    """The key the edge and heavy packages are signed with."""


@dataclass(frozen=True)
class Hub:
    anon: HubApi
    read: HubApi
    admin: HubApi
    seeded: Seeded
    config: ApiConfig
    app: Any


def renamed(manifest: ModelManifest, name: str, prefix: str) -> ModelManifest:
    """``manifest`` as the model of another machine: every sensor name prefixed."""
    d = manifest.to_dict()
    d["name"] = name
    for sensor in d["input"]["sensors"]:
        sensor["name"] = prefix + sensor["name"]
    d["input"]["features"] = [prefix + f for f in d["input"]["features"]]
    for key in ("sensors", "features"):
        d["reference"][key] = {prefix + k: v for k, v in d["reference"][key].items()}
    d["urgent"]["hard_limits"] = {prefix + k: v for k, v in d["urgent"]["hard_limits"].items()}
    return ModelManifest.from_dict(d)


def _signed_copy(src: Path, dst: Path, signer: SigningKey, *, reformat: bool) -> ModelPackage:
    shutil.copytree(src, dst)
    if reformat:
        manifest = dst / MANIFEST_FILE
        manifest.write_text(json.dumps(json.loads(manifest.read_bytes()), indent=1) + "\n")
    sign_package(dst, signer)
    return load_package(dst)


def _seed(store: Store, models: ModelPaths, tmp: Path) -> Seeded:
    now = time.time()
    rng = np.random.default_rng(11)
    signer = SigningKey.generate()
    # Signed copies; the edge manifest rewritten with one-space indents, so only a
    # registry that keeps the file's bytes serves what its signature covers.
    edge = _signed_copy(models.edge, tmp / "machine-edge", signer, reformat=True)
    heavy = _signed_copy(models.heavy, tmp / "machine-heavy", signer, reformat=False)
    for pkg in (edge, heavy):
        store.register_model(pkg.manifest, str(pkg.path), now, manifest_bytes=pkg.manifest_bytes)
    # A later heavy version (the same artifact) so "version": null has a choice to make.
    store.register_model(dataclasses.replace(heavy.manifest, version="1.2.0"), str(heavy.path), now)
    # A registered model whose file was truncated after registration.
    broken = tmp / "broken"
    shutil.copytree(heavy.path, broken)
    with (broken / MODEL_FILE).open("r+b") as fh:
        fh.truncate(1000)
    store.register_model(dataclasses.replace(heavy.manifest, name="broken-heavy"), str(broken), now)

    # Another machine's model of the same version and width: only its name tells them apart.
    store.register_model(renamed(edge.manifest, "rig-edge", "rig_"), str(edge.path), now)

    online = Status("pi-online", 2, 0, "online", "0.1.0", DEFAULT_VERSION, now, "machine-edge")
    store.record_status(online, now)
    store.record_status(
        Status("pi-stale", 1, 0, "online", "0.1.0", DEFAULT_VERSION, now, "machine-edge"),
        now - 600,
    )
    for seq, state, at in ((0, "online", now - 100), (3, "offline", now - 90)):
        off = Status("pi-off", 1, seq, state, "0.1.0", DEFAULT_VERSION, now, "machine-edge")
        store.record_status(off, at)
    store.add_device("pi-new")
    health = Health(
        device="pi-online",
        epoch=2,
        seq=30,
        ts=now,
        model="machine-edge",
        model_version=DEFAULT_VERSION,
        uptime_s=120.0,
        readings=900,
        latency_p50_us=40.0,
        latency_p99_us=90.0,
        cpu_pct=3.0,
        rss_mb=41.5,
        outbox_depth=0,
        acked_seq=29,
        dropped={"outbox_full": 1},
        invalid={
            "csv_bad_row": 2,
            "missing:vibration": 4,
            "out_of_range:temperature": 1,
            "out_of_distribution:temperature": 7,
        },
    )
    store.record_health(health, now)

    n_features = len(FEATURE_NAMES)
    items: list[Any] = []
    ts_all, f_all, e_all, h_all, seq_all = [], [], [], [], []
    t = T0
    for seq in range(1, 26):
        if seq == 13:
            continue  # a gap: seq 13 never arrives
        n = int(rng.integers(1, 40))
        ts = t + 0.5 * np.arange(n, dtype=np.float64)
        t = float(ts[-1]) + 0.5
        feats = rng.normal(50.0, 20.0, size=(n, n_features)).astype(np.float32)
        edge_s = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
        heavy_s = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
        items.append(
            TelemetryRows(
                "pi-online",
                2,
                seq,
                DEFAULT_VERSION,
                DEFAULT_VERSION,
                ts,
                feats,
                edge_s,
                heavy_s,
                now,
            )
        )
        ts_all.append(ts)
        f_all.append(feats)
        e_all.append(edge_s)
        h_all.append(heavy_s)
        seq_all.append(np.full(n, seq))
    events = [
        Event(
            "pi-online",
            2,
            26,
            T0 + 10.0,
            DEFAULT_VERSION,
            "score",
            0.97,
            None,
            None,
            "stop",
            True,
            "score over threshold",
        ),
        Event(
            "pi-online",
            2,
            27,
            T0 + 20.0,
            DEFAULT_VERSION,
            "hard_limit",
            0.2,
            "temperature",
            120.5,
            "stop",
            True,
            "temperature over 110",
        ),
        Event(
            "pi-off",
            1,
            1,
            T0 + 15.0,
            DEFAULT_VERSION,
            "score",
            0.91,
            None,
            None,
            "alarm",
            False,
            "actuator failed",
        ),
        Event(
            "pi-online",
            2,
            28,
            T0 + 30.0,
            DEFAULT_VERSION,
            "score",
            0.95,
            None,
            None,
            "stop",
            True,
            "again",
        ),
    ]
    store.write_stream(items + events)
    results = tmp / "batch"
    results.mkdir()
    for fmt in ("csv", "jsonl"):
        (results / f"{JOB_ID}.{fmt}").write_text("ts,device,predicted_class,urgent_score,urgent\n")
    store.save_batch_job(
        BatchJob(
            JOB_ID,
            "done",
            ("pi-online",),
            T0,
            T0 + 60.0,
            "machine-heavy",
            DEFAULT_VERSION,
            now,
            started_at=now,
            finished_at=now,
            rows_total=0,
            result_path=str(results / JOB_ID),
        )
    )
    # Device states as the ingest worker records them: pi-off came online, then went offline.
    store.record_device_states(
        [
            DeviceStateRow(0, now - 100, "pi-off", "online", "never_seen", "birth: agent 0.1.0"),
            DeviceStateRow(0, now - 90, "pi-off", "offline", "online", "its status said offline"),
        ]
    )
    # Drift: pi-online drifts on its temperature, pi-off is ok; the fleet alarmed once.
    store.record_drift(
        [
            DriftStateRow(
                "pi-online",
                "machine-edge",
                DEFAULT_VERSION,
                "drifting",
                now - 50,
                {"temperature:level": now - 50},
                900,
                now - 1,
            ),
            DriftStateRow("pi-off", "machine-edge", DEFAULT_VERSION, "ok", None, {}, 400, now - 90),
        ],
        [
            DriftEventRow(
                0,
                now - 50,
                "device",
                "pi-online",
                "machine-edge",
                DEFAULT_VERSION,
                "drifting",
                "ok",
                ("temperature:level",),
                {"psi": {"temperature_last": 0.4}},
            ),
            DriftEventRow(
                0,
                now - 40,
                "fleet",
                None,
                "machine-edge",
                DEFAULT_VERSION,
                "drifting",
                "ok",
                ("temperature:level",),
                {"devices": ["pi-online"], "active_devices": 2, "share": 0.5},
            ),
        ],
        [
            DriftWindowRow(
                "pi-online",
                "machine-edge",
                DEFAULT_VERSION,
                now - 60,
                now - 30,
                300,
                {"temperature_last": 0.4, "speed_last": 0.02},
                {"temperature:level": 1.3},
                0.1,
            ),
            DriftWindowRow(
                "pi-off",
                "machine-edge",
                DEFAULT_VERSION,
                now - 120,
                now - 90,
                300,
                {"temperature_last": 0.1, "speed_last": 0.04},
                {"temperature:level": 0.1},
                None,
            ),
        ],
    )
    # pi-online's baseline, commissioned from its stored readings as the hub does it.
    store.put_baseline(
        baseline_from_store(store, "pi-online", -math.inf, math.inf, min_readings=10), now
    )
    store.add_counters(
        {
            (None, "received"): 7,
            ("pi-online", "received"): 40,
            ("pi-online", "stored_messages"): 28,
            ("pi-online", "stored_readings"): int(sum(len(x) for x in ts_all)),
            ("pi-online", "duplicates"): 2,
            ("pi-online", "invalid:not_json"): 3,
            ("pi-off", "invalid:wrong_type"): 1,
            (None, "dropped:hub_queue_full"): 4,
        }
    )
    store.add_dead_letters(
        [
            DeadLetter(
                now,
                "edgeloop/v1/dev/pi-online/telemetry",
                "pi-online",
                "not_json",
                "payload is not JSON",
                b"\xff\xfenot json",
                10,
            ),
        ],
        keep=100,
    )
    return Seeded(
        now=now,
        edge=edge,
        heavy=heavy,
        ts=np.concatenate(ts_all),
        features=np.concatenate(f_all),
        edge_scores=np.concatenate(e_all),
        heavy_scores=np.concatenate(h_all),
        seqs=np.concatenate(seq_all),
        events=sorted(events, key=lambda e: e.ts),
        broken_path=broken,
        signer=signer,
    )


@pytest.fixture(scope="package")
def hub(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[Hub]:
    """The API on a seeded store, served by uvicorn; shared by every API test."""
    tmp = tmp_path_factory.mktemp("api")
    store = open_store(f"sqlite:///{tmp / 'hub.db'}")
    try:
        seeded = _seed(store, model_packages, tmp)
        config = ApiConfig(
            read_token=READ_TOKEN,
            admin_token=ADMIN_TOKEN,
            stale_after_s=STALE_AFTER_S,
            max_page=MAX_PAGE,
            predict_max_rows=PREDICT_MAX_ROWS,
        )
        jobs = BatchJobs(store, tmp / "batch", None)
        jobs.start()
        app = create_app(
            store,
            config,
            ingest_stats=lambda: {"queue_depth": 0, "running": True},
            batch_jobs=jobs,
            registry=RegistryFiles(tmp / "registry", (seeded.signer.public,)),
        )
        with live_server(app) as anon:
            yield Hub(
                anon=anon,
                read=anon.with_token(READ_TOKEN),
                admin=anon.with_token(ADMIN_TOKEN),
                seeded=seeded,
                config=config,
                app=app,
            )
        jobs.stop()
    finally:
        store.close()
