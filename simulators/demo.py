"""``edgeloop-sim demo``: the hub and a simulated fleet of real agents, on one machine.

It builds (or finds) the default models, starts ``edgeloop-hub serve`` with its
embedded broker on free ports and fresh API tokens, provisions ``--devices``
devices the way ``edgeloop-hub devices add`` does, and starts one real
``edgeloop-agent`` process per device on a simulated machine (every fourth
develops faults, hits urgent conditions, stops itself, and is restarted 15 s
later). Its first line is the dashboard's URL (the hub's port is picked before
anything else; the page answers once the hub is up). Once the hub is up it prints a
one-time sign-in link for the dashboard: a code for the admin token in the URL's
fragment, single use, valid for 120 s (then sign in with a token). Then the API URL
and the files that hold the API tokens (mode 0600; the tokens themselves never
appear in its output), then every few seconds a summary read from the hub's own
API: devices connected (online, degraded or buffering: heard from), readings
stored per second, urgent events, edge/heavy disagreement. Ctrl-C or
``--duration`` ends it; agents get SIGTERM first (they flush and say offline),
then the hub.

Concurrency: one thread; the hub and the agents are child processes.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cloud_hub.devices.states import LIVE
from shared.errors import EdgeloopError
from simulators.harness import (
    AgentProcess,
    CancelledError,
    HarnessError,
    HubApi,
    HubProcess,
)

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
    out: TextIO = field(default=sys.stdout, repr=False)


class DemoError(EdgeloopError):
    """The demo could not bring something up; the message says what."""


def _say(config: DemoConfig, text: str) -> None:
    print(text, file=config.out, flush=True)


def run_demo(config: DemoConfig, stop: threading.Event | None = None) -> int:
    """Run the demo until ``stop`` is set or the duration ends; returns the exit code."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

    stop = stop or threading.Event()
    run_dir = (config.work_dir / time.strftime("%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # The hub's ports are picked here, so the dashboard's URL is the first line.
    hub = HubProcess(run_dir / "hub", config.models_dir, log_path=run_dir / "hub.log")
    _say(config, f"dashboard: {hub.api.base_url}/")
    _say(
        config,
        f"edgeloop demo: a hub with its embedded broker and {config.devices} simulated devices",
    )
    built = build_default_models(config.models_dir)
    _say(config, f"models: edge {built.edge}, heavy {built.heavy}")
    devices = [hub.provision(f"sim-{i:03d}") for i in range(config.devices)]
    agents: list[AgentProcess] = []
    try:
        try:
            hub.start(cancel=stop)
        except CancelledError:
            return 0
        except HarnessError as exc:
            raise DemoError(f"the hub did not start: {exc}") from None
        api = hub.api
        _say_sign_in(config, hub)
        # The files, not the tokens: this output may end up in a terminal log or a CI log.
        read_file, admin_file = hub.secrets_dir / "read-token", hub.secrets_dir / "admin-token"
        _say(config, f"hub: API {api.base_url} (docs at {api.base_url}/docs)")
        _say(config, f"     read token in {read_file}, admin token in {admin_file}")
        _say(
            config,
            f'     e.g. curl -H "Authorization: Bearer $(cat {read_file})" {api.base_url}/v1/devices',
        )
        _say(config, f"     logs and state in {run_dir}")
        for i, device in enumerate(devices):
            agent = _agent(config, built.edge, device.agent_env, i, run_dir)
            agents.append(agent)
            agent.start(wait=False)
        _say(config, f"agents: {len(agents)} started")
        _summary_loop(config, api, stop)
    finally:
        _stop_all(config, agents, hub)
    return 0


SIGN_IN_TTL_S = 120.0
"""How long the demo's one-time sign-in link works."""


def _say_sign_in(config: DemoConfig, hub: HubProcess) -> None:
    """A one-time sign-in link to the dashboard: a code the hub makes (for the admin
    token) in the URL's fragment, single use, :data:`SIGN_IN_TTL_S` long; never the
    token itself."""
    url = f"{hub.api.base_url}/"
    reply = hub.admin_api.request(
        "POST", "/v1/session/codes", json_body={"access": "admin", "ttl_s": SIGN_IN_TTL_S}
    )
    if reply.status != 201:
        _say(
            config,
            f"dashboard: no sign-in link (the hub answered {reply.status}); sign in with a token",
        )
        return
    _say(
        config,
        f"dashboard: sign in once with {url}{reply.json()['fragment']} "
        f"(the admin token; works once, for {SIGN_IN_TTL_S:.0f} s; then sign in with a token)",
    )


def _agent(
    config: DemoConfig, edge: Path, agent_env: dict[str, str], i: int, run_dir: Path
) -> AgentProcess:
    args = [
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
    ]
    if i % 4 == 3:
        args += ["--sim-urgent-rate", "0.01", "--sim-fault-rate", "0.002", "--sim-restart-s", "15"]
    # The harness puts the device's secret in a 0600 file, never on a command line.
    device = agent_env["EDGELOOP_AGENT_DEVICE"]
    return AgentProcess(edge, run_dir / "agents" / device, env=agent_env, args=args)


def _summary_loop(config: DemoConfig, api: HubApi, stop: threading.Event) -> None:
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
            devices = api.get_json("/v1/devices")
            stats = api.get_json("/v1/stats/ingest")
        except (HarnessError, OSError, ValueError) as exc:
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
        connected = sum(n for state, n in devices["states"].items() if state in LIVE)
        last_time, last_readings = now, readings
        _say(
            config,
            f"[{now - started:6.0f}s] devices connected {connected}/{config.devices}  "
            f"readings/s {rate:7.1f}  readings {readings}  urgent events {int(counters.get('stored_events', 0))}  "
            f"edge/heavy disagreement {disagree:.2f}%  invalid {stats.get('invalid_total', 0)}  "
            f"lost at edge {sum(stats.get('lost_at_edge_readings', {}).values())}  "
            f"lost unexplained {stats.get('lost_unexplained_messages', 0)}",
        )
        if over:
            return


def _stop_all(config: DemoConfig, agents: list[AgentProcess], hub: HubProcess) -> None:
    _say(config, "stopping agents ...")
    for agent in agents:
        agent.terminate()
    clean = sum(agent.stop() == 0 for agent in agents)
    _say(config, f"agents stopped: {clean}/{len(agents)} exited cleanly; stopping the hub ...")
    _say(config, f"hub stopped (exit {hub.stop()})")


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM end the demo cleanly."""

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
