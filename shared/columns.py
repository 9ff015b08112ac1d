"""How a recording's columns become a model's sensors. Pure: no I/O.

Every reader of recorded data (the agent's CSV source, ``models train``,
``batch score``, ``edgeloop-sim replay``) finds its columns with these
functions, so a file that one accepts the others accept too:

- what is not CSV at all (JSON, an Excel/ZIP file, binary, ``|`` between
  the columns), named from the first line (:func:`not_csv`);
- the field separator: ``,``, ``;`` or a tab, detected from the header
  (:func:`detect_delimiter`) unless named;
- the sensors: a column of the sensor's name, or the column a ``SENSOR=COLUMN``
  map names (:func:`parse_column_map`, :func:`resolve_columns`); a sensor that
  no column provides is an error naming both lists; a column no sensor uses is
  ignored (and reported once by the caller);
- the timestamp: ISO 8601 (UTC unless it says otherwise) or unix seconds or
  milliseconds (:func:`parse_timestamp`, :func:`timestamp_scale`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "DELIMITERS",
    "MS_THRESHOLD",
    "cell_hint",
    "describe_delimiter",
    "detect_delimiter",
    "header_hint",
    "not_csv",
    "parse_column_map",
    "parse_timestamp",
    "resolve_columns",
    "timestamp_scale",
]

DELIMITERS: Final[dict[str, str]] = {",": ",", ";": ";", "tab": "\t"}
"""The separators a recording may use (by option name), and the character each means."""
MS_THRESHOLD: Final = 1e11
"""A numeric timestamp over this is in milliseconds: as seconds it would be past the year 5000."""


_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")
_ZIP: Final = re.compile("PK[\x03\x05\x07][\x04\x06\x08]")
"""A ZIP file's signature (an .xlsx is one); a header such as ``PK_id,ts`` is not."""
_JSON_ARRAY: Final = re.compile(r'\[\s*(?:[{\["\d-]|$)')
"""``[`` then what a JSON array's first value starts with (not a column named ``[ts]``)."""


def not_csv(header_line: str) -> str:
    r"""Why a file whose first line is ``header_line`` is not a CSV recording, or ``''``.

    Call it before splitting the header: it names an Excel/ZIP file, JSON, a
    binary file and a header with no ``,`` ``;`` or tab, and never repeats
    binary bytes (only a short printable excerpt).

    >>> not_csv("ts,a,b"), not_csv("ts")
    ('', '')
    >>> not_csv("PK\x03\x04\x14\x00")[:58], not_csv("PKT_time,temp")
    ('this is an Excel/ZIP file (starts with PK), not CSV: open ', '')
    >>> not_csv("ts;Temperatur (\ufffdC);Druck")
    ''
    >>> not_csv('{"ts": 1, "a": 2}')[:48]
    'this looks like JSON (starts with {), not CSV: c'
    >>> not_csv("[ts],a,b"), not_csv("[")[:33]
    ('', 'this looks like JSON (starts with')
    >>> not_csv("ts|a|b")[:63]
    "no ',' ';' or tab in the header; it looks separated by '|' (3 f"
    """
    head = header_line.lstrip("\ufeff \t\r\n")
    if _ZIP.match(head):
        return (
            "this is an Excel/ZIP file (starts with PK), not CSV: open it in a spreadsheet "
            "and save or export it as CSV (comma-separated)"
        )
    if head[:1] == "{" or _JSON_ARRAY.match(head):
        return (
            f"this looks like JSON (starts with {head[0]}), not CSV: convert it to CSV with a "
            "header row (the timestamp column, then one column per sensor) and one row per reading"
        )
    # Control characters only: a U+FFFD (a byte that is not UTF-8, as in a Latin-1
    # file's "°C" read with errors="replace") stays accepted, as it always was.
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", head[:2000]):
        excerpt = _PRINTABLE.sub(".", head[:24])
        return (
            f"this is not a text CSV file (it starts with bytes like {excerpt!r}): "
            "export the data as a UTF-8 CSV file"
        )
    if not any(char in head for char in DELIMITERS.values()):
        fields = len(head.split("|"))
        if fields > 1:
            return (
                f"no ',' ';' or tab in the header; it looks separated by '|' ({fields} fields): "
                "save it with ',' ';' or tab between the columns, e.g. sed 's/|/,/g'"
            )
    return ""


def detect_delimiter(header_line: str) -> str:
    r"""The delimiter that splits ``header_line`` into the most fields (``,`` on a tie or none).

    >>> detect_delimiter("datetime;flow;current"), detect_delimiter("ts\ta\tb"), detect_delimiter("ts")
    (';', '\t', ',')
    """
    best, most = ",", 1
    for char in DELIMITERS.values():
        try:
            fields = len(next(csv.reader([header_line], delimiter=char), []))
        except csv.Error:  # e.g. a field over the csv module's size limit: not this one
            continue
        if fields > most:
            best, most = char, fields
    return best


def describe_delimiter(char: str) -> str:
    """``"';'"``, or ``"tab"``: how to name a delimiter in a message."""
    return "tab" if char == "\t" else repr(char)


def header_hint(header_line: str, delimiter: str, flag: str = "--csv-delimiter") -> str:
    """What to say first when a named column is not in a header split at ``delimiter``:
    if the header is one field there and another delimiter splits it, name that one.
    Empty when the split is not the problem.

    >>> header_hint("ts;a;b", ",")
    "its header is one field at ','; ';' splits it into 3: use --csv-delimiter ';' (or auto)"
    >>> header_hint("ts,a", ",")
    ''
    """
    if len(next(csv.reader([header_line], delimiter=delimiter), [])) > 1:
        return ""
    better = detect_delimiter(header_line)
    fields = len(next(csv.reader([header_line], delimiter=better), []))
    if fields <= 1:
        return ""
    name = "tab" if better == "\t" else better
    return (
        f"its header is one field at {describe_delimiter(delimiter)}; "
        f"{describe_delimiter(better)} splits it into {fields}: use {flag} {name!r} (or auto)"
    )


_DECIMAL_COMMA: Final = re.compile(r"^[+-]?\d*,\d+(?:[eE][+-]?\d+)?$")


def cell_hint(cell: str) -> str:
    """What to do about a sensor cell that is not a number.

    >>> cell_hint("0,0538")
    'write numbers with "." as the decimal point'
    >>> cell_hint("n/a")
    'leave a missing value empty'
    """
    if _DECIMAL_COMMA.match(cell.strip()):
        return 'write numbers with "." as the decimal point'
    return "leave a missing value empty"


def parse_column_map(text: str) -> dict[str, str]:
    """``"vibration=vib_rms_g, flow=Flow"`` -> ``{"vibration": "vib_rms_g", "flow": "Flow"}``.

    >>> parse_column_map("a=x, b = y z"), parse_column_map("")
    ({'a': 'x', 'b': 'y z'}, {})
    """
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        sensor, eq, column = part.partition("=")
        sensor, column = sensor.strip(), column.strip()
        if not eq or not sensor or not column:
            raise ValueError(
                f"{part.strip()!r} is not SENSOR=COLUMN; write e.g. "
                "'vibration=vib_rms_g,flow=Flow' (sensor name = column name)"
            )
        if sensor in out:
            raise ValueError(f"sensor {sensor!r} is mapped twice")
        out[sensor] = column
    return out


def resolve_columns(
    sensors: Sequence[str],
    header: Sequence[str],
    column_map: Mapping[str, str] | None = None,
    *,
    where: str = "the file",
) -> tuple[list[int], list[str]]:
    """Index of each sensor's column in ``header``, and the columns no sensor uses.

    Raises ``ValueError`` naming what is missing, what the model wants and what
    the file has.

    >>> resolve_columns(["flow", "vib"], ["ts", "vib_g", "flow", "note"], {"vib": "vib_g"})
    ([2, 1], ['ts', 'note'])
    """
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(sensors))
    if unknown:
        raise ValueError(
            f"the column map names {', '.join(map(repr, unknown))}, which the model does not "
            f"read; its sensors are: {', '.join(sensors)}"
        )
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    wanted = [column_map.get(s, s) for s in sensors]
    missing = [(s, c) for s, c in zip(sensors, wanted, strict=True) if c not in index]
    if missing:
        said = ", ".join(s if s == c else f"{s} (as column {c!r})" for s, c in missing)
        raise ValueError(
            f"{where} lacks the sensor(s) {said}. The model reads: {', '.join(sensors)}; "
            f"{where} has: {', '.join(header)[:400]}. Name a column for each missing sensor "
            "with a column map, e.g. --csv-map "
            f"{missing[0][0]}=<column>"
        )
    used = {index[c] for c in wanted}
    return [index[c] for c in wanted], [h for i, h in enumerate(header) if i not in used]


def timestamp_scale(first: str, unit: str = "auto") -> float:
    """Seconds per unit of a numeric timestamp column: 1.0 or 0.001.

    ``unit`` is ``"s"``, ``"ms"`` or ``"auto"``: milliseconds when the first
    timestamp (``first``) is a number over :data:`MS_THRESHOLD`.

    >>> timestamp_scale("1763719200"), timestamp_scale("1763719200250"), timestamp_scale("2026-01-01")
    (1.0, 0.001, 1.0)
    """
    if unit == "s":
        return 1.0
    if unit == "ms":
        return 0.001
    if unit != "auto":
        raise ValueError(f"timestamp unit {unit!r} must be s, ms or auto")
    try:
        return 0.001 if abs(float(first)) > MS_THRESHOLD else 1.0
    except ValueError:
        return 1.0


def parse_timestamp(text: str, scale: float = 1.0) -> float:
    """Unix seconds from ``"1763719200.25"`` (times ``scale``) or an ISO 8601 string.

    An ISO time without a zone is UTC: a recording's clock is not this machine's.

    >>> parse_timestamp("1970-01-01T00:01:00"), parse_timestamp("1970-01-01 01:01:00+01:00")
    (60.0, 60.0)
    >>> parse_timestamp("60000", 0.001)
    60.0
    """
    try:
        return float(text) * scale
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
