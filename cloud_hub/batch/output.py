"""Result writers: one row per scored reading, in order, block by block.

Columns: ``ts`` (unix seconds; empty or null where the input's timestamp did
not parse), ``device`` (when the input has a device column, or for stored
telemetry), ``file`` (when several files were scored), ``predicted_class``,
``urgent_score`` (the urgent class's probability) and ``urgent`` (0/1, see
:mod:`cloud_hub.batch.scoring`).

Formats: ``csv`` and ``jsonl`` (JSON lines) always; ``parquet`` when pyarrow
is installed (``pip install 'edgeloop[parquet]'``), else :func:`open_writer`
says so. Each writer holds one block at a time, never the whole result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from cloud_hub.batch import BatchError

__all__ = ["FORMATS", "OutputBlock", "Writer", "format_for", "open_writer", "require_pyarrow"]

FORMATS: Final = ("csv", "jsonl", "parquet")
_FLAGS: Final = np.array(["0", "1"], dtype=object)
_DEDUPE_MIN_ROWS: Final = 64
_SUFFIXES: Final = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True, slots=True)
class OutputBlock:
    ts: npt.NDArray[np.float64]
    device: Sequence[str] | str | None
    """Each row's device, one device for the whole block, or None (no device column)."""
    file: str | None
    predicted: npt.NDArray[np.int64]
    urgent_score: npt.NDArray[np.float32]
    urgent: npt.NDArray[np.uint8]


class Writer(Protocol):
    columns: list[str]

    def write(self, block: OutputBlock) -> None: ...

    def close(self) -> None: ...


def require_pyarrow(what: str) -> Any:
    """``pyarrow`` (imported now), or a :class:`BatchError` saying how to install it."""
    try:
        import pyarrow  # noqa: PLC0415
    except ImportError:
        raise BatchError(
            f"{what} needs pyarrow, which is not installed: pip install 'edgeloop[parquet]' "
            "(or pyarrow), or use CSV / JSON lines"
        ) from None
    return pyarrow


def format_for(path: Path, given: str | None) -> str:
    """The output format: ``given``, else from the file's suffix, else csv."""
    if given is not None:
        if given not in FORMATS:
            raise BatchError(f"--format {given!r} must be one of {', '.join(FORMATS)}")
        return given
    return _SUFFIXES.get(path.suffix.lower(), "csv")


def _devices(block: OutputBlock) -> list[str]:
    d = block.device
    if d is None:
        return []
    return [d] * len(block.ts) if isinstance(d, str) else list(d)


class _Text:
    def __init__(self, fh: IO[bytes], columns: list[str], classes: Sequence[str]) -> None:
        self.fh = fh
        self.columns = columns
        self.classes = list(classes)
        self.has_device = "device" in columns
        self.has_file = "file" in columns

    def close(self) -> None:
        self.fh.close()


def _csv_text(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _scores_text(scores: npt.NDArray[np.float32]) -> list[str]:
    """Each score as ``%.6g`` text. A model's scores repeat (a tree ensemble has
    finitely many leaf combinations: about one distinct score in twelve on the
    bench's recording), so each distinct value is formatted once and the rows
    take their text from it; formatting every row was the writer's largest
    cost. A block of mostly distinct scores is formatted row by row."""
    values = scores.tolist()
    if len(values) < _DEDUPE_MIN_ROWS:
        return list(map(format, values, itertools.repeat(".6g")))
    distinct, inverse = np.unique(scores, return_inverse=True)
    if distinct.shape[0] * 2 > len(values):
        return list(map(format, values, itertools.repeat(".6g")))
    text = np.array([format(v, ".6g") for v in distinct.tolist()], dtype=object)
    out: list[str] = text[inverse].tolist()
    return out


class _CsvWriter(_Text):
    def __init__(self, fh: IO[bytes], columns: list[str], classes: Sequence[str]) -> None:
        super().__init__(fh, columns, classes)
        self.classes = [_csv_text(c) for c in classes]
        self._classes = np.array(self.classes, dtype=object)
        fh.write((",".join(columns) + "\n").encode())

    def write(self, block: OutputBlock) -> None:
        # Column by column, the per-row work in C where it can be (map, numpy's take
        # of object arrays); a timestamp is formatted once however many devices share it.
        times = block.ts.tolist()
        text = {t: ("" if math.isnan(t) else repr(t)) for t in dict.fromkeys(times)}
        ts = list(map(text.__getitem__, times))
        cls = self._classes[block.predicted].tolist()
        score = _scores_text(block.urgent_score)
        cols: list[list[str]] = [ts]
        if self.has_device:
            devices = _devices(block)
            quoted = {d: _csv_text(d) for d in dict.fromkeys(devices)}
            if any(q != d for d, q in quoted.items()):
                devices = list(map(quoted.__getitem__, devices))
            cols.append(devices)
        if self.has_file:
            cols.append([_csv_text(block.file or "")] * len(ts))
        cols += [cls, score, _FLAGS[(block.urgent != 0).view(np.uint8)].tolist()]
        lines = map(",".join, zip(*cols, strict=True))
        self.fh.write(("\n".join(lines) + "\n").encode())


class _JsonlWriter(_Text):
    def write(self, block: OutputBlock) -> None:
        ts = [None if math.isnan(t) else t for t in block.ts.tolist()]
        devices = _devices(block) if self.has_device else None
        scores = block.urgent_score.tolist()
        urgent = block.urgent.tolist()
        out: list[bytes] = []
        for i, c in enumerate(block.predicted.tolist()):
            row: dict[str, Any] = {"ts": ts[i]}
            if devices is not None:
                row["device"] = devices[i]
            if self.has_file:
                row["file"] = block.file
            row["predicted_class"] = self.classes[c]
            row["urgent_score"] = scores[i]
            row["urgent"] = urgent[i]
            out.append(orjson.dumps(row))
        self.fh.write(b"\n".join(out) + b"\n")


class _ParquetWriter:
    def __init__(self, path: Path, columns: list[str], classes: Sequence[str]) -> None:
        pa = require_pyarrow("--format parquet")
        import pyarrow.parquet as pq  # noqa: PLC0415

        self.pa = pa
        self.columns = columns
        self.classes = pa.array(list(classes), pa.string())
        types = {
            "ts": pa.float64(),
            "device": pa.string(),
            "file": pa.string(),
            "predicted_class": pa.string(),
            "urgent_score": pa.float32(),
            "urgent": pa.uint8(),
        }
        self.schema = pa.schema([(c, types[c]) for c in columns])
        self._writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, block: OutputBlock) -> None:
        pa = self.pa
        n = len(block.ts)
        values: dict[str, Any] = {
            "ts": pa.array(block.ts, pa.float64(), from_pandas=True),
            "device": pa.array(_devices(block), pa.string()),
            "file": pa.array([block.file] * n, pa.string()),
            "predicted_class": self.classes.take(pa.array(block.predicted)),
            "urgent_score": pa.array(block.urgent_score),
            "urgent": pa.array(block.urgent),
        }
        table = pa.table({c: values[c] for c in self.columns}, schema=self.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


def open_writer(
    path: Path, fmt: str, classes: Sequence[str], *, device: bool, file: bool
) -> Writer:
    """A writer of ``fmt`` to ``path`` (created or replaced); :class:`BatchError`
    naming the path when it cannot be written."""
    columns = ["ts", *(["device"] if device else []), *(["file"] if file else [])]
    columns += ["predicted_class", "urgent_score", "urgent"]
    if fmt == "parquet":
        require_pyarrow("--format parquet")
    try:
        if fmt == "parquet":
            return _ParquetWriter(path, columns, classes)
        fh = path.open("wb")
    except OSError as exc:
        raise BatchError(
            f"cannot write the output {str(path)!r}: {exc.strerror or exc}; choose a path in "
            "a directory that exists and that you may write to"
        ) from None
    if fmt == "csv":
        return _CsvWriter(fh, columns, classes)
    return _JsonlWriter(fh, columns, classes)
