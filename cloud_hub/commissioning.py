"""Commissioning: per-device baselines (:mod:`shared.baseline`) from stored telemetry.

Two ways in, one function (:func:`baseline_from_store`):

- the hub's *commissioning thread* (:class:`Commissioner`): every
  ``--baseline-check-s`` it looks for devices that have no baseline and at
  least ``--baseline-readings`` stored readings, and records each one's
  baseline from its first ``--baseline-readings`` readings (by timestamp);
- ``edgeloop-hub devices baseline DEVICE --from T --to T``: a baseline over
  any range of stored readings, recorded in the store (replacing the device's
  earlier one) and written as the file the agent reads. It opens the store
  itself, so it works whether or not the hub runs.

The readings are the ``{sensor}_last`` columns of the stored features: what
the device reported, missing values carried forward. They must be readings the
device sent *without* a baseline (an agent with one sends mapped values); a
device's first readings are, which is why the hub commissions from them.

Which model: the readings carry their edge model's version; the model is the
registered edge model of that version whose feature count matches (if several
do, the one named with ``--model``, or for the commissioning thread the model
the device's birth named, else the hub's own edge model).

The stored baseline is also the device's drift reference; drift tracking
against it is not built yet (issue 11).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Final

import numpy as np

from cloud_hub.store.base import Store
from shared.baseline import (
    Baseline,
    BaselineError,
    TooFewReadingsError,
    compute_baseline,
    last_values,
)
from shared.isotime import iso_utc
from shared.manifest import ModelManifest

__all__ = ["MAX_READINGS", "Commissioner", "baseline_from_store"]

log = logging.getLogger(__name__)

MAX_READINGS: Final = 1_000_000
"""The most readings one baseline is computed from (8 floats each: ~64 MB)."""
_PAGE: Final = 20_000


def _when(ts: float) -> str:
    if not math.isfinite(ts):
        return "the end" if ts > 0 else "the start"
    return iso_utc(ts)


def _edge_model(
    store: Store,
    device: str,
    versions: set[str],
    n_features: int,
    *,
    model: str | None,
    prefer: str | None,
) -> ModelManifest:
    if len(versions) > 1:
        raise BaselineError(
            f"device {device!r}: the readings come from model versions {sorted(versions)}; a "
            "baseline is for one model: choose a range (--from, --to) in which the device ran one",
            field="model",
        )
    (version,) = versions
    fits = [
        r.manifest
        for r in store.models()
        if r.variant == "edge"
        and r.version == version
        and len(r.manifest.input.features) == n_features
        and (model is None or r.name == model)
    ]
    names = sorted({m.name for m in fits})
    if not names:
        which = f"model {model!r} " if model else "an edge model "
        raise BaselineError(
            f"device {device!r}: its readings come from {which}version {version} with "
            f"{n_features} features, and no registered edge model matches; register the model "
            "the device runs (edgeloop-hub models ...) or name it with --model",
            field="model",
        )
    if len(names) > 1:
        if prefer in names:
            names = [prefer]
        else:
            raise BaselineError(
                f"device {device!r}: its readings (version {version}, {n_features} features) fit "
                f"the models {names}; name the one it runs with --model",
                field="model",
            )
    return next(m for m in fits if m.name == names[0])


def baseline_from_store(
    store: Store,
    device: str,
    since: float,
    until: float,
    *,
    min_readings: int,
    limit: int = MAX_READINGS,
    model: str | None = None,
    prefer: str | None = None,
) -> Baseline:
    """The baseline of ``device``'s stored readings with ``since <= ts < until`` (the
    first ``limit`` of them), or a :class:`~shared.baseline.BaselineError` saying what to do.

    ``min_readings``: fewer readings in the range is a
    :class:`~shared.baseline.TooFewReadingsError` with the count.
    """
    record = store.device(device)
    if record is None:
        raise BaselineError(
            f"device {device!r} is unknown to this hub (nothing stored for it); check the name "
            "(GET /v1/devices lists the devices)",
            field="device",
        )
    in_use = (record.last_health or {}).get("baseline")
    if in_use:
        log.warning(
            "device %r: its last heartbeat says its agent maps readings with the baseline "
            "created %s; readings sent with a baseline are mapped values, and a baseline over "
            "them describes those: choose a range the agent sent without --baseline",
            device,
            in_use,
        )
    blocks: list[np.ndarray] = []
    first = last = math.nan
    versions: set[str] = set()
    n_features = -1
    count = 0
    cursor: str | None = None
    while count < limit:
        page = store.telemetry(device, since, until, min(_PAGE, limit - count), cursor)
        for rows in page.items:
            if n_features not in (-1, rows.features.shape[1]):
                raise BaselineError(
                    f"device {device!r}: its readings in the range have {n_features} and "
                    f"{rows.features.shape[1]} features (it changed models); choose a range in "
                    "which it ran one (--from, --to)",
                    field="model",
                )
            n_features = rows.features.shape[1]
            versions.add(rows.edge_model_version)
            blocks.append(rows.features)
            count += len(rows)
            first = float(rows.ts[0]) if math.isnan(first) else first
            last = float(rows.ts[-1])
        cursor = page.next_cursor
        if cursor is None:
            break
    if count < min_readings:
        stored = record.counters.get("stored_readings", 0)
        raise TooFewReadingsError(
            f"device {device!r}: {count} stored readings from {_when(since)} to {_when(until)}; "
            f"a baseline needs at least {min_readings} (--baseline-readings). Widen the range "
            f"(--from earlier, --to later) or wait for the device to send more (the hub has "
            f"received {stored} of its readings in all)",
            count=count,
            needed=min_readings,
        )
    # The model the device's birth named wins over the caller's guess (the hub's own model).
    prefer = record.model or prefer
    manifest = _edge_model(store, device, versions, n_features, model=model, prefer=prefer)
    sensors = manifest.input.sensor_names
    values = last_values(np.concatenate(blocks), sensors)
    return compute_baseline(
        values,
        sensors,
        device=device,
        model=manifest.name,
        since=first,
        until=last,
        min_readings=min_readings,
    )


class Commissioner:
    """The hub's commissioning thread: a baseline for each device once its first
    ``readings`` readings are stored (see the module docstring).

    A device that cannot be commissioned (its readings fit no registered model,
    say) is logged once and tried again when ``readings`` more have arrived.
    """

    def __init__(
        self, store: Store, readings: int, every_s: float, prefer: str | None = None
    ) -> None:
        if readings < 1:
            raise ValueError(f"commissioning needs readings >= 1, got {readings}")
        self.store = store
        self.readings = readings
        self.every_s = every_s
        self.prefer = prefer
        self.commissioned = 0
        self._failed: dict[str, int] = {}
        """Device -> its stored readings when commissioning it last failed."""
        self._thread: threading.Thread | None = None

    def check(self) -> list[Baseline]:
        """One pass: commission every device that is due; returns the new baselines."""
        have = {b.device for b in self.store.baselines()}
        made: list[Baseline] = []
        for record in self.store.devices():
            stored = record.counters.get("stored_readings", 0)
            failed_at = self._failed.get(record.device)
            if (
                record.device in have
                or stored < self.readings
                or (failed_at is not None and stored < failed_at + self.readings)
            ):
                continue
            try:
                baseline = baseline_from_store(
                    self.store,
                    record.device,
                    -math.inf,
                    math.inf,
                    min_readings=self.readings,
                    limit=self.readings,
                    prefer=self.prefer,
                )
            except BaselineError as exc:
                self._failed[record.device] = stored
                log.warning("device %r: no baseline commissioned: %s", record.device, exc)
                continue
            self.store.put_baseline(baseline, time.time())
            self._failed.pop(record.device, None)
            self.commissioned += 1
            made.append(baseline)
            log.info(
                "device %r: baseline for model %s commissioned from its first %d readings "
                "(GET /v1/devices/%s/baseline)",
                record.device,
                baseline.model,
                baseline.readings,
                record.device,
            )
        return made

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="hub-commissioning", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # commissioning must never take the hub down
                if stop.is_set():
                    return  # the store closed under a pass at shutdown
                log.exception("commissioning: a pass failed; will retry")
