"""Generated recordings of a test rig whose sensors are not the simulator's (for
training tests and ``edgeloop-sim bench urgent``).

Four sensors, other names and units than the simulated machine's, in a CSV
separated by ';' with an ISO ``datetime`` column: a vibration RMS in g, a flow
in m3/h, a motor current in A and an inlet temperature in degC, all driven by
one slowly varying load. Faults: ``alarm`` (vibration and temperature up) and
``warn`` (flow down), in windows spread over the whole recording.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALARM_SHIFT",
    "SENSORS",
    "START",
    "UNITS",
    "apply_labels",
    "labels_for",
    "rig_values",
    "write_rig_csv",
]

SENSORS = ("vib_rms", "flow_m3h", "motor_current", "temp_in")
UNITS = {"vib_rms": "g", "flow_m3h": "m3/h", "motor_current": "A", "temp_in": "degC"}
START = datetime(2025, 3, 1, tzinfo=UTC)
ALARM_SHIFT = np.array([0.25, 0.0, 0.0, 9.0])
"""What an ``alarm`` adds to the readings: vibration and temperature up."""


def rig_values(n: int, seed: int) -> npt.NDArray[np.float64]:
    """``n`` normal readings (rows) of the four sensors."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 0.5 + 0.3 * np.sin(2 * np.pi * t / 700.0) + 0.05 * rng.standard_normal(n)
    return np.column_stack(
        [
            0.20 + 0.10 * load + 0.01 * rng.standard_normal(n),
            40.0 + 20.0 * load + 0.5 * rng.standard_normal(n),
            8.0 + 6.0 * load + 0.2 * rng.standard_normal(n),
            35.0 + 8.0 * load + 0.3 * rng.standard_normal(n),
        ]
    )


def labels_for(n: int, every: int = 400, length: int = 40) -> list[str]:
    """``alarm`` and ``warn`` windows, alternating, every ``every`` readings."""
    out = ["ok"] * n
    for k, start in enumerate(range(every // 2, n - length, every)):
        for i in range(start, start + length):
            out[i] = "alarm" if k % 2 == 0 else "warn"
    return out


def apply_labels(values: npt.NDArray[np.float64], labels: list[str]) -> npt.NDArray[np.float64]:
    """The readings with each labelled fault's effect."""
    out = values.copy()
    for i, label in enumerate(labels):
        if label == "alarm":
            out[i] += ALARM_SHIFT
        elif label == "warn":
            out[i, 1] -= 12.0
    return out


def write_rig_csv(
    path: Path,
    values: npt.NDArray[np.float64],
    labels: list[str] | None = None,
    *,
    step_s: float = 1.0,
    sep: str = ";",
) -> Path:
    """Write readings as CSV: ``datetime`` (ISO), the sensors, and ``state`` when labelled."""
    header = ["datetime", *SENSORS] + (["state"] if labels is not None else [])
    lines = [sep.join(header)]
    for i, row in enumerate(values.tolist()):
        ts = (START + timedelta(seconds=i * step_s)).isoformat().replace("+00:00", "Z")
        cells = [ts, *(f"{v:.5g}" for v in row)]
        if labels is not None:
            cells.append(labels[i])
        lines.append(sep.join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path
