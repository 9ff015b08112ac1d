"""Replay recorded data from CSV, so real recordings run through the agent unchanged.

The file has a header row: a timestamp column (ISO 8601 such as
``2026-11-21T10:00:00.250Z``, or unix seconds or milliseconds) and a column for
each sensor the model reads, found by the sensor's name or through a column map
(``--csv-map vibration=vib_rms_g``); other columns are ignored, and said so
once. Fields are separated by ``,``, ``;`` or a tab, detected from the header
unless named (:mod:`shared.columns`, which every reader of recordings shares).
An empty cell is a missing value (a dropout). A row that cannot be parsed is
skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_agent.sources.base import Reading
from shared.columns import (
    DELIMITERS,
    describe_delimiter,
    detect_delimiter,
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
        self._columns = self._check_header(auto=delimiter == "auto")

    def _check_header(self, *, auto: bool) -> list[int]:
        try:
            with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
                first = fh.readline()
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
        if self.ts_column not in header:
            raise ConfigError(
                f"CSV file {self.path} has no timestamp column {self.ts_column!r}; its header, "
                f"{split}, has: {', '.join(header)[:300]}. Name it with --csv-ts-column "
                "(and the separator with --csv-delimiter if the header is one field)",
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
        return [header.index(self.ts_column), *columns]

    def _count(self, reason: str) -> None:
        self.invalid[reason] = self.invalid.get(reason, 0) + 1

    def readings(self, stop: threading.Event) -> Iterator[Reading]:
        ts_col, *value_cols = self._columns
        start_wall: float | None = None
        start_ts = 0.0
        scale: float | None = None
        # utf-8-sig: spreadsheets write a byte-order mark; errors="replace": a
        # bad byte spoils its row (counted below), not the whole replay.
        with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            rows = csv.reader(fh, delimiter=self.delimiter)
            next(rows, None)
            while not stop.is_set():
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except csv.Error:  # e.g. a field over csv.field_size_limit()
                    self._count("csv_bad_row")
                    continue
                try:
                    if scale is None:
                        scale = timestamp_scale(row[ts_col], self.ts_unit)
                    ts = parse_timestamp(row[ts_col], scale)
                    values = np.array(
                        [float(row[c]) if row[c].strip() else math.nan for c in value_cols],
                        dtype=np.float64,
                    )
                except (ValueError, IndexError):
                    self._count("csv_bad_row")
                    continue
                if not math.isfinite(ts) or np.isinf(values).any():
                    self._count("csv_bad_row")
                    continue
                if self.pace == "recorded":
                    if start_wall is None:
                        start_wall, start_ts = time.monotonic(), ts
                    delay = (ts - start_ts) - (time.monotonic() - start_wall)
                    if delay > 0 and stop.wait(delay):
                        return
                yield Reading(ts, values)
