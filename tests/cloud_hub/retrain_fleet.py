"""A store holding what a small fleet sent: the default models registered (production,
signed), devices whose births name the edge model, and their telemetry scored by the
real edge and heavy models, for the pipeline tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_hub.inference import OnnxScorer
from cloud_hub.keys import KeyFiles, default_keys_dir, init_keys
from cloud_hub.registry.register import register_built
from cloud_hub.store import open_store
from cloud_hub.store.base import LabelRecord, Store, TelemetryRows
from shared.manifest import load_package
from shared.messages import Status
from simulators.dataset import build_training_set
from tests.conftest import ModelPaths

T0 = 1_700_000_000.0
"""Timestamp of each device's first reading."""
PERIOD_S = 0.1
MESSAGE_READINGS = 100
EDGE = "machine-edge"


@dataclass(frozen=True)
class Fleet:
    store: Store
    store_url: str
    data_dir: Path
    devices: tuple[str, ...]
    version: str
    """The production edge version."""
    until: float
    """Just after the last reading."""
    truth: dict[str, np.ndarray]
    """Each device's simulator labels, in time order."""


def seed_fleet(
    tmp: Path, models: ModelPaths, *, devices: int = 3, readings: int = 1500, seed: int = 11
) -> Fleet:
    data_dir = tmp / "hub"
    data_dir.mkdir(parents=True, exist_ok=True)
    init_keys(KeyFiles(default_keys_dir(data_dir)))
    url = f"sqlite:///{data_dir / 'hub.db'}"
    store = open_store(url)
    edge, heavy = register_built(
        store, data_dir, None, [models.edge, models.heavy], by="test", production_if_none=True
    )
    version = edge.record.version
    data = build_training_set(seed, devices=devices, readings_per_device=readings)
    edge_scorer = OnnxScorer.from_package(load_package(Path(edge.record.path)))
    heavy_scorer = OnnxScorer.from_package(load_package(Path(heavy.record.path)))
    names = tuple(f"pi-{d:02d}" for d in range(devices))
    truth = {}
    for d, name in enumerate(names):
        store.record_status(Status(name, 1, 0, "online", "0.1.0", version, T0, EDGE), T0)
        rows = data.device == d
        x = np.ascontiguousarray(data.X[rows])
        truth[name] = data.y[rows]
        e, h = edge_scorer.scores(x), heavy_scorer.scores(x)
        ts = T0 + PERIOD_S * np.arange(x.shape[0], dtype=np.float64)
        items = [
            TelemetryRows(
                name,
                1,
                1 + k // MESSAGE_READINGS,
                version,
                heavy.record.version,
                ts[k : k + MESSAGE_READINGS],
                x[k : k + MESSAGE_READINGS],
                e[k : k + MESSAGE_READINGS],
                h[k : k + MESSAGE_READINGS],
                T0,
            )
            for k in range(0, x.shape[0], MESSAGE_READINGS)
        ]
        store.write_stream(items)
    return Fleet(store, url, data_dir, names, version, T0 + PERIOD_S * readings + 1.0, truth)


def label_truth(fleet: Fleet, model: str = EDGE) -> int:
    """Store an operator label (as ``POST /v1/labels`` does) for each run of one simulator
    class on each device, so every reading is labelled with its ground truth; returns how
    many labels."""
    classes = ("normal", "fault", "urgent")
    count = 0
    for name, y in fleet.truth.items():
        starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])
        ends = np.r_[starts[1:], y.size]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            since = T0 + PERIOD_S * a - PERIOD_S / 2
            until = T0 + PERIOD_S * b - PERIOD_S / 2
            fleet.store.add_label(
                LabelRecord(0, name, model, since, until, classes[int(y[a])], T0, "test")
            )
            count += 1
    return count
