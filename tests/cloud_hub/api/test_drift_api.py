"""GET /v1/drift, GET /v1/devices/{d}/drift and GET /v1/events?kind=drift on a real server."""

from __future__ import annotations

import pytest

from cloud_hub.pipeline.build import DEFAULT_VERSION
from tests.cloud_hub.api.conftest import Hub

pytestmark = pytest.mark.timeout(30)


def test_fleet_drift_per_model_version(hub: Hub) -> None:
    body = hub.read.get_json("/v1/drift")
    [v] = body["versions"]
    assert (v["model"], v["version"], v["devices"]) == ("machine-edge", DEFAULT_VERSION, 2)
    assert v["states"] == {"ok": 1, "drifting": 1, "recovered": 0}
    assert v["drifting"] == ["pi-online"]
    # Ranked by the mean PSI of the devices' last windows: temperature first.
    assert [s["stream"] for s in v["streams"]] == ["temperature_last", "speed_last"]
    assert v["streams"][0]["mean_psi"] == pytest.approx(0.25)
    assert v["streams"][0]["max_psi"] == pytest.approx(0.4)
    # pi-online drifts on temperature:level: counted on the channel and on its feature.
    assert v["channels"] == {"temperature:level": 1}
    assert [s["drifting_devices"] for s in v["streams"]] == [1, 0]
    alarm = v["fleet_alarm"]
    assert alarm["devices"] == ["pi-online"] and alarm["streams"] == ["temperature:level"]
    assert alarm["share"] == 0.5 and alarm["active_devices"] == 2


def test_one_devices_drift_and_windows(hub: Hub) -> None:
    body = hub.read.get_json("/v1/devices/pi-online/drift")
    [v] = body["versions"]
    assert v["state"] == "drifting" and list(v["streams"]) == ["temperature:level"]
    [w] = body["windows"]
    assert w["readings"] == 300 and w["psi"]["temperature_last"] == 0.4
    assert w["statistic"] == {"temperature:level": 1.3} and w["disagreement"] == 0.1
    assert hub.read.get_json("/v1/devices/pi-new/drift") == {
        "device": "pi-new",
        "versions": [],
        "windows": [],
    }
    missing = hub.read.get("/v1/devices/nobody/drift")
    assert missing.status == 404 and "nobody" in missing.body.decode()
    bad = hub.read.get("/v1/devices/pi-online/drift?limit=0")
    assert bad.status == 422


def test_drift_events_through_the_events_route(hub: Hub) -> None:
    body = hub.read.get_json("/v1/events?kind=drift")
    assert body["kind"] == "drift" and body["count"] == 2
    device, fleet = body["events"]
    assert (device["scope"], device["device"], device["state"]) == (
        "device",
        "pi-online",
        "drifting",
    )
    assert (fleet["scope"], fleet["device"]) == ("fleet", None)
    one = hub.read.get_json("/v1/events?kind=drift&device=pi-online")
    assert [e["scope"] for e in one["events"]] == ["device"]
    paged = hub.read.get_json("/v1/events?kind=drift&limit=1")
    assert paged["count"] == 1 and paged["next_cursor"]
    # The default stays the urgent events, as before.
    assert "kind" not in hub.read.get_json("/v1/events?limit=1")
    assert hub.read.get("/v1/events?kind=weather").status == 422
