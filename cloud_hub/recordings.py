"""Recorded sensor data in CSV files: the one reader that training and batch scoring share.

A recording is a CSV file with a header row: a timestamp column, one column per
sensor and, optionally, a label column and a device column. The columns are
found as the agent's CSV source finds them (:mod:`shared.columns`: the
separator detected from the header, sensors by name or through a column map,
timestamps in ISO 8601 or unix seconds or milliseconds), so a file one accepts
the other accepts too.

Files are read in chunks (:meth:`Recording.chunks`), never whole: a 2 GB
recording costs one chunk's memory. Two modes:

- **strict** (training): a cell that is not a number, a row with too few
  fields, a timestamp that does not parse, or a timestamp not after the
  previous one of the same series (the device column's value, or the file)
  raises :class:`RecordingError` naming the file, the line, the column and what
  to do. An empty cell is a missing value (a dropout), never an error.
- **lenient** (batch scoring, which keeps every row): such cells become missing
  and are counted (:attr:`Chunk.bad_cells`), a timestamp that does not parse
  becomes NaN, and the order is not checked. Blocks of rows go through
  pyarrow's CSV reader when pyarrow is installed (C++, without the GIL: about
  4x numpy's parser), else numpy's; a block either parses whole or goes
  through the row-by-row parser, so every path gives the same values.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np
import numpy.typing as npt

from shared.columns import (
    DELIMITERS,
    cell_hint,
    describe_delimiter,
    detect_delimiter,
    header_hint,
    not_csv,
    parse_timestamp,
    resolve_columns,
    timestamp_scale,
)
from shared.errors import EdgeloopError

__all__ = [
    "SUFFIXES",
    "Chunk",
    "CsvOptions",
    "Recording",
    "RecordingError",
    "estimate_rows",
    "find_recordings",
    "read_recording",
    "series_rows",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SUFFIXES: Final = (".csv", ".tsv")
"""What a directory given as data is searched for."""


class RecordingError(EdgeloopError):
    """A recording that cannot be read as asked; the message says where and what to do."""

    def __init__(
        self, message: str, *, path: str, line: int | None = None, column: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class CsvOptions:
    """How to read recordings: the separator, the timestamp, and the special columns."""

    delimiter: str = "auto"
    ts_column: str = "ts"
    ts_unit: str = "auto"
    column_map: Mapping[str, str] = field(default_factory=dict)
    label_column: str | None = None
    device_column: str | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive rows of a recording.

    ``first_line`` is the file line of the first row (the header is line 1);
    ``values`` has one column per sensor, NaN for a missing value.
    """

    first_line: int
    ts: F64
    values: F64
    labels: list[str] | None
    devices: list[str] | None
    bad_cells: int = 0
    device_codes: tuple[npt.NDArray[np.intp], list[str]] | None = None
    """When the reader has them: each row's device as an index into a list of
    distinct names (``devices[i] == names[codes[i]]``), so batch scoring groups
    rows by device without a lookup per row."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def find_recordings(paths: Sequence[Path]) -> list[Path]:
    """The files to read: files as given, directories searched (recursively) for
    ``*.csv`` and ``*.tsv``, in name order. Raises :class:`RecordingError` for a
    path that does not exist or a directory that holds no recording."""
    if not paths:
        raise RecordingError("no data given: name CSV files or directories", path="")
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
            )
            if not inside:
                raise RecordingError(
                    f"directory {str(path)!r} holds no {' or '.join(SUFFIXES)} file; name the "
                    "recordings themselves or the directory that holds them",
                    path=str(path),
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise RecordingError(
                f"{str(path)!r} does not exist (relative paths start at {Path.cwd()})",
                path=str(path),
            )
    return found


def estimate_rows(paths: Sequence[Path]) -> int:
    """Rows in the files, from their sizes and the line length of their first MiB
    (a progress bar's total)."""
    total = 0.0
    for path in paths:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(1 << 20)
        lines = max(head.count(b"\n"), 1)
        total += size * lines / max(len(head), 1)
    return int(total)


def series_rows(
    series: str | Sequence[str], n: int, prefix: str = ""
) -> list[tuple[str, I64 | None]]:
    """Each series' key (``prefix`` + its name) and its rows among ``n``, in order of
    first appearance; ``series`` names the series of all the rows, or of each row.
    None stands for all the rows.

    >>> [(k, None if r is None else r.tolist()) for k, r in series_rows(["a", "b", "a"], 3)]
    [('a', [0, 2]), ('b', [1])]
    """
    if isinstance(series, str):
        return [(prefix + series, None)]
    if len(series) != n:
        raise ValueError(f"{len(series)} series names for {n} readings")
    # Each name's code, in order of first appearance; the lookups run in C (map).
    codes = {name: i for i, name in enumerate(dict.fromkeys(series))}
    if len(codes) <= 1:
        return [(prefix + name, None) for name in codes]
    inverse = np.fromiter(map(codes.__getitem__, series), dtype=np.int64, count=n)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(codes)))[:-1]
    return [
        (prefix + name, rows) for name, rows in zip(codes, np.split(order, bounds), strict=True)
    ]


def _header(path: Path, options: CsvOptions) -> tuple[list[str], str]:
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline()
    except OSError as exc:
        raise RecordingError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}", path=str(path)
        ) from None
    if not first.strip():
        raise RecordingError(
            f"{str(path)!r} is empty; a recording needs a header row (a timestamp column and "
            "one column per sensor) and data rows",
            path=str(path),
            line=1,
        )
    problem = not_csv(first)
    if problem:
        raise RecordingError(f"{str(path)!r}: {problem}", path=str(path), line=1)
    if options.delimiter == "auto":
        delimiter = detect_delimiter(first)
    elif options.delimiter in DELIMITERS:
        delimiter = DELIMITERS[options.delimiter]
    else:
        raise ValueError(f"delimiter {options.delimiter!r} must be auto, ',', ';' or tab")
    header = [h.strip() for h in next(csv.reader([first], delimiter=delimiter), [])]
    return header, delimiter


class Recording:
    """One CSV recording whose header has been checked; read it with :meth:`chunks`."""

    def __init__(
        self,
        path: Path,
        options: CsvOptions,
        *,
        header: list[str],
        delimiter: str,
        sensors: tuple[str, ...],
        columns: list[int],
        unused: list[str],
    ) -> None:
        self.path = path
        self.options = options
        self.header = header
        self.delimiter = delimiter
        self.sensors = sensors
        self.unused = unused
        self._columns = columns
        self._ts = header.index(options.ts_column)
        self._label = header.index(options.label_column) if options.label_column else None
        self._device = header.index(options.device_column) if options.device_column else None

    @classmethod
    def open(
        cls, path: Path, options: CsvOptions, sensors: Sequence[str] | None = None
    ) -> Recording:
        """Check the header of ``path`` for the timestamp, the sensors and the
        label and device columns; ``sensors=None`` takes every other column."""
        header, delimiter = _header(path, options)
        split = f"split at {describe_delimiter(delimiter)}"
        shown = ", ".join(header)[:400]
        special = {
            "timestamp": (options.ts_column, "--ts-column"),
            "label": (options.label_column, "--label"),
            "device": (options.device_column, "--device-column"),
        }
        for what, (column, flag) in special.items():
            if column is not None and column not in header:
                hint = header_hint(header[0], delimiter) if len(header) == 1 else ""
                raise RecordingError(
                    f"{str(path)!r} has no {what} column {column!r}: {hint}"
                    if hint
                    else f"{str(path)!r} has no {what} column {column!r}; its header, {split}, "
                    f"has: {shown}. Name the column with {flag}.",
                    path=str(path),
                    line=1,
                    column=column,
                )
        taken = {c for c, _ in special.values() if c is not None}
        if sensors is None:
            # The file's column order, a mapped column under its sensor's name.
            named = {column: sensor for sensor, column in options.column_map.items()}
            sensors = [named.get(h, h) for h in header if h and h not in taken]
            sensors += [s for s in options.column_map if s not in sensors]
            if not sensors:
                raise RecordingError(
                    f"{str(path)!r} has no sensor column: its header, {split}, has only {shown}",
                    path=str(path),
                    line=1,
                )
        try:
            columns, unused = resolve_columns(
                sensors, header, options.column_map, where=f"{str(path)!r} ({split})"
            )
        except ValueError as exc:
            raise RecordingError(str(exc), path=str(path), line=1) from None
        unused = [c for c in unused if c not in taken]
        return cls(
            path,
            options,
            header=header,
            delimiter=delimiter,
            sensors=tuple(sensors),
            columns=columns,
            unused=unused,
        )

    def _fail(self, line: int, column: str | None, why: str) -> RecordingError:
        where = f"{str(self.path)!r} line {line}" + (f", column {column!r}" if column else "")
        return RecordingError(f"{where}: {why}", path=str(self.path), line=line, column=column)

    def chunks(self, rows: int = 65_536, *, strict: bool = True) -> Iterator[Chunk]:
        """The data rows, ``rows`` at a time (see the module docstring for ``strict``)."""
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            yield from self._chunks(fh, rows, strict)

    def _chunks(self, fh: TextIO, rows: int, strict: bool) -> Iterator[Chunk]:
        if not strict:
            yield from self._lenient_chunks(fh, rows)
            return
        reader = csv.reader(fh, delimiter=self.delimiter)
        next(reader, None)
        yield from self._parse(reader, 0, rows, strict, _ReadState())

    def _lenient_chunks(self, fh: TextIO, rows: int) -> Iterator[Chunk]:
        """Lenient chunks, ``rows`` lines at a time: pyarrow's CSV reader (when
        installed) or else numpy's C parser where a block allows it (numbers or
        empty cells only, no quotes, every field there), else the row-by-row
        parser for that block, which gives the same values. From the first quote on,
        the rest of the file goes through the row-by-row parser (a quoted field may
        hold a line break)."""
        fh.readline()  # the header, read by Recording.open
        state = _ReadState()
        arrow = _arrow_csv()
        while True:
            lines = list(itertools.islice(fh, rows))
            if not lines:
                return
            text = "".join(lines)
            if '"' in text:
                reader = csv.reader(itertools.chain(lines, fh), delimiter=self.delimiter)
                yield from self._parse(reader, state.line, rows, False, state)
                return
            chunk = None if arrow is None else self._arrow_block(arrow, text, len(lines), state)
            if chunk is None:
                chunk = self._numeric_block(lines, state)
            if chunk is None:
                reader = csv.reader(lines, delimiter=self.delimiter)
                chunk = next(self._parse(reader, state.line, len(lines), False, state), None)
            if chunk is not None:
                yield chunk
            if len(lines) < rows:
                return

    def _arrow_block(self, arrow: Any, text: str, n: int, state: _ReadState) -> Chunk | None:
        """The block through pyarrow's CSV reader (C++, without the GIL), or None when
        it does not parse whole the way the row-by-row parser would: any cell of the
        timestamp or a sensor that is not a number or empty, a row with other than
        the header's number of fields, a blank line, an empty timestamp, or cells
        with spaces around them. Numbers are read correctly rounded, as ``float``
        reads them; an empty sensor cell is missing (NaN), as there."""
        pa, pacsv = arrow
        names = [f"c{i}" for i in range(len(self.header))]
        numeric = [self._ts, *self._columns]
        text_cols = [c for c in (self._label, self._device) if c is not None]
        types = {names[c]: pa.float64() for c in numeric}
        types |= {names[c]: pa.dictionary(pa.int32(), pa.string()) for c in text_cols}
        try:
            table = pacsv.read_csv(
                pa.py_buffer(text.encode()),
                read_options=pacsv.ReadOptions(column_names=names, block_size=len(text) + 1),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter, quote_char=False, ignore_empty_lines=False
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    include_columns=list(dict.fromkeys(names[c] for c in numeric + text_cols)),
                    null_values=[""],
                    strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != n:
            return None
        ts_col = table.column(names[self._ts])
        if ts_col.null_count:
            return None  # an empty timestamp: the row parser sets the unit from the next one
        if state.scale is None:
            first = text[: text.index("\n")] if "\n" in text else text
            state.scale = timestamp_scale(
                first.split(self.delimiter)[self._ts].strip(), self.options.ts_unit
            )
        ts = ts_col.to_numpy() * state.scale
        ts[~np.isfinite(ts)] = math.nan
        values = np.empty((n, len(self._columns)), dtype=np.float64)
        for j, c in enumerate(self._columns):
            values[:, j] = table.column(names[c]).to_numpy(zero_copy_only=False)
        texts: list[list[str] | None] = []
        codes: tuple[npt.NDArray[np.intp], list[str]] | None = None
        for column in (self._label, self._device):
            if column is None:
                texts.append(None)
                continue
            col = table.column(names[column]).combine_chunks()
            # Dictionary words that differ only in spaces around them are one name.
            distinct = {
                w: i
                for i, w in enumerate(dict.fromkeys(w.strip() for w in col.dictionary.to_pylist()))
            } or {"": 0}
            remap = np.array([distinct[w.strip()] for w in col.dictionary.to_pylist()] or [0])
            row_codes = remap[col.indices.to_numpy(zero_copy_only=False)]
            words = np.array(list(distinct), dtype=object)
            texts.append(words[row_codes].tolist())
            if column == self._device:
                codes = (row_codes.astype(np.intp, copy=False), list(distinct))
        first_line = state.line + 1
        state.line += n
        return Chunk(first_line, ts, values, texts[0], texts[1], 0, codes)

    def _numeric_block(self, lines: list[str], state: _ReadState) -> Chunk | None:
        """The block through ``np.loadtxt``, or None when it does not parse whole."""
        d = self.delimiter
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = np.loadtxt(
                    lines,
                    delimiter=d,
                    usecols=[self._ts, *self._columns],
                    dtype=np.float64,
                    comments=None,
                    ndmin=2,
                )
        except ValueError:
            return None
        if parsed.shape[0] != len(lines):
            return None  # blank lines: the row-by-row parser skips them
        if state.scale is None:
            state.scale = timestamp_scale(lines[0].split(d)[self._ts].strip(), self.options.ts_unit)
        ts = parsed[:, 0] * state.scale
        ts[~np.isfinite(ts)] = math.nan
        labels = devices = None
        if self._label is not None or self._device is not None:
            cut = max(self._label or 0, self._device or 0) + 1
            fields = [text.split(d, cut) for text in lines]
            if self._label is not None:
                labels = [f[self._label].strip() for f in fields]
            if self._device is not None:
                devices = [f[self._device].strip() for f in fields]
        first = state.line + 1
        state.line += len(lines)
        return Chunk(first, ts, np.ascontiguousarray(parsed[:, 1:]), labels, devices, 0)

    def _parse(
        self, reader: Any, base: int, rows: int, strict: bool, state: _ReadState
    ) -> Iterator[Chunk]:
        """Chunks of the rows ``reader`` gives, row by row; ``base`` is the file line
        before the reader's first."""
        n_sensors = len(self.sensors)
        names = [self.header[c] for c in self._columns]
        cols, ts_col = self._columns, self._ts
        label_col, device_col = self._label, self._device
        need = max([ts_col, *cols, label_col or 0, device_col or 0]) + 1
        last_ts = state.last_ts
        line = state.line
        while True:
            ts = np.empty(rows, dtype=np.float64)
            values = np.empty((rows, n_sensors), dtype=np.float64)
            labels: list[str] | None = [] if label_col is not None else None
            devices: list[str] | None = [] if device_col is not None else None
            first_line = line + 1
            bad = 0
            n = 0
            while n < rows:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    line = state.line = line + 1
                    if strict:
                        raise self._fail(line, None, f"is not valid CSV ({exc})") from None
                    row = []
                line = state.line = base + reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if len(row) < need:
                    if strict:
                        raise self._fail(
                            line,
                            None,
                            f"has {len(row)} fields, the header {len(self.header)}; fix or "
                            "remove the row",
                        )
                    bad += n_sensors
                    row = row + [""] * (need - len(row))
                text = row[ts_col].strip()
                if state.scale is None and text:
                    state.scale = timestamp_scale(text, self.options.ts_unit)
                try:
                    t = parse_timestamp(text, state.scale or 1.0)
                    if not math.isfinite(t):
                        raise ValueError(text)
                except ValueError:
                    if strict:
                        raise self._fail(
                            line,
                            self.options.ts_column,
                            f"timestamp {text[:40]!r} is neither ISO 8601 (e.g. "
                            "2026-11-21T10:00:00Z) nor a number of unix seconds or milliseconds",
                        ) from None
                    t = math.nan
                series = row[device_col] if device_col is not None else ""
                if strict:
                    prev = last_ts.get(series)
                    if prev is not None and not t > prev:
                        what = "repeats" if t == prev else "is before"
                        raise self._fail(
                            line,
                            self.options.ts_column,
                            f"timestamp {text[:40]!r} {what} the previous row's"
                            + (f" of device {series!r}" if device_col is not None else "")
                            + ": rows must be in time order, one per instant. Sort the file "
                            "by time and drop repeated rows",
                        )
                    last_ts[series] = t
                ts[n] = t
                out = values[n]
                for j, c in enumerate(cols):
                    cell = row[c].strip()
                    if not cell:
                        out[j] = math.nan
                        continue
                    try:
                        out[j] = float(cell)
                    except ValueError:
                        if strict:
                            raise self._fail(
                                line,
                                names[j],
                                f"{cell[:40]!r} is not a number (sensor {self.sensors[j]!r}); "
                                f"{cell_hint(cell)}, or leave this column out with --sensors",
                            ) from None
                        out[j] = math.nan
                        bad += 1
                if labels is not None and label_col is not None:
                    labels.append(row[label_col].strip())
                if devices is not None:
                    devices.append(series.strip())
                n += 1
            if n == 0:
                return
            yield Chunk(first_line, ts[:n].copy(), values[:n].copy(), labels, devices, bad)
            if n < rows:
                return


@functools.cache
def _arrow_csv() -> tuple[Any, Any] | None:
    """``(pyarrow, pyarrow.csv)`` when pyarrow is installed (``edgeloop[parquet]``), else
    None: lenient reading then goes through numpy's parser and the csv module."""
    try:
        import pyarrow  # noqa: PLC0415
        import pyarrow.csv  # noqa: PLC0415
    except ImportError:
        return None
    return pyarrow, pyarrow.csv


@dataclass(slots=True)
class _ReadState:
    """What reading a file carries from row to row: the timestamp unit, each series'
    last timestamp (strict), and the file line of the last row read."""

    scale: float | None = None
    last_ts: dict[str, float] = field(default_factory=dict)
    line: int = 1


def read_recording(
    path: Path, options: CsvOptions, sensors: Sequence[str] | None = None
) -> tuple[Recording, Chunk]:
    """A whole recording as one strict :class:`Chunk` (for training; see :meth:`Recording.chunks`).

    A file with a header but no data row is a :class:`RecordingError`.
    """
    rec = Recording.open(path, options, sensors)
    parts = list(rec.chunks(strict=True))
    if not parts:
        raise RecordingError(f"{str(path)!r} has a header but no data rows", path=str(path), line=2)
    return rec, Chunk(
        first_line=parts[0].first_line,
        ts=np.concatenate([p.ts for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        labels=None if parts[0].labels is None else [x for p in parts for x in p.labels or []],
        devices=None if parts[0].devices is None else [x for p in parts for x in p.devices or []],
    )
