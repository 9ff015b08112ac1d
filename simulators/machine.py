"""A seeded simulator of one industrial machine with the eight sensors of
:data:`SENSORS`: one sensor set among others, declared to the models trained on
it like any user's sensors.

The model, per reading (the dynamics are defined per reading; ``rate_hz`` only
sets ``sim_time``):

- **Regimes.** The machine runs ``idle`` (700 rpm, 15 % load), ``low`` (1400 rpm,
  55 %) or ``high`` (1800 rpm, 100 %: the nominal operating point of
  :data:`SENSORS`), switching as a Markov chain about every
  ``regime_dwell`` readings. A slow AR(1) process wobbles load and speed within a
  regime. Speed and load follow their targets with a lag of a few readings.
- **Coupling.** Current follows load x speed; temperature follows the heat
  (current², friction) with a first-order lag of ~80 readings and the oil
  temperature follows the temperature with ~200; vibration and acoustic level
  scale with speed; pressure and flow with load.
- **Noise and dropouts.** Each sensor has gaussian measurement noise
  (:data:`NOISE_SIGMA`, in its unit); each value is NaN with ``dropout_prob``.
- **Developing fault** (label 1): bearing wear, starting at a seeded random
  reading (hazard ``fault_rate`` per reading). It appears at a small severity and
  grows over ``fault_ramp`` running readings: vibration, acoustic level and
  temperature creep up, but never as far as the urgent thresholds. It stays.
- **Urgent condition** (label 2): ``overheat`` (temperature 116-130 degC) or
  ``vibration_spike`` (18-28 mm/s), at hazard ``urgent_rate`` per running
  reading, or on demand with :meth:`SimulatedMachine.inject_urgent`. It lasts
  ``urgent_duration`` readings unless the machine is stopped.
- **Local action.** :meth:`SimulatedMachine.stop` cuts the motor: current drops at
  once, the shaft coasts down, temperatures cool toward ambient, any urgent
  condition clears. :meth:`SimulatedMachine.start` resumes.
- **Sensor drift** (:mod:`simulators.drift`) changes what a sensor reports, never
  the machine or its labels.
- **Calibration** (``MachineConfig.calibration``): each device's sensors may
  report ``gain * value + offset`` instead of the value, with an offset and a
  gain per sensor drawn for the device from its seed; like drift it changes
  what the sensors report, never the machine or its labels. Devices of one
  model differ like this in the field (:mod:`shared.baseline` corrects it).

Random numbers are drawn in fixed-size blocks, the same count every reading
whatever happens, so a stop, an injection or a drift never shifts the random
stream: a twin that differs only in that respect is identical elsewhere.

>>> m = SimulatedMachine(MachineConfig(seed=7))
>>> r = m.step()
>>> (r.index, r.sim_time, r.values.shape, CLASSES[r.label])
(0, 0.0, (8,), 'normal')
>>> m.inject_urgent("overheat")
>>> r = m.step()
>>> bool(r.values[0] > 110.0), CLASSES[r.label]
(True, 'urgent')
>>> m.stop("overheat")
>>> m.log[-3:]
[('inject', 0, 'overheat'), ('reading', 1, ''), ('stop', 1, 'overheat')]
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from simulators.drift import DriftSpec, SimConfigError
from simulators.sensors import FEATURE_NAMES, SENSOR_NAMES, SENSORS

__all__ = [
    "CLASSES",
    "FEATURE_NAMES",
    "NOISE_SIGMA",
    "REGIMES",
    "SENSORS",
    "SENSOR_NAMES",
    "URGENT_KINDS",
    "LogEntry",
    "MachineConfig",
    "SimReading",
    "SimulatedMachine",
    "UrgentKind",
]

F64 = npt.NDArray[np.float64]

CLASSES: tuple[str, ...] = ("normal", "fault", "urgent")
"""Ground-truth label names; a reading's ``label`` indexes this tuple."""

UrgentKind = Literal["overheat", "vibration_spike"]
URGENT_KINDS: tuple[str, ...] = get_args(UrgentKind)
REGIMES: tuple[str, ...] = ("idle", "low", "high")

LogEntry = tuple[str, int, str]
"""``(kind, reading_index, detail)``; see :attr:`SimulatedMachine.log`."""

_ORDER = SENSOR_NAMES
_SIGMA = (0.4, 0.12, 0.05, 0.3, 6.0, 0.25, 1.2, 0.7)

NOISE_SIGMA: Mapping[str, float] = MappingProxyType(dict(zip(_ORDER, _SIGMA, strict=True)))
"""Measurement-noise standard deviation of each sensor, in its unit.

This is the sigma of a ``mean_shift`` drift. It is the reading-to-reading noise,
much smaller than a sensor's spread across regimes.
"""

# --- the machine's physics (the model, not settings) ---------------------------
_AMBIENT = 25.0  # degC
_RATED_SPEED = 1800.0  # rpm
_REGIME_SPEED = (700.0, 1400.0, 1800.0)
_REGIME_LOAD = (0.15, 0.55, 1.0)
# On a switch from regime r: go to _SWITCH[r][0] with probability _SWITCH[r][1],
# else to _SWITCH[r][2].
_SWITCH = ((1, 0.7, 2), (2, 0.6, 0), (1, 0.6, 0))
_K_SPEED = 0.25  # per-reading gain of the first-order lags (1 / time constant)
_K_LOAD = 0.25
_K_TEMP = 1.0 / 80.0
_K_OIL = 1.0 / 200.0
_AR_PHI = 0.995  # within-regime wobble: AR(1) with unit stationary variance
_AR_SCALE = math.sqrt(1.0 - _AR_PHI * _AR_PHI)
_WOBBLE_LOAD = 0.08
_WOBBLE_SPEED = 0.015
_WEAR_START = 0.2  # bearing wear severity when the fault appears; grows to 1.0
_WEAR_VIB = 6.0  # mm/s at full wear and rated speed
_WEAR_AC = 8.0  # dB
_WEAR_TEMP = 15.0  # degC
_OVERHEAT = (116.0, 14.0)  # temperature = lo + span * u
_OVERHEAT_OIL = 12.0
_SPIKE = (18.0, 10.0)  # vibration = lo + span * u
_SPIKE_AC = 12.0

_CALIBRATION = 0xCA1  # the calibration's own seed component
_BLOCK = 64  # readings of random numbers drawn at once
_N_NOISE = 9  # 8 sensors + the regime wobble
_N_UNIFORM = 6  # switch?, to which, urgent?, kind, level, duration

# Urgent kinds are held as small ints in the hot loop.
_NO_URGENT, _OVERHEAT_CODE, _SPIKE_CODE = 0, 1, 2


def _fail(setting: str, message: str) -> SimConfigError:
    return SimConfigError(f"MachineConfig.{setting} {message}", setting=f"MachineConfig.{setting}")


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """Everything that determines one simulated machine's stream.

    Same config, same stream, reading for reading. Rates are hazards *per
    reading*: ``urgent_rate=1e-4`` at 10 Hz is about one urgent event per device
    every 17 minutes. The random stream is seeded from ``(seed, device_index)``,
    so the devices of a fleet sharing one seed are independent.

    >>> MachineConfig(seed=1, dropout_prob=2.0)
    Traceback (most recent call last):
    ...
    simulators.drift.SimConfigError: MachineConfig.dropout_prob must be in [0, 1); got 2.0
    """

    seed: int
    device_index: int = 0
    rate_hz: float = 10.0
    dropout_prob: float = 0.002
    fault_rate: float = 5e-5
    """Hazard per reading that bearing wear starts (it then stays)."""
    urgent_rate: float = 1e-4
    """Hazard per running reading that an urgent condition starts."""
    drifts: tuple[DriftSpec, ...] = ()
    regime_dwell: float = 300.0
    """Mean number of readings between regime switches."""
    fault_ramp: int = 1000
    """Running readings for bearing wear to grow from onset to full severity."""
    urgent_duration: tuple[int, int] = (5, 20)
    """Inclusive range of readings an urgent condition lasts if not stopped."""
    log_size: int = 256
    """How many entries :attr:`SimulatedMachine.log` keeps."""
    calibration: tuple[float, float] = (0.0, 0.0)
    """``(offset, gain)`` spread of this device's miscalibration. Each sensor
    reports ``gain * value + offset`` (saturating at its valid range), with
    ``offset`` drawn uniformly within ``+-offset x`` the sensor's nominal value
    (its fallback in :data:`SENSORS`) and ``gain`` log-uniformly within
    ``[1 / (1 + gain), 1 + gain]``, from ``(seed, device_index)`` by a random
    stream of its own (so the machine's stream is the same with or without it).
    ``(0, 0)``: every device reports the true values. See :meth:`SimulatedMachine.calibration`."""

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or self.seed < 0:
            raise _fail("seed", f"must be an integer >= 0; got {self.seed!r}")
        if not _is_int(self.device_index) or self.device_index < 0:
            raise _fail("device_index", f"must be an integer >= 0; got {self.device_index!r}")
        if not _is_real(self.rate_hz) or not (0.0 < self.rate_hz < math.inf):
            raise _fail("rate_hz", f"must be a finite number > 0; got {self.rate_hz!r}")
        for name in ("dropout_prob", "fault_rate", "urgent_rate"):
            v = getattr(self, name)
            if not _is_real(v) or not (0.0 <= v < 1.0):
                raise _fail(name, f"must be in [0, 1); got {v!r}")
        if not isinstance(self.drifts, tuple) or not all(
            isinstance(d, DriftSpec) for d in self.drifts
        ):
            raise _fail(
                "drifts",
                f"must be a tuple of DriftSpec (see simulators.drift.parse_drift); "
                f"got {self.drifts!r}",
            )
        if not _is_real(self.regime_dwell) or not (1.0 <= self.regime_dwell < math.inf):
            raise _fail(
                "regime_dwell", f"must be a number of readings >= 1; got {self.regime_dwell!r}"
            )
        if not _is_int(self.fault_ramp) or self.fault_ramp < 1:
            raise _fail("fault_ramp", f"must be an integer >= 1; got {self.fault_ramp!r}")
        d = self.urgent_duration
        if not (
            isinstance(d, tuple)
            and len(d) == 2
            and all(_is_int(x) for x in d)
            and 1 <= d[0] <= d[1]
        ):
            raise _fail(
                "urgent_duration", f"must be a tuple (lo, hi) of integers, 1 <= lo <= hi; got {d!r}"
            )
        if not _is_int(self.log_size) or self.log_size < 1:
            raise _fail("log_size", f"must be an integer >= 1; got {self.log_size!r}")
        c = self.calibration
        if not (
            isinstance(c, tuple) and len(c) == 2 and all(_is_real(x) and 0.0 <= x < 10.0 for x in c)
        ):
            raise _fail(
                "calibration",
                f"must be a tuple (offset, gain) of spreads, each in [0, 10); got {c!r}",
            )


@dataclass(frozen=True, slots=True)
class SimReading:
    """One reading: its index on the device, ``sim_time = index / rate_hz`` (s),
    one value per sensor in :data:`SENSORS` order (NaN for a
    dropout; read-only) and its ground-truth ``label`` (an index into
    :data:`CLASSES`)."""

    index: int
    sim_time: float
    values: F64
    label: int


def _draw_calibration(config: MachineConfig) -> tuple[list[float], list[float]]:
    """Gain and offset per sensor (see ``MachineConfig.calibration``): always the
    same draws for a device, whatever the spreads, from a stream of their own."""
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence((config.seed, config.device_index, _CALIBRATION)))
    )
    u = rng.uniform(-1.0, 1.0, size=(2, len(SENSORS)))
    offset_spread, gain_spread = config.calibration
    nominal = np.array([s.fallback for s in SENSORS])
    gains = np.exp(u[0] * math.log1p(gain_spread))
    offsets = u[1] * offset_spread * nominal
    return [float(g) for g in gains], [float(o) for o in offsets]


class SimulatedMachine:
    """One simulated machine: call :meth:`step` for each reading.

    A reading costs a few microseconds (pure-Python arithmetic on random numbers
    drawn in blocks). Readings and actions are serialised by a lock, so an action
    called from another thread lands wholly between two readings, as the log
    shows.

    >>> a = SimulatedMachine(MachineConfig(seed=3, device_index=5))
    >>> b = SimulatedMachine(MachineConfig(seed=3, device_index=5))
    >>> all(np.array_equal(x.values, y.values, equal_nan=True)
    ...     for x, y in zip(a.readings(100), b.readings(100)))
    True
    """

    def __init__(self, config: MachineConfig) -> None:
        self._config = config
        self._rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence((config.seed, config.device_index)))
        )
        rng = self._rng
        # Initial state: a random regime, at its steady state (no warm-up transient).
        self._regime = int(rng.integers(len(REGIMES)))
        self._ar = float(rng.standard_normal())
        u_fault = float(rng.random())
        # Inverse CDF of the geometric distribution: always one draw, whatever
        # the rate, so the rate does not shift the rest of the stream.
        onset = math.inf
        if config.fault_rate > 0.0:
            onset = math.log1p(-u_fault) / math.log1p(-config.fault_rate)
        # -1: never (no fault, or a rate so small the onset is past any run).
        self._fault_onset = int(onset) if onset < 2.0**62 else -1
        self._fault_active = False
        self._wear = 0.0
        self._wear_step = (1.0 - _WEAR_START) / config.fault_ramp
        self._speed = _REGIME_SPEED[self._regime] * (1.0 + _WOBBLE_SPEED * self._ar)
        self._load = max(0.0, _REGIME_LOAD[self._regime] * (1.0 + _WOBBLE_LOAD * self._ar))
        sr = self._speed / _RATED_SPEED
        cur = 2.5 + 15.5 * self._load * sr
        self._temp = _AMBIENT + 28.0 * (cur / 18.0) ** 2 + 12.0 * sr
        self._oil = _AMBIENT + 0.625 * (self._temp - _AMBIENT)

        self._stopped = False
        self._urgent = _NO_URGENT
        self._urgent_left = 0
        self._urgent_level = 0.0
        self._pending: int = _NO_URGENT
        self._index = 0
        self._p_switch = 1.0 / config.regime_dwell
        self._sigma = np.array(_SIGMA, dtype=np.float64)

        # Drifts, ordered by start: (start, sensor, op, value). op 0 adds value,
        # op 1 adds value x the sensor's noise, op 2 holds the value at start.
        ops = {"mean_shift": 0, "offset": 0, "variance": 1, "stuck": 2}
        compiled: list[tuple[int, int, int, float]] = []
        for d in sorted(config.drifts, key=lambda s: s.start):
            k = d.sensor_index
            if d.kind == "mean_shift":
                value = d.magnitude * _SIGMA[k]
            elif d.kind == "variance":
                value = d.magnitude - 1.0
            else:
                value = d.magnitude
            compiled.append((d.start, k, ops[d.kind], value))
        self._drifts = tuple(compiled)
        self._held: list[float] = [math.nan] * len(compiled)
        self._gain, self._offset = _draw_calibration(config)
        self._calibrated = any(config.calibration)
        self._transfer = tuple(
            (g, o, s.min, s.max) for g, o, s in zip(self._gain, self._offset, SENSORS, strict=True)
        )

        self._noise = np.empty((_BLOCK, _N_NOISE), dtype=np.float64)
        self._uniform = np.empty((_BLOCK, _N_UNIFORM), dtype=np.float64)
        self._block = np.empty((_BLOCK, _N_NOISE + _N_UNIFORM), dtype=np.float64)
        self._dropu = np.empty((_BLOCK, len(_ORDER)), dtype=np.float64)
        self._drop = np.empty((_BLOCK, len(_ORDER)), dtype=np.bool_)
        self._drop_any: list[bool] = []
        self._j = _BLOCK  # refill before the first reading

        # The log is stored as its non-reading entries plus the reading counter:
        # a reading costs nothing here. Entries: (position, index, kind, detail),
        # where position is the index of the reading the entry comes before.
        self._events: deque[tuple[int, int, str, str]] = deque(maxlen=config.log_size)
        self._lock = threading.Lock()

    # --- state -----------------------------------------------------------------
    @property
    def config(self) -> MachineConfig:
        return self._config

    def calibration(self) -> tuple[tuple[float, float], ...]:
        """This device's ``(gain, offset)`` per sensor, in :data:`SENSORS` order."""
        return tuple(zip(self._gain, self._offset, strict=True))

    @property
    def index(self) -> int:
        """Index the next reading will get (= readings produced so far)."""
        return self._index

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def regime(self) -> str:
        """The operating regime the machine is in (it keeps switching while stopped)."""
        return REGIMES[self._regime]

    @property
    def urgent(self) -> UrgentKind | None:
        """The urgent condition the next reading will show, if any."""
        code = self._pending or self._urgent
        if code == _OVERHEAT_CODE:
            return "overheat"
        if code == _SPIKE_CODE:
            return "vibration_spike"
        return None

    @property
    def fault_active(self) -> bool:
        """Whether bearing wear has started (readings are then labelled 1 or 2)."""
        return self._fault_active

    @property
    def log(self) -> list[LogEntry]:
        """The last ``log_size`` events, oldest first, as ``(kind, reading_index, detail)``.

        Kinds: ``reading`` (a reading was produced); ``stop`` (detail: the
        reason), ``start``, ``inject`` (detail: the urgent kind), logged with the
        index of the last reading produced before them (-1 if none); ``fault``
        and ``urgent`` (random onsets, detail: what), logged just before the
        reading that first shows them, with its index.
        """
        size = self._config.log_size
        with self._lock:
            end = self._index
            events = list(self._events)
        first = max(0, end - size)
        out: list[LogEntry] = []
        for pos, idx, kind, detail in events:
            if pos < first:
                continue
            while first < pos:
                out.append(("reading", first, ""))
                first += 1
            out.append((kind, idx, detail))
        out.extend(("reading", r, "") for r in range(first, end))
        return out[-size:]

    # --- actions ---------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Stop the machine now: the next reading shows it stopping.

        The motor is cut (current ~0 at once), the shaft coasts down within a few
        readings, temperatures cool toward ambient, and any urgent condition,
        present or injected, clears.
        """
        with self._lock:
            self._stopped = True
            self._urgent = _NO_URGENT
            self._urgent_left = 0
            self._pending = _NO_URGENT
            self._events.append((self._index, self._index - 1, "stop", str(reason)))

    def start(self) -> None:
        """Start the machine again; it spins back up to its current regime."""
        with self._lock:
            self._stopped = False
            self._events.append((self._index, self._index - 1, "start", ""))

    def inject_urgent(self, kind: UrgentKind) -> None:
        """Make the NEXT reading show an urgent condition (label 2).

        ``overheat``: temperature 116-130 degC; ``vibration_spike``: vibration
        18-28 mm/s. It lasts ``urgent_duration`` readings unless the machine is
        stopped (on a stopped machine it shows on one reading only).
        """
        if kind not in URGENT_KINDS:
            raise SimConfigError(
                f"device {self._config.device_index}: unknown urgent kind {kind!r}; "
                f"use one of {', '.join(URGENT_KINDS)}",
                setting="kind",
            )
        with self._lock:
            self._pending = _OVERHEAT_CODE if kind == "overheat" else _SPIKE_CODE
            self._events.append((self._index, self._index - 1, "inject", kind))

    # --- readings --------------------------------------------------------------
    def readings(self, n: int) -> Iterator[SimReading]:
        """The next ``n`` readings, produced one by one as they are consumed."""
        if n < 0:
            raise ValueError(f"readings(n) needs n >= 0; got {n}")
        for _ in range(n):
            yield self.step()

    def _refill(self) -> None:
        rng = self._rng
        rng.standard_normal(out=self._noise)
        self._noise[:, : len(_ORDER)] *= self._sigma
        rng.random(out=self._uniform)
        np.concatenate((self._noise, self._uniform), axis=1, out=self._block)
        rng.random(out=self._dropu)
        np.less(self._dropu, self._config.dropout_prob, out=self._drop)
        self._drop_any = cast("list[bool]", self._drop.any(axis=1).tolist())
        self._j = 0

    def step(self) -> SimReading:
        """Produce the next reading."""
        with self._lock:
            return self._step()

    def _step(self) -> SimReading:
        if self._j >= _BLOCK:
            self._refill()
        j = self._j
        self._j = j + 1
        r: list[float] = self._block[j].tolist()
        i = self._index
        cfg = self._config

        # Regime (a Markov chain that runs on while stopped) and its wobble.
        if r[9] < self._p_switch:
            to_a, p_a, to_b = _SWITCH[self._regime]
            self._regime = to_a if r[10] < p_a else to_b
        ar = _AR_PHI * self._ar + _AR_SCALE * r[8]
        self._ar = ar
        running = not self._stopped
        if running:
            speed_t = _REGIME_SPEED[self._regime] * (1.0 + _WOBBLE_SPEED * ar)
            load_t = _REGIME_LOAD[self._regime] * (1.0 + _WOBBLE_LOAD * ar)
        else:
            speed_t = load_t = 0.0
        speed = self._speed + (speed_t - self._speed) * _K_SPEED
        load = self._load + (load_t - self._load) * _K_LOAD
        self._speed = speed
        self._load = load
        sr = speed / _RATED_SPEED

        # Bearing wear: appears at its onset, grows while running, never heals.
        if self._fault_active:
            if running and self._wear < 1.0:
                self._wear = min(1.0, self._wear + self._wear_step)
        elif i == self._fault_onset:
            self._fault_active = True
            self._wear = _WEAR_START
            self._events.append((i, i, "fault", "bearing_wear"))
        wear_sr = self._wear * sr

        current = 2.5 + 15.5 * load * sr if running else 0.0
        cur_rel = current / 18.0
        temp_t = _AMBIENT + 28.0 * cur_rel * cur_rel + 12.0 * sr + _WEAR_TEMP * wear_sr
        temp = self._temp + (temp_t - self._temp) * _K_TEMP
        self._temp = temp
        oil = self._oil + (_AMBIENT + 0.625 * (temp - _AMBIENT) - self._oil) * _K_OIL
        self._oil = oil
        vib = 0.1 + 2.4 * sr * sr + _WEAR_VIB * wear_sr
        acoustic = 45.0 + 30.0 * sr + _WEAR_AC * wear_sr
        pressure = 0.5 + 5.5 * load * sr
        flow = sr * (30.0 + 70.0 * load)

        # Urgent condition: injected, or random while running.
        if self._pending:
            self._begin_urgent(self._pending, r)
            self._pending = _NO_URGENT
        elif not self._urgent and running and r[11] < cfg.urgent_rate:
            code = _OVERHEAT_CODE if r[12] < 0.5 else _SPIKE_CODE
            self._begin_urgent(code, r)
            self._events.append((i, i, "urgent", URGENT_KINDS[code - 1]))
        urgent = self._urgent
        if urgent == _OVERHEAT_CODE:
            temp = self._urgent_level
            oil += _OVERHEAT_OIL
        elif urgent == _SPIKE_CODE:
            vib = self._urgent_level
            acoustic += _SPIKE_AC

        out = [
            temp + r[0],
            max(0.0, vib + r[1]),
            max(0.0, pressure + r[2]),
            max(0.0, current + r[3]),
            max(0.0, speed + r[4]),
            oil + r[5],
            max(0.0, flow + r[6]),
            acoustic + r[7],
        ]
        if self._calibrated:
            for k, (g, o, lo, hi) in enumerate(self._transfer):
                out[k] = min(max(g * out[k] + o, lo), hi)
        if self._drifts:
            self._apply_drifts(i, out, r)
        if self._drop_any[j]:
            for k in np.flatnonzero(self._drop[j]).tolist():
                out[k] = math.nan

        if urgent:
            label = 2
            self._urgent_left -= 1
            if self._urgent_left <= 0 or not running:
                self._urgent = _NO_URGENT
        else:
            label = 1 if self._fault_active else 0
        values = np.array(out, dtype=np.float64)
        values.flags.writeable = False
        self._index = i + 1
        return SimReading(i, i / cfg.rate_hz, values, label)

    def _begin_urgent(self, code: int, r: list[float]) -> None:
        lo, hi = self._config.urgent_duration
        self._urgent = code
        self._urgent_left = min(hi, lo + int(r[14] * (hi - lo + 1)))
        base, span = _OVERHEAT if code == _OVERHEAT_CODE else _SPIKE
        self._urgent_level = base + span * r[13]

    def _apply_drifts(self, i: int, out: list[float], r: list[float]) -> None:
        for n, (start, k, op, value) in enumerate(self._drifts):
            if i < start:
                break  # sorted by start
            if op == 0:
                out[k] += value
            elif op == 1:
                out[k] += value * r[k]
            else:
                if i == start:
                    self._held[n] = out[k]
                out[k] = self._held[n]
