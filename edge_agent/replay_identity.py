"""The identity of a replayed recording's messages: its epoch, from the file and what shapes it.

An agent replaying a CSV file (``--source csv``) does not bump the epoch file
in its state directory. Its epoch is derived from the recording instead:

    epoch = REPLAY_EPOCH_MIN + first 52 bits of sha256(
        "edgeloop-replay/1", the file's bytes, and every setting that shapes the
        message stream or its scores: the model's name and version, the
        sha256 of its ONNX file and of its whole manifest (thresholds, urgent
        rule, sensor fallbacks), the sha256 of the --baseline file (or none),
        --max-batch, --max-delay-ms, --readings, --csv-ts-column,
        --csv-ts-unit, --csv-map, --csv-delimiter)

and its seqs start at 1. The batcher seals replayed telemetry by row count and
by *recorded* time span (``edge_agent.batcher``), never by wall time, and the
urgent rule counts readings, not seconds; so the same rows through the same
model make the same messages in the same order, and message k of the
recording is always ``(epoch, k)``. Replaying it again, at any pace, from this
state directory or another, sends messages the hub already holds: its dedupe
on ``(device, epoch, seq)`` counts them as duplicates and stores nothing twice.

What changes the identity (and so stores the recording again, as a new
replay): another file content (one byte is enough), another model version or
model file or manifest, another baseline file content (or a baseline given or
taken away), or another batching, row limit or CSV parsing setting. What does not: the file's
name or place, ``--csv-pace``, the broker, the device's state directory.

The limit: "the same messages" assumes the model scores the same rows the
same way. onnxruntime on another CPU family may round an int8 score
differently; should that move an urgent event, the stream after it is
numbered differently, and a replay there would be taken for the earlier one
where seqs overlap. Replay a recording again on the same kind of machine and
edgeloop version.

Epochs of this range are told apart from live ones by :mod:`shared.epochs`.

>>> import tempfile, pathlib
>>> f = pathlib.Path(tempfile.mkdtemp()) / "rec.csv"
>>> _ = f.write_text("ts,a\\n1,2\\n")
>>> a = replay_identity(f, {"model": "m 1.0.0"})
>>> a.epoch == replay_identity(f, {"model": "m 1.0.0"}).epoch
True
>>> a.epoch == replay_identity(f, {"model": "m 1.0.1"}).epoch
False
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shared.epochs import REPLAY_EPOCH_MIN
from shared.errors import ConfigError
from shared.manifest import sha256_file

if TYPE_CHECKING:
    from edge_agent.settings import AgentSettings
    from shared.manifest import ModelManifest

__all__ = ["SCHEME", "ReplayIdentity", "identity_for", "replay_identity", "stream_shape"]

SCHEME: Final = "edgeloop-replay/1"
"""Bump when the way rows become messages changes: old replays then get new epochs."""


@dataclass(frozen=True, slots=True)
class ReplayIdentity:
    """A replay's epoch and what it was derived from."""

    epoch: int
    file_sha256: str
    """The recording's own hash (hex), for logs and reports."""
    shape: Mapping[str, object]


def identity_for(settings: AgentSettings, manifest: ModelManifest) -> ReplayIdentity | None:
    """The replay identity of an agent that replays a CSV file; None for any other source."""
    if settings.source != "csv" or settings.csv_path is None:
        return None
    return replay_identity(settings.csv_path, stream_shape(settings, manifest))


def stream_shape(settings: AgentSettings, manifest: ModelManifest) -> dict[str, object]:
    """The settings that decide which rows make which messages, and their features and
    scores, as hashed into the epoch."""
    manifest_json = json.dumps(manifest.to_dict(), sort_keys=True, default=str)
    return {
        "model": f"{manifest.name} {manifest.version}",
        "model_sha256": manifest.model.sha256,
        "manifest_sha256": hashlib.sha256(manifest_json.encode()).hexdigest(),
        "baseline_sha256": _file_sha256(settings.baseline, "baseline")
        if settings.baseline is not None
        else None,
        "max_batch": settings.max_batch,
        "max_delay_ms": settings.max_delay_ms,
        "readings": settings.readings,
        "csv_ts_column": settings.csv_ts_column,
        "csv_ts_unit": settings.csv_ts_unit,
        "csv_map": sorted(settings.csv_map.items()),
        "csv_delimiter": settings.csv_delimiter,
    }


def _file_sha256(path: Path, setting: str) -> str:
    """The hex sha256 of ``path``, read 1 MiB at a time."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {setting.replace('_', ' ')} file {path} to derive the replay "
            f"identity: {exc.strerror or exc}",
            setting=setting,
        ) from None


def replay_identity(path: Path, shape: Mapping[str, object]) -> ReplayIdentity:
    """Hash ``path`` (streamed, 1 MiB at a time) with ``shape``; see the module docstring."""
    file_sha256 = _file_sha256(path, "csv_path")
    ident = hashlib.sha256(SCHEME.encode())
    ident.update(bytes.fromhex(file_sha256))
    ident.update(json.dumps(dict(shape), sort_keys=True, default=str).encode())
    bits = int.from_bytes(ident.digest()[:8], "big") >> 12  # 52 bits
    return ReplayIdentity(REPLAY_EPOCH_MIN + bits, file_sha256, dict(shape))
