"""The hub's Prometheus metrics (``GET /metrics``), read from what the hub already keeps.

:class:`HubMetrics` holds one :class:`~prometheus_client.registry.CollectorRegistry`
of its own (never the library's global one), made when the hub starts, with:

- :class:`HubCollector`, which reads the hub's own sources at scrape time and
  keeps no figures itself: the store's counter table (ingest totals, which
  survive restarts), the ingest worker's ``stats()`` and the link's queue, the
  devices (their state as ``GET /v1/devices`` derives it), the drift states,
  the rollouts and the pipeline runs. Nothing is counted twice: every figure
  has one source, and the API's JSON reads the same ones;
- three instruments that only exist here: the ingest batch duration histogram
  (observed by the ingest worker after each batch), and the API requests counter
  and request duration histogram (both observed by :class:`RequestCounter`, by
  route template, never the raw path).

Labels are bounded: reasons and states come from fixed code sets, routes are
templates (``/v1/devices/{device}``), model versions are the registry's; no
label is per device. Names follow Prometheus conventions (``edgeloop_hub_``
prefix, units in the name, ``_total`` on counters).

Who may scrape is :class:`MetricsAccess`: the metrics token, the read or admin
token, or no token from a listed address (``--metrics-allow``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, get_args

from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from cloud_hub.store.base import Store

__all__ = [
    "BATCH_BUCKETS_S",
    "REQUEST_BUCKETS_S",
    "HubCollector",
    "HubMetrics",
    "HubSources",
    "MetricsAccess",
    "RequestCounter",
]

log = logging.getLogger(__name__)

BATCH_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Buckets of the ingest batch duration (a batch is up to 500 messages; its target is
tens of milliseconds)."""
REQUEST_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Buckets of an API request's duration: reads take milliseconds; a model upload or a
large batch of readings can take seconds."""
_RUN_LIMIT: Final = 100_000
"""Pipeline runs read per scrape at most (a run is hours of work: far more than any hub has)."""
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED: Final = "unmatched"
"""The route label of a request no route matched (a 404): never the raw path."""


@dataclass(frozen=True, slots=True)
class MetricsAccess:
    """Who may read ``/metrics`` besides the read and admin tokens."""

    token: str | None = field(default=None, repr=False)
    """The metrics token (``--metrics-token-file``): reads ``/metrics`` and nothing else."""
    allow: tuple[str, ...] = ()
    """Addresses and networks that may scrape without a token (``--metrics-allow``)."""

    def allows_address(self, host: str | None) -> bool:
        if host is None or not self.allow:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net) for net in self.allow)

    def is_token(self, token: str) -> bool:
        return self.token is not None and secrets.compare_digest(
            token.encode(), self.token.encode()
        )


@dataclass(slots=True)
class HubSources:
    """What :class:`HubCollector` reads; each part may be None (not running)."""

    store: Store
    stale_after_s: float
    worker: Any = None
    """The :class:`~cloud_hub.ingest.worker.IngestWorker` (``stats()``)."""
    link: Any = None
    """The :class:`~cloud_hub.ingest.transport.HubLink` (its ``queue``)."""
    version: str = "0+unknown"


def _labelled(kind: str, name: str, doc: str, label: str, counts: Mapping[str, float]) -> Metric:
    """A counter or gauge family with one sample per ``counts`` item, labelled ``label``."""
    family: CounterMetricFamily | GaugeMetricFamily
    if kind == "counter":
        family = CounterMetricFamily(name, doc, labels=[label])
    else:
        family = GaugeMetricFamily(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


def _group(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


class HubCollector(Collector):
    """Reads the hub's sources at each scrape. A source that fails is logged and
    counted (``edgeloop_hub_metrics_source_errors_total``); the others still answer."""

    def __init__(self, sources: HubSources) -> None:
        self.sources = sources
        self._errors: Counter[str] = Counter()

    def collect(self) -> Iterator[Metric]:
        for name, part in (
            ("counters", self._ingest_totals),
            ("worker", self._worker),
            ("queue", self._queue),
            ("devices", self._devices),
            ("drift", self._drift),
            ("rollouts", self._rollouts),
            ("pipeline", self._pipeline),
        ):
            try:
                families = list(part())
            except Exception:  # a scrape must never take the API down
                log.exception("metrics: reading the %s failed; left out of this scrape", name)
                self._errors[name] += 1
                continue
            yield from families
        yield _labelled(
            "counter",
            "edgeloop_hub_metrics_source_errors_total",
            "Scrapes that left out a source because reading it failed, by source.",
            "source",
            self._errors,
        )
        info = GaugeMetricFamily(
            "edgeloop_hub_info", "The hub's version (value 1).", labels=["version"]
        )
        info.add_metric([self.sources.version], 1)
        yield info

    def _ingest_totals(self) -> Iterator[Metric]:
        c = self.sources.store.counters()
        for name, key, doc in (
            ("received_messages", "received", "MQTT messages ingest took off its queue."),
            ("stored_messages", "stored_messages", "Telemetry messages stored."),
            ("stored_readings", "stored_readings", "Readings stored."),
            ("stored_events", "stored_events", "Urgent events stored."),
            ("duplicate_messages", "duplicates", "Stream messages already stored (resends)."),
            ("dead_letters", "dead_letters", "Messages kept as dead letters (admin reads them)."),
            ("errors", "ingest_errors", "Internal errors of ingest (each logged)."),
        ):
            yield CounterMetricFamily(f"edgeloop_hub_ingest_{name}_total", doc, c.get(key, 0))
        for name, prefix, doc in (
            ("invalid_messages", "invalid:", "Messages refused as invalid, by reason."),
            ("dropped_messages", "dropped:", "Valid messages lost at the hub, by reason."),
            ("refused_readings", "refused_readings:", "Readings refused, by reason."),
            (
                "lost_readings",
                "lost_at_edge_readings:",
                "Readings devices declared lost before sending, by reason.",
            ),
        ):
            yield _labelled(
                "counter", f"edgeloop_hub_ingest_{name}_total", doc, "reason", _group(c, prefix)
            )
        yield _labelled(
            "counter",
            "edgeloop_hub_device_state_changes_total",
            "Device state changes the hub recorded, by the state entered "
            "(GET /v1/events?kind=device_state has each with its reason).",
            "state",
            _group(c, "device_state:"),
        )
        lost = _group(c, "lost_at_edge_messages:")
        lost["unexplained"] = c.get("lost_unexplained_messages", 0)
        yield _labelled(
            "counter",
            "edgeloop_hub_ingest_lost_messages_total",
            "Messages lost, by reason: declared by devices, or 'unexplained' (a gap never "
            "filled nor declared).",
            "reason",
            lost,
        )

    def _worker(self) -> Iterator[Metric]:
        worker = self.sources.worker
        if worker is None:
            return
        s = worker.stats()
        yield GaugeMetricFamily(
            "edgeloop_hub_ingest_running", "1 while the ingest worker runs.", int(s.running)
        )
        yield CounterMetricFamily(
            "edgeloop_hub_ingest_acks_sent_total",
            "Acks published since the hub started.",
            s.acks_sent,
        )
        yield CounterMetricFamily(
            "edgeloop_hub_ingest_batches_total", "Batches handled since the hub started.", s.batches
        )
        latency = GaugeMetricFamily(
            "edgeloop_hub_ingest_latency_seconds",
            "Received by the link to committed, over the last 4096 batches, by quantile.",
            labels=["quantile"],
        )
        latency.add_metric(["0.5"], s.latency_p50_ms / 1000.0)
        latency.add_metric(["0.99"], s.latency_p99_ms / 1000.0)
        yield latency

    def _queue(self) -> Iterator[Metric]:
        link = self.sources.link
        if link is None:
            return
        q = link.queue
        yield GaugeMetricFamily(
            "edgeloop_hub_ingest_queue_messages", "Messages waiting for ingest.", q.qsize()
        )
        yield GaugeMetricFamily(
            "edgeloop_hub_ingest_queue_bytes", "Payload bytes waiting for ingest.", q.bytes
        )
        yield GaugeMetricFamily(
            "edgeloop_hub_ingest_queue_max_messages",
            "The queue's bound in messages (--ingest-queue-max).",
            q.maxsize,
        )
        yield GaugeMetricFamily(
            "edgeloop_hub_ingest_queue_max_bytes",
            "The queue's bound in bytes (--ingest-queue-max-bytes).",
            q.max_bytes,
        )

    def _devices(self) -> Iterator[Metric]:
        from cloud_hub.devices.states import count_states, shown  # noqa: PLC0415

        # As GET /v1/devices: every state listed, zeros too, so a state added there
        # appears here with no change.
        now = time.time()
        stale = self.sources.stale_after_s
        states = count_states(shown(r, now, stale).state for r in self.sources.store.devices())
        yield _labelled(
            "gauge",
            "edgeloop_hub_devices",
            "Devices by state, as GET /v1/devices shows them.",
            "state",
            states,
        )

    def _drift(self) -> Iterator[Metric]:
        from cloud_hub.drift.states import DriftState  # noqa: PLC0415

        counts: Counter[tuple[str, str, str]] = Counter()
        versions: set[tuple[str, str]] = set()
        for row in self.sources.store.drift_states():
            counts[(row.model, row.version, row.state)] += 1
            versions.add((row.model, row.version))
        family = GaugeMetricFamily(
            "edgeloop_hub_drift_devices",
            "Devices by drift state, per model version.",
            labels=["model", "version", "state"],
        )
        for model, version in sorted(versions):
            for state in DriftState:
                family.add_metric([model, version, state.value], counts[(model, version, state)])
        yield family

    def _rollouts(self) -> Iterator[Metric]:
        from cloud_hub.ota.rollout import DeviceState as RolloutDevice  # noqa: PLC0415
        from cloud_hub.ota.rollout import RolloutState  # noqa: PLC0415

        states: Counter[str] = Counter(dict.fromkeys((s.value for s in RolloutState), 0))
        devices: Counter[str] = Counter(dict.fromkeys((s.value for s in RolloutDevice), 0))
        active = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)
        for row in self.sources.store.rollouts():
            states[row.state] += 1
            if row.state in active:
                devices.update(json.loads(row.body).get("devices", {}).values())
        yield _labelled("gauge", "edgeloop_hub_rollouts", "Rollouts by state.", "state", states)
        yield _labelled(
            "gauge",
            "edgeloop_hub_rollout_devices",
            "Devices of running and paused rollouts, by their state in the rollout.",
            "state",
            devices,
        )

    def _pipeline(self) -> Iterator[Metric]:
        from cloud_hub.retrain.runs import RunState  # noqa: PLC0415

        states: Counter[str] = Counter(dict.fromkeys(get_args(RunState), 0))
        states.update(r.state for r in self.sources.store.pipeline_runs(limit=_RUN_LIMIT))
        yield _labelled(
            "gauge",
            "edgeloop_hub_pipeline_runs",
            "Retraining pipeline runs recorded, by state.",
            "state",
            states,
        )


class HubMetrics:
    """The hub's registry and the instruments observed where things happen."""

    def __init__(self) -> None:
        # auto_describe off: registering the collector must not scrape the hub.
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_seconds = Histogram(
            "edgeloop_hub_ingest_batch_duration_seconds",
            "Time one ingest batch took: first message off the queue to committed and acked.",
            buckets=BATCH_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = PromCounter(
            "edgeloop_hub_http_requests",
            "HTTP API requests, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "edgeloop_hub_http_request_duration_seconds",
            "Time an HTTP API request took, by method and route template: received to "
            "its response sent.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self.collector: HubCollector | None = None

    def observe_batch(self, seconds: float) -> None:
        self.batch_seconds.observe(seconds)

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        """One API request (:class:`RequestCounter`): counted and timed."""
        self.requests.labels(method, route, status).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def read_from(self, sources: HubSources) -> None:
        """Register the collector of ``sources`` (once)."""
        if self.collector is not None:
            raise RuntimeError("HubMetrics.read_from: already reading from a hub")
        self.collector = HubCollector(sources)
        self.registry.register(self.collector)


class RequestCounter:
    """ASGI middleware: counts and times each HTTP request (``observe(method, route,
    status, seconds)``, seconds from the request's arrival to its response sent).

    The template is the matched route's (``/v1/devices/{device}``); a request
    refused before routing (a middleware's 401) is matched against the app's
    routes here; one matching none is ``unmatched``.
    """

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, str, float], object]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.observe(method, _route(scope), str(status), time.perf_counter() - start)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    from starlette.routing import Match  # noqa: PLC0415

    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
    return UNMATCHED
