"""``/v1/stats/ingest`` (what ingest received, stored, refused) and ``/v1/dead-letters`` (admin).

Ingest's counters live in the store (``received``, ``stored_messages``,
``stored_readings``, ``duplicates``, ``invalid:<reason>``, ``dropped:<reason>``,
``ingest_errors``, ``lost_at_edge_*:<reason>``, ``lost_unexplained_messages``,
``refused_*:<reason>``; see :mod:`cloud_hub.ingest.worker`), so they survive a
restart and several hub workers add up. The running worker's own figures
(queue depth, latency) come from ``ingest_stats()`` when the app was given one.

Dead letters hold the first bytes of payloads devices sent, which may be
anyone's data: only the admin token reads them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from cloud_hub.api.auth import AdminAccess, ReadAccess
from cloud_hub.api.deps import StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import DeviceFilter
from cloud_hub.api.schemas import (
    DeadLetterOut,
    DeadLettersOut,
    GapOut,
    GapsOut,
    IngestStatsOut,
)

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["stats"], responses=responses(401))

_GAP_RANGES_SHOWN: Final = 100
_GAPS_COUNTED: Final = 10_000
"""The API counts gaps up to this many (beyond, the count is a lower bound)."""


def _group(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def _live(state: StateDep) -> dict[str, Any] | None:
    if state.ingest_stats is None:
        return None
    try:
        live: Any = state.ingest_stats()
    except Exception as exc:  # the worker's snapshot must never take the API down
        log.warning("ingest_stats() failed: %s", exc)
        return {"error": f"the ingest worker's figures are unavailable ({type(exc).__name__})"}
    if dataclasses.is_dataclass(live) and not isinstance(live, type):
        live = dataclasses.asdict(live)
    return dict(live)


@router.get("/v1/stats/ingest", response_model=IngestStatsOut)
def ingest_stats(access: ReadAccess, state: StateDep, store: StoreDep) -> IngestStatsOut:
    """Totals since the store was created: every drop anywhere is counted here."""
    counters = store.counters()
    invalid = _group(counters, "invalid:")
    gaps = store.gaps(limit=_GAPS_COUNTED)
    return IngestStatsOut(
        received=counters.get("received", 0),
        stored_messages=counters.get("stored_messages", 0),
        stored_readings=counters.get("stored_readings", 0),
        duplicates=counters.get("duplicates", 0),
        invalid=invalid,
        invalid_total=sum(invalid.values()),
        dropped=_group(counters, "dropped:"),
        ingest_errors=counters.get("ingest_errors", 0),
        lost_at_edge_readings=_group(counters, "lost_at_edge_readings:"),
        lost_at_edge_messages=_group(counters, "lost_at_edge_messages:"),
        lost_unexplained_messages=counters.get("lost_unexplained_messages", 0),
        refused_readings=_group(counters, "refused_readings:"),
        gaps=GapsOut(
            count=len(gaps),
            count_is_lower_bound=len(gaps) >= _GAPS_COUNTED,
            missing_seqs=sum(g.last_seq - g.first_seq + 1 for g in gaps),
            ranges=[GapOut.from_record(g) for g in gaps[:_GAP_RANGES_SHOWN]],
        ),
        counters=dict(sorted(counters.items())),
        live=_live(state),
    )


@router.get("/v1/dead-letters", response_model=DeadLettersOut, responses=responses(403, 422))
def dead_letters(
    access: AdminAccess,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most letters returned.")] = 100,
    device: DeviceFilter = None,
) -> DeadLettersOut:
    """The newest messages ingest refused, newest first (admin token only)."""
    letters = [DeadLetterOut.from_record(d) for d in store.dead_letters(limit, device)]
    return DeadLettersOut(count=len(letters), dead_letters=letters)
