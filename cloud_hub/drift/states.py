"""Drift states of a device and of the fleet, pure: no I/O and no clock.

The hub's :mod:`cloud_hub.drift.monitor` feeds the detectors' verdicts in and
stores what comes out; this module only decides.

Rules for one device on one model version (:class:`DeviceDrift`):

1. A device is ``ok`` until its detector alarms on one of its streams (a
   detector channel such as ``temperature:level``); no verdict counts before
   the device has sent ``min_readings`` readings on that model version.
2. An alarm makes the device ``drifting`` on that stream (``since`` is the time
   of its first alarm); more alarms on other streams add them to the set.
3. A drifting stream clears once ``recovery_readings`` readings in a row have
   gone by while the detector was judging (not in its start) and the stream's
   statistic stayed below ``quiet_statistic`` (in units of the alarm
   threshold) without a new alarm. A drift that persists re-alarms after
   each restart of the CUSUM, its statistic climbing back towards 1 in
   between, so it never stays below ``quiet_statistic`` for long and the
   stream stays drifting; when the last stream clears the device is
   ``recovered`` (it drifted, and is back in control).
4. A recovered device that alarms again is ``drifting`` again (rule 2).
5. Every change is a :class:`Change` (a new state, or a stream added to or
   cleared from a drifting device's set): the caller stores it as an event and
   counts it.

Rules for the fleet (:func:`fleet_alarms`):

6. The fleet drifts on a model version when, among the devices that sent
   readings on that version within ``window_s``, at least ``share`` of them
   (and at least ``min_devices``) are drifting on the same stream, each with a
   drift that started within ``window_s``. A fleet alarm names the model
   version, the streams and the devices.
7. An open fleet alarm closes only when fewer than ``share / 2`` of those
   active devices still drift on any of its streams, whenever their drifts
   started (:func:`fleet_still_drifts`): a fleet that keeps drifting keeps its
   alarm, and a share hovering at the threshold does not open and close it
   again and again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = [
    "SCORE_STREAM",
    "Change",
    "DeviceDrift",
    "DeviceView",
    "DriftRules",
    "DriftState",
    "FleetAlarm",
    "FleetRules",
    "StreamVerdict",
    "fleet_alarms",
    "fleet_still_drifts",
]

SCORE_STREAM: Final = "score"
"""The stream name of the edge score (features use their own names)."""


class DriftState(StrEnum):
    OK = "ok"
    DRIFTING = "drifting"
    RECOVERED = "recovered"


@dataclass(frozen=True, slots=True)
class DriftRules:
    """When a device's verdicts count and when a drift is over (rules 1 and 3)."""

    min_readings: int = 200
    recovery_readings: int = 3000
    quiet_statistic: float = 0.25

    def __post_init__(self) -> None:
        if self.min_readings < 0:
            raise ValueError(f"DriftRules.min_readings = {self.min_readings} must be >= 0")
        if self.recovery_readings < 1:
            raise ValueError(
                f"DriftRules.recovery_readings = {self.recovery_readings} must be >= 1"
            )


@dataclass(frozen=True, slots=True)
class StreamVerdict:
    """What a stream's detector said over the readings just counted."""

    stream: str
    alarm: bool
    psi: float
    statistic: float


@dataclass(frozen=True, slots=True)
class Change:
    """A device's state changed (rule 5)."""

    state: DriftState
    previous: DriftState
    at: float
    streams: tuple[str, ...]
    """The streams drifting after the change (empty when recovered)."""
    cleared: tuple[str, ...] = ()
    """Streams that cleared with this change."""
    psi: Mapping[str, float] = field(default_factory=dict)
    statistic: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Drifting:
    since: float
    quiet_readings: int = 0
    psi: float = 0.0
    statistic: float = 0.0


@dataclass(slots=True)
class DeviceDrift:
    """One device's drift on one model version (rules 1 to 5)."""

    rules: DriftRules
    state: DriftState = DriftState.OK
    since: float | None = None
    """When the current state began (None: ok since the device was first counted)."""
    readings: int = 0
    drifting: dict[str, _Drifting] = field(default_factory=dict)

    def restore(self, streams: Mapping[str, float]) -> None:
        """Take back the drifting streams (and when each started) of a stored state."""
        self.drifting = {name: _Drifting(since) for name, since in streams.items()}

    def streams_since(self) -> dict[str, float]:
        """The drifting streams and when each started."""
        return {name: d.since for name, d in self.drifting.items()}

    def observe(
        self,
        verdicts: Sequence[StreamVerdict],
        readings: int,
        at: float,
        *,
        judging: bool = True,
        statistics: Mapping[str, float] | None = None,
    ) -> Change | None:
        """Take the verdicts over ``readings`` new readings at time ``at``;
        ``judging``: whether the detector could alarm over them (its start is
        over); ``statistics``: each stream's statistic now (rule 3)."""
        if readings < 0:
            raise ValueError(f"readings = {readings} must be >= 0")
        self.readings += readings
        if self.readings < self.rules.min_readings:
            return None
        before = self.state
        alarmed = [v for v in verdicts if v.alarm]
        new: list[str] = []
        for v in alarmed:
            d = self.drifting.get(v.stream)
            if d is None:
                self.drifting[v.stream] = _Drifting(at, 0, v.psi, v.statistic)
                new.append(v.stream)
            else:
                d.quiet_readings, d.psi, d.statistic = 0, v.psi, v.statistic
        alarmed_names = {v.stream for v in alarmed}
        cleared: list[str] = []
        for name, d in list(self.drifting.items()):
            if name in alarmed_names:
                continue
            level = (statistics or {}).get(name, 0.0)
            if not judging:
                continue
            if level >= self.rules.quiet_statistic:
                d.quiet_readings = 0
                continue
            d.quiet_readings += readings
            if d.quiet_readings >= self.rules.recovery_readings:
                del self.drifting[name]
                cleared.append(name)
        if self.drifting:
            self.state = DriftState.DRIFTING
        elif before is DriftState.DRIFTING:
            self.state = DriftState.RECOVERED
        if self.state is before and not new and not cleared:
            return None
        if self.state is not before:
            self.since = at
        return Change(
            state=self.state,
            previous=before,
            at=at,
            streams=tuple(sorted(self.drifting)),
            cleared=tuple(sorted(cleared)),
            psi={n: d.psi for n, d in self.drifting.items()},
            statistic={n: d.statistic for n, d in self.drifting.items()},
        )


@dataclass(frozen=True, slots=True)
class FleetRules:
    """When the fleet drifts (rule 6)."""

    share: float = 0.2
    window_s: float = 3600.0
    min_devices: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"FleetRules.share = {self.share} must be in (0, 1]")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"FleetRules.window_s = {self.window_s} must be > 0")
        if self.min_devices < 1:
            raise ValueError(f"FleetRules.min_devices = {self.min_devices} must be >= 1")


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the fleet rule needs of one device on one model version."""

    device: str
    model: str
    version: str
    last_reading_at: float
    drifting: Mapping[str, float]
    """Drifting streams and when each started."""


@dataclass(frozen=True, slots=True)
class FleetAlarm:
    model: str
    version: str
    streams: tuple[str, ...]
    devices: tuple[str, ...]
    active_devices: int
    share: float
    """The largest share of active devices drifting on one of ``streams``."""


def fleet_alarms(views: Iterable[DeviceView], rules: FleetRules, now: float) -> list[FleetAlarm]:
    """The model versions whose fleet drifts now (rule 6), one alarm each."""
    start = now - rules.window_s
    active: dict[tuple[str, str], int] = {}
    by_stream: dict[tuple[str, str], dict[str, set[str]]] = {}
    for v in views:
        if v.last_reading_at < start:
            continue
        key = (v.model, v.version)
        active[key] = active.get(key, 0) + 1
        for stream, since in v.drifting.items():
            if since >= start:
                by_stream.setdefault(key, {}).setdefault(stream, set()).add(v.device)
    alarms: list[FleetAlarm] = []
    for key, streams in sorted(by_stream.items()):
        n = active[key]
        hit = {
            s: devs
            for s, devs in streams.items()
            if len(devs) >= rules.min_devices and len(devs) / n >= rules.share
        }
        if not hit:
            continue
        devices = sorted(set().union(*hit.values()))
        alarms.append(
            FleetAlarm(
                model=key[0],
                version=key[1],
                streams=tuple(sorted(hit, key=lambda s: (-len(hit[s]), s))),
                devices=tuple(devices),
                active_devices=n,
                share=max(len(d) for d in hit.values()) / n,
            )
        )
    return alarms


def fleet_still_drifts(
    alarm: FleetAlarm, views: Iterable[DeviceView], rules: FleetRules, now: float
) -> bool:
    """Whether an open fleet alarm stays open (rule 7): at least ``share / 2`` of the
    devices active on its version within ``window_s`` drift on one of its streams."""
    start = now - rules.window_s
    active = drifting = 0
    for v in views:
        if (v.model, v.version) != (alarm.model, alarm.version) or v.last_reading_at < start:
            continue
        active += 1
        drifting += any(s in v.drifting for s in alarm.streams)
    return active > 0 and drifting / active >= rules.share / 2
