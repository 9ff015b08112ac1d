"""The built-in source: a simulated industrial machine, paced in real time."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from edge_agent.sources.base import Reading, StopSignal
from shared.columns import resolve_columns
from shared.errors import ConfigError

if TYPE_CHECKING:  # the machine is handed in; only the factory that picks it imports it
    from simulators.machine import SimulatedMachine

__all__ = ["SimulatedSource"]


class SimulatedSource:
    """Readings of a :class:`~simulators.machine.SimulatedMachine` at ``rate_hz``.

    The machine object is shared with the ``machine`` actuator, which can stop
    it: that is how a local action shows up in the next reading. Pacing uses a
    fixed schedule (not sleep-after-work), so the rate does not drift.
    """

    def __init__(
        self,
        machine: SimulatedMachine,
        rate_hz: float,
        realtime: bool = True,
        restart_after_s: float = 0.0,
        sensors: Sequence[str] | None = None,
    ) -> None:
        """``sensors``: the model's sensors, found by name among the machine's
        (:data:`simulators.sensors.SENSOR_NAMES`); None takes the machine's as they are."""
        from simulators.sensors import SENSOR_NAMES  # noqa: PLC0415

        self._order: list[int] | None = None
        if sensors is not None and tuple(sensors) != SENSOR_NAMES:
            try:
                self._order, _ = resolve_columns(
                    sensors, SENSOR_NAMES, where="the simulated machine"
                )
            except ValueError as exc:
                raise ConfigError(
                    f"{exc}. The simulated machine runs only models trained on its own sensors; "
                    "feed this model its recordings with --source csv",
                    setting="source",
                ) from None
        self.machine = machine
        self.rate_hz = rate_hz
        self.realtime = realtime
        self.restart_after_s = restart_after_s
        """Like an operator after a repair, start a stopped machine again after this long (0: never)."""
        self.invalid: dict[str, int] = {}

    def readings(self, stop: StopSignal) -> Iterator[Reading]:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        stopped_since: float | None = None
        while not stop.is_set():
            if self.restart_after_s and self.machine.stopped:
                now = time.monotonic()
                stopped_since = stopped_since or now
                if now - stopped_since >= self.restart_after_s:
                    self.machine.start()
                    stopped_since = None
            if self.realtime:
                delay = next_at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                next_at = max(next_at + period, time.monotonic() - period)
            r = self.machine.step()
            yield Reading(time.time(), r.values if self._order is None else r.values[self._order])
