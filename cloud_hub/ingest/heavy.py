"""Which heavy model scores a telemetry message: the twin of the edge model that made it.

A telemetry message carries its edge model's version and its feature count,
not the model's name. :class:`HeavyModels` looks at the registered edge models
(the store's models table) with that version and feature count:

- exactly one, ``NAME-edge``: the registered heavy model ``NAME-heavy`` of the
  same version scores the message (``models train`` and the default build name
  their pairs so);
- none, several, or no such heavy twin: the hub's default heavy model (the
  default build's, or ``serve --heavy-model``), when its feature count fits;
- else nothing, and the worker dead-letters the message (``feature_count``).

Two edge models of one version and feature count cannot be told apart from
their telemetry; the default heavy model then scores both. A twin, once found,
is kept; any other answer is looked up again after ``refresh_s``, so a pair
registered while the hub runs is picked up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cloud_hub.inference import OnnxScorer
    from cloud_hub.store.base import ModelRecord

__all__ = ["HeavyModels"]

log = logging.getLogger(__name__)

EDGE_SUFFIX: Final = "-edge"
HEAVY_SUFFIX: Final = "-heavy"
Choice = tuple["OnnxScorer", str]


class HeavyModels:
    """The heavy model for each (feature count, edge model version); see the module docstring.

    ``records`` lists the registered models (``store.models``); ``default`` is
    the hub's own heavy model (None: the hub scores nothing by default).
    Not thread-safe: the ingest worker's thread alone calls :meth:`for_telemetry`.
    """

    def __init__(
        self,
        default: OnnxScorer | None,
        default_version: str,
        records: Callable[[], Sequence[ModelRecord]] | None = None,
        *,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.default_version = default_version
        self._records = records
        self._refresh_s = refresh_s
        self._clock = clock
        self._cache: dict[tuple[int, str], tuple[Choice | None, float]] = {}
        self._loaded: dict[str, OnnxScorer] = {}

    @property
    def scores_anything(self) -> bool:
        """False when there is no default heavy model and no registered one is looked up."""
        return self.default is not None or self._records is not None

    def for_telemetry(self, n_features: int, edge_version: str) -> Choice | None:
        """The scorer and version for telemetry of ``n_features`` from edge model
        ``edge_version``, or None when no heavy model reads that many features."""
        key = (n_features, edge_version)
        hit = self._cache.get(key)
        now = self._clock()
        if hit is not None and (
            now - hit[1] < self._refresh_s or (hit[0] is not None and hit[0][0] is not self.default)
        ):
            return hit[0]
        choice = self._resolve(n_features, edge_version)
        self._cache[key] = (choice, now)
        return choice

    def _resolve(self, n_features: int, edge_version: str) -> Choice | None:
        try:
            records = list(self._records()) if self._records is not None else []
        except Exception:  # the store failing must not stop ingest: use the default
            log.exception("heavy models: listing the registered models failed")
            records = []
        edges = [
            r
            for r in records
            if r.variant == "edge"
            and r.version == edge_version
            and len(r.manifest.input.features) == n_features
            and r.name.endswith(EDGE_SUFFIX)
        ]
        if len(edges) == 1:
            twin_name = edges[0].name[: -len(EDGE_SUFFIX)] + HEAVY_SUFFIX
            twins = [
                r
                for r in records
                if r.variant == "heavy" and r.name == twin_name and r.version == edge_version
            ]
            if twins:
                scorer = self._load(twins[0])
                if scorer is not None and scorer.n_features in (None, n_features):
                    log.info(
                        "heavy models: telemetry of %s %s (%d features) is scored by %s %s",
                        edges[0].name,
                        edge_version,
                        n_features,
                        twin_name,
                        edge_version,
                    )
                    return scorer, edge_version
        elif len(edges) > 1:
            log.warning(
                "heavy models: edge models %s all have version %s and %d features; their "
                "telemetry cannot be told apart and goes to the default heavy model",
                ", ".join(sorted(r.name for r in edges)),
                edge_version,
                n_features,
            )
        if self.default is not None and self.default.n_features in (None, n_features):
            return self.default, self.default_version
        return None

    def _load(self, record: ModelRecord) -> OnnxScorer | None:
        from cloud_hub.inference import OnnxScorer  # noqa: PLC0415  (onnxruntime: when needed)
        from shared.manifest import load_package  # noqa: PLC0415

        scorer = self._loaded.get(record.path)
        if scorer is None:
            try:
                scorer = OnnxScorer.from_package(load_package(Path(record.path)))
            except Exception:
                log.exception("heavy models: cannot load %s %s", record.name, record.version)
                return None
            self._loaded[record.path] = scorer
        return scorer
