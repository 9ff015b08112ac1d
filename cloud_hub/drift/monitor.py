"""The hub's drift monitor: counts every stored reading, runs the detectors, keeps states.

The ingest worker hands it each batch's newly stored telemetry after the
batch is durable and acked; in the hub the monitor runs on a thread of its own
(:class:`cloud_hub.drift.background.MonitorThread`), which the worker's batches
reach through a queue. A device's readings wait in a buffer until it holds
``flush_readings`` or its oldest is ``flush_s`` old, and are then counted and
tested in one go: the per-call cost of the numpy work is paid once per few
hundred readings, not per message. Per device and model version it keeps (the pure parts are in :mod:`shared.drift`
and :mod:`cloud_hub.drift.states`):

- the binned counts of the open window (:class:`shared.drift.counts.WindowCounts`,
  per feature and for the edge score, against the model's reference histograms)
  and the edge/heavy disagreement; when the window holds ``window_readings``
  readings it is closed: PSI per stream, the detector statistics and the
  disagreement rate are stored as a window row (``GET /v1/devices/{d}/drift``);
- a calibrated sequential detector per stream (:mod:`shared.drift.detector`);
- the device's drift state (ok / drifting / recovered), whose changes are stored
  as drift events and counted (``drift:drifting``, ``drift:recovered``;
  ``drift:streams_changed`` when a drifting device's set of streams changes).

Every ``fleet_check_s`` it applies the fleet rule (:func:`cloud_hub.drift.states.fleet_alarms`):
a new fleet alarm is stored as a fleet event, counted (``drift:fleet_alarms``) and handed to
``on_fleet_alarm`` (the pipeline's trigger); a model version whose fleet no longer meets
the rule gets a fleet ``ok`` event.

The reference comes from the registered manifest of the model version the
telemetry names; a version the registry does not hold is not tracked (counted
``drift:no_reference``; looked up again after a minute). States, events and
closed windows are stored as they change; every detector is saved every
``save_s`` and at :meth:`DriftMonitor.flush` (the hub stopping), and taken
back by a restarted hub, so its detectors go on rather than start again;
buffers and open windows start again. A device that moves to another version
leaves its old track (its state there is dropped); tracks silent for longer
than the fleet window are let go. A failed store write is kept and tried again
with the next batch (up to 100,000 events and windows, then counted
``drift:dropped_records``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud_hub.drift.states import (
    SCORE_STREAM,
    DeviceDrift,
    DeviceView,
    DriftRules,
    DriftState,
    FleetAlarm,
    FleetRules,
    StreamVerdict,
    fleet_alarms,
    fleet_still_drifts,
)
from cloud_hub.store.base import DriftEventRow, DriftStateRow, DriftWindowRow, Store
from shared.drift.binning import drift_score
from shared.drift.counts import BinCounter, Disagreement, DriftReference, WindowCounts
from shared.drift.detector import DetectorSettings, DriftDetector
from shared.drift.psi import PsiTable
from shared.manifest import ModelManifest

__all__ = ["DriftMonitor", "DriftSettings", "StoredTelemetry"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_NORMAL_CLASS: Final = "normal"
_LOOK_AGAIN_S: Final = 60.0
"""A version the registry does not hold (or that cannot be tracked) is looked up again
after this long: it may be registered since."""
_UNSAVED_MAX: Final = 100_000
"""Events and windows kept for another try after the store refused them, at most."""

CounterKey = tuple[str | None, str]


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """The hub's drift settings (``--drift-*`` options)."""

    window_readings: int = 300
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    rules: DriftRules = field(default_factory=DriftRules)
    fleet: FleetRules = field(default_factory=FleetRules)
    fleet_check_s: float = 5.0
    flush_readings: int = 2000
    """A device's buffered readings are counted and tested once it holds this many...
    (Each flush has a fixed cost, about 160 us: 2000 readings cost 0.53 us each
    against 0.85 at 500. Only a device sending over 1,000 readings/s fills it
    before ``flush_s``; the detectors see every reading either way, in order.)"""
    flush_s: float = 2.0
    """... or once the oldest of them is this old (seconds, by the hub's clock)."""
    save_s: float = 300.0
    """How often every detector is saved, so that a restart loses at most this much."""

    def __post_init__(self) -> None:
        if self.window_readings < 1:
            raise ValueError(f"window_readings = {self.window_readings} must be >= 1")


@dataclass(frozen=True, slots=True)
class StoredTelemetry:
    """One telemetry message just stored, as the monitor needs it."""

    device: str
    model: str
    version: str
    features: F32
    edge_scores: F32
    heavy_scores: F32
    received_at: float


@dataclass(slots=True)
class _Version:
    """What one model version's devices share: its reference, counter and classes."""

    reference: DriftReference
    counter: BinCounter
    manifest: ModelManifest
    psi: PsiTable
    classes: tuple[str, ...]
    scored: bool
    """Whether the score stream is tracked (the model has a ``normal`` class)."""


@dataclass(slots=True)
class _Changes:
    """What one call stores: states by key, events, closed windows."""

    states: dict[tuple[str, str, str], DriftStateRow] = field(default_factory=dict)
    events: list[DriftEventRow] = field(default_factory=list)
    windows: list[DriftWindowRow] = field(default_factory=list)


@dataclass(slots=True)
class _Track:
    key: tuple[str, str, str]
    """(device, model, version)."""
    version: _Version
    drift: DeviceDrift
    detector: DriftDetector
    window: WindowCounts
    window_start: float
    disagreement: Disagreement
    last_reading_at: float
    pending: list[StoredTelemetry] = field(default_factory=list)
    """Messages whose readings are not counted yet (their shapes checked)."""
    pending_n: int = 0
    pending_since: float = 0.0


class DriftMonitor:
    """See the module docstring. Not thread-safe: one thread calls it (in the hub,
    :class:`~cloud_hub.drift.background.MonitorThread`'s)."""

    def __init__(
        self,
        store: Store,
        settings: DriftSettings | None = None,
        *,
        on_fleet_alarm: Callable[[FleetAlarm], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or DriftSettings()
        self.on_fleet_alarm = on_fleet_alarm
        self._clock = clock
        # (model, version) -> its _Version, or None and when to look again.
        self._versions: dict[tuple[str, str], _Version | float] = {}
        self._tracks: dict[tuple[str, str, str], _Track] = {}
        self._by_device: dict[str, tuple[str, str, str]] = {}
        self._restored: dict[tuple[str, str, str], DriftStateRow] = {}
        self._fleet: dict[tuple[str, str], FleetAlarm] = {}
        self._unsaved = _Changes()
        start = clock()
        # The first fleet check waits a round, so that it sees more than one batch.
        self._next_fleet_check = start + self.settings.fleet_check_s
        self._next_sweep = start + self.settings.flush_s
        self._next_save = start + self.settings.save_s

    def restore(self) -> None:
        """Take the stored states and open fleet alarms back (at hub start): a device
        drifting before a restart is still drifting after it, since the same time, and
        its saved detector goes on where it was (:meth:`save`)."""
        self._restored = {(r.device, r.model, r.version): r for r in self.store.drift_states()}
        cursor: str | None = None
        for _ in range(10_000):  # bounded: 10,000 pages of 1,000 fleet events
            page = self.store.drift_events(
                None, 0.0, float("inf"), 1000, cursor=cursor, scope="fleet"
            )
            for r in page.items:
                key = (r.model, r.version)
                if r.state == DriftState.DRIFTING:
                    devices = tuple(_strings(r.detail, "devices"))
                    self._fleet[key] = FleetAlarm(r.model, r.version, r.streams, devices, 0, 0.0)
                else:
                    self._fleet.pop(key, None)
            cursor = page.next_cursor
            if cursor is None:
                break

    # -- per batch ---------------------------------------------------------------------------

    def observe(self, batch: Sequence[StoredTelemetry]) -> Counter[CounterKey]:
        """Take ``batch`` (newly stored telemetry; may be empty, on an idle tick): each
        device's readings wait in its buffer until it holds ``flush_readings`` or its
        oldest is ``flush_s`` old, then are counted and fed to the detector in one go.
        Stores what changed; returns the counters to add. A message that cannot be
        tracked is counted and skipped; nothing here raises for one device's data."""
        counts: Counter[CounterKey] = Counter()
        out, self._unsaved = self._unsaved, _Changes()
        s = self.settings
        for msg in batch:
            if len(msg.features) == 0:
                continue
            try:
                track = self._track(msg, out, counts)
                if track is None:
                    continue
                self._append(track, msg)
            except ValueError as exc:
                counts[(msg.device, "drift:bad_input")] += 1
                log.warning("drift: device %r: %s", msg.device, exc)
                continue
            if (
                track.pending_n >= s.flush_readings
                or msg.received_at - track.pending_since >= s.flush_s
            ):
                self._flush(track, out, counts)
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + s.flush_s
            self._sweep(now, out, counts)
        if now >= self._next_fleet_check:
            self._next_fleet_check = now + s.fleet_check_s
            out.events.extend(self._check_fleet(now, counts))
        self._store(out, counts)
        if now >= self._next_save:
            self._next_save = now + s.save_s
            self.save()
        return counts

    def flush(self) -> None:
        """Count and test every buffered reading now, store the results and save the
        detectors (tests; the hub stopping, after ingest stopped)."""
        counts: Counter[CounterKey] = Counter()
        out, self._unsaved = self._unsaved, _Changes()
        for track in self._tracks.values():
            if track.pending_n:
                self._flush(track, out, counts)
        self._store(out, counts)
        self.save()

    def save(self) -> None:
        """Save every tracked detector (``drift_detectors``), so that a restarted hub's
        detectors go on where these were rather than start again, blind."""
        states = [(*t.key, t.detector.save()) for t in self._tracks.values()]
        try:
            self.store.save_drift_detectors(states, self._clock())
        except Exception:  # the next save tries again
            log.exception("drift: saving %d detectors failed", len(states))

    def _store(self, out: _Changes, counts: Counter[CounterKey]) -> None:
        if not (out.states or out.events or out.windows):
            return
        try:
            self.store.record_drift(list(out.states.values()), out.events, out.windows)
        except Exception:
            log.exception(
                "drift: storing %d events failed; trying again next batch", len(out.events)
            )
            counts[(None, "ingest_errors")] += 1
            if len(out.events) + len(out.windows) <= _UNSAVED_MAX:
                self._unsaved = out
            else:
                counts[(None, "drift:dropped_records")] += len(out.events) + len(out.windows)

    def _sweep(self, now: float, out: _Changes, counts: Counter[CounterKey]) -> None:
        """Flush buffers that waited ``flush_s``; let go of tracks silent for longer than
        the fleet window (their state stays stored, their detector saved)."""
        s = self.settings
        idle: list[_Track] = []
        for track in self._tracks.values():
            if track.pending_n and now - track.pending_since >= s.flush_s:
                self._flush(track, out, counts)
            if now - track.last_reading_at > s.fleet.window_s:
                idle.append(track)
        if idle:
            try:
                self.store.save_drift_detectors([(*t.key, t.detector.save()) for t in idle], now)
            except Exception:
                log.exception("drift: saving %d idle detectors failed", len(idle))
                return
            for t in idle:
                del self._tracks[t.key]
                if self._by_device.get(t.key[0]) == t.key:
                    del self._by_device[t.key[0]]

    def _version(self, model: str, version: str) -> _Version | None:
        key = (model, version)
        known = self._versions.get(key)
        if isinstance(known, _Version):
            return known
        now = self._clock()
        if known is not None and now < known:
            return None
        record = self.store.model(model, version)
        if record is None:
            log.info("drift: %s %s is not registered: its devices are not tracked", *key)
            self._versions[key] = now + _LOOK_AGAIN_S
            return None
        try:
            made = _make_version(record.manifest)
        except ValueError as exc:
            log.warning("drift: %s %s cannot be tracked: %s", model, version, exc)
            self._versions[key] = now + _LOOK_AGAIN_S
            return None
        self._versions[key] = made
        return made

    def _track(
        self, msg: StoredTelemetry, out: _Changes, counts: Counter[CounterKey]
    ) -> _Track | None:
        key = (msg.device, msg.model, msg.version)
        track = self._tracks.get(key)
        if track is not None:
            return track
        version = self._version(msg.model, msg.version)
        if version is None:
            counts[(msg.device, "drift:no_reference")] += 1
            return None
        detector = DriftDetector(
            version.reference.features, version.manifest.reference_sensors, self.settings.detector
        )
        saved = self.store.drift_detector(*key)
        if saved is not None:
            try:
                detector.load(saved)
            except ValueError as exc:
                log.warning("drift: device %r: its saved detector is not usable (%s)", key[0], exc)
        previous = self._by_device.get(msg.device)
        if previous is not None and previous != key and previous in self._tracks:
            self._leave(self._tracks.pop(previous), out, counts)
        for other in [k for k in self._restored if k[0] == msg.device and k != key]:
            # It moved to this version while the hub was down.
            del self._restored[other]
            try:
                self.store.forget_drift(*other)
            except Exception:
                log.exception("drift: forgetting %s on %s %s failed", *other)
        drift = DeviceDrift(self.settings.rules)
        old = self._restored.pop(key, None)
        if old is not None:
            drift.state, drift.since, drift.readings = (
                DriftState(old.state),
                old.since,
                old.readings,
            )
            drift.restore(old.streams)
        track = _Track(
            key=key,
            version=version,
            drift=drift,
            detector=detector,
            window=version.counter.empty(),
            window_start=msg.received_at,
            disagreement=Disagreement(0, 0),
            last_reading_at=msg.received_at,
        )
        self._tracks[key] = track
        self._by_device[msg.device] = key
        return track

    def _leave(self, track: _Track, out: _Changes, counts: Counter[CounterKey]) -> None:
        """The device runs another version now: its last readings on this one are
        counted, its open window closed, and its state on it dropped (a device no
        longer on a version does not drift on it; its events and windows stay)."""
        if track.pending_n:
            self._flush(track, out, counts)
        if track.window.n:
            out.windows.append(self._close(track, track.last_reading_at))
        out.states.pop(track.key, None)
        try:
            self.store.forget_drift(*track.key)
        except Exception:
            log.exception("drift: forgetting %s on %s %s failed", *track.key)

    def _append(self, track: _Track, msg: StoredTelemetry) -> None:
        """Check one message's shapes and put it in the device's buffer. Only shapes
        here (no numpy call): the values are cast and checked once per flush."""
        v = track.version
        n, width = msg.features.shape if msg.features.ndim == 2 else (0, -1)
        if width != len(v.reference.features):
            raise ValueError(
                f"telemetry has {msg.features.shape[-1]} features per reading; {msg.model} "
                f"{msg.version} reads {len(v.reference.features)}"
            )
        if v.scored and msg.edge_scores.shape != (n, len(v.classes)):
            raise ValueError(
                f"telemetry has edge scores of shape {msg.edge_scores.shape}, not "
                f"({n}, {len(v.classes)})"
            )
        if not track.pending_n:
            track.pending_since = msg.received_at
        track.pending.append(msg)
        track.pending_n += n
        track.last_reading_at = msg.received_at

    def _take_pending(
        self, track: _Track, counts: Counter[CounterKey]
    ) -> tuple[npt.NDArray[np.floating], F64] | None:
        """The buffered readings as one features array and their drift scores, with
        the edge/heavy disagreement added to the track's. A message holding a
        non-finite value is dropped and counted (``drift:bad_input``); the wire codec
        refuses those, so this is a guard, checked once per flush. None when nothing is left."""
        v = track.version
        pending, track.pending, track.pending_n = track.pending, [], 0
        features, score = _readings(pending, v)
        if not (np.isfinite(features).all() and np.isfinite(score).all()):
            good = [m for m in pending if _finite(m, v.scored)]
            counts[(track.key[0], "drift:bad_input")] += len(pending) - len(good)
            log.warning(
                "drift: device %r: %d message(s) hold a non-finite feature or edge score; "
                "not counted",
                track.key[0],
                len(pending) - len(good),
            )
            if not good:
                return None
            pending = good
            features, score = _readings(pending, v)
        compared = [
            m
            for m in pending
            if m.heavy_scores.size and m.heavy_scores.shape == m.edge_scores.shape
        ]
        if compared:
            track.disagreement = track.disagreement + Disagreement.count(
                np.concatenate([m.edge_scores for m in compared]).argmax(axis=1),
                np.concatenate([m.heavy_scores for m in compared]).argmax(axis=1),
            )
        return features, score

    def _flush(self, track: _Track, out: _Changes, counts: Counter[CounterKey]) -> None:
        """Count the buffered readings, run the detector on them, apply the state rules."""
        v = track.version
        taken = self._take_pending(track, counts)
        if taken is None:
            return
        features, score = taken
        at = track.last_reading_at
        batch = v.counter.count(features, score)
        update = track.detector.update(features)
        track.window = track.window + batch
        verdicts: list[StreamVerdict] = []
        if update.alarms:
            window_psi = self._psi(track, track.window)
            for alarm in update.alarms:
                for channel in alarm.channels:
                    feature = channel.split(":", 1)[0] + "_last"
                    verdicts.append(
                        StreamVerdict(channel, True, window_psi.get(feature, 0.0), alarm.statistic)
                    )
        change = track.drift.observe(
            verdicts,
            batch.n,
            at,
            judging=track.detector.ready,
            statistics=track.detector.statistics(),
        )
        closed = track.window.n >= self.settings.window_readings
        if closed:
            out.windows.append(self._close(track, at))
        out.states[track.key] = self._state_row(track)
        if change is None:
            return
        device, model, version = track.key
        moved = change.state is not change.previous
        counts[(device, f"drift:{change.state.value}" if moved else "drift:streams_changed")] += 1
        log.info(
            "drift: device %r on %s %s is %s (%s)",
            device,
            model,
            version,
            change.state.value,
            ", ".join(change.streams) or "no stream drifting",
        )
        out.events.append(
            DriftEventRow(
                id=0,
                at=change.at,
                scope="device",
                device=device,
                model=model,
                version=version,
                state=change.state.value,
                previous=change.previous.value,
                streams=change.streams,
                detail={
                    "psi": dict(change.psi),
                    "statistic": dict(change.statistic),
                    "cleared": list(change.cleared),
                    "readings": track.drift.readings,
                },
            )
        )

    def _psi(self, track: _Track, window: WindowCounts) -> dict[str, float]:
        v = track.version
        if window.n == 0:
            return {}
        values = v.psi(window).tolist()
        names = v.reference.features
        out = dict(zip(names, values[: len(names)], strict=True))
        if v.scored and len(values) > len(names):
            out[SCORE_STREAM] = values[len(names)]
        return out

    def _close(self, track: _Track, at: float) -> DriftWindowRow:
        v = track.version
        device, model, version = track.key
        row = DriftWindowRow(
            device=device,
            model=model,
            version=version,
            start_at=track.window_start,
            end_at=at,
            readings=track.window.n,
            psi=self._psi(track, track.window),
            statistic=track.detector.statistics(),
            disagreement=track.disagreement.rate if track.disagreement.compared else None,
        )
        track.window = v.counter.empty()
        track.window_start = at
        track.disagreement = Disagreement(0, 0)
        return row

    def _state_row(self, track: _Track) -> DriftStateRow:
        d = track.drift
        device, model, version = track.key
        return DriftStateRow(
            device=device,
            model=model,
            version=version,
            state=d.state.value,
            since=d.since,
            streams=d.streams_since(),
            readings=d.readings,
            last_reading_at=track.last_reading_at,
        )

    # -- the fleet ---------------------------------------------------------------------------

    def _check_fleet(self, now: float, counts: Counter[CounterKey]) -> list[DriftEventRow]:
        views = [
            DeviceView(key[0], key[1], key[2], t.last_reading_at, t.drift.streams_since())
            for key, t in self._tracks.items()
        ]
        # Devices not heard from since a restart count with their stored state.
        views += [
            DeviceView(r.device, r.model, r.version, r.last_reading_at, r.streams)
            for key, r in self._restored.items()
            if key not in self._tracks
        ]
        rules = self.settings.fleet
        alarms = {(a.model, a.version): a for a in fleet_alarms(views, rules, now)}
        events: list[DriftEventRow] = []
        for key, alarm in alarms.items():
            if key in self._fleet:
                continue
            self._fleet[key] = alarm
            counts[(None, "drift:fleet_alarms")] += 1
            log.warning(
                "drift: the fleet on %s %s drifts: %d of %d devices on %s",
                alarm.model,
                alarm.version,
                len(alarm.devices),
                alarm.active_devices,
                ", ".join(alarm.streams),
            )
            events.append(_fleet_event(now, alarm, DriftState.DRIFTING, DriftState.OK))
            if self.on_fleet_alarm is not None:
                try:
                    self.on_fleet_alarm(alarm)
                except Exception:  # the trigger must never stop ingest
                    log.exception("drift: the fleet alarm's handler failed")
                    counts[(None, "ingest_errors")] += 1
        for key, old in list(self._fleet.items()):
            if key in alarms or fleet_still_drifts(old, views, rules, now):
                continue
            del self._fleet[key]
            log.info("drift: the fleet on %s %s no longer drifts", *key)
            events.append(
                _fleet_event(
                    now,
                    FleetAlarm(old.model, old.version, (), (), 0, 0.0),
                    DriftState.OK,
                    DriftState.DRIFTING,
                )
            )
        return events


def _make_version(manifest: ModelManifest) -> _Version:
    reference = DriftReference.from_manifest(manifest)
    classes = manifest.output.classes
    scored = _NORMAL_CLASS in classes
    return _Version(
        reference, BinCounter(reference), manifest, PsiTable(reference), classes, scored
    )


def _fleet_event(
    now: float, alarm: FleetAlarm, state: DriftState, previous: DriftState
) -> DriftEventRow:
    return DriftEventRow(
        id=0,
        at=now,
        scope="fleet",
        device=None,
        model=alarm.model,
        version=alarm.version,
        state=state.value,
        previous=previous.value,
        streams=alarm.streams,
        detail={
            "devices": list(alarm.devices),
            "active_devices": alarm.active_devices,
            "share": alarm.share,
        },
    )


def _readings(
    pending: Sequence[StoredTelemetry], v: _Version
) -> tuple[npt.NDArray[np.floating], F64]:
    """Buffered messages' features, one array, and their drift scores (zeros when
    the model's score is not tracked)."""
    features = np.concatenate([m.features for m in pending])
    if not v.scored:
        return features, np.zeros(len(features))
    edge = np.concatenate([m.edge_scores for m in pending])
    return features, drift_score(edge, v.classes, _NORMAL_CLASS)


def _finite(msg: StoredTelemetry, scored: bool) -> bool:
    """Whether a message's features (and, when the score is tracked, edge scores) are finite."""
    return bool(np.isfinite(msg.features).all()) and (
        not scored or bool(np.isfinite(msg.edge_scores).all())
    )


def _strings(detail: dict[str, object], key: str) -> list[str]:
    value = detail.get(key)
    return [str(x) for x in value] if isinstance(value, list) else []
