"""Replay recorded data from CSV, so real recordings run through the agent unchanged.

The file has a header row: a timestamp column (ISO 8601 such as
``2026-11-21T10:00:00.250Z``, or unix seconds or milliseconds) and a column for
each sensor the model reads, found by the sensor's name or through a column map
(``--csv-map vibration=vib_rms_g``); other columns are ignored, and said so
once. Fields are separated by ``,``, ``;`` or a tab, detected from the header
unless named (:mod:`shared.columns`, which every reader of recordings shares).
An empty cell is a missing value (a dropout), and so is a cell that is not a
number (``n/a``, or ``0,0538`` with a decimal comma) or a cell a short row
lacks (``csv_short_row``): counted ``csv_bad_cell``
and logged once per column with the line, the value and what to write instead;
the rest of the row is replayed. A row whose timestamp cannot be parsed is
skipped (``csv_bad_row``, logged once). A timestamp not after the previous
row's is counted ``csv_ts_not_increasing`` and logged once; the row is still
replayed, in file order. Nothing here is fatal; a file that gives no reading
at all (a header and no data rows, or rows none of which is usable), or a
sensor column none of whose cells is a number, is logged as an error at the
end of the file saying why.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.sources.base import Reading, StopSignal
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
from shared.errors import ConfigError

__all__ = ["DELIMITERS", "CsvReplaySource", "detect_delimiter", "parse_timestamp"]

log = logging.getLogger(__name__)


class CsvReplaySource:
    """Readings from a CSV file, at the recorded pace or as fast as possible."""

    def __init__(
        self,
        path: Path,
        sensors: Sequence[str],
        ts_column: str = "ts",
        pace: str = "recorded",
        delimiter: str = "auto",
        *,
        column_map: Mapping[str, str] | None = None,
        ts_unit: str = "auto",
    ) -> None:
        self.path = path
        self.sensors = tuple(sensors)
        self.ts_column = ts_column
        self.pace = pace
        self.ts_unit = ts_unit
        self.invalid: dict[str, int] = {}
        self.delimiter = DELIMITERS.get(delimiter, ",")
        self._map = dict(column_map or {})
        self._logged: set[tuple[str, object]] = set()
        self._names: list[str] = []
        self._numbers: list[int] = []
        """Per sensor column, the cells that were numbers."""
        self._columns = self._check_header(auto=delimiter == "auto")

    def _check_header(self, *, auto: bool) -> list[int]:
        try:
            with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
                first = fh.readline()
            problem = not_csv(first)
            if problem:
                raise ConfigError(f"CSV file {self.path}: {problem}", setting="csv_path")
            if auto:
                self.delimiter = detect_delimiter(first)
            header = next(csv.reader([first], delimiter=self.delimiter), None) if first else None
        except (OSError, csv.Error) as exc:
            raise ConfigError(
                f"cannot read CSV file {self.path}: {getattr(exc, 'strerror', None) or exc}",
                setting="csv_path",
            ) from None
        if not header:
            raise ConfigError(
                f"CSV file {self.path} is empty; it needs a header row", setting="csv_path"
            )
        header = [h.strip() for h in header]
        split = f"split at {describe_delimiter(self.delimiter)}"
        hint = header_hint(header[0], self.delimiter) if len(header) == 1 else ""
        if self.ts_column not in header and hint:
            raise ConfigError(
                f"CSV file {self.path} has no timestamp column {self.ts_column!r}: {hint}",
                setting="csv_delimiter",
            )
        if self.ts_column not in header:
            raise ConfigError(
                f"CSV file {self.path} has no timestamp column {self.ts_column!r}; its header, "
                f"{split}, has: {', '.join(header)[:300]}. Name it with --csv-ts-column",
                setting="csv_ts_column",
            )
        try:
            columns, unused = resolve_columns(
                self.sensors, header, self._map, where=f"CSV file {self.path} ({split})"
            )
        except ValueError as exc:
            raise ConfigError(str(exc), setting="csv_map") from None
        unused = [c for c in unused if c != self.ts_column]
        if unused:
            log.info(
                "CSV file %s: ignoring column(s) the model does not read: %s",
                self.path,
                ", ".join(unused)[:300],
            )
        self._names = [header[c] for c in columns]
        self._numbers = [0] * len(columns)
        return [header.index(self.ts_column), *columns]

    def _count(self, reason: str, key: object = None, message: str = "", *args: object) -> None:
        """Count ``reason``; log ``message`` the first time for ``(reason, key)``."""
        self.invalid[reason] = self.invalid.get(reason, 0) + 1
        if message and (reason, key) not in self._logged:
            self._logged.add((reason, key))
            log.warning(message + " (logged once; counted %s)", *args, reason)

    def readings(self, stop: StopSignal) -> Iterator[Reading]:
        ts_col, *value_cols = self._columns
        start_wall: float | None = None
        start_ts = 0.0
        scale: float | None = None
        # utf-8-sig: spreadsheets write a byte-order mark; errors="replace": a
        # bad byte spoils its row (counted below), not the whole replay.
        with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            rows = csv.reader(fh, delimiter=self.delimiter)
            next(rows, None)
            seen = sent = 0
            ended = False
            last_ts = -math.inf
            while not stop.is_set():
                try:
                    row = next(rows)
                except StopIteration:
                    ended = True
                    break
                except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
                    seen += 1
                    self._count(
                        "csv_bad_row",
                        None,
                        "CSV file %s line %d is not valid CSV (%s); skipped",
                        self.path,
                        rows.line_num,
                        exc,
                    )
                    continue
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                seen += 1
                ts = self._timestamp(row, ts_col, scale, rows.line_num)
                if ts is None:
                    continue
                if scale is None:
                    scale = timestamp_scale(row[ts_col], self.ts_unit)
                if not ts > last_ts:
                    self._count(
                        "csv_ts_not_increasing",
                        None,
                        "CSV file %s line %d: timestamp %r is not after the previous row's; "
                        "the row is replayed in file order. Sort the file by time",
                        self.path,
                        rows.line_num,
                        row[ts_col][:40],
                    )
                last_ts = ts
                values = self._values(row, value_cols, rows.line_num)
                if self.pace == "recorded":
                    if start_wall is None:
                        start_wall, start_ts = time.monotonic(), ts
                    delay = (ts - start_ts) - (time.monotonic() - start_wall)
                    if delay > 0 and stop.wait(delay):
                        return
                sent += 1
                yield Reading(ts, values)
        if ended and not seen:
            log.error(
                "CSV file %s gave no reading: it has a header but no data rows. Replay a file "
                "with rows under its header",
                self.path,
            )
        if seen and not sent:
            log.error(
                "CSV file %s: none of its %d rows gave a reading (%s); see the warnings "
                "above for the first bad row",
                self.path,
                seen,
                ", ".join(f"{k}: {v}" for k, v in sorted(self.invalid.items())),
            )
        unread = [n for j, n in enumerate(self._names) if sent and not self._numbers[j]]
        if unread and self.invalid.get("csv_bad_cell"):
            log.error(
                "CSV file %s: no cell of column(s) %s is a number: every reading of their "
                "sensors is missing; see the warnings above for what to write",
                self.path,
                ", ".join(map(repr, unread))[:300],
            )

    def _timestamp(self, row: list[str], col: int, scale: float | None, line: int) -> float | None:
        """The row's timestamp in unix seconds, or None (counted, logged once)."""
        text = row[col] if col < len(row) else ""
        try:
            ts = parse_timestamp(text, scale or timestamp_scale(text, self.ts_unit))
        except ValueError:
            ts = math.nan
        if math.isfinite(ts):
            return ts
        self._count(
            "csv_bad_row",
            None,
            "CSV file %s line %d, column %r: timestamp %r is neither ISO 8601 (e.g. "
            "2026-11-21T10:00:00Z) nor unix seconds or milliseconds; the row is skipped",
            self.path,
            line,
            self.ts_column,
            text[:40],
        )
        return None

    def _values(self, row: list[str], cols: list[int], line: int) -> np.ndarray[Any, Any]:
        """The sensors' values; a cell that is not a finite number is missing (NaN)."""
        values = np.full(len(cols), math.nan, dtype=np.float64)
        if len(row) <= max(cols):
            self._count(
                "csv_short_row",
                None,
                "CSV file %s line %d has %d fields, fewer than the header; its missing cells "
                "are missing values",
                self.path,
                line,
                len(row),
            )
        for j, c in enumerate(cols):
            cell = row[c].strip() if c < len(row) else ""
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                values[j] = value
                self._numbers[j] += 1
                continue
            self._count(
                "csv_bad_cell",
                j,
                "CSV file %s line %d, column %r: %r is not a number; it is a missing value "
                "for sensor %r (%s)",
                self.path,
                line,
                self._names[j],
                cell[:40],
                self.sensors[j],
                cell_hint(cell),
            )
        return values
