"""Unix seconds as the project's messages, records and CLIs show them: ISO 8601 in UTC.

One function, so that every message writes a time the way a client writes one back
(``2024-05-01T12:00:00Z``).

>>> iso_utc(1714564800.0)
'2024-05-01T12:00:00Z'
>>> iso_utc(1714564800.25), iso_utc(1714564800.25, millis=True)
('2024-05-01T12:00:00Z', '2024-05-01T12:00:00.250Z')
>>> iso_utc(1714564800.9996, millis=True)
'2024-05-01T12:00:01Z'
>>> iso_utc(float("inf")), iso_utc(float("-inf"))
('+inf', '-inf')
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["iso_utc"]


def iso_utc(seconds: float, *, millis: bool = False) -> str:
    """``seconds`` (Unix time) as ISO 8601 in UTC: whole seconds, or with ``millis``
    the milliseconds when there are any. An unbounded time is ``+inf`` / ``-inf``."""
    if not math.isfinite(seconds):
        return "-inf" if seconds < 0 else "+inf"
    if millis:
        whole, ms = divmod(round(seconds * 1000), 1000)
    else:
        whole, ms = math.floor(seconds), 0
    when = datetime.fromtimestamp(whole, UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}" + (f".{ms:03d}Z" if ms else "Z")
