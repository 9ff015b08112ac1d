"""``edgeloop-sim bench hub``: sustained hub ingest, against the broker's own ceiling.

Everything runs on this machine, on free loopback ports, started and stopped
here (the broker and the hub by :mod:`simulators.harness`):

- a broker: Mosquitto when installed (the default), from a temporary config
  and password file with the per-client queue limits that
  ``deploy/mosquitto/mosquitto.conf`` documents for the hub
  (:data:`~simulators.harness.MOSQUITTO_HUB_LIMITS`); or, with
  ``--broker embedded``, amqtt in its own process. Users ``hub`` and ``bench``,
  fresh secrets.
- ``--publishers`` publisher processes (this module run with ``--publisher``,
  its spec on stdin). Before any clock starts, each builds its devices' whole
  stream: columnar telemetry of simulator features (the very
  :func:`~shared.features.features_for_stream` the agent runs) and edge scores
  that sum to 1, ``seq`` 1..n per device, epoch 1, encoded with
  :func:`shared.messages.encode`. On command it publishes the stream at QoS 1
  with a bounded in-flight window, as fast as the broker acknowledges (or
  paced to ``--rate``), and reports every message's publish time.
- the hub: ``python -m cloud_hub serve`` against that broker, with a temporary
  data directory, fresh API tokens and the ingest batch settings given here.

Two phases, the same payloads:

1. the ceiling: the stream goes, at full speed even with ``--rate``, to a bare
   subscriber in this process that only counts (QoS 1). Its topics are under
   ``ROOT-ceiling``, which the hub, already started and idle, does not
   subscribe to.
2. the hub: the stream goes to the hub under ``--root``. This process listens
   to ``ROOT/dev/+/ack`` and waits until every device's last seq is acked, or
   ``--timeout-s``; then reads ``/v1/stats/ingest``, stops the hub (SIGTERM) and
   audits its store: every published reading stored once, with heavy scores.

Figures: ``readings_per_s`` is readings stored / (first publish -> last ack
arrival); the hub acks only after the durable commit, so that window holds the
last commit. ``p50_ms``/``p99_ms`` are per message, publish -> the first ack
covering its seq arriving here: an upper bound of publish -> committed
(``latency_is_publish_to_ack``). At the maximum rate the publishers outrun the
hub and the backlog waits in the broker and the hub's queue, so these are
drain times; ``--rate`` offers a fixed load to measure latency below saturation.
``ceiling_readings_per_s`` is readings counted / (first publish -> last
message counted). ``lost`` and ``duplicates_stored`` come from the store audit.

The default ingest batches (200 messages / 20 ms, against the hub's own 500 /
50) were chosen on a 2-core machine: 500 / 50 drains a flood some 10% faster,
but at a steady 50,000 readings/s its batches grow to ~180 messages and p99
publish -> ack doubles (~430 ms against ~230 ms).

Concurrency in this process: the main thread orchestrates and waits; each MQTT
client's paho thread only counts or records ``(time, device, seq)``; one reader
thread per publisher turns its stdout lines into a queue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shared.errors import EdgeloopError
from shared.topics import DEFAULT_ROOT, Topics
from simulators.bench.arguments import (
    add_dir_options,
    non_negative_float,
    positive_float,
    positive_int,
)
from simulators.bench.workdir import in_work_dir
from simulators.harness import (
    HOST,
    HUB_USER,
    AmqttBroker,
    Broker,
    HarnessError,
    HubProcess,
    Mosquitto,
    find_mosquitto,
    log_tail,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import paho.mqtt.client as mqtt

__all__ = ["HELP", "BenchError", "add_arguments", "run"]

HELP: Final = (
    "hub ingest with heavy scoring and storage, in readings/s, against the "
    "broker-plus-client ceiling measured in the same run (starts its own broker and hub)"
)

TARGET_READINGS_PER_S: Final = 50_000
_BENCH_USER: Final = "bench"
_EPOCH: Final = 1
_READING_INTERVAL_S: Final = 0.1
"""Simulated time between a device's readings (10 Hz)."""
_POOL_ROWS: Final = 4096
"""Distinct feature rows per publisher; messages take windows of them."""
_START_TIMEOUT_S: Final = 120.0
_STOP_TIMEOUT_S: Final = 30.0
_AUDIT_PAGE: Final = 100_000
_HEADLINE: Final = (
    "readings_per_s",
    "lost",
    "duplicates_stored",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "latency_is_publish_to_ack",
    "complete",
)
"""The hub phase's figures that lead the result, before the parameters and details."""


class BenchError(EdgeloopError):
    """The benchmark could not bring something up or finish; the message says what and where."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``edgeloop-sim bench hub``."""
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="broker to run: mosquitto, embedded (amqtt), or auto: mosquitto when installed "
        "(default: auto)",
    )
    parser.add_argument(
        "--devices", type=positive_int, default=100, help="simulated devices (default: 100)"
    )
    parser.add_argument(
        "--readings-per-message",
        type=positive_int,
        default=50,
        metavar="N",
        help="readings in each telemetry message (default: 50)",
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=20_000,
        help="telemetry messages in the stream, spread evenly over the devices (default: 20000)",
    )
    parser.add_argument(
        "--publishers",
        type=positive_int,
        default=2,
        help="publisher processes, each with its share of the devices (default: 2)",
    )
    parser.add_argument(
        "--inflight",
        type=positive_int,
        default=100,
        help="unacknowledged QoS 1 messages per publisher at most (default: 100)",
    )
    parser.add_argument(
        "--rate",
        type=non_negative_float,
        default=0.0,
        metavar="READINGS_PER_S",
        help="offered load to the hub, all publishers together; 0: as fast as the broker takes "
        "it (default: 0). The ceiling phase always runs at full speed",
    )
    parser.add_argument(
        "--ingest-batch-max",
        type=positive_int,
        default=200,
        metavar="N",
        help="the hub's --ingest-batch-max: messages per ingest batch (default: 200)",
    )
    parser.add_argument(
        "--ingest-batch-wait-ms",
        type=positive_int,
        default=20,
        metavar="MS",
        help="the hub's --ingest-batch-wait-ms (default: 20)",
    )
    add_dir_options(parser, "the broker, hub and publisher files and logs")
    parser.add_argument(
        "--root", default=DEFAULT_ROOT, help=f"MQTT topic root of the hub (default: {DEFAULT_ROOT})"
    )
    parser.add_argument(
        "--timeout-s",
        type=positive_float,
        default=180.0,
        metavar="S",
        help="longest each phase may take, publishing and draining (default: 180)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the simulated stream (default: 1)"
    )


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the run sends: devices, how many messages each, and how they are shaped."""

    devices: tuple[tuple[str, int], ...]
    """``(device id, messages)`` per device."""
    readings_per_message: int
    publishers: int
    inflight: int
    rate: float
    seed: int

    @property
    def messages(self) -> int:
        return sum(n for _, n in self.devices)

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message

    def share(self, k: int) -> list[tuple[str, int, int]]:
        """Publisher ``k``'s devices as ``(device id, device index, messages)``."""
        return [
            (name, i, n) for i, (name, n) in enumerate(self.devices) if i % self.publishers == k
        ]


def _plan(args: argparse.Namespace) -> _Plan:
    if args.messages < args.devices:
        raise ValueError(
            f"bench hub: --messages {args.messages} is fewer than --devices {args.devices}; "
            "every device needs at least one message"
        )
    if args.readings_per_message > 1000:
        raise ValueError(
            f"bench hub: --readings-per-message {args.readings_per_message} is over the hub's "
            "limit of 1000 readings per telemetry message"
        )
    per, extra = divmod(args.messages, args.devices)
    devices = tuple((f"bench-{i:04d}", per + (1 if i < extra else 0)) for i in range(args.devices))
    return _Plan(
        devices=devices,
        readings_per_message=args.readings_per_message,
        publishers=min(args.publishers, args.devices),
        inflight=args.inflight,
        rate=args.rate,
        seed=args.seed,
    )


# --------------------------------------------------------------------------- brokers


def _start_broker(kind: str, work: Path, users: dict[str, str], root: str) -> Broker:
    """Mosquitto or the embedded broker, with ``users``, started and ready.

    On the embedded broker, whose topic rules are always on, the bench's publisher
    account acts as every device (a fleet account), under ``root`` and the ceiling
    phase's root; the ceiling counter reads as the hub."""
    broker: Broker
    try:
        if kind == "mosquitto":
            broker = Mosquitto(work / "mosquitto", users=users)
        else:
            broker = AmqttBroker(
                work / "amqtt",
                users=users,
                start_timeout=_START_TIMEOUT_S,
                fleet=(_BENCH_USER,),
                roots=(root, _ceiling_root(root)),
            )
        return broker.start()
    except HarnessError as exc:
        raise BenchError(f"bench hub: the {kind} broker did not start: {exc}") from None


def _ceiling_root(root: str) -> str:
    """The ceiling phase's own root, so its stream never reaches the hub."""
    return f"{root}-ceiling"


# --------------------------------------------------------------------------- MQTT clients here


def _client(
    client_id: str, port: int, *, auth: tuple[str, str], topic_filter: str, on_message: Any
) -> mqtt.Client:
    """A connected, subscribed paho client (QoS 1) whose network thread runs ``on_message``."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    client.username_pw_set(*auth)
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
            subscribed.set()
            return
        c.subscribe(topic_filter, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused.extend(str(code) for code in codes if code.is_failure)
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(HOST, port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(30.0) or refused:
        client.disconnect()
        client.loop_stop()
        raise BenchError(
            f"bench hub: client {client_id!r} could not subscribe to {topic_filter!r} on "
            f"{HOST}:{port} ({', '.join(refused) or 'no answer within 30 s'})"
        )
    return client


def _close(client: mqtt.Client | None) -> None:
    if client is not None:
        client.disconnect()
        client.loop_stop()


class _Counter:
    """The ceiling's bare subscriber: counts messages, notes when the last one came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.complete = threading.Event()

    def on_message(self, _c: Any, _u: Any, _m: Any) -> None:
        self.count += 1
        self.last = time.time()
        if self.count >= self.expected:
            self.complete.set()


class _AckListener:
    """Records every ack as ``(arrival, device, seq)``; ``complete`` once all are acked."""

    def __init__(self, expected: dict[str, int]) -> None:
        from shared.messages import decode  # noqa: PLC0415
        from shared.topics import Kind  # noqa: PLC0415

        self.expected = expected
        self.records: list[tuple[float, str, int]] = []
        self.best: dict[str, int] = {}
        self.bad = 0
        self.complete = threading.Event()
        self.complete_at = 0.0
        self._done: set[str] = set()
        self._decode = decode
        self._kind = Kind.ACK

    def on_message(self, _c: Any, _u: Any, message: Any) -> None:
        at = time.time()
        try:
            ack: Any = self._decode(self._kind, message.payload)
        except EdgeloopError:
            self.bad += 1
            return
        if ack.epoch != _EPOCH or ack.device not in self.expected:
            self.bad += 1
            return
        self.records.append((at, ack.device, ack.seq))
        if ack.seq > self.best.get(ack.device, 0):
            self.best[ack.device] = ack.seq
            if ack.seq >= self.expected[ack.device] and ack.device not in self._done:
                self._done.add(ack.device)
                if len(self._done) == len(self.expected):
                    self.complete_at = at
                    self.complete.set()

    def set_expected(self, expected: dict[str, int]) -> None:
        """Narrow what counts as complete to what was actually published (before it can be)."""
        self.expected = expected
        self._done = {d for d, n in expected.items() if self.best.get(d, 0) >= n}
        if len(self._done) == len(expected) and not self.complete.is_set():
            self.complete_at = max((r[0] for r in self.records), default=time.time())
            self.complete.set()


# --------------------------------------------------------------------------- publishers


class _Publisher:
    """One publisher process: its spec goes in on stdin, JSON lines come back on stdout."""

    def __init__(self, k: int, spec: dict[str, Any], work: Path) -> None:
        self.k = k
        self.log_path = work / f"publisher-{k}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulators.bench.hub", "--publisher"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"bench-publisher-{k}", daemon=True)
        self._reader.start()
        self.send(spec)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.put(json.loads(line))
        finally:
            self.lines.put(None)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise BenchError(
                f"bench hub: publisher {self.k} sent no {event!r} within {timeout:.0f} s; "
                f"see {self.log_path}"
            ) from None
        if line is None or line.get("event") != event:
            raise BenchError(
                f"bench hub: publisher {self.k} exited or answered {line!r} instead of "
                f"{event!r}; its log ends:\n{log_tail(self.log_path, 15)}"
            )
        return line

    def poll(self, event: str) -> dict[str, Any] | None:
        """The next line if one is waiting (it must be ``event``), else None."""
        if self.lines.empty():
            return None
        return self.expect(event, 0.0)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"cmd": "exit"})
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10.0)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def _make_stream(spec: dict[str, Any]) -> list[tuple[str, int, bytes]]:
    """A publisher's messages, in publishing order: ``(device, seq, payload)``."""
    import numpy as np  # noqa: PLC0415

    from shared.features import features_for_stream  # noqa: PLC0415
    from shared.messages import Telemetry, encode  # noqa: PLC0415
    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415
    from simulators.sensors import SENSORS  # noqa: PLC0415

    k, seed, r = int(spec["k"]), int(spec["seed"]), int(spec["readings_per_message"])
    machine = SimulatedMachine(MachineConfig(seed=seed, device_index=k))
    values = np.array([reading.values for reading in machine.readings(_POOL_ROWS)])
    features = features_for_stream(values, int(spec["window"]), [s.fallback for s in SENSORS])
    if features.shape[1] != int(spec["features"]):
        raise SystemExit(
            f"publisher {k}: the simulator gives {features.shape[1]} features per reading, "
            f"the models read {spec['features']}"
        )
    rng = np.random.default_rng(seed * 1_000_003 + k)
    scores = rng.dirichlet(np.ones(int(spec["classes"])), size=_POOL_ROWS).astype(np.float32)
    devices = [(str(name), int(index), int(n)) for name, index, n in spec["devices"]]
    model, model_version = str(spec["model"][0]), str(spec["model"][1])
    most = max(n for _, _, n in devices)
    now = time.time()
    out: list[tuple[str, int, bytes]] = []
    steps = np.arange(r)
    for seq in range(1, most + 1):
        for name, index, n in devices:
            if seq > n:
                continue
            first = (seq - 1) * r
            rows = (index * 997 + first + steps) % _POOL_ROWS
            ts = now - (n * r - first - steps) * _READING_INTERVAL_S
            msg = Telemetry(
                name,
                _EPOCH,
                seq,
                model_version,
                ts.astype(np.float64),
                features[rows],
                scores[rows],
                model,
            )
            out.append((name, seq, encode(msg)))
    return out


def _publish(
    client: mqtt.Client,
    stream: list[tuple[str, int, bytes]],
    *,
    root: str,
    rate: float,
    inflight: int,
    readings_per_message: int,
    timeout: float,
) -> dict[str, Any]:
    """Publish the stream once at QoS 1, at most ``inflight`` unacknowledged; report times."""
    from paho.mqtt.enums import MQTTErrorCode  # noqa: PLC0415

    window = threading.Semaphore(inflight)
    acked = [0, 0.0]  # count, time of the last PUBACK
    all_acked = threading.Event()
    total = len(stream)

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        acked[0] += 1
        acked[1] = time.time()
        window.release()
        if acked[0] >= total:
            all_acked.set()

    client.on_publish = on_publish
    cpu0 = time.process_time()
    deadline = time.monotonic() + timeout
    interval = readings_per_message / rate if rate > 0 else 0.0
    times: dict[str, list[float]] = {}
    refused = 0
    first = time.time()
    start = time.monotonic()
    for i, (device, _seq, payload) in enumerate(stream):
        if interval:
            wait = start + i * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if not window.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
        at = time.time()
        info = client.publish(f"{root}/dev/{device}/telemetry", payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            refused += 1
            window.release()
            break
        times.setdefault(device, []).append(at)
    published = sum(len(t) for t in times.values())
    if published == total:
        all_acked.wait(max(0.0, deadline - time.monotonic()))
    return {
        "event": "done",
        "published": published,
        "pubacked": acked[0],
        "refused": refused,
        "first": first,
        "last_puback": acked[1],
        "cpu_s": time.process_time() - cpu0,
        "times": times,
    }


def _publisher_main() -> int:
    """A publisher process: spec on stdin, then commands; JSON lines out on stdout."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    spec = json.loads(sys.stdin.readline())
    stream = _make_stream(spec)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-publisher-{spec['k']}-{os.getpid()}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(spec["username"], spec["password"])
    client.max_inflight_messages_set(int(spec["inflight"]))
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(HOST, int(spec["port"]), keepalive=60)
    client.loop_start()
    if not connected.wait(30.0):
        raise SystemExit(f"publisher {spec['k']}: no CONNACK from {HOST}:{spec['port']}")
    emit(
        {
            "event": "ready",
            "messages": len(stream),
            "bytes": sum(len(p) for _, _, p in stream),
        }
    )
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("cmd") != "publish":
                break
            emit(
                _publish(
                    client,
                    stream,
                    root=cmd["root"],
                    rate=float(cmd["rate"]),
                    inflight=int(spec["inflight"]),
                    readings_per_message=int(spec["readings_per_message"]),
                    timeout=float(cmd["timeout"]),
                )
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


# --------------------------------------------------------------------------- the hub


def _hub(args: argparse.Namespace, broker: Broker, models_dir: Path, work: Path) -> HubProcess:
    """The hub against ``broker``, with this run's ingest batches; not started yet."""
    return HubProcess(
        work / "hub",
        models_dir,
        broker=broker.endpoint(HUB_USER),
        root=args.root,
        args=[
            "--ingest-batch-max",
            str(args.ingest_batch_max),
            "--ingest-batch-wait-ms",
            str(args.ingest_batch_wait_ms),
            "--retention-days",
            "0",
        ],
        log_path=work / "hub.log",
        start_timeout=_START_TIMEOUT_S,
        stop_timeout=_STOP_TIMEOUT_S,
    )


def _final_stats(hub: HubProcess, expected_readings: int) -> dict[str, Any]:
    """``/v1/stats/ingest`` once the counters have caught up with the last ack.

    The worker acks right after the commit and saves the batch's counters just
    after that, so the first read may miss the last batch: read until every
    published reading is counted, or the figures stop moving with nothing queued.
    """
    deadline = time.monotonic() + 10.0
    previous: Any = None
    while True:
        stats: dict[str, Any] = hub.api.get_json("/v1/stats/ingest", timeout=30.0)
        live = stats.get("live") or {}
        now = (stats.get("stored_readings"), stats.get("received"))
        settled = now == previous and live.get("queue_depth") == 0
        if stats["stored_readings"] >= expected_readings or settled:
            return stats
        if time.monotonic() >= deadline:
            return stats
        previous = now
        time.sleep(0.5)


# --------------------------------------------------------------------------- figures


class _CpuWatch:
    """CPU time and peak RSS of a few processes over a phase (psutil, sampled on ``tick``).

    A process's CPU time includes its children's (the hub's drift monitor process, a
    pipeline run's): those alive at each reading and those it has reaped. Peak RSS is
    the process's own; its live children's together are ``peak_children_rss``.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        import psutil  # noqa: PLC0415

        self._procs: dict[str, Any] = {}
        for name, pid in pids.items():
            if pid is not None:
                try:
                    self._procs[name] = psutil.Process(pid)
                except psutil.Error:
                    continue
        self._start = {name: self._cpu(p) for name, p in self._procs.items()}
        self._t0 = time.monotonic()
        self.peak_rss: dict[str, int] = {}
        self.peak_children_rss: dict[str, int] = {}
        self.tick()

    @staticmethod
    def _cpu(proc: Any) -> float:
        try:
            t = proc.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                try:
                    c = child.cpu_times()
                except Exception:  # ended meanwhile: counted once its parent reaps it
                    continue
                total += c.user + c.system
            return float(total)
        except Exception:
            return float("nan")

    def tick(self) -> None:
        for name, proc in self._procs.items():
            try:
                rss = int(proc.memory_info().rss)
                children = 0
                for child in proc.children(recursive=True):
                    with contextlib.suppress(Exception):
                        children += int(child.memory_info().rss)
            except Exception:
                continue
            self.peak_rss[name] = max(rss, self.peak_rss.get(name, 0))
            self.peak_children_rss[name] = max(children, self.peak_children_rss.get(name, 0))

    def percent(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        return {
            name: round(100.0 * (self._cpu(p) - self._start[name]) / wall, 1)
            for name, p in self._procs.items()
        }


def _latencies(
    times: dict[str, list[float]], records: list[tuple[float, str, int]]
) -> tuple[npt.NDArray[np.float64], int]:
    """Per message, publish -> first ack covering its seq (ms); and how many had no ack."""
    import numpy as np  # noqa: PLC0415

    by_device: dict[str, list[tuple[float, int]]] = {}
    for at, device, seq in records:
        by_device.setdefault(device, []).append((at, seq))
    out: list[npt.NDArray[np.float64]] = []
    unacked = 0
    for device, published in times.items():
        pub = np.asarray(published, dtype=np.float64)
        acks = by_device.get(device, [])
        if not acks:
            unacked += pub.size
            continue
        arrival = np.array([a for a, _ in acks], dtype=np.float64)
        covered = np.maximum.accumulate(np.array([s for _, s in acks], dtype=np.int64))
        seqs = np.arange(1, pub.size + 1)
        idx = np.searchsorted(covered, seqs, side="left")
        ok = idx < covered.size
        unacked += int((~ok).sum())
        out.append((arrival[idx[ok]] - pub[ok]) * 1000.0)
    return (np.concatenate(out) if out else np.empty(0, dtype=np.float64)), unacked


@dataclass(slots=True)
class _Audit:
    stored_readings: int = 0
    """Readings of published messages found in the store, each counted once."""
    duplicates_stored: int = 0
    """Readings stored more than once."""
    missing_readings: int = 0
    unexpected_readings: int = 0
    """Readings stored that no publisher reported publishing."""
    without_heavy_scores: int = 0
    per_device: dict[str, int] = field(default_factory=dict)


def _audit(db_path: Path, published: dict[str, int], readings_per_message: int) -> _Audit:
    """Read back every device's telemetry through the store interface, after the hub stopped."""
    from collections import Counter  # noqa: PLC0415

    from cloud_hub.store import open_store  # noqa: PLC0415

    audit = _Audit()
    store = open_store(f"sqlite:///{db_path.resolve()}")
    try:
        for device, n in published.items():
            counts: Counter[int] = Counter()
            cursor: str | None = None
            while True:
                page = store.telemetry(device, 0.0, 1e13, _AUDIT_PAGE, cursor)
                for rows in page.items:
                    if rows.epoch != _EPOCH:
                        audit.unexpected_readings += len(rows)
                        continue
                    counts[rows.seq] += len(rows)
                    if rows.heavy_scores.ndim != 2 or rows.heavy_scores.shape[1] == 0:
                        audit.without_heavy_scores += len(rows)
                cursor = page.next_cursor
                if cursor is None:
                    break
            for seq, c in counts.items():
                if seq > n:
                    audit.unexpected_readings += c
                    continue
                audit.stored_readings += min(c, readings_per_message)
                audit.duplicates_stored += max(0, c - readings_per_message)
            audit.per_device[device] = sum(counts.values())
        expected = sum(published.values()) * readings_per_message
        audit.missing_readings = expected - audit.stored_readings
    finally:
        store.close()
    return audit


def _pct(values: npt.NDArray[np.float64], q: float) -> float | None:
    import numpy as np  # noqa: PLC0415

    return round(float(np.percentile(values, q)), 1) if values.size else None


def _rate(readings: int, seconds: float) -> float:
    return round(readings / seconds, 1) if seconds > 0 else 0.0


# --------------------------------------------------------------------------- the run


def _models(models_dir: Path) -> tuple[Path, int, int, int, tuple[str, str]]:
    """Build or find the default models; the directory, features, classes, window and the
    edge model's name and version (the telemetry names it, as an agent's does)."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    built = build_default_models(models_dir)
    edge = load_package(built.edge).manifest
    heavy = load_package(built.heavy).manifest
    if len(edge.input.features) != len(heavy.input.features):
        raise BenchError(
            f"bench hub: the edge model reads {len(edge.input.features)} features and the heavy "
            f"model {len(heavy.input.features)}; rebuild {models_dir} with edgeloop-hub models build"
        )
    return (
        models_dir.resolve(),
        len(heavy.input.features),
        len(edge.output.classes),
        edge.input.window,
        (edge.name, edge.version),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (the CLI prints it as the last line)."""
    plan = _plan(args)
    Topics(args.root)  # a bad root fails here, with the topic grammar's message
    if args.broker == "auto":
        args.broker = "mosquitto" if find_mosquitto() else "embedded"
    return in_work_dir(args.work_dir, "edgeloop-bench-hub-", lambda work: _run(args, plan, work))


@dataclass(slots=True)
class _Rig:
    """Everything a run started, so that one ``finally`` stops all of it."""

    users: dict[str, str]
    broker: Broker | None = None
    hub: HubProcess | None = None
    publishers: list[_Publisher] = field(default_factory=list)
    clients: list[mqtt.Client] = field(default_factory=list)

    def stop(self) -> None:
        for client in self.clients:
            _close(client)
        for publisher in self.publishers:
            publisher.close()
        if self.hub is not None:
            self.hub.stop()
        if self.broker is not None:
            self.broker.stop()


def _run(args: argparse.Namespace, plan: _Plan, work: Path) -> dict[str, Any]:
    # Another job on the machine skews every figure; say how busy it was.
    load_before = round(os.getloadavg()[0], 2)
    models_dir, n_features, n_classes, window, edge_model = _models(args.models_dir)
    rig = _Rig({HUB_USER: secrets.token_urlsafe(24), _BENCH_USER: secrets.token_urlsafe(24)})
    try:
        broker = rig.broker = _start_broker(args.broker, work, rig.users, args.root)
        t_gen = time.monotonic()
        for k in range(plan.publishers):
            spec = {
                "k": k,
                "seed": plan.seed,
                "port": broker.port,
                "username": _BENCH_USER,
                "password": rig.users[_BENCH_USER],
                "inflight": plan.inflight,
                "readings_per_message": plan.readings_per_message,
                "features": n_features,
                "classes": n_classes,
                "window": window,
                "model": list(edge_model),
                "devices": plan.share(k),
            }
            rig.publishers.append(_Publisher(k, spec, work))
        # The hub starts while the publishers build their streams; it sits idle
        # (nothing under its root) through the ceiling phase.
        hub = rig.hub = _hub(args, broker, models_dir, work).start(wait=False)
        gen_timeout = _START_TIMEOUT_S + plan.messages / 200
        ready = [p.expect("ready", gen_timeout) for p in rig.publishers]
        generate_s = time.monotonic() - t_gen
        try:
            hub.wait_ready()
        except HarnessError as exc:
            raise BenchError(f"bench hub: the hub did not start: {exc}") from None
        ceiling = _ceiling_phase(rig, broker, args, plan)
        ingest = _hub_phase(rig, broker, hub, args, plan)
    finally:
        rig.stop()
    headline = {key: ingest.pop(key) for key in _HEADLINE}
    top = ceiling["ceiling_readings_per_s"]
    return {
        "bench": "hub",
        "broker": broker.kind,
        "broker_version": broker.version,
        **headline,
        "ceiling_readings_per_s": top,
        "ratio_to_ceiling": round(headline["readings_per_s"] / top, 3) if top else None,
        "target_readings_per_s": TARGET_READINGS_PER_S,
        # the stream
        "devices": len(plan.devices),
        "readings_per_message": plan.readings_per_message,
        "messages": plan.messages,
        "readings": plan.readings,
        "features": n_features,
        "classes": n_classes,
        "payload_bytes_mean": round(sum(int(r["bytes"]) for r in ready) / plan.messages),
        "publishers": plan.publishers,
        "inflight": plan.inflight,
        "offered_readings_per_s": plan.rate or None,
        "ingest_batch_max": args.ingest_batch_max,
        "ingest_batch_wait_ms": args.ingest_batch_wait_ms,
        # the details: phase 2, the hub, then phase 1, the ceiling
        **ingest,
        **ceiling,
        "generate_s": round(generate_s, 1),
        "machine": _machine(),
        "load_avg_1m_before": load_before,
    }


def _ceiling_phase(
    rig: _Rig, broker: Broker, args: argparse.Namespace, plan: _Plan
) -> dict[str, Any]:
    """Phase 1: the stream, at full speed, to a subscriber that only counts."""
    root = _ceiling_root(args.root)
    counter = _Counter(plan.messages)
    client = _client(
        f"bench-ceiling-{os.getpid()}",
        broker.port,
        auth=(HUB_USER, rig.users[HUB_USER]),
        topic_filter=f"{root}/dev/+/telemetry",
        on_message=counter.on_message,
    )
    rig.clients.append(client)
    watch = _CpuWatch({"broker": broker.pid, **{f"p{p.k}": p.proc.pid for p in rig.publishers}})
    done = _phase(
        rig.publishers,
        root,
        rate=0.0,
        timeout=args.timeout_s,
        received=counter.complete,
        watch=watch,
    )
    cpu = watch.percent()
    rig.clients.remove(client)
    _close(client)
    r = plan.readings_per_message
    elapsed = max(0.0, counter.last - min(float(d["first"]) for d in done))
    return {
        "ceiling_readings_per_s": _rate(counter.count * r, elapsed),
        "ceiling_elapsed_s": round(elapsed, 3),
        "ceiling_lost": (sum(int(d["published"]) for d in done) - counter.count) * r,
        "ceiling_broker_cpu_pct": cpu.get("broker"),
        "ceiling_publishers_cpu_pct": round(
            sum(v for name, v in cpu.items() if name.startswith("p")), 1
        ),
    }


def _hub_phase(
    rig: _Rig, broker: Broker, hub: HubProcess, args: argparse.Namespace, plan: _Plan
) -> dict[str, Any]:
    """Phase 2: the stream to the hub; acks timed here, then its stats and its store audited."""
    listener = _AckListener(dict(plan.devices))
    client = _client(
        f"bench-acks-{os.getpid()}",
        broker.port,
        auth=(_BENCH_USER, rig.users[_BENCH_USER]),
        topic_filter=f"{args.root}/dev/+/ack",
        on_message=listener.on_message,
    )
    rig.clients.append(client)
    watch = _CpuWatch(
        {
            "hub": hub.pid,
            "broker": broker.pid,
            **{f"p{p.k}": p.proc.pid for p in rig.publishers},
        }
    )
    done = _phase(
        rig.publishers,
        args.root,
        rate=plan.rate,
        timeout=args.timeout_s,
        received=listener.complete,
        watch=watch,
    )
    times: dict[str, list[float]] = {}
    for d in done:
        times.update(d["times"])
    published = {device: len(t) for device, t in times.items() if t}
    listener.set_expected(published)
    cpu = watch.percent()
    records = list(listener.records)
    r = plan.readings_per_message
    stats = _final_stats(hub, sum(published.values()) * r)
    rig.clients.remove(client)
    _close(client)
    status = hub.stop()
    audit = _audit(hub.db_path, published, r)

    first = min(float(d["first"]) for d in done)
    last = (
        listener.complete_at
        if listener.complete.is_set()
        else max((rec[0] for rec in records), default=first)
    )
    latency, unacked = _latencies(times, records)
    live = stats.get("live") or {}
    return {
        "readings_per_s": _rate(int(stats["stored_readings"]), last - first),
        "lost": audit.missing_readings,
        "duplicates_stored": audit.duplicates_stored,
        "p50_ms": _pct(latency, 50),
        "p99_ms": _pct(latency, 99),
        "max_ms": _pct(latency, 100),
        "latency_is_publish_to_ack": True,
        "complete": listener.complete.is_set(),
        "unacked_messages": unacked,
        "published_readings": sum(published.values()) * r,
        "stored_readings": int(stats["stored_readings"]),
        "stored_readings_audited": audit.stored_readings,
        "readings_without_heavy_scores": audit.without_heavy_scores,
        "unexpected_readings": audit.unexpected_readings,
        "duplicates_received": int(stats["duplicates"]),
        "invalid": stats.get("invalid", {}),
        "dropped": stats.get("dropped", {}),
        "ingest_errors": int(stats.get("ingest_errors", 0)),
        "gaps": int(stats.get("gaps", {}).get("count", 0)),
        "hub_elapsed_s": round(last - first, 3),
        "publish_readings_per_s": _rate(
            sum(int(d["pubacked"]) for d in done) * r,
            max(float(d["last_puback"]) for d in done) - first,
        ),
        "hub_latency_p50_ms": _round(live.get("latency_p50_ms")),
        "hub_latency_p99_ms": _round(live.get("latency_p99_ms")),
        "hub_batches": live.get("batches"),
        "hub_cpu_pct": cpu.get("hub"),
        "hub_rss_mb": round(watch.peak_rss.get("hub", 0) / 2**20, 1),
        "hub_children_rss_mb": round(watch.peak_children_rss.get("hub", 0) / 2**20, 1),
        "broker_cpu_pct": cpu.get("broker"),
        "publishers_cpu_pct": round(sum(v for k, v in cpu.items() if k.startswith("p")), 1),
        "hub_exit_status": status,
        "acks_received": len(records),
    }


def _round(value: Any) -> float | None:
    return round(float(value), 1) if isinstance(value, int | float) else None


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def _phase(
    publishers: list[_Publisher],
    root: str,
    *,
    rate: float,
    timeout: float,
    received: threading.Event,
    watch: _CpuWatch,
) -> list[dict[str, Any]]:
    """Every publisher sends its stream under ``root``, together at ``rate`` readings/s
    (0: at full speed); wait until ``received`` is set or ``timeout`` is up."""
    for p in publishers:
        p.send({"cmd": "publish", "root": root, "rate": rate / len(publishers), "timeout": timeout})
    deadline = time.monotonic() + timeout
    results: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for p in publishers:
            line = p.poll("done") if p.k not in results else None
            if line is not None:
                results[p.k] = line
        watch.tick()
        if len(results) == len(publishers) and received.is_set():
            break
        received.wait(0.25)
    for p in publishers:  # each stops publishing at its own deadline and says so
        if p.k not in results:
            results[p.k] = p.expect("done", 30.0)
    return [results[k] for k in sorted(results)]


if __name__ == "__main__":
    if sys.argv[1:] != ["--publisher"]:
        sys.exit(
            "usage: python -m simulators.bench.hub --publisher (run by edgeloop-sim bench hub)"
        )
    raise SystemExit(_publisher_main())
