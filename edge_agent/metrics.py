"""The agent's own ``/metrics`` (``--metrics-port N``): off by default.

When on, a small HTTP server of ``prometheus_client`` (its own WSGI server, on
a daemon thread) listens on 127.0.0.1 only and serves, in Prometheus text
format, the figures the heartbeat carries to the hub: readings, inference
latency, outbox depth, urgent events, drops and errors, memory. They are read
from the running agent at each scrape (:class:`AgentCollector`), in a registry
of its own: nothing is counted twice and nothing runs between scrapes.

``prometheus_client`` is imported only here, and this module only when the
port is set, so an agent without ``--metrics-port`` loads none of it. The
heartbeat (``shared.messages.Health``) is unchanged: the hub still gets the
essentials from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from edge_agent.stats import ProcessUsage
from shared import __version__

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["HOST", "AgentCollector", "MetricsServer", "start_metrics_server"]

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
"""The only address the endpoint listens on: a device's figures are for its own host."""
_COUNTER_KINDS: Final = {"resends": "resends"}
"""The agent's own counters that are not errors (``Counters`` names); the rest are errors."""


class AgentCollector(Collector):
    """Reads a running :class:`~edge_agent.agent.Agent` at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._usage = ProcessUsage()

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        info = GaugeMetricFamily(
            "edgeloop_agent_info",
            "The agent: its device, model, model version and agent version (value 1).",
            labels=["device", "model", "model_version", "agent_version"],
        )
        info.add_metric([a.device, a.model.manifest.name, a.model.version, __version__], 1)
        yield info
        yield CounterMetricFamily(
            "edgeloop_agent_readings_total", "Readings scored by the edge model.", a.readings
        )
        yield CounterMetricFamily(
            "edgeloop_agent_urgent_events_total",
            "Urgent events: readings the rules acted on at once.",
            a.events,
        )
        p50, p99 = a.latency.percentiles()
        latency = GaugeMetricFamily(
            "edgeloop_agent_inference_latency_seconds",
            "Reading-to-decision latency over the last 4096 readings, by quantile.",
            labels=["quantile"],
        )
        latency.add_metric(["0.5"], p50 / 1e6)
        latency.add_metric(["0.99"], p99 / 1e6)
        yield latency
        yield GaugeMetricFamily(
            "edgeloop_agent_outbox_messages",
            "Messages in the outbox not yet acked by the hub (staged ones included).",
            len(a.outbox),
        )
        dropped, invalid = a.drop_counts()
        yield _by_reason(
            "edgeloop_agent_dropped_total", "Readings or messages dropped, by reason.", dropped
        )
        yield _by_reason(
            "edgeloop_agent_invalid_total", "Invalid inputs or messages, by reason.", invalid
        )
        errors = CounterMetricFamily(
            "edgeloop_agent_errors_total",
            "Errors the agent counted, by kind (connect_failed, outbox_write_errors, ...).",
            labels=["kind"],
        )
        resends = 0
        for name, n in sorted(a.counters.snapshot().items()):
            if ":" in name:
                continue  # dropped:/invalid:, above
            if name in _COUNTER_KINDS:
                resends += n
            else:
                errors.add_metric([name], n)
        yield errors
        yield CounterMetricFamily(
            "edgeloop_agent_resends_total", "Times the outbox was sent again unacked.", resends
        )
        yield GaugeMetricFamily(
            "edgeloop_agent_resident_memory_bytes",
            "The agent process's resident memory.",
            self._usage.rss_bytes(),
        )
        yield CounterMetricFamily(
            "edgeloop_agent_cpu_seconds_total",
            "CPU time of the agent process, all threads.",
            time.process_time(),
        )


def _by_reason(name: str, doc: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, n in sorted(counts.items()):
        family.add_metric([reason], n)
    return family


class MetricsServer:
    """The running endpoint: its port, and :meth:`close`."""

    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(agent: Agent, port: int) -> MetricsServer:
    """Serve ``agent``'s figures on ``127.0.0.1:port`` (0: a free port) until :meth:`close`;
    OSError (port in use) is the caller's to report."""
    from prometheus_client.exposition import start_http_server  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    server, _thread = start_http_server(port, addr=HOST, registry=registry)
    return MetricsServer(server, int(server.server_address[1]))
