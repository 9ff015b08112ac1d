"""Devices, telemetry, events and ingest statistics, read back from a real store."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest

from cloud_hub.pipeline.build import DEFAULT_VERSION
from tests.cloud_hub.api.conftest import MAX_PAGE, STALE_AFTER_S, T0, Hub

pytestmark = pytest.mark.timeout(30)


def _devices(hub: Hub) -> dict[str, dict[str, Any]]:
    reply = hub.read.get("/v1/devices")
    assert reply.status == 200, reply.body
    return {d["device"]: d for d in reply.json()["devices"]}


def test_device_list_derives_every_state(hub: Hub) -> None:
    body = hub.read.get("/v1/devices").json()
    devices = {d["device"]: d for d in body["devices"]}
    assert {k: v["state"] for k, v in devices.items()} == {
        "pi-new": "never_seen",
        "pi-off": "offline",
        "pi-online": "online",
        "pi-stale": "stale",
    }
    assert body["count"] == 4 and body["stale_after_s"] == STALE_AFTER_S
    assert body["states"] == {
        "online": 1,
        "degraded": 0,
        "buffering": 0,
        "offline": 1,
        "stale": 1,
        "never_seen": 1,
    }
    off = devices["pi-off"]
    assert off["state_reason"] == "its status said offline"
    assert off["state_since"] == pytest.approx(hub.seeded.now - 90)
    assert devices["pi-stale"]["state_reason"].startswith("silent for ")
    assert devices["pi-stale"]["state_since"] == pytest.approx(hub.seeded.now - 600 + STALE_AFTER_S)
    assert devices["pi-new"]["state_since"] is None
    online, stale, new = devices["pi-online"], devices["pi-stale"], devices["pi-new"]
    assert online["epoch"] == 2 and online["agent_version"] == "0.1.0"
    assert online["model_version"] == DEFAULT_VERSION and online["model"] == "machine-edge"
    assert stale["model"] == "machine-edge"  # every birth names its model (wire v2)
    assert online["silent_for_s"] < STALE_AFTER_S < stale["silent_for_s"]
    assert stale["last_seen"] == pytest.approx(hub.seeded.now - 600)
    assert new["last_seen"] is None and new["silent_for_s"] is None


def test_device_detail_has_counters_health_and_gaps(hub: Hub) -> None:
    body = hub.read.get("/v1/devices/pi-online").json()
    assert body["state"] == "online"
    assert body["counters"]["invalid:not_json"] == 3
    assert body["counters"]["duplicates"] == 2
    assert body["last_health"]["outbox_depth"] == 0
    assert body["last_health"]["dropped"] == {"outbox_full": 1}
    # Per sensor of the device's model (its birth named it), from the heartbeat's counters.
    assert list(body["inputs"]) == list(hub.seeded.edge.manifest.input.sensor_names)
    assert body["inputs"]["vibration"] == {
        "missing": 4,
        "out_of_range": 0,
        "out_of_distribution": 0,
    }
    assert body["inputs"]["temperature"] == {
        "missing": 0,
        "out_of_range": 1,
        "out_of_distribution": 7,
    }
    assert body["inputs"]["flow"] == {"missing": 0, "out_of_range": 0, "out_of_distribution": 0}
    assert body["acked_seq"] == 12  # seq 13 never arrived
    assert body["gaps"] == [
        {"device": "pi-online", "epoch": 2, "first_seq": 13, "last_seq": 13, "missing": 1}
    ]


def test_unknown_device_is_404_naming_it(hub: Hub) -> None:
    for path in ("/v1/devices/pi-nope", "/v1/devices/pi-nope/telemetry"):
        reply = hub.read.get(path)
        assert reply.status == 404
        assert "'pi-nope'" in reply.detail and "GET /v1/devices" in reply.detail
    reply = hub.read.get("/v1/events?device=pi-nope")
    assert reply.status == 404 and "'pi-nope'" in reply.detail


def _all_pages(hub: Hub, path: str, params: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        reply = hub.read.get(f"{path}?{urlencode(query)}")
        assert reply.status == 200, reply.body
        page = reply.json()
        assert page["count"] == len(page[key]) <= params.get("limit", MAX_PAGE)
        items.extend(page[key])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [7, 37, MAX_PAGE])
def test_telemetry_pages_return_every_reading_once_in_order(hub: Hub, limit: int) -> None:
    s = hub.seeded
    readings = _all_pages(hub, "/v1/devices/pi-online/telemetry", {"limit": limit}, "readings")
    assert len(readings) == len(s.ts)
    np.testing.assert_array_equal([r["ts"] for r in readings], s.ts)
    np.testing.assert_array_equal([r["seq"] for r in readings], s.seqs)
    # float32 values survive JSON exactly.
    got = np.array([r["features"] for r in readings], dtype=np.float32)
    np.testing.assert_array_equal(got, s.features)
    np.testing.assert_array_equal(
        np.array([r["edge_scores"] for r in readings], dtype=np.float32), s.edge_scores
    )
    np.testing.assert_array_equal(
        np.array([r["heavy_scores"] for r in readings], dtype=np.float32), s.heavy_scores
    )
    first = readings[0]
    assert first["edge_model_version"] == first["heavy_model_version"] == DEFAULT_VERSION
    assert first["epoch"] == 2


def test_telemetry_time_range_and_column_names(hub: Hub) -> None:
    s = hub.seeded
    since, until = float(s.ts[10]), float(s.ts[60])
    for limit in (1, 13):
        params = {"since": since, "until": until, "limit": limit}
        readings = _all_pages(hub, "/v1/devices/pi-online/telemetry", params, "readings")
        np.testing.assert_array_equal([r["ts"] for r in readings], s.ts[10:60])
    page = hub.read.get("/v1/devices/pi-online/telemetry?limit=5").json()
    manifest = s.edge.manifest
    # rig-edge reads as many features: the device's birth named machine-edge.
    assert page["feature_names"] == list(manifest.input.features)
    assert page["classes"] == list(manifest.output.classes)
    assert page["until"] is None and page["next_cursor"] is not None
    empty = hub.read.get(f"/v1/devices/pi-online/telemetry?since={T0 + 1e6}").json()
    assert empty["readings"] == [] and empty["next_cursor"] is None


def _iso(ts: float, offset_h: int | None = 0) -> str:
    """``ts`` as ISO 8601 with a UTC offset of ``offset_h`` hours (None: naive, in UTC)."""
    if offset_h is None:
        return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat()
    return datetime.fromtimestamp(ts, timezone(timedelta(hours=offset_h))).isoformat()


@pytest.mark.parametrize(
    "form",
    [
        lambda ts: _iso(ts).replace("+00:00", "Z"),
        lambda ts: _iso(ts, 2),
        lambda ts: _iso(ts, -5),
        lambda ts: _iso(ts, None),
    ],
    ids=["Z", "plus-2h", "minus-5h", "naive-is-utc"],
)
def test_since_and_until_take_iso_8601_as_well_as_unix_seconds(hub: Hub, form: Any) -> None:
    s = hub.seeded
    since, until = float(s.ts[10]), float(s.ts[60])
    for path, key in (("/v1/devices/pi-online/telemetry", "readings"), ("/v1/events", "events")):
        unix = hub.read.get(f"{path}?{urlencode({'since': since, 'until': until})}").json()
        iso = {"since": form(since), "until": form(until)}
        reply = hub.read.get(f"{path}?{urlencode(iso)}")
        assert reply.status == 200, (iso, reply.body)
        body = reply.json()
        assert body[key] == unix[key], iso
        if key == "readings":  # the telemetry page says how it read the range
            assert body["since"] == since and body["until"] == until


def test_a_date_alone_is_its_midnight_utc(hub: Hub) -> None:
    day = datetime.fromtimestamp(T0, UTC).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    body = hub.read.get(f"/v1/devices/pi-online/telemetry?since={day.isoformat()}").json()
    assert body["since"] == midnight


def test_a_time_that_is_neither_form_says_which_forms_it_takes(hub: Hub) -> None:
    reply = hub.read.get("/v1/events?until=next+tuesday")
    assert reply.status == 422
    assert "query parameter 'until'" in reply.detail and "'next tuesday'" in reply.detail
    assert "Unix seconds" in reply.detail and "ISO 8601" in reply.detail, reply.detail


def test_openapi_says_since_and_until_take_iso_8601(hub: Hub) -> None:
    spec = hub.anon.get("/openapi.json").json()
    for path in ("/v1/devices/{device}/telemetry", "/v1/events"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        for name in ("since", "until"):
            text = params[name]["description"]
            assert "ISO 8601" in text and "Unix seconds" in text and "UTC" in text, text
            formats = {s.get("format") for s in params[name]["schema"]["anyOf"]}
            assert "date-time" in formats, params[name]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", "query parameter 'limit'"),
        (f"limit={MAX_PAGE + 1}", f"page size {MAX_PAGE}"),
        ("limit=many", "query parameter 'limit'"),
        ("since=yesterday", "query parameter 'since'"),
        ("since=nan", "query parameter 'since'"),
        ("until=inf", "query parameter 'until'"),
        (f"since={T0 + 5}&until={T0}", "must be before 'until'"),
        ("cursor=%21%21not-a-cursor", "query parameter 'cursor'"),
        ("cursor=AAAA", "query parameter 'cursor'"),
    ],
)
def test_bad_query_parameters_are_422_naming_them(hub: Hub, query: str, words: str) -> None:
    for path in ("/v1/devices/pi-online/telemetry", "/v1/events"):
        reply = hub.read.get(f"{path}?{query}")
        assert reply.status == 422, (path, query, reply.body)
        assert words in reply.detail, reply.detail
        assert reply.json()["errors"], reply.body


def test_bad_path_parameter_is_422(hub: Hub) -> None:
    reply = hub.read.get("/v1/devices/" + "d" * 200)
    assert reply.status == 422 and "path parameter 'device'" in reply.detail


def test_events_in_time_order_filtered_by_device_and_time(hub: Hub) -> None:
    events = _all_pages(hub, "/v1/events", {"limit": 1}, "events")
    assert [(e["device"], e["seq"]) for e in events] == [
        (e.device, e.seq) for e in hub.seeded.events
    ]
    assert events[0]["rule"] == "score" and events[0]["action_ok"] is True
    online = hub.read.get("/v1/events?device=pi-online").json()["events"]
    assert [e["seq"] for e in online] == [26, 27, 28]
    limit_event = online[1]
    assert limit_event["sensor"] == "temperature" and limit_event["value"] == 120.5
    window = hub.read.get(f"/v1/events?since={T0 + 12}&until={T0 + 25}").json()["events"]
    assert [(e["device"], e["seq"]) for e in window] == [("pi-off", 1), ("pi-online", 27)]


def test_events_newest_first_with_order_desc(hub: Hub) -> None:
    newest = _all_pages(hub, "/v1/events", {"limit": 1, "order": "desc"}, "events")
    assert [(e["device"], e["seq"]) for e in newest] == [
        (e.device, e.seq) for e in reversed(hub.seeded.events)
    ]
    online = hub.read.get("/v1/events?device=pi-online&order=desc&limit=2").json()
    assert [e["seq"] for e in online["events"]] == [28, 27] and online["next_cursor"]
    bad = hub.read.get("/v1/events?kind=drift&order=desc")
    assert bad.status == 422 and "order" in bad.body.decode()


def test_ingest_stats_count_everything(hub: Hub) -> None:
    body = hub.read.get("/v1/stats/ingest").json()
    assert body["received"] == 47
    assert body["stored_messages"] == 28
    assert body["stored_readings"] == len(hub.seeded.ts)
    assert body["duplicates"] == 2
    assert body["invalid"] == {"not_json": 3, "wrong_type": 1}
    assert body["invalid_total"] == 4
    assert body["dropped"] == {"hub_queue_full": 4}
    assert body["gaps"]["count"] == 1 and body["gaps"]["missing_seqs"] == 1
    assert body["gaps"]["ranges"][0]["first_seq"] == 13
    assert body["live"] == {"queue_depth": 0, "running": True}


def test_dead_letters_show_payload_heads_exactly(hub: Hub) -> None:
    body = hub.admin.get("/v1/dead-letters?limit=10").json()
    assert body["count"] == 1
    letter = body["dead_letters"][0]
    assert letter["reason"] == "not_json" and letter["device"] == "pi-online"
    assert base64.b64decode(letter["payload_head_base64"]) == b"\xff\xfenot json"
    assert letter["payload_head"].endswith("not json")
    assert hub.admin.get("/v1/dead-letters?device=pi-off").json()["count"] == 0
    reply = hub.admin.get("/v1/dead-letters?limit=100000")
    assert reply.status == 422 and "query parameter 'limit'" in reply.detail


def test_unknown_route_and_method_say_what_to_do(hub: Hub) -> None:
    reply = hub.read.get("/v1/nothing-here")
    assert reply.status == 404 and "/docs" in reply.detail
    reply = hub.read.request("DELETE", "/v1/devices")
    assert reply.status == 405 and "GET" in reply.detail


def test_a_devices_baseline_is_the_file_its_agent_reads(hub: Hub) -> None:
    from shared.baseline import Baseline  # noqa: PLC0415

    reply = hub.read.get("/v1/devices/pi-online/baseline")
    assert reply.status == 200, reply.body
    baseline = Baseline.from_dict(reply.json(), "the served baseline")
    assert (baseline.device, baseline.model) == ("pi-online", hub.seeded.edge.manifest.name)
    assert baseline.readings == len(hub.seeded.ts)
    assert (baseline.since, baseline.until) == (hub.seeded.ts.min(), hub.seeded.ts.max())
    none_yet = hub.read.get("/v1/devices/pi-new/baseline")
    assert none_yet.status == 404 and "edgeloop-hub devices baseline pi-new" in none_yet.detail
    unknown = hub.read.get("/v1/devices/pi-nope/baseline")
    assert unknown.status == 404 and "unknown to this hub" in unknown.detail


def test_device_state_changes_are_events_with_reasons(hub: Hub) -> None:
    first = hub.read.get("/v1/events?kind=device_state&limit=1").json()
    assert first["count"] == 1 and first["next_cursor"] is not None
    event = first["events"][0]
    assert (event["kind"], event["device"], event["previous"], event["state"]) == (
        "device_state",
        "pi-off",
        "never_seen",
        "online",
    )
    rest = hub.read.get(f"/v1/events?kind=device_state&cursor={first['next_cursor']}").json()
    assert [(e["state"], e["reason"]) for e in rest["events"]] == [
        ("offline", "its status said offline")
    ]
    assert rest["next_cursor"] is None
    assert hub.read.get("/v1/events?kind=device_state&device=pi-online").json()["events"] == []
    assert hub.read.get("/v1/events?kind=device_state&cursor=bad").status == 422
