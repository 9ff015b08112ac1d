"""Many real agents in one process: the agent host that ``bench fleet`` spawns.

A thousand agent processes would need tens of GB; the agent's own parts are
small, its process (Python, numpy, onnxruntime, paho) is not. So one host runs
K real :class:`~edge_agent.agent.Agent` objects side by side, each with its own
settings, device id, state directory, simulated machine, MQTT connection
(birth, will, outbox, heartbeat), sharing ONE :class:`~edge_agent.engine.EdgeModel`
(an onnxruntime session's ``run`` is thread-safe)::

    python -m simulators.fleet --spec SPEC.json

The spec is a JSON file (it holds broker secrets: keep it mode 0600, never
put it on a command line)::

    {"model": "var/models/machine-edge/1.1.0",
     "agent_args": ["--rate-hz", "1", "--log-level", "WARNING"],
     "start_interval_s": 0.01,
     "agents": [{"device": "fleet-0000", "broker": "mqtt://fleet-0000:SECRET@127.0.0.1:1883",
                 "state_dir": "/tmp/run/agents/fleet-0000", "seed": 1}]}

``agent_args`` are ``edgeloop-agent`` flags common to every agent; each agent's
own flags (device, broker, state dir, seed) are added and the whole is
validated by :func:`~edge_agent.settings.load_settings`, as the agent's entry
point does. With ``--ota`` among them every agent acts on the hub's desired
model as ``edgeloop-agent --ota`` does, sharing one session per package
(:class:`SharedModels`) and checking signatures in the host's own process
(``edgeloop-agent`` runs a child per check to keep ``cryptography`` out of
its memory; a host of a hundred agents has no such budget, and a hundred
children at once would cost more than the check).

The host reports on stdout, one JSON object per line: ``{"event": "started",
...}`` once every agent's thread runs; ``{"event": "status", "connected": n,
...}`` every ``--status-every-s`` (the agents' own view, to set beside the
hub's); and ``{"event": "exit", ...}`` with the fleet's totals (readings,
messages, drops, connects, readings scored by each model version, and with
``--ota`` per device) after SIGTERM or SIGINT has stopped every agent
(each flushes its batch, drains its outbox for up to the agent setting
``--shutdown-timeout-s`` and publishes ``offline``). Logs go to stderr.

Concurrency: one reading-loop thread per agent (the caller of ``Agent.run``),
plus each agent's own link thread and paho network thread: three threads per
agent. The main thread only starts agents, waits for a signal and reports.
The host also stops by itself if its parent process goes away.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from shared.errors import EdgeloopError
from shared.logformat import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging, default_log_format

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.engine import EdgeModel

__all__ = ["AgentSpec", "HostSpec", "SharedModels", "main", "raise_fd_limit"]

log = logging.getLogger(__name__)

_ERRORS_KEPT = 10
_PARENT_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent of a host: its identity, its broker account and its seed."""

    device: str
    broker: str
    """Broker URL with this device's credentials."""
    state_dir: str
    seed: int
    args: tuple[str, ...] = ()
    """``edgeloop-agent`` flags of this agent only (e.g. ``--sim-drift``), after the host's."""


@dataclass(frozen=True, slots=True)
class HostSpec:
    """What one host runs (the JSON spec file, parsed)."""

    model: str
    agents: tuple[AgentSpec, ...]
    agent_args: tuple[str, ...] = ()
    start_interval_s: float = 0.0
    """Pause between starting two agents, so connects arrive as a ramp, not a storm."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "agent_args": list(self.agent_args),
                "start_interval_s": self.start_interval_s,
                "agents": [
                    {
                        "device": a.device,
                        "broker": a.broker,
                        "state_dir": a.state_dir,
                        "seed": a.seed,
                        **({"args": list(a.args)} if a.args else {}),
                    }
                    for a in self.agents
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> HostSpec:
        try:
            raw = json.loads(text)
            agents = tuple(
                AgentSpec(
                    str(a["device"]),
                    str(a["broker"]),
                    str(a["state_dir"]),
                    int(a["seed"]),
                    tuple(str(x) for x in a.get("args", ())),
                )
                for a in raw["agents"]
            )
            return cls(
                model=str(raw["model"]),
                agents=agents,
                agent_args=tuple(str(x) for x in raw.get("agent_args", ())),
                start_interval_s=float(raw.get("start_interval_s", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{source}: not a fleet host spec ({type(exc).__name__}: {exc}); "
                "it is written by 'edgeloop-sim bench fleet', see simulators/fleet.py for the format"
            ) from None


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit; returns (soft, hard).

    Each agent holds a socket and paho's wake-up socket pair: three descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by ``nice``, and its autogroup's where the kernel
    groups processes by session (``/proc/self/autogroup``): there a busy host in a session
    of its own would get as much CPU as the hub whatever its threads' nice value."""
    os.nice(nice)
    group = Path("/proc/self/autogroup")
    if group.exists():
        try:
            group.write_text(f"{nice}\n")
        except OSError as exc:
            log.warning("could not lower this host's autogroup priority: %s", exc)


@dataclass
class _Slot:
    """One agent and what its thread found out."""

    spec: AgentSpec
    agent: Agent | None = None
    thread: threading.Thread | None = None
    error: str | None = None


@dataclass
class _Totals:
    agents: int = 0
    started: int = 0
    failed: int = 0
    readings: int = 0
    events: int = 0
    messages: int = 0
    acked_messages: int = 0
    unacked_outbox: int = 0
    connects: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    by_model: Counter[str] = field(default_factory=Counter)
    """Readings each model version scored, over the host's agents."""
    per_device: dict[str, dict[str, int]] = field(default_factory=dict)
    """Readings each model version scored, per device (only when models were switched)."""


class SharedModels:
    """One model per package for a host's agents, as they share the factory model.

    With ``--ota`` each agent downloads, verifies, installs and smoke-tests its own
    copy of an update, as a device does; only the onnxruntime session is opened
    once per package (a device opens its own). Packages are told apart by their
    manifest's bytes, which list every file's sha256, checked by then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[bytes, EdgeModel] = {}

    def load(self, slot: Path) -> EdgeModel:
        from edge_agent.ota.runner import open_slot  # noqa: PLC0415
        from shared.manifest import MANIFEST_FILE  # noqa: PLC0415

        key = hashlib.sha256((slot / MANIFEST_FILE).read_bytes()).digest()
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = open_slot(slot)
            return model


class FleetHost:
    """Starts K agents on threads, stops them on :attr:`stop`, and adds up their figures."""

    def __init__(self, spec: HostSpec, stop: threading.Event) -> None:
        self.spec = spec
        self.stop = stop
        self.slots = [_Slot(a) for a in spec.agents]

    def start(self) -> int:
        """Build and start every agent; returns how many run. Stops early if :attr:`stop` is set."""
        from edge_agent.agent import Agent  # noqa: PLC0415 - pulls in onnxruntime and paho
        from edge_agent.cli import build_actuators, build_source, ota_config  # noqa: PLC0415
        from edge_agent.engine import load_edge_model  # noqa: PLC0415
        from edge_agent.settings import load_settings  # noqa: PLC0415
        from shared import __version__  # noqa: PLC0415
        from shared.signing import verify_in_process  # noqa: PLC0415

        model = load_edge_model(Path(self.spec.model), __version__)
        shared = SharedModels()
        started = 0
        for i, slot in enumerate(self.slots):
            if self.stop.is_set():
                break
            if i and self.spec.start_interval_s and self.stop.wait(self.spec.start_interval_s):
                break
            a = slot.spec
            argv = [
                *self.spec.agent_args,
                "--model",
                self.spec.model,
                "--device",
                a.device,
                "--state-dir",
                a.state_dir,
                "--sim-seed",
                str(a.seed),
                *a.args,
            ]
            try:
                # The broker URL holds the secret: pass it as the environment would.
                settings = load_settings(argv, env={"EDGELOOP_AGENT_BROKER": a.broker})
                source, machine = build_source(settings, model.manifest.input.sensors)
                actuators = build_actuators(settings, machine)
                slot.agent = Agent(settings, model, source, actuators)
                if settings.ota:
                    config = ota_config(settings, model.manifest.input.sensor_names)
                    slot.agent.enable_ota(
                        replace(config, load_model=shared.load, verifier=verify_in_process)
                    )
            except (EdgeloopError, ValueError, OSError) as exc:
                slot.error = f"device {a.device!r}: could not build the agent: {exc}"
                log.error("%s", slot.error)
                continue
            slot.thread = threading.Thread(
                target=self._run_agent, args=(slot,), name=f"agent-{a.device}", daemon=True
            )
            slot.thread.start()
            started += 1
        return started

    def _run_agent(self, slot: _Slot) -> None:
        assert slot.agent is not None
        try:
            slot.agent.run(self.stop)
        except Exception as exc:  # one agent failing must not take its neighbours down
            slot.error = (
                f"device {slot.spec.device!r}: agent stopped on {type(exc).__name__}: {exc}"
            )
            log.exception("device %r: agent failed", slot.spec.device)

    def connected(self) -> int:
        """Agents whose MQTT link is up right now."""
        n = 0
        for slot in self.slots:
            link = slot.agent._link if slot.agent is not None else None
            n += link is not None and link.connected.is_set()
        return n

    def join(self, timeout: float) -> int:
        """Wait for every agent thread to end, ``timeout`` seconds in all; returns those still running."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        return sum(s.thread is not None and s.thread.is_alive() for s in self.slots)

    def stuck(self, limit: int = 2) -> list[str]:
        """Where the first ``limit`` agents that have not stopped are stuck (their stacks)."""
        frames = sys._current_frames()
        out: list[str] = []
        for slot in self.slots:
            t = slot.thread
            if t is None or not t.is_alive() or t.ident not in frames:
                continue
            stack = "".join(traceback.format_stack(frames[t.ident])[-6:])
            out.append(f"device {slot.spec.device!r} still stopping at:\n{stack}")
            if len(out) >= limit:
                break
        return out

    def totals(self) -> _Totals:
        t = _Totals(agents=len(self.slots))
        for slot in self.slots:
            if slot.error is not None:
                t.failed += 1
                if len(t.errors) < _ERRORS_KEPT:
                    t.errors.append(slot.error)
            agent = slot.agent
            if agent is None or slot.thread is None:
                continue
            t.started += 1
            t.readings += agent.readings
            t.events += agent.events
            t.messages += agent.outbox.last_seq
            t.acked_messages += agent.outbox.acked_seq()
            t.unacked_outbox += len(agent.outbox)
            link = agent._link
            t.connects += link.connects if link is not None else 0
            t.dropped.update(agent.outbox.dropped)
            scored = agent.readings_by_model()
            t.by_model.update(scored)
            if agent.ota is not None:
                t.per_device[slot.spec.device] = scored
            for name, n in agent.counters.snapshot().items():
                group, _, key = name.partition(":")
                if group == "dropped":
                    t.dropped[key] += n
                else:
                    t.counters[name] += n
        return t


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.fleet",
        description="Run many real edgeloop agents in one process (spawned by "
        "'edgeloop-sim bench fleet'). Reports JSON lines on stdout; stops on SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--spec", type=Path, required=True, help="JSON spec file (holds secrets; mode 0600)"
    )
    parser.add_argument(
        "--join-timeout-s",
        type=float,
        default=60.0,
        help="after a stop, how long to wait for every agent to flush and say offline (default: 60)",
    )
    parser.add_argument(
        "--status-every-s",
        type=float,
        default=5.0,
        help="seconds between status lines (agents connected) on stdout (default: 5)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="N",
        help="lower this host's CPU priority by N (0-19; with the kernel's autogroups, its "
        "session's too), so that the hub it drives gets the CPU first (default: 0)",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="WARNING",
        help="log level of the host and its agents (default: WARNING)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help=f"log lines as text or JSON (default: ${LOG_FORMAT_ENV}, else text)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(
        args.log_level,
        args.log_format or default_log_format(),
        "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    try:
        spec = HostSpec.from_json(args.spec.read_text(encoding="utf-8"), str(args.spec))
    except (OSError, ValueError) as exc:
        print(f"simulators.fleet: {exc}", file=sys.stderr)
        return 2
    if args.nice:
        lower_priority(args.nice)
    soft, _hard = raise_fd_limit()
    needed = 3 * len(spec.agents) + 64
    if soft < needed:
        log.warning(
            "open-file limit %d is below the ~%d that %d agents need; raise 'ulimit -n'",
            soft,
            needed,
            len(spec.agents),
        )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping %d agents", signal.Signals(signum).name, len(spec.agents))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()
    host = FleetHost(spec, stop)
    started_at = time.monotonic()
    try:
        started = host.start()
    except (EdgeloopError, OSError) as exc:  # the shared model did not load
        print(f"simulators.fleet: {exc}", file=sys.stderr)
        return 2
    _emit(
        "started",
        pid=os.getpid(),
        agents=len(spec.agents),
        started=started,
        start_s=round(time.monotonic() - started_at, 3),
        threads=threading.active_count(),
        fd_limit=soft,
    )
    # Wait for a signal; stop too if the bench that spawned us is gone.
    next_status = time.monotonic()
    while not stop.wait(_PARENT_CHECK_S):
        if os.getppid() != parent:
            log.warning("parent process %d is gone: stopping", parent)
            stop.set()
        elif time.monotonic() >= next_status:
            # The agents' own view, to set beside the hub's: connected is not yet "online".
            _emit("status", connected=host.connected(), agents=len(spec.agents))
            next_status = time.monotonic() + args.status_every_s
    stop_at = time.monotonic()
    still_running = host.join(args.join_timeout_s)
    stuck = host.stuck() if still_running else []
    for text in stuck:
        log.warning("%s", text)
    t = host.totals()
    _emit(
        "exit",
        pid=os.getpid(),
        agents=t.agents,
        started=t.started,
        failed=t.failed,
        still_running=still_running,
        readings=t.readings,
        events=t.events,
        messages=t.messages,
        acked_messages=t.acked_messages,
        unsent_messages=t.unacked_outbox,
        connects=t.connects,
        dropped=dict(t.dropped),
        counters=dict(t.counters),
        readings_by_model=dict(t.by_model),
        readings_by_model_per_device=t.per_device,
        errors=t.errors,
        stuck=stuck,
        stop_s=round(time.monotonic() - stop_at, 3),
    )
    return 0 if not t.failed and not still_running else 1


if __name__ == "__main__":
    raise SystemExit(main())
