"""What ``/healthz`` reports about the hub's moving parts. Pure: no I/O, no threads.

Each part the hub depends on (its MQTT link, the embedded broker's process)
describes itself as a :class:`PartHealth`; :func:`down_parts` names the ones
that are down. The API turns that into 200 or 503.

>>> link = PartHealth(up=False, since=100.0, reason="the broker closed the connection")
>>> down_parts({"broker_link": link, "embedded_broker": PartHealth(up=True, since=90.0)})
['broker_link']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["PartHealth", "down_parts"]


@dataclass(frozen=True, slots=True)
class PartHealth:
    """One part's state: up or down, since when (wall-clock seconds), and why.

    ``reason`` says why the part is down (or, when it is up, why it last went
    down); ``check`` says what an operator should look at; ``counts`` are the
    part's outage counters (``disconnects``, ``reconnects``, ``restarts``, ...).
    """

    up: bool
    since: float
    reason: str | None = None
    check: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)


def down_parts(parts: Mapping[str, PartHealth]) -> list[str]:
    """The names of the parts that are down, sorted.

    >>> down_parts({})
    []
    """
    return sorted(name for name, part in parts.items() if not part.up)
