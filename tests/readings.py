"""Counting what the hub stored, reading by reading, through its API (the fault tests' proof)."""

from __future__ import annotations

from simulators.harness import HubProcess


def count_readings(hub: HubProcess, device: str) -> int:
    """A device's stored readings through the telemetry API, page by page."""
    total, cursor = 0, ""
    for _ in range(1000):
        path = f"/v1/devices/{device}/telemetry?limit=1000" + (
            f"&cursor={cursor}" if cursor else ""
        )
        page = hub.api.get_json(path)
        total += len(page["readings"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return total
    raise AssertionError("telemetry pages never ended")
