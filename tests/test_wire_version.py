"""A real hub (``edgeloop-hub serve``, embedded broker) and an agent of an older wire schema.

The hub reads schema v2 only (:data:`shared.messages.SCHEMA_VERSION`). A v1 telemetry
payload, published raw as a v1 agent would, is refused with reason ``unknown_version``:
counted for its device, dead-lettered with an error saying which side to upgrade, nothing
stored; the hub goes on and stores the device's next (v2) message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.messages import SCHEMA_VERSION, encode
from shared.topics import Kind, Topics
from simulators.harness import ApiError, HubProcess
from tests.cloud_hub.ingest.conftest import telemetry
from tests.cloud_hub.test_broker import Probe, device_of
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)

DEVICE = "dev-old"
T = Topics()
WAIT = 30.0
# What a v1 agent sent: no model name, "v": 1.
V1_TELEMETRY = (
    b'{"v":1,"device":"dev-old","epoch":1,"seq":1,"model_version":"1.0.0",'
    b'"ts":[1700000010.0],"features":[[0.5,1.5]],"scores":[[0.9,0.1]]}'
)


@pytest.fixture
def hub_and_device(
    tmp_path: Path, model_packages: ModelPaths
) -> Iterator[tuple[HubProcess, Probe]]:
    hub = HubProcess(tmp_path / "hub", model_packages.edge.parent.parent, log_level="INFO")
    with hub, device_of(hub, DEVICE, T) as device:
        yield hub, device


def _counters(hub: HubProcess) -> dict[str, Any]:
    try:
        detail = hub.api.get_json(f"/v1/devices/{DEVICE}")
    except ApiError as exc:
        if exc.status == 404:
            return {}
        raise
    return dict(detail["counters"])


def _ingest(hub: HubProcess) -> dict[str, Any]:
    return dict(hub.api.get_json("/v1/stats/ingest"))


def test_a_v1_message_is_refused_counted_and_dead_lettered_and_v2_goes_on(
    hub_and_device: tuple[HubProcess, Probe],
) -> None:
    assert SCHEMA_VERSION == 2
    hub, device = hub_and_device
    device.publish(T.topic(DEVICE, Kind.TELEMETRY), V1_TELEMETRY)
    hub.wait_until(
        "the v1 message counted",
        lambda: _ingest(hub)["invalid"].get("unknown_version") == 1,
        timeout=WAIT,
    )
    assert _ingest(hub)["stored_readings"] == 0
    letters = hub.admin_api.get_json(f"/v1/dead-letters?device={DEVICE}")["dead_letters"]
    [letter] = letters
    assert letter["reason"] == "unknown_version"
    assert "this hub reads v=2; the agent speaks v=1: upgrade the agent" in letter["error"]

    # The hub goes on: the same device's v2 telemetry (seq 1 again) is stored and named.
    fresh = telemetry(DEVICE, 1)
    device.publish(T.topic(DEVICE, Kind.TELEMETRY), encode(fresh))
    hub.wait_until(
        "the v2 message stored",
        lambda: _counters(hub).get("stored_readings") == len(fresh),
        timeout=WAIT,
    )
    assert _counters(hub)["invalid:unknown_version"] == 1  # counted for the device
    assert _ingest(hub)["invalid"] == {"unknown_version": 1}
    readings = hub.api.get_json(f"/v1/devices/{DEVICE}/telemetry")["readings"]
    assert len(readings) == len(fresh)
    assert {r["edge_model_version"] for r in readings} == {"1.0.0"}
    assert all(r["heavy_scores"] for r in readings)  # its heavy partner found by name
