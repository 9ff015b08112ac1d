"""Delivery under real faults, one at a time: what ``edgeloop-sim bench chaos`` and the fault tests run.

:class:`ChaosRig` starts Mosquitto (persistence on, per-device accounts and
ACLs, as in production) and a hub, on free loopback ports, through
:mod:`simulators.harness`. :func:`run_fault` then runs one fault against a
fresh fleet of real ``edgeloop-agent`` processes, whose device names start
with the fault's letter (``a-000``, ``a-001``...), so each fault's accounting
is its own:

====  ==========================  ======================================================
a     ``broker_killed``           Mosquitto SIGKILLed, restarted after ``broker_down_s``
b     ``network_cut``             Mosquitto stopped for ``network_cut_s``
c     ``agent_killed``            one agent SIGKILLed, restarted after ``agent_down_s``
d     ``hub_killed_and_stopped``  the hub SIGKILLed and restarted, then SIGTERMed and
                                  restarted, each time down ``hub_down_s``
e     ``outbox_disk_full``        one agent's state directory on a small disk (a tmpfs
                                  of ``disk_bytes`` mounted here, or a simulated one
                                  where mounting is refused), and a broker outage of
                                  ``outage_s`` that fills it
f     ``outbox_smaller_than_outage``  the agents start during a broker outage of
                                  ``outage_s`` with ``--outbox-max outbox_max``
====  ==========================  ======================================================

Per fault: the agents start (and read at ``rate_hz``) and, except in (f), run
until each has ``warmup_s`` worth of readings stored; the fault happens; at
its end the agents' own records of what they issued are read (their
``outbox.db``, ``epochs`` table, read-only) and ``catch_up_s`` is the time
until the hub has settled all of it (its ledger's watermark per device and
epoch, read from its database, read-only). Then the agents are stopped with
SIGTERM (each drains its outbox), and what they issued in all is
``produced``. Once the hub has settled that too (or ``settle_timeout_s`` is
up), everything is counted through the API, reading by reading:

- ``stored``: readings the telemetry API returns, each counted once
  (identified by epoch and timestamp);
- ``duplicates_stored``: readings the API returns more than once, plus extra
  telemetry rows with the same (device, epoch, seq) in the hub's database;
- ``lost_at_edge``: readings the devices declared dropped (the hub's
  ``lost_at_edge_readings`` counters, by reason), and ``dropped_by_agents``,
  what the agents' logs say they dropped and declared. The two differ by
  readings an agent dropped that the hub had stored already (its ack was
  lost with the broker): those count as stored, once;
- ``lost_unexplained``: produced - stored - lost_at_edge, in readings (plus
  the hub's own ``lost_unexplained_messages`` counter).

Targets: ``lost_unexplained`` and ``duplicates_stored`` 0 in every fault,
``lost_at_edge`` 0 in (a)-(d), and in (e) and (f) every lost reading declared.
Readings an agent held in memory when it was SIGKILLed (its open batch, at
most ``--max-delay-ms``) never got a seq: they are not counted as produced.

Every wait is bounded in time; processes are stopped by the harness, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.errors import EdgeloopError
from shared.topics import DEFAULT_ROOT
from simulators.harness import (
    HUB_USER,
    AgentProcess,
    HarnessError,
    HubApi,
    HubProcess,
    Mosquitto,
    WaitTimeoutError,
    wait_until,
)

__all__ = [
    "FAULTS",
    "RECOVERABLE",
    "ChaosConfig",
    "ChaosError",
    "ChaosRig",
    "FaultResult",
    "read_issued",
    "run_fault",
]

FAULTS: Final[dict[str, str]] = {
    "a": "broker_killed",
    "b": "network_cut",
    "c": "agent_killed",
    "d": "hub_killed_and_stopped",
    "e": "outbox_disk_full",
    "f": "outbox_smaller_than_outage",
}
RECOVERABLE: Final = ("a", "b", "c", "d")
"""Faults the system must ride out with nothing lost at all."""

_POLL_S: Final = 0.25
_PAGE: Final = 5000
_MAX_PAGES: Final = 10_000
_DROPPED_LINE: Final = re.compile(
    r"outbox: dropped \d+ messages \((\d+) readings\), reason (\w+); declared"
)
_STOPPED_LINE: Final = re.compile(r"stopped after (\d+) readings")


class ChaosError(EdgeloopError):
    """A fault run could not be set up or finished; the message says what."""


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """The knobs of a fault run (durations in seconds)."""

    devices: int = 20
    rate_hz: float = 10.0
    warmup_s: float = 5.0
    """Readings each device has stored (in seconds of its rate) before the fault starts."""
    broker_down_s: float = 10.0
    network_cut_s: float = 60.0
    agent_down_s: float = 5.0
    hub_down_s: float = 5.0
    outage_s: float = 30.0
    """The broker outage of (e) and (f)."""
    disk_bytes: int = 1024 * 1024
    """(e): the size of the small disk the agent's state directory is on."""
    disk_rate_hz: float = 50.0
    """(e): readings/s of the agent on the small disk (it must fill it within ``outage_s``)."""
    disk: str = "auto"
    """(e): ``auto``, a tmpfs where this process may mount one, else a simulated disk;
    ``simulated``, always the simulated one."""
    outbox_max: int = 10
    """(f): the agents' ``--outbox-max``, in messages (one a second at the defaults)."""
    settle_timeout_s: float = 300.0
    start_timeout_s: float = 120.0
    shutdown_timeout_s: float = 60.0
    """The agents' ``--shutdown-timeout-s``: how long each may drain at SIGTERM."""
    agent_args: tuple[str, ...] = ()
    """More ``edgeloop-agent`` flags for every agent (``--resend-after-s 2``, say)."""

    def check(self) -> None:
        problems = []
        if self.devices < 1:
            problems.append(f"devices must be >= 1, got {self.devices}")
        for name in ("rate_hz", "disk_rate_hz"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "warmup_s",
            "broker_down_s",
            "network_cut_s",
            "agent_down_s",
            "hub_down_s",
            "outage_s",
        ):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("settle_timeout_s", "start_timeout_s", "shutdown_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.disk_bytes < 256 * 1024:
            problems.append(f"disk_bytes must be >= 262144, got {self.disk_bytes}")
        if self.disk not in ("auto", "simulated"):
            problems.append(f"disk must be auto or simulated, got {self.disk!r}")
        if self.outbox_max < 1:
            problems.append(f"outbox_max must be >= 1, got {self.outbox_max}")
        if problems:
            raise ValueError("chaos: " + "; ".join(problems))


@dataclass(slots=True)
class FaultResult:
    """One fault's figures; readings unless the name says otherwise."""

    fault: str
    name: str
    devices: int
    fault_s: float
    """How long the fault lasted (its start to its end)."""
    produced: int
    stored: int
    duplicates_stored: int
    lost_at_edge: int
    lost_unexplained: int
    catch_up_s: float | None
    """Fault end -> the hub has settled everything issued until then (None: not in time)."""
    settled: bool
    """After the agents stopped, the hub settled everything they issued, in time."""
    lost_at_edge_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_by_agents: dict[str, int] = field(default_factory=dict)
    """What the agents' own logs say they dropped and declared, by reason."""
    lost_unexplained_messages: int = 0
    """The hub's own counter (gaps given up on after its retention)."""
    open_gaps: int = 0
    stored_counter: int = 0
    """The hub's ``stored_readings`` counters of these devices (must equal ``stored``)."""
    duplicates_received: int = 0
    """Messages the hub received again and did not store (resends)."""
    refused_readings: int = 0
    read_not_issued: int = 0
    """Readings the agents' last runs read but never issued (must be 0: each stopped cleanly)."""
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        catch_up = "-" if self.catch_up_s is None else f"{self.catch_up_s:.1f} s"
        return (
            f"fault {self.fault} {self.name}: produced {self.produced} stored {self.stored} "
            f"duplicates_stored {self.duplicates_stored} lost_at_edge {self.lost_at_edge} "
            f"lost_unexplained {self.lost_unexplained} catch_up {catch_up}"
        )


# --------------------------------------------------------------------------- reading records


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to another process's SQLite database (it may be writing)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


def read_issued(state_dir: Path) -> dict[int, tuple[int, int]]:
    """An agent's own record of what it issued: per epoch, (last seq, readings).

    Read-only from ``STATE_DIR/outbox.db`` (table ``epochs``); works while the
    agent runs. Empty if the agent never wrote its outbox.
    """
    path = state_dir / "outbox.db"
    if not path.exists():
        return {}
    db = _read_only(path)
    try:
        rows = db.execute("SELECT epoch, last_seq, readings FROM epochs").fetchall()
    finally:
        db.close()
    return {int(e): (int(s), int(r)) for e, s, r in rows}


def _hub_watermarks(db_path: Path, prefix: str) -> dict[tuple[str, int], int]:
    """The hub's ledger watermarks (every seq up to it settled) of devices named ``prefix*``."""
    db = _read_only(db_path)
    try:
        rows = db.execute(
            "SELECT d.name, w.epoch, w.seq FROM watermarks w JOIN devices d ON d.id = w.device_id "
            "WHERE d.name LIKE ?",
            (prefix + "%",),
        ).fetchall()
    finally:
        db.close()
    return {(str(n), int(e)): int(s) for n, e, s in rows}


def _duplicate_rows(db_path: Path, prefix: str) -> int:
    """Readings in telemetry rows that repeat a (device, epoch, seq) already stored."""
    db = _read_only(db_path)
    try:
        row = db.execute(
            "SELECT coalesce(sum(extra), 0) FROM (SELECT sum(t.n) - min(t.n) AS extra "
            "FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.name LIKE ? "
            "GROUP BY t.device_id, t.epoch, t.seq HAVING count(*) > 1)",
            (prefix + "%",),
        ).fetchone()
    finally:
        db.close()
    return int(row[0])


def _api_readings(api: HubApi, device: str) -> tuple[int, int]:
    """(readings, duplicates) of ``device`` through the telemetry API, page by page.

    A reading is its (epoch, timestamp): a message stored twice, or the same
    reading issued again under another seq, shows as a duplicate.
    """
    keys: Counter[tuple[int, float]] = Counter()
    cursor = ""
    for _ in range(_MAX_PAGES):
        path = f"/v1/devices/{device}/telemetry?limit={_PAGE}" + (
            f"&cursor={cursor}" if cursor else ""
        )
        page = api.get_json(path)
        keys.update((int(r["epoch"]), float(r["ts"])) for r in page["readings"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return len(keys), sum(keys.values()) - len(keys)
    raise ChaosError(f"chaos: the telemetry pages of {device} never ended")


# --------------------------------------------------------------------------- the small disk


class SmallDisk:
    """A tmpfs of ``size`` bytes mounted on ``path`` (unmounted on :meth:`close`), or, where
    mounting is refused, a simulated disk of that size (see :mod:`simulators.small_disk_agent`)."""

    def __init__(self, path: Path, size: int, *, simulated: bool = False) -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.refused = "simulated on purpose" if simulated else ""
        path.mkdir(parents=True, exist_ok=True)
        if simulated:
            return
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if done.returncode == 0:
            self.mounted = True
        else:
            why = (done.stderr or done.stdout).strip() or f"status {done.returncode}"
            self.refused = f"mount refused: {why}"

    @property
    def kind(self) -> str:
        if self.mounted:
            return "tmpfs"
        return f"simulated ({self.refused})"

    def free_bytes(self) -> int | None:
        if not self.mounted:
            return None
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self.mounted:
            done = subprocess.run(
                ["umount", str(self.path)], capture_output=True, text=True, timeout=20, check=False
            )
            if done.returncode != 0:
                raise ChaosError(f"chaos: could not unmount {self.path}: {done.stderr.strip()}")
            self.mounted = False


# --------------------------------------------------------------------------- the rig


class ChaosRig:
    """Mosquitto (persistent) and a hub against it; fleets of agents provisioned per fault.

    ``models_dir`` holds the model packages (the hub's ``--models-dir``);
    ``edge_model`` is the edge package the agents run. Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        work: Path,
        models_dir: Path,
        edge_model: Path,
        *,
        root: str = DEFAULT_ROOT,
        say: Say = _quiet,
    ) -> None:
        self.work = work.resolve()
        self.edge_model = edge_model.resolve()
        self.root = root
        self.say = say
        self.broker = Mosquitto(
            self.work / "mosquitto",
            users={HUB_USER: secrets.token_urlsafe(24)},
            acl=f"user {HUB_USER}\ntopic readwrite {root}/#",
            persistent=True,
            new_session=True,
        )
        self.hub = HubProcess(
            self.work / "hub",
            models_dir,
            broker=self.broker.endpoint(HUB_USER),
            root=root,
            log_path=self.work / "hub.log",
            new_session=True,
        )

    def start(self) -> None:
        try:
            self.broker.start()
            self.hub.start()
        except HarnessError as exc:
            self.stop()
            raise ChaosError(f"chaos: could not start the broker and the hub: {exc}") from None
        self.say(
            f"mosquitto {self.broker.version} on port {self.broker.port}, hub {self.hub.base_url}"
        )

    def stop(self) -> None:
        self.hub.stop()
        self.broker.stop()

    def __enter__(self) -> ChaosRig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api(self) -> HubApi:
        return self.hub.api


@dataclass(slots=True)
class _Agent:
    device: str
    state_dir: Path
    process: AgentProcess


class _Fleet:
    """One fault's agents: provisioned, started, stopped, and read."""

    def __init__(self, rig: ChaosRig, name: str, config: ChaosConfig) -> None:
        self.rig = rig
        self.config = config
        self.prefix = f"{name}-"
        self.agents: list[_Agent] = []
        self.dir = rig.work / f"fault-{name}"
        provisioned = [rig.hub.provision(f"{name}-{i:03d}") for i in range(config.devices)]
        rig.broker.add_accounts(
            password_lines=[p.mosquitto_password_line or "" for p in provisioned],
            acl_blocks=[p.mosquitto_acl or "" for p in provisioned],
        )
        self.env = {p.device: p.agent_env for p in provisioned}

    @property
    def devices(self) -> list[str]:
        return list(self.env)

    def add(
        self,
        index: int,
        *,
        args: Sequence[str] = (),
        rate_hz: float | None = None,
        state_dir: Path | None = None,
        simulated_disk: int | None = None,
    ) -> _Agent:
        device = self.devices[index]
        state = state_dir or self.dir / "agents" / device
        c = self.config
        argv = [
            "--source",
            "sim",
            "--sim-seed",
            str(index + 1),
            "--rate-hz",
            f"{rate_hz or c.rate_hz:g}",
            "--shutdown-timeout-s",
            f"{c.shutdown_timeout_s:g}",
            *c.agent_args,
            *args,
        ]
        process = AgentProcess(
            self.rig.edge_model,
            state,
            env=self.env[device],
            args=argv,
            log_path=self.dir / "agents" / f"{device}.log",
            log_level="INFO",
            new_session=True,
            start_timeout=c.start_timeout_s,
            stop_timeout=c.shutdown_timeout_s + 15.0,
        )
        if simulated_disk is not None:
            # The same agent, run through the module that gives its outbox a small disk.
            at = process.argv.index("edge_agent")
            process.argv[at - 1 : at + 1] = [
                "-m",
                "simulators.small_disk_agent",
                "--disk-bytes",
                str(simulated_disk),
                "--",
            ]
        agent = _Agent(device, state, process)
        self.agents.append(agent)
        return agent

    def start(self, *, connected: bool = True) -> None:
        """Spawn every agent, then wait until each is connected (or, without a broker, running)."""
        for a in self.agents:
            a.process.start(wait=False)
        for a in self.agents:
            if connected:
                try:
                    a.process.wait_ready()
                except HarnessError as exc:
                    raise ChaosError(f"chaos: {exc}") from None
            else:
                outbox = a.state_dir / "outbox.db"
                a.process.wait_until(
                    f"{a.device} to open its outbox",
                    outbox.exists,
                    timeout=self.config.start_timeout_s,
                )

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every agent at once (each drains its outbox), then wait for each."""
        for a in self.agents:
            a.process.terminate()
        return {a.device: a.process.stop() for a in self.agents}

    def kill_all(self) -> None:
        for a in self.agents:
            with contextlib.suppress(HarnessError):
                a.process.kill()

    def issued(self) -> dict[str, dict[int, tuple[int, int]]]:
        return {a.device: read_issued(a.state_dir) for a in self.agents}

    def stored(self) -> dict[str, int]:
        """Readings stored so far per device (the hub's counters, through the API)."""
        out = {}
        for device in self.devices:
            counters = self.rig.api.get_json(f"/v1/devices/{device}")["counters"]
            out[device] = int(counters.get("stored_readings", 0))
        return out

    def wait_stored(self, readings: int, what: str) -> None:
        """Until every device has at least ``readings`` stored."""
        wait_until(
            what,
            lambda: min(self.stored().values()) >= readings,
            timeout=self.config.start_timeout_s,
            interval=_POLL_S,
            ignore=(OSError, HarnessError),
        )

    def settled(self, issued: dict[str, dict[int, tuple[int, int]]]) -> bool:
        """The hub's watermark covers every seq in ``issued`` (per device and epoch)."""
        marks = _hub_watermarks(self.rig.hub.db_path, self.prefix)
        return all(
            marks.get((device, epoch), 0) >= last
            for device, epochs in issued.items()
            for epoch, (last, _) in epochs.items()
        )

    def wait_settled(self, issued: dict[str, dict[int, tuple[int, int]]]) -> float | None:
        """Seconds until the hub settled ``issued``; None if not within ``settle_timeout_s``."""
        t0 = time.monotonic()
        try:
            wait_until(
                "the hub to settle what the agents issued",
                lambda: self.settled(issued),
                timeout=self.config.settle_timeout_s,
                interval=_POLL_S,
                ignore=(sqlite3.Error,),
            )
        except WaitTimeoutError:
            return None
        return time.monotonic() - t0

    def log_figures(self) -> tuple[dict[str, int], dict[str, int]]:
        """From the agents' logs: readings dropped and declared by reason; and per device
        the readings its last run read (its 'stopped after N readings' line)."""
        dropped: Counter[str] = Counter()
        last_read: dict[str, int] = {}
        for a in self.agents:
            text = a.process.output()
            for n, reason in _DROPPED_LINE.findall(text):
                dropped[reason] += int(n)
            stops = _STOPPED_LINE.findall(text)
            if stops:
                last_read[a.device] = int(stops[-1])
        return dict(dropped), last_read


# --------------------------------------------------------------------------- the faults


@dataclass(slots=True)
class _Window:
    started: float = 0.0
    ended: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.started = time.monotonic()

    def end(self) -> None:
        self.ended = time.monotonic()


def _warm(fleet: _Fleet) -> None:
    c = fleet.config
    fleet.wait_stored(max(1, round(c.warmup_s * c.rate_hz)), "readings stored before the fault")


def _broker_outage(
    rig: ChaosRig, fleet: _Fleet, w: _Window, take_down: Callable[[], object], seconds: float
) -> None:
    fleet.start()
    _warm(fleet)
    w.start()
    take_down()
    time.sleep(seconds)  # the outage itself
    rig.broker.start()
    w.end()


def _fault_a(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    _broker_outage(rig, fleet, w, rig.broker.kill, fleet.config.broker_down_s)


def _fault_b(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    # A network cut, as the devices see it: the broker stopped for its length.
    _broker_outage(rig, fleet, w, rig.broker.stop, fleet.config.network_cut_s)


def _fault_c(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    fleet.start()
    _warm(fleet)
    victim = fleet.agents[0]
    w.start()
    victim.process.kill()
    w.notes["killed"] = victim.device
    time.sleep(fleet.config.agent_down_s)  # the agent is down
    try:
        victim.process.start()
    except HarnessError as exc:
        raise ChaosError(f"chaos: {exc}") from None
    w.end()


def _fault_d(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    fleet.start()
    _warm(fleet)
    c = fleet.config
    w.start()
    rig.hub.kill()
    time.sleep(c.hub_down_s)  # the hub is down
    rig.hub.start()
    # Readings flow again before the second blow.
    before = fleet.stored()
    wait_until(
        "readings stored after the hub's restart",
        lambda: all(n > before[d] for d, n in fleet.stored().items()),
        timeout=c.settle_timeout_s,
        interval=_POLL_S,
        ignore=(OSError, HarnessError),
    )
    w.notes["hub_sigterm_exit"] = rig.hub.stop()
    time.sleep(c.hub_down_s)
    rig.hub.start()
    w.end()


def _fault_e(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    assert disk is not None
    c = fleet.config
    w.notes["disk"] = disk.kind
    w.notes["disk_bytes"] = disk.size
    w.notes["disk_device"] = fleet.agents[0].device
    fleet.start()
    _warm(fleet)
    w.start()
    rig.broker.stop()
    time.sleep(c.outage_s)  # the outage that fills the small disk
    w.notes["disk_free_bytes_at_outage_end"] = disk.free_bytes()
    rig.broker.start()
    w.end()


def _fault_f(rig: ChaosRig, fleet: _Fleet, w: _Window, disk: SmallDisk | None) -> None:
    w.notes["outbox_max"] = fleet.config.outbox_max
    rig.broker.stop()
    w.start()
    fleet.start(connected=False)
    time.sleep(fleet.config.outage_s)  # the outage, longer than the outbox holds
    rig.broker.start()
    w.end()


_RUN: Final = {
    "a": _fault_a,
    "b": _fault_b,
    "c": _fault_c,
    "d": _fault_d,
    "e": _fault_e,
    "f": _fault_f,
}


def _build_fleet(
    rig: ChaosRig, letter: str, config: ChaosConfig, prefix: str
) -> tuple[_Fleet, SmallDisk | None]:
    fleet = _Fleet(rig, prefix, config)
    disk: SmallDisk | None = None
    for i in range(config.devices):
        if letter == "e" and i == 0:
            disk = SmallDisk(
                fleet.dir / "disk", config.disk_bytes, simulated=config.disk == "simulated"
            )
            fleet.add(
                i,
                rate_hz=config.disk_rate_hz,
                state_dir=disk.path,
                simulated_disk=None if disk.mounted else config.disk_bytes,
            )
        elif letter == "f":
            fleet.add(i, args=("--outbox-max", str(config.outbox_max)))
        else:
            fleet.add(i)
    return fleet, disk


def run_fault(
    rig: ChaosRig,
    letter: str,
    config: ChaosConfig,
    *,
    prefix: str | None = None,
    say: Say = _quiet,
) -> FaultResult:
    """Run fault ``letter`` against a fresh fleet on ``rig``; count every reading.

    The devices are named ``PREFIX-000``... (``prefix`` defaults to the letter;
    give another to run the same fault twice on one rig).
    """
    if letter not in _RUN:
        raise ValueError(f"chaos: unknown fault {letter!r}; choose from {', '.join(FAULTS)}")
    config.check()
    prefix = prefix or letter
    if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
        raise ValueError(f"chaos: prefix {prefix!r} must be lower-case letters and digits")
    say(f"fault {letter} ({FAULTS[letter]}): {config.devices} agents")
    fleet, disk = _build_fleet(rig, letter, config, prefix)
    window = _Window()
    try:
        if not rig.broker.is_running:  # a fault before this one failed halfway
            rig.broker.start()
        if not rig.hub.is_running:
            rig.hub.start()
        _RUN[letter](rig, fleet, window, disk)
        say(f"fault {letter}: over after {window.ended - window.started:.1f} s; catching up")
        at_end = fleet.issued()
        catch_up = fleet.wait_settled(at_end)
        exits = fleet.stop()
        produced_by = fleet.issued()  # read before the small disk goes
        settle = fleet.wait_settled(produced_by)
        result = _count(fleet, letter, window, produced_by, catch_up, settled=settle is not None)
        result.notes["agent_exit_status"] = sorted({str(s) for s in exits.values()})
        if "killed" in window.notes:  # its run before the kill, and after
            result.notes["killed_epochs"] = len(produced_by[window.notes["killed"]])
    finally:
        fleet.kill_all()
        if disk is not None:
            disk.close()
    return result


def _count(
    fleet: _Fleet,
    letter: str,
    window: _Window,
    produced_by: dict[str, dict[int, tuple[int, int]]],
    catch_up: float | None,
    *,
    settled: bool,
) -> FaultResult:
    api = fleet.rig.api
    produced = stored = duplicates = stored_counter = lost_msgs = gaps = dup_rx = refused = 0
    lost_by: Counter[str] = Counter()
    for device in fleet.devices:
        produced += sum(r for _, r in produced_by.get(device, {}).values())
        n, dup = _api_readings(api, device)
        stored += n
        duplicates += dup
        detail = api.get_json(f"/v1/devices/{device}")
        counters: dict[str, int] = detail["counters"]
        stored_counter += int(counters.get("stored_readings", 0))
        lost_msgs += int(counters.get("lost_unexplained_messages", 0))
        dup_rx += int(counters.get("duplicates", 0))
        gaps += len(detail["gaps"])
        for name, value in counters.items():
            if name.startswith("lost_at_edge_readings:"):
                lost_by[name.partition(":")[2]] += int(value)
            elif name.startswith("refused_readings:"):
                refused += int(value)
    duplicates += _duplicate_rows(fleet.rig.hub.db_path, fleet.prefix)
    dropped, last_read = fleet.log_figures()
    read_not_issued = 0
    for device, n in last_read.items():
        epochs = produced_by.get(device, {})
        if epochs:
            read_not_issued += n - epochs[max(epochs)][1]
    lost = sum(lost_by.values())
    return FaultResult(
        fault=letter,
        name=FAULTS[letter],
        devices=len(fleet.devices),
        fault_s=round(window.ended - window.started, 1),
        produced=produced,
        stored=stored,
        duplicates_stored=duplicates,
        lost_at_edge=lost,
        lost_unexplained=produced - stored - lost,
        catch_up_s=None if catch_up is None else round(catch_up, 1),
        settled=settled,
        lost_at_edge_by_reason=dict(lost_by),
        dropped_by_agents=dropped,
        lost_unexplained_messages=lost_msgs,
        open_gaps=gaps,
        stored_counter=stored_counter,
        duplicates_received=dup_rx,
        refused_readings=refused,
        read_not_issued=read_not_issued,
        notes=window.notes,
    )
