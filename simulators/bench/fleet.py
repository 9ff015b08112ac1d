"""``edgeloop-sim bench fleet``: N real agents against one hub, on one machine.

It starts and stops everything it needs, on free loopback ports (the broker,
the hub and the host processes through :mod:`simulators.harness`):

1. a broker: Mosquitto when installed (``--broker auto``, the default) or the
   embedded amqtt broker (``--broker embedded``, started by the hub);
2. the default models (built in ``--models-dir`` if missing);
3. N device accounts, made by :func:`cloud_hub.provision.add_device` as
   ``edgeloop-hub devices add`` makes them: one account per device, with either
   broker (for Mosquitto, its ``password_file`` and ``acl_file`` lines, so each
   device is confined to its own topics, as in production);
4. the hub, ``python -m cloud_hub serve``, with fresh API tokens and a
   temporary data directory;
5. P agent hosts, ``python -m simulators.fleet``, each running K = N/P real
   :class:`~edge_agent.agent.Agent` objects (own MQTT connection, birth and
   will, outbox, heartbeat; one shared model) at ``--rate-hz`` readings/s.
   A thousand agent processes would need tens of GB; a host costs one
   process's runtime plus a few MB per agent.

Once the hub's API shows every device online (or ``--startup-timeout-s`` has
passed) it measures for ``--duration-s``: devices online (polled through
``GET /v1/devices``), CPU and resident memory of the hub, the broker and the
hosts (psutil). Then it stops the hosts with SIGTERM (every agent flushes,
drains and says offline), reads the readings each host's agents produced,
waits for ingest to settle, and compares with what the hub stored
(``GET /v1/stats/ingest``). The last line on stdout is one JSON object;
progress goes to stderr. Nothing here is pass/fail: the figures are reported.

The main keys of the result::

    devices, broker, hosts        what ran (broker: mosquitto | embedded)
    devices_online                most devices the hub showed online at once
    devices_online_min_steady     fewest during the measured phase (flapping shows here)
    all_online, startup_s         whether, and how long after the hosts started, all were online
    readings_sent                 readings the agents scored and queued (their hosts' totals)
    readings_stored, lost         what the hub stored; lost = sent - stored
    duplicates, gaps_missing_seqs the hub's dedupe and gap counters (resends after reconnects)
    hub_cpu_pct, hub_rss_mb       the hub process alone (percent of one core, peak MB)
    broker_cpu_pct, broker_rss_mb Mosquitto, or the embedded broker (the hub's child)
    host_cpu_pct, host_rss_mb     all agent hosts together; agent_*_each divides by devices
    stored_readings_per_s_steady  ingest rate while measuring (vs expected_readings_per_s)
    agent_reconnects, agent_dropped, agent_counters   the agents' own counters, summed

Concurrency: one thread, plus one daemon thread per host reading its stdout.
Children run in their own sessions, so Ctrl-C reaches only the bench, which
then stops them in order (agents first, so they can flush, then the hub, then
the broker) and reports what it measured so far.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final

from shared.endpoint import BrokerEndpoint
from shared.errors import EdgeloopError
from shared.secret_file import write_private
from simulators.harness import (
    HUB_USER,
    HarnessError,
    HubApi,
    HubProcess,
    ManagedProcess,
    Mosquitto,
    find_mosquitto,
)

if TYPE_CHECKING:
    import psutil

    from cloud_hub.provision import Provisioned

__all__ = ["HELP", "FleetBenchConfig", "FleetBenchError", "add_arguments", "run", "run_fleet_bench"]

HELP: Final = (
    "N real agents (1 reading/s each) against one hub with its broker; reports devices online, "
    "readings lost, hub and broker CPU and memory (JSON)"
)

MAX_DEVICES: Final = 20_000
MAX_HOSTS: Final = 64
AGENTS_PER_HOST: Final = 200
"""Auto host count: about this many agents per host process (at least 2 hosts).

Measured on 2 cores at 1 reading/s: 125 or 200 agents per host cost the same
CPU per agent; 500 per host (1,500 threads contending for one GIL) cost 50 %
more per agent and starved the hosts' own reading loops."""
MAX_AUTO_HOSTS: Final = 16
DEVICE_PREFIX: Final = "fleet-"
_HUB_START_TIMEOUT_S: Final = 120.0
_BROKER_START_TIMEOUT_S: Final = 20.0
_STOP_TIMEOUT_S: Final = 30.0
_HOST_JOIN_TIMEOUT_S: Final = 60.0
_SETTLE_QUIET_S: Final = 10.0
_LOG_TAIL_LINES: Final = 15


class FleetBenchError(EdgeloopError):
    """The bench could not bring something up; the message says what and where its log is."""


@dataclass(frozen=True, slots=True)
class FleetBenchConfig:
    """What one run does. Built from the command line by :func:`run`."""

    devices: int = 100
    duration_s: float = 60.0
    broker: str = "auto"
    """``auto`` (Mosquitto when installed), ``mosquitto`` or ``embedded``."""
    hosts: int = 0
    """Agent host processes; 0 picks about one per :data:`AGENTS_PER_HOST` agents."""
    rate_hz: float = 1.0
    models_dir: Path = Path("var/models")
    work_dir: Path | None = None
    """Kept if given; otherwise a temporary directory, removed unless something went wrong."""
    ramp_per_s: float = 100.0
    """Agents started per second, over all hosts: connects arrive as a ramp, not a storm."""
    startup_timeout_s: float = 0.0
    """How long to wait for every device online; 0: 60 s plus twice the ramp's length."""
    settle_timeout_s: float = 120.0
    poll_s: float = 2.0
    seed: int = 1
    agent_args: tuple[str, ...] = ()
    """Extra ``edgeloop-agent`` flags for every agent (e.g. ``--max-delay-ms 2000``)."""
    progress: IO[str] | None = field(default=sys.stderr, repr=False)

    @property
    def bench_name(self) -> str:
        """How its errors begin."""
        return "bench fleet"

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.devices <= MAX_DEVICES:
            problems.append(f"--devices must be 1-{MAX_DEVICES}, got {self.devices}")
        if not 0 <= self.hosts <= MAX_HOSTS:
            problems.append(f"--hosts must be 0 (auto) to {MAX_HOSTS}, got {self.hosts}")
        if not 0 < self.duration_s <= 86_400:
            problems.append(f"--duration-s must be in (0, 86400], got {self.duration_s:g}")
        if not 0 < self.rate_hz <= 1000:
            problems.append(f"--rate-hz must be in (0, 1000], got {self.rate_hz:g}")
        if not 0 < self.ramp_per_s <= 100_000:
            problems.append(f"--ramp-per-s must be in (0, 100000], got {self.ramp_per_s:g}")
        if self.startup_timeout_s < 0 or self.settle_timeout_s <= 0 or self.poll_s <= 0:
            problems.append("--startup-timeout-s must be >= 0, --settle-timeout-s and --poll-s > 0")
        if self.broker not in ("auto", "mosquitto", "embedded"):
            problems.append(f"--broker must be auto, mosquitto or embedded, got {self.broker!r}")
        if problems:
            raise ValueError(f"{self.bench_name}: " + "; ".join(problems))

    @property
    def host_count(self) -> int:
        if self.hosts:
            return min(self.hosts, self.devices)
        return min(
            self.devices, max(2, min(MAX_AUTO_HOSTS, math.ceil(self.devices / AGENTS_PER_HOST)))
        )

    @property
    def startup_budget_s(self) -> float:
        if self.startup_timeout_s:
            return self.startup_timeout_s
        return 60.0 + 2.0 * self.devices / self.ramp_per_s


# -- command line ------------------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser,
    d: FleetBenchConfig | None = None,
    *,
    duration_help: str = "seconds to measure once every device is online",
    agents_per_host: int = AGENTS_PER_HOST,
    work_dir_help: str = "",
) -> None:
    """Add the bench's options to its sub-parser (``d``: the defaults shown; another bench
    built on this one passes its own, and its own words for what differs)."""
    d = d or FleetBenchConfig()
    parser.add_argument(
        "--devices", type=int, default=d.devices, help=f"real agents to run (default: {d.devices})"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=d.duration_s,
        help=f"{duration_help} (default: {d.duration_s:g})",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default=d.broker,
        help="broker to start: auto = Mosquitto when installed, else the embedded amqtt broker "
        f"(default: {d.broker})",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=d.hosts,
        help=f"agent host processes sharing the agents (default: 0 = about one per "
        f"{agents_per_host} agents, 2 to {MAX_AUTO_HOSTS})",
    )
    parser.add_argument(
        "--rate-hz",
        type=float,
        default=d.rate_hz,
        help=f"readings per second per agent (default: {d.rate_hz:g})",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=d.models_dir,
        help="model directory; the default models are built there if missing (default: var/models)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the run's logs, accounts and state here (default: a temporary directory, "
        f"removed unless something went wrong){work_dir_help}",
    )
    parser.add_argument(
        "--ramp-per-s",
        type=float,
        default=d.ramp_per_s,
        help=f"agents started per second over all hosts (default: {d.ramp_per_s:g})",
    )
    parser.add_argument(
        "--startup-timeout-s",
        type=float,
        default=d.startup_timeout_s,
        help="how long to wait for every device online before measuring anyway "
        "(default: 0 = 60 s plus twice the ramp)",
    )
    parser.add_argument(
        "--settle-timeout-s",
        type=float,
        default=d.settle_timeout_s,
        help=f"after the agents stop, how long to wait for ingest to store everything "
        f"(default: {d.settle_timeout_s:g})",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=d.poll_s,
        help=f"seconds between reads of the hub's API and of CPU/memory (default: {d.poll_s:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the simulated fleet (default: {d.seed})"
    )
    parser.add_argument(
        "--agent-args",
        default="",
        metavar="FLAGS",
        help="extra edgeloop-agent flags for every agent, one string (e.g. '--max-delay-ms 2000')",
    )


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`FleetBenchConfig`'s fields from the options :func:`add_arguments` added."""
    return {
        "devices": args.devices,
        "duration_s": args.duration_s,
        "broker": args.broker,
        "hosts": args.hosts,
        "rate_hz": args.rate_hz,
        "models_dir": args.models_dir,
        "work_dir": args.work_dir,
        "ramp_per_s": args.ramp_per_s,
        "startup_timeout_s": args.startup_timeout_s,
        "settle_timeout_s": args.settle_timeout_s,
        "poll_s": args.poll_s,
        "seed": args.seed,
        "agent_args": tuple(shlex.split(args.agent_args)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed arguments and return its JSON-able result."""
    return run_fleet_bench(FleetBenchConfig(**config_fields(args)))


# -- small parts -------------------------------------------------------------------------------


def _states(api: HubApi) -> dict[str, int] | None:
    """Devices per state (online, offline, stale, never_seen), or None if the hub did not answer.

    ``online`` counts every device the hub hears from: its degraded and buffering
    ones too (:mod:`cloud_hub.devices.states`), which are also listed apart."""
    try:
        body = api.get_json("/v1/devices", timeout=10.0)
    except (HarnessError, OSError, ValueError):
        return None
    states = {str(k): int(v) for k, v in body.get("states", {}).items()}
    states["online"] = sum(states.get(s, 0) for s in ("online", "degraded", "buffering"))
    return states


def _ingest(api: HubApi) -> dict[str, Any] | None:
    """``/v1/stats/ingest``, or None if the hub did not answer."""
    try:
        body: dict[str, Any] = api.get_json("/v1/stats/ingest", timeout=10.0)
    except (HarnessError, OSError, ValueError):
        return None
    return body


class _Usage:
    """CPU and resident memory of a group of processes over a measured phase."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._cpu1: float | None = None
        self._t1 = 0.0
        self.rss_max = 0.0
        self.threads_max = 0
        self.fds_max = 0

    def _cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(Exception):  # psutil.Error: a process may be gone
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def begin(self) -> None:
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self.sample()

    def sample(self) -> None:
        rss, threads, fds = 0.0, 0, 0
        for p in self.procs:
            with contextlib.suppress(Exception), p.oneshot():
                rss += p.memory_info().rss / 2**20
                threads = max(threads, p.num_threads())
                fds = max(fds, p.num_fds())
        self.rss_max = max(self.rss_max, rss)
        self.threads_max = max(self.threads_max, threads)
        self.fds_max = max(self.fds_max, fds)

    def end(self) -> None:
        self.sample()
        self._cpu1, self._t1 = self._cpu(), time.monotonic()

    @property
    def cpu_s(self) -> float | None:
        """CPU seconds over the phase, all processes together."""
        if self._cpu1 is None:
            return None
        return round(self._cpu1 - self._cpu0, 2)

    @property
    def cpu_pct(self) -> float | None:
        """Percent of one core over the phase (200 = two cores busy)."""
        if self._cpu1 is None or self._t1 <= self._t0:
            return None
        return round(100.0 * (self._cpu1 - self._cpu0) / (self._t1 - self._t0), 1)


@dataclass
class _Host:
    """One agent host process and what it has said on stdout."""

    index: int
    agents: int
    process: ManagedProcess
    started: dict[str, Any] | None = None
    connected: int = 0
    """Agents connected to the broker, by the host's last status line."""
    exited: dict[str, Any] | None = None
    other: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def read_stdout(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("event") == "started":
                self.started = msg
            elif isinstance(msg, dict) and msg.get("event") == "status":
                self.connected = int(msg.get("connected", 0))
            elif isinstance(msg, dict) and msg.get("event") == "exit":
                self.exited = msg
            elif line and len(self.other) < 20:
                self.other.append(line)


# -- the run -----------------------------------------------------------------------------------


class _FleetBench:
    name = "bench fleet"
    """How progress lines begin."""

    def __init__(self, config: FleetBenchConfig) -> None:
        self.config = config
        self.created_dir = config.work_dir is None
        self.work = Path()
        self.broker_kind = ""
        self._spawned_at = 0.0
        self.mosquitto: Mosquitto | None = None
        self.hub: HubProcess | None = None
        self.hosts: list[_Host] = []
        self.api: HubApi | None = None
        self.result: dict[str, Any] = {}
        self.errors: list[str] = []
        self._t_start = time.monotonic()

    def say(self, text: str) -> None:
        if self.config.progress is not None:
            elapsed = time.monotonic() - self._t_start
            print(f"[{self.name} {elapsed:6.1f}s] {text}", file=self.config.progress, flush=True)

    # -- bring-up ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from simulators.fleet import raise_fd_limit  # noqa: PLC0415

        c = self.config
        fd_soft, _ = raise_fd_limit()  # Mosquitto and the hub inherit it
        self.broker_kind = self._pick_broker()
        if c.work_dir is None:
            prefix = "edgeloop-" + self.name.replace(" ", "-") + "-"
            self.work = Path(tempfile.mkdtemp(prefix=prefix))
        else:
            self.work = c.work_dir.resolve()
            self.work.mkdir(parents=True, exist_ok=True)
        n_hosts = c.host_count
        self.result = {
            "devices": c.devices,
            "broker": self.broker_kind,
            "hosts": n_hosts,
            "agents_per_host": math.ceil(c.devices / n_hosts),
            "rate_hz": c.rate_hz,
            "fd_limit": fd_soft,
        }
        interrupted = False
        held: dict[int, Any] = {}
        installed, previous = self._sigterm_as_interrupt()
        ok = False
        try:
            try:
                edge = self._models()
                self._make_broker_and_hub()
                provisioned = self._provision()
                self._start_broker(provisioned)
                self._start_hub()
                self._start_hosts(edge, provisioned)
                self._startup()
                self._steady()
            except KeyboardInterrupt:
                interrupted = True
                self.say("interrupted: stopping everything and reporting what was measured")
            # Stopping takes a while (agents drain, ingest settles): a second Ctrl-C or
            # SIGTERM meanwhile must not cut it short and lose the report.
            held = self._hold_signals()
            if installed:
                held[signal.SIGTERM] = previous  # what was there before the run
            self._stop_hosts()
            self._settle()
            ok = True
        finally:
            for host in self.hosts:
                host.process.stop(5.0)
            hub_code = self.hub.stop() if self.hub is not None else None
            if self.mosquitto is not None:
                self.mosquitto.stop()
            for signum, handler in held.items():
                signal.signal(signum, handler)
            if installed and not held:
                signal.signal(signal.SIGTERM, previous)
            if self.created_dir and (ok or interrupted) and not self.errors:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                self.say(f"logs and state kept in {self.work}")
        self.result["hub_exit_code"] = hub_code
        self.result["interrupted"] = interrupted
        self.result["errors"] = self.errors
        if not self.created_dir or self.errors:
            self.result["work_dir"] = str(self.work)
        return self.result

    def _hold_signals(self) -> dict[int, Any]:
        """While stopping: SIGINT and SIGTERM say so and are otherwise ignored. Returns
        the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.say(f"{signal.Signals(signum).name}: already stopping; the report follows")

        return {
            signal.SIGINT: signal.signal(signal.SIGINT, handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, handler),
        }

    def _sigterm_as_interrupt(self) -> tuple[bool, Any]:
        """SIGTERM stops the bench as Ctrl-C does (cleanly).

        Returns whether a handler was installed (only the main thread can) and
        the one to restore.
        """
        if threading.current_thread() is not threading.main_thread():
            return False, None

        def handler(_signum: int, _frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        return True, signal.signal(signal.SIGTERM, handler)

    def _pick_broker(self) -> str:
        want = self.config.broker
        if want == "embedded":
            return "embedded"
        if find_mosquitto() is not None:
            return "mosquitto"
        if want == "mosquitto":
            raise FleetBenchError(
                f"{self.name}: --broker mosquitto, but the mosquitto binary is not installed "
                "(apt-get install mosquitto); or use --broker embedded"
            )
        return "embedded"

    def _models(self) -> Path:
        from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

        t0 = time.monotonic()
        built = build_default_models(self.config.models_dir)
        self.say(f"models ready in {time.monotonic() - t0:.1f} s: edge {built.edge}")
        return built.edge.resolve()

    def _make_broker_and_hub(self) -> None:
        """Mosquitto (if chosen) and the hub, on free ports picked now; neither started yet."""
        from shared.topics import Topics  # noqa: PLC0415

        broker: BrokerEndpoint | None = None
        if self.broker_kind == "mosquitto":
            self.mosquitto = Mosquitto(
                self.work / "mosquitto",
                users={HUB_USER: secrets.token_urlsafe(32)},
                acl=f"user {HUB_USER}\ntopic readwrite {Topics().root}/#",
                new_session=True,
                start_timeout=_BROKER_START_TIMEOUT_S,
            )
            broker = self.mosquitto.endpoint(HUB_USER)
        self.hub = HubProcess(
            self.work / "hub",
            self.config.models_dir,
            broker=broker,
            args=self._hub_args(),
            log_path=self.work / "hub.log",
            new_session=True,
            start_timeout=_HUB_START_TIMEOUT_S,
            stop_timeout=_STOP_TIMEOUT_S,
        )

    def _provision(self) -> list[Provisioned]:
        from cloud_hub.provision import add_device  # noqa: PLC0415

        assert self.hub is not None
        t0 = time.monotonic()
        # Fresh secrets every run, also in a --work-dir reused from an earlier run: its
        # brokers and agents all start anew with them.
        settings = self.hub.settings()
        done = [
            add_device(settings, f"{DEVICE_PREFIX}{i:05d}", rotate=True)
            for i in range(self.config.devices)
        ]
        self.result["provision_s"] = round(time.monotonic() - t0, 2)
        self.result["accounts"] = "per device (edgeloop-hub devices add)" + (
            ", with Mosquitto ACLs" if self.broker_kind == "mosquitto" else ""
        )
        self.say(f"{len(done)} devices provisioned in {self.result['provision_s']} s")
        return done

    def _start_broker(self, provisioned: list[Provisioned]) -> None:
        if self.mosquitto is None:
            return  # the hub starts the embedded broker itself
        self.mosquitto.add_accounts(
            password_lines=[p.mosquitto_password_line or "" for p in provisioned],
            acl_blocks=[p.mosquitto_acl or "" for p in provisioned],
        )
        try:
            self.mosquitto.start()
        except HarnessError as exc:
            raise FleetBenchError(f"{self.name}: mosquitto did not start: {exc}") from None
        self.say(f"mosquitto listening on {self.mosquitto.host}:{self.mosquitto.port}")

    def _start_hub(self) -> None:
        assert self.hub is not None
        try:
            self.hub.start()
        except HarnessError as exc:
            raise FleetBenchError(f"{self.name}: the hub did not start: {exc}") from None
        self.api = self.hub.api
        broker = self.hub.broker_endpoint()
        self.say(
            f"hub up: API {self.api.base_url}, broker {self.broker_kind} on port {broker.port}"
        )

    def _start_hosts(self, edge: Path, provisioned: list[Provisioned]) -> None:
        from simulators.fleet import AgentSpec, HostSpec  # noqa: PLC0415

        c = self.config
        n_hosts = c.host_count
        agent_args = (
            "--rate-hz",
            f"{c.rate_hz:g}",
            "--source",
            "sim",
            "--log-level",
            "WARNING",
            # The bench measures the hub and broker with N connections. A host
            # process packs ~200 agents on this VM's 2 cores, which no device
            # does, and 200 disk outboxes each fsyncing every second saturate it
            # (1,000 agents: 846 online, hosts at 185 % CPU). A later
            # --agent-args "--outbox disk" overrides this.
            "--outbox",
            "memory",
            *c.agent_args,
        )
        interval = n_hosts / c.ramp_per_s
        (self.work / "hosts").mkdir(parents=True, exist_ok=True)
        self._spawned_at = time.monotonic()
        for h in range(n_hosts):
            mine = provisioned[h::n_hosts]
            spec = HostSpec(
                model=str(edge),
                agents=tuple(
                    AgentSpec(
                        device=p.device,
                        broker=p.agent_env["EDGELOOP_AGENT_BROKER"],
                        state_dir=str(self._host_agents_dir() / p.device),
                        seed=(seed := c.seed * 100_000 + h + n_hosts * i),
                        args=self._agent_args(p.device, seed),
                    )
                    for i, p in enumerate(mine)
                ),
                agent_args=agent_args,
                start_interval_s=interval,
            )
            spec_path = self.work / "hosts" / f"host-{h}.json"
            # The spec holds every device's secret: create it private, never on a command line.
            write_private(spec_path, spec.to_json())
            process = ManagedProcess(
                [
                    sys.executable,
                    "-m",
                    "simulators.fleet",
                    "--spec",
                    str(spec_path),
                    "--join-timeout-s",
                    str(_HOST_JOIN_TIMEOUT_S),
                    *self._host_flags(),
                ],
                log_path=self.work / "hosts" / f"host-{h}.log",
                name=f"agent host {h}",
                stdout_pipe=True,
                new_session=True,
            )
            host = _Host(h, len(mine), process.start(wait=False))
            host.reader = threading.Thread(
                target=host.read_stdout, name=f"host-{h}-stdout", daemon=True
            )
            host.reader.start()
            self.hosts.append(host)
        self.say(
            f"{n_hosts} agent hosts started for {c.devices} agents "
            f"(ramp {c.ramp_per_s:g} agents/s, {c.rate_hz:g} readings/s each)"
        )

    def _host_flags(self) -> tuple[str, ...]:
        """More ``python -m simulators.fleet`` flags for every host."""
        return ()

    def _hub_args(self) -> tuple[str, ...]:
        """More ``edgeloop-hub serve`` flags."""
        return ()

    def _agent_args(self, device: str, seed: int) -> tuple[str, ...]:
        """More ``edgeloop-agent`` flags for one agent (its ``--sim-seed`` is ``seed``)."""
        return ()

    def _host_agents_dir(self) -> Path:
        """Where the hosts' agents keep their state directories."""
        return self.work / "agents"

    # -- measuring -----------------------------------------------------------------------------

    def _procs(self) -> tuple[_Usage, _Usage, _Usage]:
        import psutil  # noqa: PLC0415

        assert self.hub is not None
        hub = psutil.Process(self.hub.pid)
        if self.mosquitto is not None:
            broker = [psutil.Process(self.mosquitto.pid)]
        else:
            broker = list(hub.children(recursive=True))
        hosts = [psutil.Process(h.process.pid) for h in self.hosts if h.process.is_running]
        return _Usage([hub]), _Usage(broker), _Usage(hosts)

    def _check_hosts(self, *, fatal: bool) -> None:
        for host in self.hosts:
            code = host.process.poll()
            if code is None or host.exited is not None:
                continue
            message = (
                f"agent host {host.index} ({host.agents} agents) exited early with status {code}; "
                f"its log {host.log_path} ends:\n{host.process.log_tail(_LOG_TAIL_LINES)}"
            )
            if fatal:
                raise FleetBenchError(f"{self.name}: {message}")
            if message not in self.errors:
                self.errors.append(message)

    def _startup(self) -> None:
        c, api = self.config, self.api
        assert api is not None
        deadline = self._spawned_at + c.startup_budget_s
        online_max, startup_s, last_say = 0, None, 0.0
        while True:
            self._check_hosts(fatal=True)
            states = _states(api)
            now = time.monotonic()
            online = states.get("online", 0) if states else 0
            online_max = max(online_max, online)
            if online >= c.devices:
                startup_s = round(now - self._spawned_at, 2)
                break
            if now >= deadline:
                self.errors.append(
                    f"only {online} of {c.devices} devices online after {c.startup_budget_s:.0f} s "
                    "of start-up; measuring anyway"
                )
                break
            if now - last_say >= 5.0:
                started = sum(h.started is not None for h in self.hosts)
                self.say(
                    f"start-up: {online}/{c.devices} online, {started}/{len(self.hosts)} hosts "
                    "have started all their agents"
                )
                last_say = now
            time.sleep(min(1.0, c.poll_s))
        self.result["startup_s"] = startup_s
        self.result["all_online"] = startup_s is not None
        self.result["devices_online"] = online_max
        host_start = [h.started["start_s"] for h in self.hosts if h.started]
        self.result["host_start_s_max"] = max(host_start) if host_start else None
        self.say(
            f"all {c.devices} devices online after {startup_s} s"
            if startup_s is not None
            else f"start-up timed out at {online_max}/{c.devices} online"
        )

    def _steady(self) -> None:
        c, api = self.config, self.api
        assert api is not None
        hub, broker, hosts = self._procs()
        self.result["steady_s"] = 0.0
        online_max = int(self.result.get("devices_online", 0))
        online_min: int | None = None
        stale_max = 0
        connected_min: int | None = None
        poll_failures, poll_max_s = 0, 0.0
        queue_max, latency_p99_max = 0, 0.0
        stats0 = _ingest(api)
        stored0 = int(stats0.get("stored_readings", 0)) if stats0 else 0
        for usage in (hub, broker, hosts):
            usage.begin()
        t0 = time.monotonic()
        end = t0 + c.duration_s
        last_say = t0
        try:
            while (now := time.monotonic()) < end:
                time.sleep(min(c.poll_s, max(0.0, end - now)))
                self._check_hosts(fatal=False)
                asked = time.monotonic()
                states = _states(api)
                poll_max_s = max(poll_max_s, time.monotonic() - asked)
                live = (_ingest(api) or {}).get("live") or {}
                queue_max = max(queue_max, int(live.get("queue_depth", 0)))
                latency_p99_max = max(latency_p99_max, float(live.get("latency_p99_ms", 0.0)))
                for usage in (hub, broker, hosts):
                    usage.sample()
                if states is None:
                    poll_failures += 1
                    continue
                online = states.get("online", 0)
                online_max = max(online_max, online)
                online_min = online if online_min is None else min(online_min, online)
                connected = sum(h.connected for h in self.hosts)
                connected_min = (
                    connected if connected_min is None else min(connected_min, connected)
                )
                stale_max = max(stale_max, states.get("stale", 0))
                if time.monotonic() - last_say >= 10.0:
                    self.say(f"steady: {online}/{c.devices} online, {states.get('stale', 0)} stale")
                    last_say = time.monotonic()
        finally:
            for usage in (hub, broker, hosts):
                usage.end()
            stats1 = _ingest(api)
            elapsed = time.monotonic() - t0
            stored1 = int(stats1.get("stored_readings", 0)) if stats1 else stored0
            if poll_failures:
                self.errors.append(f"the hub's API did not answer {poll_failures} polls")
            self.result.update(
                {
                    "devices_online": online_max,
                    "devices_online_min_steady": online_min,
                    "devices_stale_max_steady": stale_max,
                    "agents_connected_min_steady": connected_min,
                    "steady_s": round(elapsed, 1),
                    "stored_readings_per_s_steady": round((stored1 - stored0) / elapsed, 1)
                    if elapsed > 0
                    else None,
                    "hub_api_poll_max_s": round(poll_max_s, 2),
                    "hub_queue_depth_max": queue_max,
                    "hub_ingest_p99_ms_max": round(latency_p99_max, 1),
                    "expected_readings_per_s": round(c.devices * c.rate_hz, 1),
                    "hub_cpu_pct": hub.cpu_pct,
                    "hub_rss_mb": round(hub.rss_max, 1),
                    "hub_threads": hub.threads_max,
                    "broker_cpu_pct": broker.cpu_pct,
                    "broker_rss_mb": round(broker.rss_max, 1),
                    "broker_fds": broker.fds_max,
                    "host_cpu_pct": hosts.cpu_pct,
                    "host_rss_mb": round(hosts.rss_max, 1),
                    "host_threads_max": hosts.threads_max,
                    "agent_cpu_pct_each": round(hosts.cpu_pct / c.devices, 3)
                    if hosts.cpu_pct is not None
                    else None,
                    "agent_rss_mb_each": round(hosts.rss_max / c.devices, 2),
                }
            )

    # -- stopping and counting -----------------------------------------------------------------

    def _stop_hosts(self) -> None:
        if not self.hosts:
            return
        self.say("stopping the agents (SIGTERM: flush, drain, offline) ...")
        t0 = time.monotonic()
        for host in self.hosts:
            host.process.terminate()
        codes: list[int | None] = []
        deadline = time.monotonic() + _HOST_JOIN_TIMEOUT_S + 15.0
        for host in self.hosts:
            # Signalled once only: a second SIGTERM could hit a host while Python is
            # finalizing (its handler gone) and kill it half way through its report.
            codes.append(host.process.stop(max(0.0, deadline - time.monotonic())))
            if host.reader is not None:
                host.reader.join(5.0)
        self.result["hosts_stop_s"] = round(time.monotonic() - t0, 2)
        self.result["host_exit_codes"] = codes
        exits = [h.exited for h in self.hosts if h.exited is not None]
        if len(exits) < len(self.hosts):
            self.errors.append(
                f"{len(self.hosts) - len(exits)} agent hosts did not report their totals; "
                "readings_sent is a lower bound"
            )
        dropped: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        for e in exits:
            dropped.update(e.get("dropped", {}))
            counters.update(e.get("counters", {}))
            self.errors.extend(e.get("errors", []))
            self.errors.extend(e.get("stuck", []))

        def total(key: str) -> int:
            return sum(int(e.get(key, 0)) for e in exits)

        started = total("started")
        self.result.update(
            {
                "agents_started": started,
                "agents_failed": total("failed"),
                "agents_still_stopping_at_host_exit": total("still_running"),
                "readings_sent": total("readings"),
                "messages_sent": total("messages"),
                "messages_acked_by_hub": total("acked_messages"),
                "urgent_events": total("events"),
                "agent_reconnects": max(0, total("connects") - started),
                "agent_dropped": dict(dropped),
                "agent_counters": dict(counters),
            }
        )

    def _settle(self) -> None:
        api = self.api
        sent = self.result.get("readings_sent")
        if api is None or sent is None:
            return
        self.say(f"agents stopped; waiting for ingest to store {sent} readings ...")
        deadline = time.monotonic() + self.config.settle_timeout_s
        stats, last, quiet_since = None, -1, time.monotonic()
        while time.monotonic() < deadline:
            stats = _ingest(api) or stats
            stored = int(stats.get("stored_readings", 0)) if stats else 0
            if stored >= sent:
                break
            now = time.monotonic()
            if stored != last:
                last, quiet_since = stored, now
            elif now - quiet_since >= _SETTLE_QUIET_S:
                break
            time.sleep(0.5)
        stored = int(stats.get("stored_readings", 0)) if stats else 0
        gaps = (stats or {}).get("gaps", {})
        states = _states(api) or {}
        self.result.update(
            {
                "readings_stored": stored,
                "lost": sent - stored,
                "duplicates": int((stats or {}).get("duplicates", 0)),
                "gaps_missing_seqs": int(gaps.get("missing_seqs", 0)),
                "invalid_total": int((stats or {}).get("invalid_total", 0)),
                "hub_dropped": (stats or {}).get("dropped", {}),
                "ingest_errors": int((stats or {}).get("ingest_errors", 0)),
                "devices_offline_after_stop": states.get("offline", 0),
            }
        )
        self.say(f"stored {stored} of {sent} readings")


def run_fleet_bench(config: FleetBenchConfig) -> dict[str, Any]:
    """Run the fleet benchmark; returns its result (the JSON object the CLI prints).

    Raises :class:`FleetBenchError` when the broker, the hub or an agent host
    cannot start; everything started is stopped first.
    """
    return _FleetBench(config).run()
