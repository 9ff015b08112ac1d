"""``edgeloop-sim bench flood``: the hub's memory under floods no stranger should be able to cost.

It starts its own embedded (amqtt) broker, in its own process, with accounts
``hub`` and one device, and the hub against it, on free loopback ports. It
samples the hub process's RSS every 20 ms (psutil) and runs, one after the
other:

    a  ``--http-clients`` parallel ``POST /v1/predict`` of ``--http-body-mb`` each,
       without a token: headers, then the whole body, then the answer (401);
    b  ``--messages`` telemetry payloads of ``--payload-kb`` KB from the device's
       account: under the hub's ``--max-payload-bytes`` (1 MiB), so each is
       queued and decoded, and refused as invalid (a JSON object with no readings);
    c  as many of ``--over-kb`` KB, over that limit: refused by the hub's link
       before they are queued or decoded;
    d  ``--invalid-messages`` small payloads that are not JSON.

Before the first phase the hub idles ``--settle-s`` and its RSS is the
baseline (median of a second of samples). For each phase: the peak RSS while
it ran (until the hub has answered or counted every request or message), and
the RSS ``--settle-s`` after it, each as MB over the baseline. The publisher
keeps at most 16 messages in flight (QoS 1), as a device would. The broker's
own peak RSS is reported too (amqtt holds what the hub has not read yet).

Each phase prints one line; the last line on stdout is one JSON object with
``baseline_mb`` and per phase ``peak_over_baseline_mb`` and
``after_over_baseline_mb``. Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shared.errors import EdgeloopError
from simulators.bench.arguments import add_dir_options, positive_float, positive_int
from simulators.bench.workdir import in_work_dir

if TYPE_CHECKING:
    from simulators.harness import AmqttBroker, HubProcess

__all__ = ["HELP", "add_arguments", "run"]

HELP: Final = (
    "the hub's RSS under an unauthenticated HTTP body flood and floods of large, oversized "
    "and invalid telemetry (own broker and hub on free ports)"
)

_MB: Final = 1_000_000
_DEVICE: Final = "flood-dev"
_SAMPLE_S: Final = 0.02
_INFLIGHT: Final = 16
_START_TIMEOUT_S: Final = 120.0


class FloodBenchError(EdgeloopError):
    """The benchmark could not bring something up or finish; the message says what."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``edgeloop-sim bench flood``."""
    parser.add_argument("--http-clients", type=positive_int, default=8, metavar="N")
    parser.add_argument("--http-body-mb", type=positive_int, default=40, metavar="MB")
    parser.add_argument(
        "--messages", type=positive_int, default=1500, metavar="N", help="per MQTT phase b and c"
    )
    parser.add_argument("--payload-kb", type=positive_int, default=870, metavar="KB")
    parser.add_argument("--over-kb", type=positive_int, default=1100, metavar="KB")
    parser.add_argument("--invalid-messages", type=positive_int, default=20_000, metavar="N")
    parser.add_argument(
        "--settle-s",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="idle time before the baseline and after each phase (default: 5)",
    )
    parser.add_argument(
        "--timeout-s", type=positive_float, default=600.0, metavar="S", help="per phase"
    )
    add_dir_options(parser, "the broker and hub files and logs")


class _Rss:
    """Samples a process's RSS in a thread; :meth:`peak` since the last :meth:`reset`."""

    def __init__(self, pid: int) -> None:
        import psutil  # noqa: PLC0415

        self._proc = psutil.Process(pid)
        self._lock = threading.Lock()
        self._peak = 0
        self._last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            try:
                rss = int(self._proc.memory_info().rss)
            except Exception:  # the process is gone: keep the last figures
                return
            with self._lock:
                self._last = rss
                self._peak = max(self._peak, rss)

    def now(self) -> int:
        with self._lock:
            return self._last

    def steady(self, seconds: float = 1.0) -> int:
        """The median of the samples over ``seconds``."""
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(self.now())
            time.sleep(_SAMPLE_S)
        return int(statistics.median(samples))

    def reset(self) -> None:
        with self._lock:
            self._peak = self._last

    def peak(self) -> int:
        with self._lock:
            return self._peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def _post_without_token(port: int, size: int) -> int:
    """One POST /v1/predict of ``size`` bytes, no token: the answer's status."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    block = b" " * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < size:
                n = min(len(block), size - sent)
                sock.sendall(block[:n])
                sent += n
        except OSError:
            pass  # the server may close once it has answered; the answer is still there
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                return 0
            answer += chunk
    return int(answer.split()[1])


def _http_phase(hub: HubProcess, args: argparse.Namespace) -> dict[str, Any]:
    size = args.http_body_mb * _MB
    with ThreadPoolExecutor(max_workers=args.http_clients) as pool:
        statuses = list(
            pool.map(lambda _: _post_without_token(hub.http_port, size), range(args.http_clients))
        )
    return {"requests": len(statuses), "answered_401": statuses.count(401)}


def _device_client(broker: AmqttBroker, password: str) -> Any:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=_DEVICE, protocol=mqtt.MQTTv311)
    client.username_pw_set(_DEVICE, password)
    client.max_inflight_messages_set(_INFLIGHT)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(30):
        client.loop_stop()
        raise FloodBenchError(f"bench flood: the device could not connect to {broker.version}")
    return client


def _publish_all(client: Any, topic: str, payloads: Any, count: int, timeout: float) -> None:
    """Publish ``count`` payloads at QoS 1, at most :data:`_INFLIGHT` unacknowledged."""
    window: list[Any] = []
    deadline = time.monotonic() + timeout
    for i in range(count):
        window.append(client.publish(topic, payloads(i), qos=1))
        while len(window) >= _INFLIGHT:
            window.pop(0).wait_for_publish(max(0.1, deadline - time.monotonic()))
    for info in window:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))


def _invalid_total(hub: HubProcess) -> int:
    stats: dict[str, Any] = hub.api.get_json("/v1/stats/ingest", timeout=30.0)
    return int(sum(stats.get("invalid", {}).values()))


def _mqtt_phase(
    hub: HubProcess, client: Any, topic: str, payloads: Any, *, count: int, timeout: float
) -> dict[str, Any]:
    before = _invalid_total(hub)
    _publish_all(client, topic, payloads, count, timeout)
    deadline = time.monotonic() + timeout
    counted = 0
    while time.monotonic() < deadline:
        counted = _invalid_total(hub) - before
        if counted >= count:
            break
        time.sleep(0.2)
    return {"messages": count, "counted_invalid": counted}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (the CLI prints it as the last line)."""
    return in_work_dir(args.work_dir, "edgeloop-bench-flood-", lambda work: _run(args, work))


def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from shared.topics import Kind, Topics  # noqa: PLC0415
    from simulators.harness import HUB_USER, AmqttBroker, HarnessError, HubProcess  # noqa: PLC0415

    load_before = round(os.getloadavg()[0], 2)
    build_default_models(args.models_dir)
    users = {HUB_USER: secrets.token_urlsafe(24), _DEVICE: secrets.token_urlsafe(24)}
    broker = AmqttBroker(work / "amqtt", users=users, start_timeout=_START_TIMEOUT_S)
    hub: HubProcess | None = None
    watches: list[_Rss] = []
    client: Any = None
    try:
        broker.start()
        hub = HubProcess(
            work / "hub",
            args.models_dir,
            broker=broker.endpoint(HUB_USER),
            args=["--retention-days", "0"],
            log_path=work / "hub.log",
            start_timeout=_START_TIMEOUT_S,
        ).start()
        assert hub.pid is not None and broker.pid is not None
        rss, broker_rss = _Rss(hub.pid), _Rss(broker.pid)
        watches += [rss, broker_rss]
        time.sleep(args.settle_s)
        baseline = rss.steady()
        broker_baseline = broker_rss.steady()
        client = _device_client(broker, users[_DEVICE])
        topic = Topics().topic(_DEVICE, Kind.TELEMETRY)

        def padded(kb: int) -> Any:
            pad = b"p" * (kb * 1000 - 40)
            return lambda i: (
                b'{"device":"%s","seq":%d,"pad":"' % (_DEVICE.encode(), i) + pad + b'"}'
            )

        phases: list[tuple[str, Any]] = [
            ("a_http_no_token", lambda: _http_phase(hub, args)),
            (
                "b_large_telemetry",
                lambda: _mqtt_phase(
                    hub,
                    client,
                    topic,
                    padded(args.payload_kb),
                    count=args.messages,
                    timeout=args.timeout_s,
                ),
            ),
            (
                "c_oversized_telemetry",
                lambda: _mqtt_phase(
                    hub,
                    client,
                    topic,
                    padded(args.over_kb),
                    count=args.messages,
                    timeout=args.timeout_s,
                ),
            ),
            (
                "d_invalid_json",
                lambda: _mqtt_phase(
                    hub,
                    client,
                    topic,
                    lambda i: b"not json %d" % i,
                    count=args.invalid_messages,
                    timeout=args.timeout_s,
                ),
            ),
        ]
        results: dict[str, Any] = {}
        for name, phase in phases:
            rss.reset()
            broker_rss.reset()
            started = time.monotonic()
            figures = phase()
            seconds = time.monotonic() - started
            peak = rss.peak()
            broker_peak = broker_rss.peak()
            time.sleep(args.settle_s)
            after = rss.steady()
            broker_after = broker_rss.steady()
            result = {
                **figures,
                "seconds": round(seconds, 1),
                "peak_mb": round(peak / _MB, 1),
                "after_mb": round(after / _MB, 1),
                "peak_over_baseline_mb": round((peak - baseline) / _MB, 1),
                "after_over_baseline_mb": round((after - baseline) / _MB, 1),
                "broker_peak_over_baseline_mb": round((broker_peak - broker_baseline) / _MB, 1),
                "broker_after_over_baseline_mb": round((broker_after - broker_baseline) / _MB, 1),
            }
            results[name] = result
            print(f"{name}: {json.dumps(result)}", flush=True)
    except HarnessError as exc:
        raise FloodBenchError(f"bench flood: {exc}") from None
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        for watch in watches:
            watch.close()
        if hub is not None:
            hub.stop()
        broker.stop()
    return {
        "bench": "flood",
        "broker": broker.version,
        "baseline_mb": round(baseline / _MB, 1),
        "broker_baseline_mb": round(broker_baseline / _MB, 1),
        "peak_over_baseline_mb": max(r["peak_over_baseline_mb"] for r in results.values()),
        "after_over_baseline_mb": max(r["after_over_baseline_mb"] for r in results.values()),
        **results,
        "http_clients": args.http_clients,
        "http_body_mb": args.http_body_mb,
        "messages": args.messages,
        "payload_kb": args.payload_kb,
        "over_kb": args.over_kb,
        "invalid_messages": args.invalid_messages,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {sys.version.split()[0]}",
        "load_avg_1m_before": load_before,
    }
