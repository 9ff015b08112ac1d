"""Write a simulated machine's readings as CSV, in the format CSV replay reads.

Columns: ``ts`` (unix seconds), one per sensor (empty cell = dropout), and
``label`` (ground truth: normal, fault, urgent) for checking a model offline.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TextIO

from simulators.machine import CLASSES, MachineConfig, SimulatedMachine
from simulators.sensors import SENSOR_NAMES

__all__ = ["write_csv"]


def write_csv(
    out: TextIO | Path, config: MachineConfig, readings: int, start_ts: float = 1_763_700_000.0
) -> int:
    """Write ``readings`` rows of the machine ``config`` describes; returns the row count."""
    if isinstance(out, Path):
        with out.open("w", newline="", encoding="utf-8") as fh:
            return write_csv(fh, config, readings, start_ts)
    machine = SimulatedMachine(config)
    writer = csv.writer(out)
    writer.writerow(["ts", *SENSOR_NAMES, "label"])
    for r in machine.readings(readings):
        cells = ["" if math.isnan(v) else f"{v:.6g}" for v in r.values.tolist()]
        writer.writerow([f"{start_ts + r.sim_time:.3f}", *cells, CLASSES[r.label]])
    return readings
