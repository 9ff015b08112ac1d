"""The hub's store: what ingest writes and the API reads.

Where things are:

- ``base``: the :class:`Store` interface and its record types; code against these.
- ``sqlite``: :class:`SQLiteStore`, the one-machine backend (WAL mode).
- :func:`open_store` (here): a store from a URL, the one way the hub names it.

A PostgreSQL backend will join ``sqlite`` behind the same interface; the
contract tests in ``tests/cloud_hub/store/`` run against every backend.

Errors::

    EdgeloopError
     └── StoreError    the database cannot be opened or used       sqlite
    ValueError         a bad URL, cursor, limit or model conflict
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from cloud_hub.store.base import (
    AckWatermark,
    BatchJob,
    DeadLetter,
    DeviceRecord,
    EventRecord,
    Gap,
    ModelRecord,
    Page,
    Store,
    StreamItem,
    TelemetryRows,
    WriteResult,
)
from cloud_hub.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "AckWatermark",
    "BatchJob",
    "DeadLetter",
    "DeviceRecord",
    "EventRecord",
    "Gap",
    "ModelRecord",
    "Page",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StreamItem",
    "TelemetryRows",
    "WriteResult",
    "open_store",
]


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store a URL names.

    ``sqlite:///relative/hub.db`` is relative to the working directory,
    ``sqlite:////var/lib/edgeloop/hub.db`` (four slashes) is absolute. The file
    and its directory are created if missing, unless ``create`` is False (a command
    that reads what a hub stored): then a missing file is a ValueError naming it.

    >>> open_store("postgresql://hub@db/edgeloop")
    Traceback (most recent call last):
    ...
    ValueError: store URL: postgresql:// is not implemented yet; use sqlite:///path/to/hub.db
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(
            f"store URL {url!r} has no scheme; use sqlite:///path/to/hub.db "
            "(sqlite:////abs/path/hub.db for an absolute path)"
        )
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise ValueError(
            f"store URL: {scheme}:// is not implemented yet; use sqlite:///path/to/hub.db"
        )
    if scheme != "sqlite":
        # Not the URL itself: it may hold a password.
        raise ValueError(
            f"store URL scheme {scheme!r} is not supported; use sqlite:///path/to/hub.db"
        )
    rest = url[len(scheme) + 3 :]
    if not rest.startswith("/"):
        host = urlsplit(url).netloc
        raise ValueError(
            f"store URL {url!r} names a host ({host!r}); an SQLite URL has none: use "
            "sqlite:///relative/hub.db or sqlite:////absolute/hub.db"
        )
    path = rest[1:]
    if "?" in path or "#" in path:
        raise ValueError(f"store URL {url!r} has a query or fragment; SQLite store URLs take none")
    if not path or path.endswith("/"):
        raise ValueError(f"store URL {url!r} names no database file; e.g. sqlite:///data/hub.db")
    if path == ":memory:":
        raise ValueError(
            "store URL sqlite:///:memory: is not supported: the store's reader and writer "
            "connections must share one database file; use sqlite:///path/to/hub.db"
        )
    if not create and not Path(path).is_file():
        raise ValueError(
            f"there is no hub store at {path}: check --data-dir (the directory 'edgeloop-hub "
            "serve' keeps its hub.db in; default var/hub, relative to the current directory) "
            "or --store"
        )
    return SQLiteStore(Path(path))
