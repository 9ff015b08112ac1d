"""Log lines as text (the default) or as one JSON object per line (``--log-format json``).

The three programs (``edgeloop-hub``, ``edgeloop-agent``, ``edgeloop-sim``) call
:func:`configure_logging` once, in their entry point. A JSON line holds:

- ``time``: ISO 8601 in UTC with milliseconds (``2026-11-27T10:35:53.123Z``);
- ``level``, ``logger``, ``message`` (the formatted message);
- ``device`` and ``model_version`` where the record carries them: a log call's
  ``extra={"device": ..., "model_version": ...}``, or a :class:`ContextFilter`
  that stamps every record of a process that serves one device (the agent);
- ``exc``: the traceback, when the record has one.

:func:`configure_logging` also puts the format in ``EDGELOOP_LOG_FORMAT``, so the
processes a program starts (the hub's pipeline runs, the simulator's fleet hosts
and agents) log the same way unless told otherwise.

Secrets never reach a log line through this module's own doing: it writes only
what the log call formatted, and every setting that holds a secret is shown as
``***`` by its ``repr`` (:meth:`shared.options.OptionTable.redacted_repr`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Final

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "ContextFilter",
    "JsonFormatter",
    "configure_logging",
    "default_log_format",
    "log_format_env_problem",
    "log_tail",
    "readable_line",
]

LOG_FORMATS: Final = ("text", "json")
LOG_FORMAT_ENV: Final = "EDGELOOP_LOG_FORMAT"
"""The environment variable a program's ``--log-format`` defaults to (and sets for its children)."""
CONTEXT_FIELDS: Final = ("device", "model_version")
"""Record attributes a JSON line carries when a record has them."""


def default_log_format(env: Mapping[str, str] | None = None) -> str:
    """``EDGELOOP_LOG_FORMAT`` when it names a format, else ``text`` (and
    :func:`configure_logging` warns about a value that names none)."""
    value = (os.environ if env is None else env).get(LOG_FORMAT_ENV, "").strip().lower()
    return value if value in LOG_FORMATS else "text"


def log_format_env_problem(env: Mapping[str, str], log_format: str) -> str | None:
    """What is wrong with ``EDGELOOP_LOG_FORMAT`` in ``env``, or None when it is unset,
    empty or names a format; ``log_format`` is the format used instead.

    >>> log_format_env_problem({"EDGELOOP_LOG_FORMAT": "JSON"}, "json") is None
    True
    >>> log_format_env_problem({"EDGELOOP_LOG_FORMAT": "xml"}, "text")
    "EDGELOOP_LOG_FORMAT='xml' is not a log format (text or json): ignored, logging as text; set it to text or json, or unset it"
    """
    value = env.get(LOG_FORMAT_ENV, "")
    if not value.strip() or value.strip().lower() in LOG_FORMATS:
        return None
    return (
        f"{LOG_FORMAT_ENV}={value!r} is not a log format ({' or '.join(LOG_FORMATS)}): "
        f"ignored, logging as {log_format}; set it to {' or '.join(LOG_FORMATS)}, or unset it"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped).

    >>> rec = logging.LogRecord("edge_agent", logging.INFO, "", 0, "hello %s", ("pi",), None)
    >>> rec.created, rec.msecs, rec.device = 0.0, 0.0, "pi-07"
    >>> JsonFormatter().format(rec)
    '{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "edge_agent", "message": "hello pi", "device": "pi-07"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(int(record.created), dt.UTC)
        line: dict[str, object] = {
            "time": f"{when:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def readable_line(line: str) -> str:
    """A line of a log file as text: a :class:`JsonFormatter` line becomes
    ``time LEVEL logger: message`` (then its traceback, if it has one); any other line
    is returned as it is. For quoting the end of a child's log in an error message,
    whichever format the child wrote.

    >>> readable_line('{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "b", "message": "up"}')
    '1970-01-01T00:00:00.000Z INFO b: up'
    >>> readable_line("2026-11-27 10:35:53,123 INFO b: up")
    '2026-11-27 10:35:53,123 INFO b: up'
    """
    if not line.startswith("{"):
        return line
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or not {"time", "level", "logger", "message"} <= record.keys():
        return line
    text = f"{record['time']} {record['level']} {record['logger']}: {record['message']}"
    context = " ".join(f"{name}={record[name]}" for name in CONTEXT_FIELDS if name in record)
    text += f" ({context})" if context else ""
    return "\n".join([text, *(str(record[k]) for k in ("exc", "stack") if k in record)])


def log_tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file as text (:func:`readable_line`), from at
    most its last ``max_bytes``; "" if it cannot be read."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(readable_line(line) for line in text.strip().splitlines()[-lines:])


class ContextFilter(logging.Filter):
    """Stamps every record with ``context()`` (e.g. the agent's device and model version)
    where the log call did not give them itself; it never drops a record."""

    def __init__(self, context: Callable[[], Mapping[str, str | None]]) -> None:
        super().__init__()
        self._context = context

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self._context().items():
            if getattr(record, name, None) is None and value is not None:
                setattr(record, name, value)
        return True


def configure_logging(
    level: int | str,
    log_format: str,
    text_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
    *,
    stream: IO[str] | None = None,
    context: Callable[[], Mapping[str, str | None]] | None = None,
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as text or JSON; returns the
    handler (add a :class:`ContextFilter` to it later, or pass ``context`` now).

    As :func:`logging.basicConfig`: a root logger that has handlers already (a program
    run in-process by a test) is left as it is. An ``EDGELOOP_LOG_FORMAT`` that names
    no format is logged as a warning (:func:`log_format_env_problem`), not silently
    ignored.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(text_format)
    handler.setFormatter(formatter)
    if context is not None:
        handler.addFilter(ContextFilter(context))
    logging.basicConfig(level=level, handlers=[handler])
    problem = log_format_env_problem(os.environ, log_format)
    if problem is not None:
        logging.getLogger(__name__).warning(problem)
    os.environ[LOG_FORMAT_ENV] = log_format
    return handler
