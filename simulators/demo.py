"""``edgeloop-sim demo``: the hub and a simulated fleet of real agents, on one machine.

It builds (or finds) the default models, starts ``edgeloop-hub serve`` with its
embedded broker on free ports and fresh API tokens, provisions ``--devices``
devices the way ``edgeloop-hub devices add`` does, and starts one real
``edgeloop-agent`` process per device on a simulated machine (every fourth
develops faults, hits urgent conditions, stops itself, and is restarted 15 s
later). It prints the API URL and the read token, then every few seconds a
summary read from the hub's own API: devices online, readings stored per
second, urgent events, edge/heavy disagreement. Ctrl-C or ``--duration`` ends
it; agents get SIGTERM first (they flush and say offline), then the hub.

Concurrency: one thread; the hub and the agents are child processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shared.errors import EdgeloopError

__all__ = ["DemoConfig", "run_demo"]

log = logging.getLogger(__name__)
_HUB_START_TIMEOUT_S = 120.0


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
    out: TextIO = field(default=sys.stdout, repr=False)


class DemoError(EdgeloopError):
    """The demo could not bring something up; the message says what."""


def _say(config: DemoConfig, text: str) -> None:
    print(text, file=config.out, flush=True)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Api:
    """A tiny client for the hub's HTTP API."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def run_demo(config: DemoConfig, stop: threading.Event | None = None) -> int:
    """Run the demo until ``stop`` is set or the duration ends; returns the exit code."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from cloud_hub.provision import add_device  # noqa: PLC0415
    from cloud_hub.settings import OPTIONS, resolve_settings  # noqa: PLC0415

    stop = stop or threading.Event()
    _say(
        config,
        f"edgeloop demo: a hub with its embedded broker and {config.devices} simulated devices",
    )
    built = build_default_models(config.models_dir)
    _say(config, f"models: edge {built.edge}, heavy {built.heavy}")

    run_dir = (config.work_dir / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    read_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    http_port = _free_port()
    hub_flags = [
        "--data-dir",
        str(run_dir / "hub"),
        "--models-dir",
        str(config.models_dir.resolve()),
        "--broker-port",
        str(_free_port()),
        "--http-port",
        str(http_port),
        "--read-token",
        read_token,
        "--admin-token",
        admin_token,
    ]
    settings = resolve_settings(
        OPTIONS.add_to(argparse.ArgumentParser()).parse_args(hub_flags), env={}, serving=True
    )
    devices = [add_device(settings, f"sim-{i:03d}") for i in range(config.devices)]

    hub_log = (run_dir / "hub.log").open("wb")
    hub = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub", "serve", *hub_flags, "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL,
        stdout=hub_log,
        stderr=subprocess.STDOUT,
    )
    agents: list[subprocess.Popen[bytes]] = []
    api = _Api(f"http://127.0.0.1:{http_port}", read_token)
    try:
        _wait_for_hub(api, hub, run_dir / "hub.log", stop)
        _say(config, f"hub: API {api.base} (docs at {api.base}/docs), read token {read_token}")
        _say(config, f"     admin token {admin_token}; logs and state in {run_dir}")
        agents = [
            _start_agent(config, built.edge, device.agent_env, i, run_dir)
            for i, device in enumerate(devices)
        ]
        _say(config, f"agents: {len(agents)} started")
        _summary_loop(config, api, stop)
    finally:
        _stop_all(config, agents, hub)
        hub_log.close()
    return 0


def _wait_for_hub(
    api: _Api, hub: subprocess.Popen[bytes], log_path: Path, stop: threading.Event
) -> None:
    deadline = time.monotonic() + _HUB_START_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        if hub.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise DemoError("the hub exited during start-up:\n" + "\n".join(tail))
        try:
            api.get("/healthz")
            return
        except (urllib.error.URLError, OSError):
            stop.wait(0.2)
    raise DemoError(
        f"the hub did not answer on {api.base} within {_HUB_START_TIMEOUT_S:.0f} s; see {log_path}"
    )


def _start_agent(
    config: DemoConfig, edge: Path, agent_env: dict[str, str], i: int, run_dir: Path
) -> subprocess.Popen[bytes]:
    device = agent_env["EDGELOOP_AGENT_DEVICE"]
    argv = [
        sys.executable,
        "-m",
        "edge_agent",
        "--model",
        str(edge),
        "--state-dir",
        str(run_dir / "agents" / device),
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
    if i % 4 == 3:
        argv += ["--sim-urgent-rate", "0.01", "--sim-fault-rate", "0.002", "--sim-restart-s", "15"]
    log_file = run_dir / "agents" / f"{device}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # The secret travels in the environment, never on a command line others can read.
    env = {**os.environ, **agent_env}
    with log_file.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _summary_loop(config: DemoConfig, api: _Api, stop: threading.Event) -> None:
    started = time.monotonic()
    last_time, last_readings = started, 0
    while True:
        wait = config.summary_every_s
        if config.duration_s:
            wait = min(wait, max(0.0, started + config.duration_s - time.monotonic()))
        if stop.wait(wait):
            return
        now = time.monotonic()
        over = bool(config.duration_s) and now - started >= config.duration_s - 1e-3
        try:
            devices = api.get("/v1/devices")
            stats = api.get("/v1/stats/ingest")
        except (urllib.error.URLError, OSError) as exc:
            _say(config, f"[{now - started:6.0f}s] hub not answering: {exc}")
            if over:
                return
            continue
        counters = stats.get("counters", {})
        readings = int(stats.get("stored_readings", 0))
        compared = int(counters.get("compared_readings", 0))
        disagree = (
            100.0 * int(counters.get("edge_heavy_disagreements", 0)) / compared if compared else 0.0
        )
        rate = (readings - last_readings) / max(now - last_time, 1e-9)
        last_time, last_readings = now, readings
        _say(
            config,
            f"[{now - started:6.0f}s] devices online {devices['states'].get('online', 0)}/{config.devices}  "
            f"readings/s {rate:7.1f}  readings {readings}  urgent events {int(counters.get('stored_events', 0))}  "
            f"edge/heavy disagreement {disagree:.2f}%  invalid {stats.get('invalid_total', 0)}",
        )
        if over:
            return


def _stop_all(
    config: DemoConfig, agents: list[subprocess.Popen[bytes]], hub: subprocess.Popen[bytes]
) -> None:
    _say(config, "stopping agents ...")
    for proc in agents:
        proc.send_signal(signal.SIGTERM)
    clean = 0
    for proc in agents:
        try:
            clean += proc.wait(15) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _say(config, f"agents stopped: {clean}/{len(agents)} exited cleanly; stopping the hub ...")
    hub.send_signal(signal.SIGTERM)
    try:
        code = hub.wait(30)
    except subprocess.TimeoutExpired:
        hub.kill()
        code = hub.wait()
    _say(config, f"hub stopped (exit {code})")


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM end the demo cleanly."""

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
