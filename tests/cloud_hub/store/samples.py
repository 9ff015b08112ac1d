"""Builders of store inputs for the store tests: seeded, small, valid."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import numpy as np

from cloud_hub.store import DeadLetter, TelemetryRows
from shared.manifest import ModelManifest
from shared.messages import Event, Health, Ota, Status

T0 = 1_700_000_000.0
"""A base time: readings of seq ``s`` start at ``T0 + s`` unless told otherwise."""


def tele(
    device: str,
    epoch: int,
    seq: int,
    *,
    n: int = 5,
    n_features: int = 4,
    t0: float | None = None,
    step: float = 0.01,
    received_at: float = T0 + 1e6,
) -> TelemetryRows:
    """A telemetry message of ``n`` readings, arrays seeded by (device, epoch, seq)."""
    rng = np.random.default_rng(zlib.crc32(f"{device}/{epoch}/{seq}".encode()))
    start = T0 + seq if t0 is None else t0
    edge = rng.random((n, 2), dtype=np.float32)
    heavy = rng.random((n, 2), dtype=np.float32)
    return TelemetryRows(
        device=device,
        epoch=epoch,
        seq=seq,
        edge_model_version="1.0.0",
        heavy_model_version="2.0.0",
        ts=start + np.arange(n, dtype=np.float64) * step,
        features=rng.standard_normal((n, n_features), dtype=np.float32),
        edge_scores=edge,
        heavy_scores=heavy,
        received_at=received_at,
    )


def event(device: str, epoch: int, seq: int, *, ts: float | None = None) -> Event:
    return Event(
        device=device,
        epoch=epoch,
        seq=seq,
        ts=T0 + seq if ts is None else ts,
        model_version="1.0.0",
        rule="score" if seq % 2 else "hard_limit",
        score=0.875,
        sensor=None if seq % 2 else "temperature",
        value=None if seq % 2 else 123.25,
        action="stop_motor",
        action_ok=bool(seq % 3),
        detail=f"event {seq}",
    )


def ota(device: str, epoch: int, seq: int) -> Ota:
    return Ota(
        device=device,
        epoch=epoch,
        seq=seq,
        ts=T0 + seq,
        state="downloading",
        reason="desired_changed",
        from_version="1.0.0",
        to_version="1.1.0",
        detail="",
    )


def status(
    device: str,
    epoch: int,
    state: str = "online",
    *,
    agent_version: str = "0.1.0",
    model_version: str = "1.0.0",
    model: str = "machine-edge",
) -> Status:
    assert state in ("online", "offline")
    return Status(
        device=device,
        epoch=epoch,
        seq=0,
        state="online" if state == "online" else "offline",
        agent_version=agent_version,
        model_version=model_version,
        ts=T0,
        model=model,
    )


def health(
    device: str, epoch: int, *, model_version: str = "1.0.0", model: str = "machine-edge"
) -> Health:
    return Health(
        device=device,
        epoch=epoch,
        seq=7,
        ts=T0 + 10,
        model=model,
        model_version=model_version,
        uptime_s=12.5,
        readings=1000,
        latency_p50_us=20.5,
        latency_p99_us=80.25,
        cpu_pct=3.5,
        rss_mb=41.0,
        outbox_depth=2,
        acked_seq=5,
        dropped={"outbox_full_telemetry": 1},
        invalid={},
    )


def dead_letter(i: int, *, device: str | None = "pi-01", size: int = 10) -> DeadLetter:
    return DeadLetter(
        received_at=T0 + i,
        topic=f"edgeloop/v1/dev/{device or 'x'}/telemetry",
        device=device,
        reason="not_json",
        error=f"letter {i}",
        payload_head=bytes([i % 256]) * min(size, 1024),
        payload_size=size,
    )


def manifest(name: str = "bearing-fault", version: str = "1.0.0", **changes: Any) -> ModelManifest:
    """A valid manifest; ``changes`` replace top-level fields of its dict."""
    model = b"model bytes " + version.encode()
    sensors = [
        {"name": "temperature", "unit": "degC", "min": -40.0, "max": 250.0, "fallback": 65.0},
    ]
    features = ["temperature_last", "temperature_mean", "temperature_std", "temperature_delta"]
    d: dict[str, Any] = {
        "format": 2,
        "name": name,
        "version": version,
        "variant": "edge",
        "created": "2024-05-01T12:00:00Z",
        "model": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(model).hexdigest(),
            "size": len(model),
            "input_name": "x",
            "scores_output": "probabilities",
            "quantization": "int8-dynamic",
        },
        "input": {"sensors": sensors, "features": features, "dtype": "float32", "window": 10},
        "output": {"classes": ["normal", "fault"], "urgent_class": "fault"},
        "urgent": {"score_threshold": 0.8, "consecutive": 3, "hard_limits": {}},
        "reference": {
            "sensors": {"temperature": {"location": 65.0, "scale": 2.0, "low": 50.0, "high": 90.0}},
            "features": {f: {"edges": [0.0], "proportions": [0.5, 0.5]} for f in features},
            "score": {"edges": [0.5], "proportions": [0.9, 0.1]},
        },
        "metrics": {"holdout_auc": 0.97},
        "lineage": {
            "parent": None,
            "data_window": "2024-04-01/2024-04-30",
            "data_hash": "c0ffee",
            "pipeline_run": "run-1",
        },
        "min_agent_version": "0.1.0",
        "test_vectors": {
            "inputs": [[65.0, 65.0, 0.1, 0.0]],
            "expected_scores": [[0.98, 0.02]],
            "atol": 0.01,
        },
    }
    d.update(changes)
    return ModelManifest.from_dict(d)
