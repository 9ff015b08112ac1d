"""``edgeloop-sim demo``: a simulated fleet of real agents on the embedded broker.

It builds (or finds) the default models, starts the embedded broker with one
account per device, starts ``--devices`` real ``edgeloop-agent`` processes on
simulated machines (every fourth develops faults, hits urgent conditions,
stops itself, and is restarted 15 s later), and watches the wire: devices
online, readings per second, urgent events, and how often the edge model
disagrees with the heavy model on the same readings. Ctrl-C or ``--duration`` ends it; everything it started is
shut down cleanly.

Concurrency: the main thread runs the summary loop; the watcher's paho network
thread only puts messages on a bounded queue that the main thread drains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from shared.endpoint import BrokerEndpoint
from shared.errors import ContractError
from shared.messages import Event, Status, Telemetry, decode
from shared.topics import EDGE_TO_HUB, Kind, Topics

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    devices: int = 20
    duration_s: float = 0.0
    """0: run until Ctrl-C."""
    models_dir: Path = Path("var/models")
    work_dir: Path = Path("var/demo")
    rate_hz: float = 5.0
    seed: int = 1
    summary_every_s: float = 5.0
    out: Any = field(default=sys.stdout, repr=False)


@dataclass(slots=True)
class _Tally:
    online: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    readings: int = 0
    events: int = 0
    compared: int = 0
    disagreed: int = 0
    invalid: int = 0


def _say(config: DemoConfig, text: str) -> None:
    print(text, file=config.out, flush=True)


def run_demo(config: DemoConfig, stop: threading.Event | None = None) -> int:
    """Run the demo until ``stop`` is set or the duration ends; returns the exit code."""
    from cloud_hub.broker.auth import add_user  # noqa: PLC0415
    from cloud_hub.broker.embedded import EmbeddedBroker  # noqa: PLC0415
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    stop = stop or threading.Event()
    _say(config, f"edgeloop demo: {config.devices} simulated devices on the embedded broker")
    built = build_default_models(config.models_dir)
    _say(config, f"models: edge {built.edge}, heavy {built.heavy}")
    heavy = OnnxScorer.from_package(load_package(built.heavy))

    run_dir = config.work_dir / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    passwd = run_dir / "passwd"
    accounts = {f"sim-{i:03d}": secrets.token_urlsafe(24) for i in range(config.devices)}
    accounts["demo-watcher"] = secrets.token_urlsafe(24)
    for user, secret in accounts.items():
        add_user(passwd, user, secret)
    topics = Topics()
    with EmbeddedBroker(password_file=passwd, log_path=run_dir / "broker.log") as broker:
        _say(config, f"broker: {broker.url} (log {run_dir / 'broker.log'})")
        inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=10_000)
        watcher = _watch(broker.endpoint("demo-watcher", accounts["demo-watcher"]), topics, inbox)
        agents = [
            _start_agent(config, built.edge, broker.endpoint(user, secret), i, run_dir)
            for i, (user, secret) in enumerate(accounts.items())
            if user != "demo-watcher"
        ]
        _say(config, f"agents: {len(agents)} started (logs in {run_dir})")
        try:
            _summary_loop(config, topics, inbox, heavy, stop)
        finally:
            _say(config, "stopping agents ...")
            for proc in agents:
                proc.send_signal(signal.SIGTERM)
            codes = []
            for proc in agents:
                try:
                    codes.append(proc.wait(15))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    codes.append(proc.wait())
            watcher.disconnect()
            watcher.loop_stop()
            clean = sum(1 for c in codes if c == 0)
            _say(config, f"agents stopped: {clean}/{len(codes)} exited cleanly")
    return 0


def _start_agent(
    config: DemoConfig, edge: Path, endpoint: BrokerEndpoint, i: int, run_dir: Path
) -> subprocess.Popen[bytes]:
    device = endpoint.username or f"sim-{i:03d}"
    troubled = i % 4 == 3
    argv = [
        sys.executable,
        "-m",
        "edge_agent",
        "--device",
        device,
        "--model",
        str(edge),
        "--state-dir",
        str(run_dir / "state" / device),
        "--source",
        "sim",
        "--sim-seed",
        str(config.seed * 10_000 + i),
        "--rate-hz",
        str(config.rate_hz),
        "--actions",
        "log,machine",
        "--max-batch",
        "20",
        "--heartbeat-s",
        "5",
        "--log-level",
        "WARNING",
    ]
    if troubled:
        argv += ["--sim-urgent-rate", "0.01", "--sim-fault-rate", "0.002", "--sim-restart-s", "15"]
    env = {
        **os.environ,
        "EDGELOOP_AGENT_BROKER": endpoint.url,
    }  # the secret stays off the command line
    log_file = (run_dir / f"{device}.log").open("wb")
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
    )


def _watch(endpoint: BrokerEndpoint, topics: Topics, inbox: queue.Queue[tuple[str, bytes]]) -> Any:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="demo-watcher", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(endpoint.username, endpoint.password)
    filters = [topics.device_filter(kind) for kind in EDGE_TO_HUB]

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            c.subscribe([(f, 1) for f in filters])

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Past 10,000 queued the summary becomes a sample; agents count exactly.
        with contextlib.suppress(queue.Full):
            inbox.put_nowait((msg.topic, bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    return client


def _summary_loop(
    config: DemoConfig,
    topics: Topics,
    inbox: queue.Queue[tuple[str, bytes]],
    heavy: Any,
    stop: threading.Event,
) -> None:
    started = time.monotonic()
    tally = _Tally()
    last = (started, 0)
    next_summary = started + config.summary_every_s
    while not stop.is_set():
        now = time.monotonic()
        if config.duration_s and now - started >= config.duration_s:
            break
        try:
            topic, payload = inbox.get(timeout=0.2)
        except queue.Empty:
            pass
        else:
            _tally_message(tally, topics, topic, payload, heavy)
        if now >= next_summary:
            rate = (tally.readings - last[1]) / max(now - last[0], 1e-9)
            last = (now, tally.readings)
            disagree = 100.0 * tally.disagreed / tally.compared if tally.compared else 0.0
            _say(
                config,
                f"[{now - started:6.0f}s] devices online {len(tally.online)}/{config.devices}  "
                f"readings/s {rate:7.1f}  readings {tally.readings}  urgent events {tally.events}  "
                f"edge/heavy disagreement {disagree:.2f}%  invalid {tally.invalid}",
            )
            next_summary = now + config.summary_every_s


def _tally_message(tally: _Tally, topics: Topics, topic: str, payload: bytes, heavy: Any) -> None:
    try:
        addr = topics.parse(topic)
        msg = decode(addr.kind, payload)
    except ContractError:
        tally.invalid += 1
        return
    if isinstance(msg, Status):
        (tally.online.add if msg.state == "online" else tally.online.discard)(msg.device)
    elif isinstance(msg, Telemetry):
        tally.readings += len(msg)
        edge = msg.scores.argmax(axis=1)
        heavy_pred = np.asarray(heavy.scores(msg.features)).argmax(axis=1)
        tally.compared += len(msg)
        tally.disagreed += int((edge != heavy_pred).sum())
    elif isinstance(msg, Event):
        tally.events += 1
    if addr.kind is not Kind.STATUS:
        tally.seen.add(addr.device)


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM end the demo cleanly."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
