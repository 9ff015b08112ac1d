"""Where a device's latency budget comes from: the ``latency_budget_ms`` of the
manifest of the model version its heartbeat names, as the hub's registry holds
it, else the hub's ``--latency-budget-ms``
(:class:`~cloud_hub.devices.states.LatencyBudget`, which the pure rules take as
an input).

Lookups are remembered for ``refresh_s`` per model version, so the ingest worker
reads the registry about once per version and interval, not at every heartbeat;
a version registered after a miss is seen within that time. At most
``max_versions`` versions are remembered (a device may name any model).

Used from the ingest worker's thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from cloud_hub.devices.states import LatencyBudget, StateRules
from cloud_hub.store.base import Store

__all__ = ["ManifestBudgets"]

log = logging.getLogger(__name__)

_REFRESH_S: Final = 30.0
_MAX_VERSIONS: Final = 256


class ManifestBudgets:
    """``budgets(model, version)``: the :class:`LatencyBudget` a device running that
    model version is judged by; the source names the manifest or says why the hub's
    setting stands in.

    >>> budgets = ManifestBudgets(store, rules)  # doctest: +SKIP
    >>> budgets("machine-edge", "1.0.1")  # doctest: +SKIP
    LatencyBudget(ms=5.0, source="model machine-edge 1.0.1's manifest")
    """

    def __init__(
        self,
        store: Store,
        rules: StateRules,
        *,
        refresh_s: float = _REFRESH_S,
        max_versions: int = _MAX_VERSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rules = rules
        self.refresh_s = refresh_s
        self.max_versions = max_versions
        self.clock = clock
        self._known: dict[tuple[str, str], tuple[float, LatencyBudget]] = {}

    def __call__(self, model: str, version: str) -> LatencyBudget:
        key = (model, version)
        now = self.clock()
        known = self._known.get(key)
        if known is not None and now - known[0] < self.refresh_s:
            return known[1]
        budget = self._look_up(model, version)
        if key not in self._known and len(self._known) >= self.max_versions:
            del self._known[next(iter(self._known))]  # the oldest entry
        self._known[key] = (now, budget)
        return budget

    def _look_up(self, model: str, version: str) -> LatencyBudget:
        what = f"model {model} {version}"
        try:
            record = self.store.model(model, version)
        except Exception:  # the store is down: judge by the hub's setting meanwhile
            log.exception("device states: could not read %s from the registry", what)
            return LatencyBudget.fallback(self.rules, f"the registry could not be read for {what}")
        if record is None:
            return LatencyBudget.fallback(self.rules, f"{what} is not in the registry")
        ms = record.manifest.latency_budget_ms
        if ms is None:
            return LatencyBudget.fallback(self.rules, f"{what}'s manifest declares none")
        return LatencyBudget(ms, f"{what}'s manifest")
