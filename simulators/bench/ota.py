"""``edgeloop-sim bench ota``: a new model live on N real agents, from ``rollout start``.

It brings up what ``bench fleet`` does (a broker, Mosquitto by default, the hub,
N device accounts, agent hosts at ``--rate-hz`` readings/s each, see
:mod:`simulators.bench.fleet`), and more:

1. a signing key in the hub's data directory (``edgeloop-hub keys init``); the
   hub signs its default build at start, and a new version of the edge model
   (the same weights, version bumped, signed) is registered through the API
   (``POST /v1/models``), as ``models register`` would;
2. every agent runs with ``--ota --trust KEY --hub-url HUB`` and a short trial
   (``--trial-readings``, ``--trial-s``); the hosts' agents share one onnxruntime
   session per package (:class:`simulators.fleet.SharedModels`) and check
   signatures in their host's process, but each downloads (with its own
   credential), verifies, installs and smoke-tests its own copy. A host is no
   device, so: about :data:`AGENTS_PER_HOST` agents a host, at nice
   :data:`HOST_NICE` (its autogroup too: ten busy host sessions would each get
   the hub's share of the CPU), state directories on /dev/shm (a thousand
   agents' fsyncs on one disk are no device's), and the trial latency and smoke
   budgets loosened (``--host-latency-factor``, ``--host-smoke-budget-ms``: a
   reading there waits for the host's GIL while its other agents update);
3. ``--rss-agents`` of the N devices run as separate ``edgeloop-agent``
   processes (disk outbox, default checks), whose resident memory is sampled
   every 50 ms: before the rollout (the baseline) and through it.

Once every device is online and ``--duration-s`` has passed (the baseline
phase), it starts one rollout, one cohort of 100 %, no behaviour gates, soak 0
(``POST /v1/rollouts``), polls it every 0.2 s until it completes (or
``--converge-timeout-s``), lets the agents run ``--after-s`` more, stops them,
waits for ingest to settle and compares, device by device, the readings each
model version scored on the agent with those the hub stored under it.

The last line on stdout is one JSON object; its main keys::

    devices, committed, converge_s   devices, how many committed, rollout start -> all committed
    last_commit_report_s             rollout start -> the last agent's commit report (agent clock)
    readings_produced, readings_stored, readings_dropped, readings_duplicated
    readings_wrong_model             readings stored under another model version than scored them
    max_agent_rss_mb, agent_rss_mb_before   the separate agents: peak during the rollout, baseline
    broker, trial_readings, trial_s  what ran

``readings_dropped`` is produced - stored (readings the hub never stored);
``readings_duplicated`` is readings stored more than once (the same device and
timestamp twice: scored twice); ``duplicates`` is the hub's count of resent
messages it recognised and did not store again. Nothing here is pass/fail; ``targets_met`` sets the figures beside
the targets of issue 10 (converge <= 10 s, 0 dropped, 0 duplicated, RSS <= 80 MB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from simulators.bench.fleet import (
    FleetBenchConfig,
    FleetBenchError,
    _FleetBench,
    config_fields,
)
from simulators.bench.fleet import add_arguments as add_fleet_arguments
from simulators.harness import AgentProcess, HarnessError, HubApi

if TYPE_CHECKING:
    from cloud_hub.keys import KeyFiles
    from cloud_hub.provision import Provisioned

__all__ = ["HELP", "OtaBenchConfig", "add_arguments", "run", "run_ota_bench"]

HELP: Final = (
    "a new signed model version rolled out to N real agents (one cohort, no gates): time to "
    "all committed, readings dropped or scored twice, agent memory during the switch (JSON)"
)

AGENTS_PER_HOST: Final = 100
"""Half of ``bench fleet``'s: during an update each agent runs a fourth thread (its
downloads, checks and installs), and 200 agents a host spent most of the rollout
switching the host's one GIL among ~250 runnable threads (72 % system CPU)."""
MAX_AUTO_HOSTS: Final = 16
RSS_AGENTS: Final = 2
MAX_RSS_AGENTS: Final = 10
HOST_NICE: Final = 10
"""The hosts' CPU priority: below the hub's and the broker's (see the module docstring)."""
TARGET_CONVERGE_S: Final = 10.0
TARGET_RSS_MB: Final = 80.0
_POLL_S: Final = 0.2
_RSS_EVERY_S: Final = 0.05
_STOPPED = re.compile(r"stopped after (\d+) readings.*; readings by model (\{[^}]*\})")


@dataclass(frozen=True, slots=True)
class OtaBenchConfig(FleetBenchConfig):
    """``bench fleet``'s settings and the rollout's."""

    rss_agents: int | None = None
    """Devices run as separate ``edgeloop-agent`` processes whose memory is sampled (None:
    :data:`RSS_AGENTS`, fewer when there are fewer devices; see :attr:`solo_agents`)."""
    trial_readings: int = 3
    trial_s: float = 2.0
    host_latency_factor: float = 1000.0
    """The hosts' agents' ``--ota-latency-factor`` (see the module docstring)."""
    host_smoke_budget_ms: float = 1000.0
    """The hosts' agents' ``--ota-smoke-budget-ms``."""
    host_state_in_ram: bool = True
    """The hosts' agents' state directories on /dev/shm (see the module docstring)."""
    converge_timeout_s: float = 120.0
    after_s: float = 5.0
    """How long the agents run on after the rollout completed, before they stop."""

    @property
    def bench_name(self) -> str:
        return "bench ota"

    @property
    def solo_agents(self) -> int:
        """How many devices run as separate ``edgeloop-agent`` processes."""
        if self.rss_agents is not None:
            return self.rss_agents
        return min(RSS_AGENTS, self.devices - 1)

    @property
    def host_count(self) -> int:
        """About :data:`AGENTS_PER_HOST` agents a host (at least 2), unless ``hosts`` is set;
        the separate agents are not in a host."""
        in_hosts = max(1, self.devices - self.solo_agents)
        if self.hosts:
            return min(self.hosts, in_hosts)
        auto = max(2, min(MAX_AUTO_HOSTS, math.ceil(in_hosts / AGENTS_PER_HOST)))
        return min(in_hosts, auto)

    def __post_init__(self) -> None:
        FleetBenchConfig.__post_init__(self)
        problems = []
        most = min(MAX_RSS_AGENTS, self.devices - 1)
        if not 0 <= self.solo_agents <= most:
            problems.append(
                f"--rss-agents must be 0-{most} (at most {MAX_RSS_AGENTS}, and one device "
                f"fewer than --devices: the agent hosts need one), got {self.solo_agents}"
            )
        if not (self.host_latency_factor > 0 and self.host_smoke_budget_ms > 0):
            problems.append("--host-latency-factor and --host-smoke-budget-ms must be > 0")
        if self.trial_readings < 1 or not 0 < self.trial_s <= 3600:
            problems.append("--trial-readings must be >= 1 and --trial-s in (0, 3600]")
        if not 0 < self.converge_timeout_s <= 3600 or not 0 <= self.after_s <= 600:
            problems.append("--converge-timeout-s must be in (0, 3600], --after-s in [0, 600]")
        if problems:
            raise ValueError(f"{self.bench_name}: " + "; ".join(problems))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench fleet``'s options (its --duration-s is the baseline phase here), and the rollout's."""
    d = OtaBenchConfig(duration_s=10.0)
    add_fleet_arguments(
        parser,
        d,
        duration_help="seconds of baseline, once every device is online, before the rollout",
        agents_per_host=AGENTS_PER_HOST,
        work_dir_help="; the agent hosts' own state directories are on /dev/shm and always "
        "removed (--host-state-on-disk keeps them here). A work directory reused from an "
        "earlier run is started anew",
    )
    parser.add_argument(
        "--rss-agents",
        type=int,
        default=None,
        help=f"devices run as separate edgeloop-agent processes whose resident memory is "
        f"sampled every 50 ms (default: {RSS_AGENTS}, at most --devices - 1)",
    )
    parser.add_argument(
        "--trial-readings",
        type=int,
        default=d.trial_readings,
        help=f"the agents' --ota-trial-readings (default: {d.trial_readings})",
    )
    parser.add_argument(
        "--trial-s",
        type=float,
        default=d.trial_s,
        help=f"the agents' --ota-trial-s (default: {d.trial_s:g})",
    )
    parser.add_argument(
        "--host-latency-factor",
        type=float,
        default=d.host_latency_factor,
        help=f"--ota-latency-factor of the agents in host processes (default: "
        f"{d.host_latency_factor:g}; the separate agents keep the agent's default)",
    )
    parser.add_argument(
        "--host-smoke-budget-ms",
        type=float,
        default=d.host_smoke_budget_ms,
        help=f"--ota-smoke-budget-ms of the agents in host processes (default: "
        f"{d.host_smoke_budget_ms:g})",
    )
    parser.add_argument(
        "--host-state-on-disk",
        action="store_true",
        help="keep the hosts' agents' state directories (model slots, breadcrumbs) in the work "
        "directory, not on /dev/shm",
    )
    parser.add_argument(
        "--converge-timeout-s",
        type=float,
        default=d.converge_timeout_s,
        help=f"how long to wait for every device to commit (default: {d.converge_timeout_s:g})",
    )
    parser.add_argument(
        "--after-s",
        type=float,
        default=d.after_s,
        help=f"seconds the agents run on the new model before they stop (default: {d.after_s:g})",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed arguments and return its JSON-able result."""
    config = OtaBenchConfig(
        **config_fields(args),
        rss_agents=args.rss_agents,
        trial_readings=args.trial_readings,
        trial_s=args.trial_s,
        host_latency_factor=args.host_latency_factor,
        host_smoke_budget_ms=args.host_smoke_budget_ms,
        host_state_in_ram=not args.host_state_on_disk,
        converge_timeout_s=args.converge_timeout_s,
        after_s=args.after_s,
    )
    return run_ota_bench(config)


def run_ota_bench(config: OtaBenchConfig) -> dict[str, Any]:
    """Run the OTA benchmark; returns its result (the JSON object the CLI prints)."""
    return _OtaBench(config).run()


class _RssSampler:
    """Resident memory of a few processes, every :data:`_RSS_EVERY_S`, on a thread."""

    def __init__(self, pids: list[int]) -> None:
        import psutil  # noqa: PLC0415

        self._procs = [psutil.Process(pid) for pid in pids]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.phase = "before"
        self.peak: dict[str, float] = {}
        self.samples: Counter[str] = Counter()

    def _run(self) -> None:
        while not self._stop.wait(_RSS_EVERY_S):
            for p in self._procs:
                with contextlib.suppress(Exception):  # psutil.Error: the process may be gone
                    mb = p.memory_info().rss / 2**20
                    phase = self.phase
                    self.peak[phase] = max(self.peak.get(phase, 0.0), mb)
                    self.samples[phase] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


class _OtaBench(_FleetBench):
    name = "bench ota"
    config: OtaBenchConfig

    def __init__(self, config: OtaBenchConfig) -> None:
        super().__init__(config)
        self.version = ""
        self.model_name = ""
        self.old_version = ""
        self.solo: list[AgentProcess] = []
        self._solo_scored: dict[str, dict[str, int]] = {}
        self._rollout_measured = False
        self.rss: _RssSampler | None = None
        self._edge = Path()
        self._keys: KeyFiles
        self._ram_dir: Path | None = None

    # -- bring-up ------------------------------------------------------------------------------

    def _models(self) -> Path:
        from cloud_hub.keys import KeyFiles  # noqa: PLC0415

        edge = super()._models()
        # A work directory reused from an earlier run starts anew: an old store would
        # hold the last run's readings and reports, old agents the version it committed.
        for part in ("hub", "agents", "new-version"):
            shutil.rmtree(self.work / part, ignore_errors=True)
        # The hub signs its default build in place: it and the agents get a copy.
        models = self.work / "models"
        if models.exists():
            shutil.rmtree(models)
        shutil.copytree(self.config.models_dir, models)
        self._edge = models / edge.relative_to(self.config.models_dir.resolve())
        self.config = replace(self.config, models_dir=models)
        self._keys = KeyFiles(self.work / "hub" / "keys")
        return self._edge

    def _make_broker_and_hub(self) -> None:
        from cloud_hub.keys import KeyFiles, init_keys  # noqa: PLC0415

        super()._make_broker_and_hub()
        assert self.hub is not None
        self._keys = KeyFiles(self.hub.data_dir / "keys")
        if not self._keys.private.exists():
            init_keys(self._keys)
        self.result["trial_readings"] = self.config.trial_readings
        self.result["trial_s"] = self.config.trial_s

    def _start_hub(self) -> None:
        from cloud_hub.keys import load_signing_key  # noqa: PLC0415
        from shared.manifest import load_package  # noqa: PLC0415
        from simulators.packages import variant, zip_package  # noqa: PLC0415

        super()._start_hub()
        assert self.hub is not None
        manifest = load_package(self._edge).manifest
        self.model_name, self.old_version = manifest.name, manifest.version
        major, minor = [*manifest.version.split("."), "0"][:2]
        self.version = f"{major}.{int(minor) + 1}.0"
        key = load_signing_key(self._keys.private)
        made = self.work / "new-version"
        if made.exists():
            shutil.rmtree(made)
        newer = variant(self._edge, made, key, self.version)
        reply = self.hub.admin_api.post("/v1/models", body=zip_package(newer), timeout=60.0)
        if reply.status != 201:
            raise FleetBenchError(
                f"bench ota: registering {self.model_name} {self.version} failed: HTTP "
                f"{reply.status} {reply.body[:300]!r}"
            )
        self.result["model"] = self.model_name
        self.result["from_version"] = self.old_version
        self.result["to_version"] = self.version
        self.say(f"registered {self.model_name} {self.version} (signed) beside {self.old_version}")

    def _ota_flags(self) -> tuple[str, ...]:
        assert self.hub is not None
        return (
            "--ota",
            "true",
            "--hub-url",
            self.hub.api.base_url,
            "--trust",
            str(self._keys.public),
            "--ota-trial-readings",
            str(self.config.trial_readings),
            "--ota-trial-s",
            f"{self.config.trial_s:g}",
        )

    def _start_hosts(self, edge: Path, provisioned: list[Provisioned]) -> None:
        c = self.config
        flags = self._ota_flags()
        host_checks = (
            "--ota-latency-factor",
            f"{c.host_latency_factor:g}",
            "--ota-smoke-budget-ms",
            f"{c.host_smoke_budget_ms:g}",
        )
        self.config = replace(c, agent_args=(*flags, *host_checks, *c.agent_args))
        self.result["host_latency_factor"] = c.host_latency_factor
        self.result["host_smoke_budget_ms"] = c.host_smoke_budget_ms
        solo, rest = provisioned[: c.solo_agents], provisioned[c.solo_agents :]
        super()._start_hosts(edge, rest)
        for p in solo:
            agent = AgentProcess(
                edge,
                self.work / "agents" / p.device,
                env=p.agent_env,
                device=p.device,
                args=[
                    *flags,
                    "--rate-hz",
                    f"{c.rate_hz:g}",
                    *c.agent_args,
                ],
                log_path=self.work / "agents" / f"{p.device}.log",
                log_level="INFO",
                new_session=True,
            )
            self.solo.append(agent.start())
        self.rss = _RssSampler([a.pid for a in self.solo if a.pid is not None])
        self.rss.start()
        self.result["rss_agents"] = len(self.solo)

    def _host_flags(self) -> tuple[str, ...]:
        self.result["host_nice"] = HOST_NICE
        return ("--nice", str(HOST_NICE))

    def _host_agents_dir(self) -> Path:
        if self._ram_dir is None:
            shm = Path("/dev/shm")
            if self.config.host_state_in_ram and shm.is_dir() and os.access(shm, os.W_OK):
                self._ram_dir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-ota-", dir=shm))
                self.result["host_agent_state"] = "tmpfs"
            else:
                self._ram_dir = self.work / "agents"
                self.result["host_agent_state"] = "disk"
        return self._ram_dir

    def run(self) -> dict[str, Any]:
        try:
            return super().run()
        finally:
            if self._ram_dir is not None and self._ram_dir.parent == Path("/dev/shm"):
                shutil.rmtree(self._ram_dir, ignore_errors=True)
            for agent in self.solo:  # stopped already, unless the run failed on its way
                if agent.is_running:
                    agent.kill()
            if self.rss is not None:
                self.rss.stop()

    # -- the rollout ---------------------------------------------------------------------------

    def _steady(self) -> None:
        super()._steady()  # the baseline phase
        if self.rss is not None:
            self.rss.phase = "rollout"
        self._rollout()
        if self.rss is not None:
            self.rss.phase = "after"
        if self.config.after_s:
            self.say(f"running {self.config.after_s:g} s more on the new model")
            time.sleep(self.config.after_s)

    def _rollout(self) -> None:
        assert self.hub is not None
        api = self.hub.admin_api
        body = {
            "model": self.model_name,
            "version": self.version,
            "cohorts": [100],
            "gates": {"soak_s": 0},
        }
        hub, broker, hosts = self._procs()
        for usage in (hub, broker, hosts):
            usage.begin()
        try:
            self._run_rollout(api, body)
        finally:
            for usage in (hub, broker, hosts):
                usage.end()
            n = max(1, self.config.devices - len(self.solo))
            self.result.update(
                {
                    "rollout_hub_cpu_s": hub.cpu_s,
                    "rollout_broker_cpu_s": broker.cpu_s,
                    "rollout_host_cpu_s": hosts.cpu_s,
                    "host_cpu_ms_per_agent": None
                    if hosts.cpu_s is None
                    else round(1000 * hosts.cpu_s / n, 1),
                }
            )

    def _run_rollout(self, api: HubApi, body: dict[str, Any]) -> None:
        t0_wall, t0 = time.time(), time.monotonic()
        try:
            reply = api.request("POST", "/v1/rollouts", json_body=body, timeout=60.0)
        except OSError as exc:  # the hub did not answer in time: report what was measured
            self.errors.append(f"POST /v1/rollouts: {exc}")
            return
        if reply.status != 201:
            self.errors.append(f"POST /v1/rollouts: HTTP {reply.status} {reply.body[:300]!r}")
            return
        rollout_id = str(reply.json()["id"])
        self.result["rollout_id"] = rollout_id
        self.say(f"rollout {rollout_id} started: {self.model_name} {self.version}, one cohort")
        deadline = t0 + self.config.converge_timeout_s
        converge_s: float | None = None
        last: dict[str, Any] = {}
        last_say = t0
        while time.monotonic() < deadline:
            with contextlib.suppress(HarnessError, OSError, ValueError):
                last = api.get_json(f"/v1/rollouts/{rollout_id}", timeout=10.0)
            state = last.get("state")
            counts = last.get("devices", {})
            # Kept as it goes: a run interrupted here still reports how far it got.
            self.result["rollout_state"] = state
            self.result["committed"] = int(counts.get("committed", 0))
            self.result["rollout_devices"] = counts
            if state == "completed" or int(counts.get("committed", 0)) >= self.config.devices:
                converge_s = round(time.monotonic() - t0, 2)
                break
            if state == "aborted":
                self.errors.append(f"the rollout aborted: {last.get('decisions', [])[-1:]}")
                break
            if time.monotonic() - last_say >= 2.0:
                self.say(f"rollout: {counts}")
                last_say = time.monotonic()
            time.sleep(_POLL_S)
        counts = last.get("devices", {})
        self.result["converge_s"] = converge_s
        self._rollout_measured = True  # to convergence, an abort or the timeout
        self._commit_reports(t0_wall)
        self.say(
            f"all {self.config.devices} committed in {converge_s} s"
            if converge_s is not None
            else f"not converged after {self.config.converge_timeout_s:g} s: {counts}"
        )

    def _commit_reports(self, t0_wall: float) -> None:
        """When the agents said they committed (their clock, the same machine's)."""
        from cloud_hub.store import open_store  # noqa: PLC0415

        assert self.hub is not None
        store = open_store(f"sqlite:///{self.hub.db_path}")
        try:
            reports = [
                r.ota
                for r in store.ota_reports(0, limit=100_000)
                if r.ota.state == "committed" and r.ota.to_version == self.version
            ]
            ends = [r for r in store.ota_reports(0, limit=100_000) if r.ota.state != "committed"]
        finally:
            store.close()
        if reports:
            times = sorted(r.ts - t0_wall for r in reports)
            self.result["last_commit_report_s"] = round(times[-1], 2)
            self.result["median_commit_report_s"] = round(times[len(times) // 2], 2)
        refused = Counter(
            f"{r.ota.state}:{r.ota.reason}" for r in ends if r.ota.state in ("rejected", "reverted")
        )
        self.result["ota_refused"] = dict(refused)

    # -- stopping and counting -----------------------------------------------------------------

    def _stop_hosts(self) -> None:
        for agent in self.solo:
            agent.terminate()
        super()._stop_hosts()
        produced = 0
        for agent in self.solo:
            agent.stop(30.0)
            found = _STOPPED.findall(agent.output())
            if found:
                n, by_model = found[-1]
                produced += int(n)
                self._solo_scored[agent.device] = {
                    str(k): int(v) for k, v in json.loads(by_model).items()
                }
            else:
                self.errors.append(
                    f"agent {agent.device} did not report its readings; its log: {agent.log_path}"
                )
        if self.rss is not None:
            self.rss.stop()
            before, during = (
                self.rss.peak.get("before"),
                max(self.rss.peak.get("rollout", 0.0), self.rss.peak.get("after", 0.0)),
            )
            self.result["agent_rss_mb_before"] = None if before is None else round(before, 1)
            self.result["max_agent_rss_mb"] = round(during, 1) if during else None
            self.result["rss_samples"] = dict(self.rss.samples)
        self.result["readings_sent"] = int(self.result.get("readings_sent", 0)) + produced

    def _settle(self) -> None:
        super()._settle()
        self._compare()

    def _compare(self) -> None:
        """Device by device: readings scored by each version vs stored under it, and twice."""
        import numpy as np  # noqa: PLC0415

        from cloud_hub.store import open_store  # noqa: PLC0415

        assert self.hub is not None
        scored: dict[str, dict[str, int]] = {}
        by_model: Counter[str] = Counter()
        for host in self.hosts:
            if host.exited is not None:
                scored.update(host.exited.get("readings_by_model_per_device", {}))
                by_model.update(host.exited.get("readings_by_model", {}))
        for device, counts in self._solo_scored.items():
            scored[device] = counts
            by_model.update(counts)
        self.result["readings_by_model"] = dict(by_model)
        store = open_store(f"sqlite:///{self.hub.db_path}")
        duplicated = wrong = 0
        try:
            for device, by_version in scored.items():
                rows = store.telemetry(device, 0.0, math.inf, 10_000_000).items
                stored: Counter[str] = Counter()
                ts = []
                for batch in rows:
                    stored[batch.edge_model_version] += len(batch.ts)
                    ts.append(batch.ts)
                if ts:
                    all_ts = np.concatenate(ts)
                    duplicated += len(all_ts) - len(np.unique(all_ts))
                # A reading stored under another version than scored it shows as one too
                # many under that version: count the excess only (a lost reading is not one).
                for version, n in stored.items():
                    wrong += max(0, n - by_version.get(version, 0))
        finally:
            store.close()
        produced = int(self.result.get("readings_sent", 0))
        stored_total = int(self.result.get("readings_stored", 0))
        self.result.update(
            {
                "readings_produced": produced,
                "readings_dropped": max(0, produced - stored_total),
                "readings_duplicated": duplicated,
                "readings_wrong_model": wrong,
                "devices_compared_by_version": len(scored),
            }
        )
        r = self.result
        converge, rss = r.get("converge_s"), r.get("max_agent_rss_mb")
        # None: not measured (the run was interrupted first, or no agent ran alone).
        r["targets_met"] = {
            "converge_s<=10": None
            if not self._rollout_measured
            else converge is not None and float(converge) <= TARGET_CONVERGE_S,
            "committed==devices": None
            if "committed" not in r
            else r["committed"] == self.config.devices,
            "dropped==0": r["readings_dropped"] == 0,
            "duplicated==0": r["readings_duplicated"] == 0,
            "wrong_model==0": wrong == 0,
            "rss<=80": None if rss is None else float(rss) <= TARGET_RSS_MB,
        }
        self.say(json.dumps(r["targets_met"]))
