"""``GET /metrics`` of a real hub (``edgeloop-hub serve``, embedded broker), its access
rules, its JSON log lines, and the deploy/ files that scrape and chart it.

One hub serves the module: a device (a raw MQTT client) publishes telemetry and a
payload that is not JSON, and the scrape, parsed with prometheus-client's own
parser, follows: received, stored, invalid by reason, dead letters, the batch
histogram, API requests by route template (counted and timed).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.messages import encode
from shared.secret_file import write_private
from shared.topics import Kind, Topics
from simulators.harness import HubProcess
from tests.cloud_hub.ingest.conftest import telemetry
from tests.cloud_hub.test_broker import Probe, device_of
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)

DEVICE = "dev-metrics"
T = Topics()
WAIT = 30.0
REPO = Path(__file__).resolve().parent.parent
METRICS_TOKEN = secrets.token_hex(20)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths
) -> Iterator[tuple[HubProcess, Probe]]:
    tmp = tmp_path_factory.mktemp("metrics")
    token_file = tmp / "metrics-token"
    write_private(token_file, METRICS_TOKEN + "\n")
    hub = HubProcess(
        tmp / "hub",
        model_packages.edge.parent.parent,
        log_level="INFO",
        # 192.0.2.0/24 is TEST-NET-1: listed, yet never this test's address.
        args=[
            "--metrics-token-file",
            str(token_file),
            "--metrics-allow",
            "192.0.2.0/24",
            "--log-format",
            "json",
        ],
    )
    with hub, device_of(hub, DEVICE, T) as device:
        yield hub, device


def _scrape_text(hub: HubProcess, token: str | None = METRICS_TOKEN) -> str:
    reply = hub.api.with_token(token).get("/metrics")
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"].startswith("text/plain")
    return reply.body.decode()


def _samples(hub: HubProcess) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(_scrape_text(hub)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_as_telemetry_flows(hub: tuple[HubProcess, Probe]) -> None:
    hub_proc, device = hub
    before = _samples(hub_proc)
    n_readings = 0
    for seq in (1, 2, 3):
        msg = telemetry(DEVICE, seq)
        n_readings += len(msg)
        device.publish(T.topic(DEVICE, Kind.TELEMETRY), encode(msg))
    device.publish(T.topic(DEVICE, Kind.TELEMETRY), b"this is not json")

    def stored() -> bool:
        now = _samples(hub_proc)
        return _value(now, "edgeloop_hub_ingest_stored_messages_total") - _value(
            before, "edgeloop_hub_ingest_stored_messages_total"
        ) == 3 and _value(now, "edgeloop_hub_ingest_dead_letters_total") > _value(
            before, "edgeloop_hub_ingest_dead_letters_total"
        )

    hub_proc.wait_until("the telemetry stored and the bad payload counted", stored, timeout=WAIT)
    after = _samples(hub_proc)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("edgeloop_hub_ingest_received_messages_total") == 4
    assert delta("edgeloop_hub_ingest_stored_readings_total") == n_readings
    assert delta("edgeloop_hub_ingest_invalid_messages_total", reason="not_json") == 1
    assert delta("edgeloop_hub_ingest_dead_letters_total") == 1
    assert delta("edgeloop_hub_ingest_batch_duration_seconds_count") >= 1
    assert delta("edgeloop_hub_ingest_batches_total") >= 1
    assert _value(after, "edgeloop_hub_ingest_running") == 1
    assert _value(after, "edgeloop_hub_ingest_queue_max_messages") > 0
    # The API's figures are the same ones.
    stats = hub_proc.api.get_json("/v1/stats/ingest")
    assert _value(after, "edgeloop_hub_ingest_stored_readings_total") == stats["stored_readings"]
    devices = hub_proc.api.get_json("/v1/devices")
    for state, count in devices["states"].items():
        assert _value(after, "edgeloop_hub_devices", state=state) == count
    assert _value(after, "edgeloop_hub_info", version="0.1.0") == 1


def test_api_requests_are_counted_by_route_template(hub: tuple[HubProcess, Probe]) -> None:
    hub_proc, _ = hub
    for _ in range(2):
        assert hub_proc.api.get(f"/v1/devices/{DEVICE}").status in (200, 404)
    assert hub_proc.api.with_token(None).get("/v1/devices").status == 401
    assert hub_proc.api.get("/no/such/route/dev-secret-path").status == 404
    text = _scrape_text(hub_proc)
    samples = _samples(hub_proc)
    routes = {dict(labels).get("route") for (name, labels) in samples if "http_requests" in name}
    assert "/v1/devices/{device}" in routes
    assert "unmatched" in routes
    assert DEVICE not in text.split("edgeloop_hub_http_requests_total", 1)[1]
    assert "dev-secret-path" not in text
    assert _value(samples, "edgeloop_hub_http_requests_total", method="GET", route="/v1/devices", status="401") >= 1  # fmt: skip


def test_api_requests_are_timed_by_route_template(hub: tuple[HubProcess, Probe]) -> None:
    hub_proc, _ = hub
    name = "edgeloop_hub_http_request_duration_seconds"
    route = {"method": "GET", "route": "/v1/devices/{device}"}
    before = _samples(hub_proc)
    for _ in range(3):
        assert hub_proc.api.get(f"/v1/devices/{DEVICE}").status in (200, 404)
    families = {f.name: f for f in text_string_to_metric_families(_scrape_text(hub_proc))}
    assert families[name].type == "histogram"
    after = _samples(hub_proc)
    assert _value(after, f"{name}_count", **route) - _value(before, f"{name}_count", **route) == 3
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (n, labels), v in after.items()
        if n == f"{name}_bucket"
        and dict(labels)["route"] == route["route"]
        and dict(labels)["method"] == "GET"
    )
    assert buckets[-1] == (float("inf"), _value(after, f"{name}_count", **route))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert _value(after, f"{name}_sum", **route) > 0
    # Labelled by template: no device id, no raw path, no status among the labels.
    labels = {k for (n, ls) in after if n.startswith(name) for k, _ in ls}
    assert labels == {"method", "route", "le"}
    assert not any(DEVICE in str(ls) for (n, ls) in after if n.startswith(name))


def test_metrics_need_a_token_of_the_hub_or_a_listed_address(
    hub: tuple[HubProcess, Probe],
) -> None:
    hub_proc, _ = hub
    api = hub_proc.api
    for token in (METRICS_TOKEN, hub_proc.read_token, hub_proc.admin_token):
        assert api.with_token(token).get("/metrics").status == 200
    none = api.with_token(None).get("/metrics")
    assert none.status == 401 and "metrics token" in none.detail
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert api.with_token("x" * 32).get("/metrics").status == 401
    basic = api.with_token(None).get("/metrics", headers={"Authorization": "Basic eDp5"})
    assert basic.status == 401
    # The metrics token reads /metrics and nothing else, and the refusal says so (it
    # said only "not one of this hub's tokens", which the metrics token is).
    elsewhere = api.with_token(METRICS_TOKEN).get("/v1/devices")
    assert elsewhere.status == 401
    assert "the metrics token reads GET /metrics only" in elsewhere.detail


def test_json_log_lines_parse_and_hold_no_token(hub: tuple[HubProcess, Probe]) -> None:
    hub_proc, device = hub
    # A bad payload of its own: ingest's warning names the device, whatever ran before.
    device.publish(T.topic(DEVICE, Kind.TELEMETRY), b"not json either")

    def device_named() -> bool:
        return f'"device": "{DEVICE}"' in hub_proc.log_path.read_text(encoding="utf-8")

    hub_proc.wait_until("a log line that names the device", device_named, timeout=WAIT)
    text = hub_proc.log_path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    # Only the hub's announcement on stdout is not a log record.
    assert all(line.startswith(("{", "edgeloop hub: API")) for line in lines), lines[:5]
    assert len(parsed) >= 5
    for record in parsed:
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert any(r.get("device") == DEVICE for r in parsed), "ingest's lines name the device"
    for secret in (METRICS_TOKEN, hub_proc.read_token, hub_proc.admin_token):
        assert secret not in text


def _referenced_names() -> set[str]:
    names: set[str] = set()
    dashboard = json.loads((REPO / "deploy/grafana/edgeloop-hub.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names.update(re.findall(r"edgeloop_\w+", target["expr"]))
    names.update(
        re.findall(r"edgeloop_\w+", (REPO / "deploy/prometheus/prometheus.yml").read_text())
    )
    return {n for n in names if n.startswith("edgeloop_hub_")}


def test_every_metric_deploy_references_exists(hub: tuple[HubProcess, Probe]) -> None:
    hub_proc, _ = hub
    exposed: set[str] = set()
    for family in text_string_to_metric_families(_scrape_text(hub_proc)):
        # The parser gives a counter's family name without _total, a histogram's
        # without _bucket/_sum/_count: give back exactly the names a query may use.
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""),
        }.get(family.type, ("",))
        exposed.update(family.name + s for s in suffixes)
    referenced = _referenced_names()
    assert len(referenced) >= 15
    assert referenced <= exposed, sorted(referenced - exposed)
