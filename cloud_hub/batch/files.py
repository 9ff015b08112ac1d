"""``edgeloop-hub batch score``: recordings in, one result file out, streamed.

Each input file is read in chunks (:meth:`cloud_hub.recordings.Recording.chunks`,
lenient: a bad cell becomes missing and is counted, a bad timestamp leaves the
row's ``ts`` empty; every row is kept), scored by
:class:`~cloud_hub.batch.scoring.BatchScorer` (one state per device, or per
file without a device column) and written out at once; memory is a few chunks
whatever the file's size. Reading, the input check and the features run one
chunk ahead and writing one behind, each in a thread of its own, so the model
scores (onnxruntime releases the GIL) while the next chunk is parsed and
prepared (:meth:`~cloud_hub.batch.scoring.BatchScorer.prepare`). With
``baselines``, each series' readings are mapped with its baseline before the
features, as its agent maps them (:mod:`edge_agent.reading`). The result goes to ``OUTPUT.part`` first and takes
its name at the end, so an interrupted run leaves no half file under the
output's name. Parquet files (``*.parquet``, named directly) are read with
pyarrow when it is installed; so are CSV files, block by block, where a block
parses whole (:meth:`cloud_hub.recordings.Recording.chunks`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import numpy as np

from cloud_hub.batch import BatchError
from cloud_hub.batch.output import OutputBlock, Writer, open_writer, require_pyarrow
from cloud_hub.batch.scoring import BaselineLookup, BatchScorer
from cloud_hub.recordings import (
    Chunk,
    CsvOptions,
    Recording,
    estimate_rows,
    find_recordings,
    series_rows,
)
from shared.columns import MS_THRESHOLD, parse_timestamp, resolve_columns
from shared.manifest import ModelPackage

__all__ = ["DEFAULT_CHUNK_ROWS", "Summary", "score_files"]

DEFAULT_CHUNK_ROWS = 16_384
"""Rows read, scored and written at a time: about 10 MB of working memory with 8 sensors."""


class _Input(Protocol):
    path: Path

    def chunks(self, rows: int, *, strict: bool) -> Iterator[Chunk]: ...


@dataclass
class Summary:
    """What a run did; :meth:`to_dict` is the JSON line ``batch score`` prints last."""

    model: str
    version: str
    output: str
    format: str
    files: int = 0
    rows: int = 0
    urgent_rows: int = 0
    bad_cells: int = 0
    imputed: int = 0
    series: int = 0
    baselines: int = 0
    """Series mapped with a baseline (``--baseline``, ``--device-baselines``)."""
    chunks: int = 0
    row_by_row: bool = False
    elapsed_s: float = 0.0
    input_checks: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    ts_not_increasing: int = 0
    """Readings whose timestamp is not after the previous one of their series."""
    ts_first_out_of_order: str = ""
    """Where the first of those is: the file, its line, and its device if any."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "output": self.output,
            "format": self.format,
            "files": self.files,
            "rows": self.rows,
            "rows_per_s": round(self.rows_per_s, 1),
            "urgent_rows": self.urgent_rows,
            "bad_cells": self.bad_cells,
            "imputed": self.imputed,
            "series": self.series,
            "baselines": self.baselines,
            "chunks": self.chunks,
            "row_by_row": self.row_by_row,
            "elapsed_s": round(self.elapsed_s, 3),
            "input_checks": self.input_checks,
            "classes": self.classes,
            "ts_not_increasing": self.ts_not_increasing,
        }


class _ParquetInput:
    """A Parquet file read in record batches: the same columns a CSV recording has."""

    def __init__(self, path: Path, options: CsvOptions, sensors: Sequence[str]) -> None:
        require_pyarrow(f"input {str(path)!r}")
        import pyarrow.parquet as pq  # noqa: PLC0415

        self.path = path
        self.options = options
        try:
            self._file = pq.ParquetFile(str(path))
        except Exception as exc:  # pyarrow raises its own error types
            raise BatchError(f"cannot read {str(path)!r} as Parquet: {exc}") from None
        names = list(self._file.schema_arrow.names)
        for what, column, flag in (
            ("timestamp", options.ts_column, "--ts-column"),
            ("device", options.device_column, "--device-column"),
        ):
            if column is not None and column not in names:
                raise BatchError(
                    f"{str(path)!r} has no {what} column {column!r}; its columns: "
                    f"{', '.join(names)[:400]}. Name the column with {flag}"
                )
        try:
            idx, _ = resolve_columns(sensors, names, options.column_map, where=repr(str(path)))
        except ValueError as exc:
            raise BatchError(str(exc)) from None
        self._sensors = [names[i] for i in idx]

    def chunks(self, rows: int, *, strict: bool) -> Iterator[Chunk]:
        import pyarrow as pa  # noqa: PLC0415

        o = self.options
        columns = [o.ts_column, *self._sensors]
        if o.device_column is not None:
            columns.append(o.device_column)
        line = 2
        scale: float | None = None
        for batch in self._file.iter_batches(batch_size=rows, columns=list(dict.fromkeys(columns))):
            n = batch.num_rows
            ts_col = batch.column(o.ts_column)
            if pa.types.is_timestamp(ts_col.type):
                ts = (
                    ts_col.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
                    / 1e6
                )
            elif pa.types.is_string(ts_col.type) or pa.types.is_large_string(ts_col.type):
                ts = np.array([_ts(t) for t in ts_col.to_pylist()], dtype=np.float64)
            else:
                ts = ts_col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                if scale is None:
                    first = ts[np.isfinite(ts)][:1]
                    scale = (
                        0.001
                        if o.ts_unit == "ms"
                        or (o.ts_unit == "auto" and first.size and abs(first[0]) > MS_THRESHOLD)
                        else 1.0
                    )
                ts = ts * scale
            values = np.column_stack(
                [
                    batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
                    for c in self._sensors
                ]
            ).astype(np.float64)
            devices = None
            if o.device_column is not None:
                devices = [
                    "" if d is None else str(d) for d in batch.column(o.device_column).to_pylist()
                ]
            yield Chunk(line, np.asarray(ts, dtype=np.float64), values, None, devices, 0)
            line += n


def _ts(text: Any) -> float:
    try:
        return parse_timestamp(str(text))
    except ValueError:
        return float("nan")


def _open_inputs(
    paths: Sequence[Path], options: CsvOptions, sensors: Sequence[str]
) -> list[_Input]:
    opened: list[_Input] = []
    for path in find_recordings(list(paths)):
        if path.suffix.lower() == ".parquet":
            opened.append(_ParquetInput(path, options, sensors))
        else:
            opened.append(Recording.open(path, options, sensors))
    return opened


def _series(chunk: Chunk) -> str | list[str]:
    """The chunk's series: each row's device, or one series for the whole file."""
    return "" if chunk.devices is None else chunk.devices


class _TsOrder:
    """Counts, per series, the readings whose timestamp is not after the series'
    previous one: scores over a window assume the readings come in time order."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.count = 0
        self.first = ""

    def add(self, path: Path, chunk: Chunk) -> None:
        for key, rows in series_rows(_series(chunk), len(chunk), f"{path}\x00"):
            series = chunk.ts if rows is None else chunk.ts[rows]
            if not len(series):
                continue
            previous = np.concatenate(([self.last.get(key, -np.inf)], series[:-1]))
            bad = np.flatnonzero(series <= previous)
            if len(bad):
                if not self.count:
                    row = int(bad[0] if rows is None else rows[bad[0]])
                    device = key.partition("\x00")[2]
                    self.first = f"{path} line {chunk.first_line + row}" + (
                        f" (device {device})" if device else ""
                    )
                self.count += len(bad)
            if not np.isnan(series[-1]):
                self.last[key] = float(series[-1])


def _all_chunks(opened: Sequence[_Input], rows: int) -> Iterator[tuple[int, Chunk]]:
    for index, source in enumerate(opened):
        for chunk in source.chunks(rows, strict=False):
            yield index, chunk


_T = TypeVar("_T")
_DEPTH: Final = 2
"""Chunks read ahead, and blocks waiting to be written: memory stays a few chunks."""
_POLL_S: Final = 0.1


def _read_ahead(items: Iterator[_T]) -> Iterator[_T]:
    """``items``, produced by a thread of their own at most :data:`_DEPTH` ahead.

    Parsing holds the GIL, but onnxruntime releases it while it scores: the next
    chunk is parsed while this one is scored. An error in the reader is raised
    here, in order.
    """
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((0, item), timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((1, None))
        except BaseException as exc:  # handed over to the consumer, which raises it
            q.put((2, exc))

    thread = threading.Thread(target=produce, name="batch-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == 1:
                return
            if kind == 2:
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get(timeout=_POLL_S)
        thread.join()


class _WriteBehind:
    """Writes blocks in a thread of its own, at most :data:`_DEPTH` behind; a write
    error is raised by the next :meth:`write` or by :meth:`close`."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._q: queue.Queue[OutputBlock | None] = queue.Queue(maxsize=_DEPTH)
        self._thread = threading.Thread(target=self._run, name="batch-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            block = self._q.get()
            if block is None:
                return
            if self.error is None:
                try:
                    self.writer.write(block)
                except BaseException as exc:  # raised in the caller's thread
                    self.error = exc

    def write(self, block: OutputBlock) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(block)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self.writer.close()
        if self.error is not None:
            raise self.error


def score_files(
    package: ModelPackage,
    inputs: Sequence[Path],
    output: Path,
    fmt: str,
    options: CsvOptions,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    row_by_row: bool | None = None,
    progress: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
    baselines: BaselineLookup | None = None,
) -> Summary:
    """Score every row of ``inputs`` with ``package`` into ``output``; returns the summary.

    ``progress`` (default: when stderr is a terminal) shows a tqdm bar on stderr;
    ``on_chunk`` is called with each chunk's row count (tests count chunks);
    ``baselines`` gives each series (a device, or ``""`` for a file without a
    device column) its baseline, or None for the model's reference.
    """
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415

    m = package.manifest
    if fmt == "parquet":
        require_pyarrow("--format parquet")  # before any input is read
    opened = _open_inputs(inputs, options, m.input.sensor_names)
    resolved = {p.path.resolve() for p in opened}
    if output.resolve() in resolved:
        raise BatchError(f"--output {str(output)!r} is one of the inputs; choose another file")
    scorer = BatchScorer(
        m, OnnxScorer.from_package(package), row_by_row=row_by_row, baselines=baselines
    )
    several = len(opened) > 1
    part = output.with_name(output.name + ".part")
    writer = open_writer(
        part, fmt, m.output.classes, device=options.device_column is not None, file=several
    )
    summary = Summary(m.name, m.version, str(output), fmt, files=len(opened))
    summary.row_by_row = scorer.row_by_row
    counts = np.zeros(len(m.output.classes), dtype=np.int64)
    show = sys.stderr.isatty() if progress is None else progress
    bar: Any = None
    if show:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(
            total=estimate_rows([p.path for p in opened]),
            unit=" rows",
            unit_scale=True,
            file=sys.stderr,
            desc=f"{m.name} {m.version}",
            # A terminal that reports no size (some ptys) still gets a bar.
            ncols=shutil.get_terminal_size().columns,
            nrows=shutil.get_terminal_size().lines,
        )
    start = time.perf_counter()
    done = False
    order = _TsOrder()
    behind = _WriteBehind(writer)
    try:
        prepared = (
            (
                index,
                chunk,
                scorer.prepare(chunk.values, _series(chunk), f"{index}\x00", chunk.device_codes),
            )
            for index, chunk in _all_chunks(opened, chunk_rows)
        )
        for index, chunk, ready in _read_ahead(prepared):
            order.add(opened[index].path, chunk)
            scored = scorer.score_prepared(ready)
            try:
                behind.write(
                    OutputBlock(
                        chunk.ts,
                        chunk.devices,
                        str(opened[index].path) if several else None,
                        scored.predicted,
                        scored.urgent_score,
                        scored.urgent,
                    )
                )
            except OSError as exc:
                raise BatchError(
                    f"cannot write the output {str(part)!r}: {exc.strerror or exc}"
                ) from None
            n = len(chunk)
            summary.rows += n
            summary.chunks += 1
            summary.bad_cells += chunk.bad_cells
            summary.urgent_rows += int(scored.urgent.sum())
            counts += np.bincount(scored.predicted, minlength=counts.shape[0])
            if bar is not None:
                bar.update(n)
            if on_chunk is not None:
                on_chunk(n)
        done = True
    finally:
        try:
            behind.close()
        except OSError as exc:
            if done:
                raise BatchError(
                    f"cannot write the output {str(part)!r}: {exc.strerror or exc}"
                ) from None
        if bar is not None:
            if done:
                bar.total = summary.rows  # the estimate, made right
                bar.refresh()
            bar.close()
        if not done:
            with contextlib.suppress(OSError):
                part.unlink()
    try:
        os.replace(part, output)
    except OSError as exc:
        raise BatchError(
            f"cannot move the result {str(part)!r} to {str(output)!r}: {exc.strerror or exc}"
        ) from None
    summary.elapsed_s = time.perf_counter() - start
    summary.series = scorer.series
    summary.imputed = scorer.imputed
    summary.baselines = scorer.mapped_series
    summary.input_checks = scorer.input_counts()
    summary.classes = dict(zip(m.output.classes, counts.tolist(), strict=True))
    summary.ts_not_increasing, summary.ts_first_out_of_order = order.count, order.first
    return summary
