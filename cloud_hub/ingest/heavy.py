"""Which heavy model scores a telemetry message: the partner of the edge model that made it.

A model is trained as a pair, ``NAME-edge`` (int8, on the devices) and
``NAME-heavy`` (fp32, on the hub), reading the same features. Telemetry names
its edge model by name and version (``Telemetry.model`` and ``model_version``,
both required since wire schema v2), and the heavy model is chosen by that pair.
The heavy partner of ``X-edge`` version V is the registered ``X-heavy`` of version
V, else the newest registered ``X-heavy``. The hub's default heavy model (the one
it started with) is the partner of its default edge model at the same version;
other versions of that edge model are looked up like any other. A worker without
a registry to look in (no ``lookup``) scores everything with its default. An edge model without a registered
partner is stored with the edge scores only, and the hub counts
``no_heavy_model`` for the device; a partner registered later is found within
:data:`RETRY_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cloud_hub.inference import OnnxScorer

__all__ = ["RETRY_S", "HeavyModels", "Lookup", "partner_name"]

log = logging.getLogger(__name__)

RETRY_S: Final = 60.0
"""How long an edge model without a heavy partner waits before the registry is asked again."""

Lookup = Callable[[str, str], "tuple[OnnxScorer, str] | None"]
"""``(heavy model name, preferred version) -> (scorer, version)``, or None when not registered."""


def partner_name(edge_name: str) -> str | None:
    """The heavy partner's name of an edge model, by the pair's naming.

    >>> partner_name("rig-edge"), partner_name("machine-edge"), partner_name("solo")
    ('rig-heavy', 'machine-heavy', None)
    """
    if edge_name.endswith("-edge") and len(edge_name) > len("-edge"):
        return edge_name[: -len("-edge")] + "-heavy"
    return None


class HeavyModels:
    """The hub's heavy models, found by the edge model a message names.

    Used by the ingest worker's one thread only; the cache is not locked.
    """

    def __init__(
        self,
        default: OnnxScorer | None,
        default_version: str,
        *,
        default_edge: str | None = None,
        lookup: Lookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.default_version = default_version
        self.default_edge = default_edge
        self._lookup = lookup
        self._clock = clock
        self._found: dict[tuple[str, str], tuple[OnnxScorer | None, str, float]] = {}
        if default is not None and default_edge is not None:
            self._found[(default_edge, default_version)] = (default, default_version, 0.0)

    def for_edge(self, edge_name: str, edge_version: str) -> tuple[OnnxScorer | None, str]:
        """``(scorer, version)`` of the heavy model for telemetry of this edge model;
        ``(None, "")`` when it has no partner (yet)."""
        if self._lookup is None:
            return self.default, self.default_version
        key = (edge_name, edge_version)
        now = self._clock()
        hit = self._found.get(key)
        if hit is not None and (hit[0] is not None or now < hit[2]):
            return hit[0], hit[1]
        heavy = partner_name(edge_name)
        got = None
        if heavy is not None:
            try:
                got = self._lookup(heavy, edge_version)
            except Exception:  # a broken package must not stop ingest
                log.exception("ingest: cannot load heavy model %s for %s", heavy, edge_name)
        if got is None:
            if hit is None:
                log.warning(
                    "ingest: edge model %s %s has no registered heavy partner (%s); its "
                    "telemetry is stored with the edge scores only",
                    edge_name,
                    edge_version,
                    heavy or "its name does not end in -edge",
                )
            self._found[key] = (None, "", now + RETRY_S)
            return None, ""
        log.info("ingest: %s %s is scored by %s %s", edge_name, edge_version, heavy, got[1])
        self._found[key] = (got[0], got[1], now)
        return got
