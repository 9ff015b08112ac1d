"""Models loaded for online inference (``POST /v1/predict``): a small LRU of scorers.

A scorer is loaded on first use of a (name, version), after its file is
checked against the registered manifest (size and sha256), and kept until
``capacity`` others were used more recently. Lookups are thread-safe (routes run
in the server's thread pool); two requests for a model not yet loaded load it
once. onnxruntime sessions may run from several threads at once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from cloud_hub.api.artifacts import artifact_path, verify_sha256
from cloud_hub.inference import OnnxScorer
from cloud_hub.store.base import ModelRecord

__all__ = ["ScorerCache"]

log = logging.getLogger(__name__)

_Key = tuple[str, str, str]


class ScorerCache:
    """At most ``capacity`` loaded :class:`OnnxScorer`, least recently used evicted first."""

    def __init__(self, capacity: int, models_root: Path | None, threads: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"ScorerCache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.models_root = models_root
        self.threads = threads
        self._lock = threading.Lock()
        self._scorers: OrderedDict[_Key, OnnxScorer] = OrderedDict()
        self._loading: dict[_Key, threading.Lock] = {}
        self.loads = 0
        """How many times a model was loaded (a reload after eviction counts again)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._scorers)

    def _hit(self, key: _Key) -> OnnxScorer | None:
        with self._lock:
            scorer = self._scorers.get(key)
            if scorer is not None:
                self._scorers.move_to_end(key)
            return scorer

    def get(self, record: ModelRecord) -> OnnxScorer:
        """The scorer of ``record``'s model, loading it on first use.

        Raises :class:`~cloud_hub.api.artifacts.ArtifactError` when the file is
        missing or differs from the manifest, and
        :class:`~shared.errors.ManifestError` when onnxruntime cannot run it as
        the manifest describes.
        """
        key = (record.name, record.version, record.manifest.model.sha256)
        scorer = self._hit(key)
        if scorer is not None:
            return scorer
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            scorer = self._hit(key)  # loaded by the request we waited for
            if scorer is not None:
                return scorer
            path = artifact_path(record, self.models_root)
            verify_sha256(record, path)
            m = record.manifest.model
            scorer = OnnxScorer(path, m.input_name, m.scores_output, self.threads)
            log.info("predict: loaded model %s %s from %s", record.name, record.version, path)
            with self._lock:
                self.loads += 1
                self._scorers[key] = scorer
                self._loading.pop(key, None)
                while len(self._scorers) > self.capacity:
                    (name, version, _), _evicted = self._scorers.popitem(last=False)
                    log.info("predict: unloaded model %s %s (least recently used)", name, version)
            return scorer

    def clear(self) -> None:
        """Drop every loaded model (the app's shutdown)."""
        with self._lock:
            self._scorers.clear()
