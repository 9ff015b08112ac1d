"""Replay recorded data from CSV, so real recordings run through the agent unchanged.

The file has a header row: a timestamp column (unix seconds, or ISO 8601 such
as ``2026-11-21T10:00:00.250Z``) and one column per sensor, named as in
:data:`shared.features.SENSOR_NAMES`; other columns are ignored. Fields are
separated by ``,``, ``;`` or a tab: ``delimiter="auto"`` takes the one that
splits the header into the most fields (:func:`detect_delimiter`). An empty cell
is a missing value (a dropout). A row that cannot be parsed is skipped and
counted, never fatal.
"""

from __future__ import annotations

import csv
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.sources.base import Reading
from shared.errors import ConfigError
from shared.features import SENSOR_NAMES

__all__ = ["DELIMITERS", "CsvReplaySource", "detect_delimiter", "parse_timestamp"]

DELIMITERS: dict[str, str] = {",": ",", ";": ";", "tab": "\t"}
"""What ``--csv-delimiter`` takes (besides ``auto``), and the character each means."""


def detect_delimiter(header_line: str) -> str:
    r"""The delimiter that splits ``header_line`` into the most fields (``,`` on a tie or none).

    >>> detect_delimiter("datetime;flow;current"), detect_delimiter("ts\ta\tb"), detect_delimiter("ts")
    (';', '\t', ',')
    """
    best, most = ",", 1
    for char in DELIMITERS.values():
        fields = len(next(csv.reader([header_line], delimiter=char), []))
        if fields > most:
            best, most = char, fields
    return best


def parse_timestamp(text: str) -> float:
    """Unix seconds from ``"1763719200.25"`` or an ISO 8601 string (UTC unless it says otherwise).

    >>> parse_timestamp("1970-01-01T00:01:00"), parse_timestamp("1970-01-01T01:01:00+01:00")
    (60.0, 60.0)
    """
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:  # a recording's clock is not this machine's local time
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class CsvReplaySource:
    """Readings from a CSV file, at the recorded pace or as fast as possible."""

    def __init__(
        self, path: Path, ts_column: str = "ts", pace: str = "recorded", delimiter: str = "auto"
    ) -> None:
        self.path = path
        self.ts_column = ts_column
        self.pace = pace
        self.invalid: dict[str, int] = {}
        self.delimiter = DELIMITERS.get(delimiter, ",")
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
        missing = [c for c in (self.ts_column, *SENSOR_NAMES) if c not in header]
        if missing:
            shown = repr({"\t": "tab"}.get(self.delimiter, self.delimiter))
            raise ConfigError(
                f"CSV file {self.path} lacks column(s) {', '.join(missing)}; it needs "
                f"{self.ts_column!r} and one column per sensor: {', '.join(SENSOR_NAMES)}. "
                f"Its header, split at {shown}, has: {', '.join(header)[:300]} "
                "(--csv-ts-column names the timestamp column; --csv-delimiter the separator)",
                setting="csv_path",
            )
        return [header.index(c) for c in (self.ts_column, *SENSOR_NAMES)]

    def _count(self, reason: str) -> None:
        self.invalid[reason] = self.invalid.get(reason, 0) + 1

    def readings(self, stop: threading.Event) -> Iterator[Reading]:
        ts_col, *value_cols = self._columns
        start_wall: float | None = None
        start_ts = 0.0
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
                    ts = parse_timestamp(row[ts_col])
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
