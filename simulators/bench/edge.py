"""``edgeloop-sim bench edge``: the edge agent's hot path, memory and idle CPU.

Everything runs here, against a broker started here on a free loopback port
(Mosquitto when installed, else the embedded amqtt; ``--broker``).

- Latency: the agent's own reading loop (:meth:`~edge_agent.agent.Agent.run`,
  as ``edgeloop-agent`` runs it: its threads on one CPU (``--cpu auto``) with
  its switch interval, ``gc.freeze``, the link thread, the default *disk*
  outbox, connected to the broker) reads a seeded
  simulated stream from a source here: an untimed pass to warm caches, then
  the same readings timed back to back. ``p50_us``/``p99_us`` are what the
  agent's own recorder measures for its heartbeat: inside
  :meth:`~edge_agent.agent.Agent.process`, from before the features to after
  the urgent rule (features, int8 ONNX, rule). ``process_*`` time the whole
  ``process`` call (action and staging too) from outside. Meanwhile the link
  thread seals, writes (SQLite, ``STATE_DIR/outbox.db``) and publishes every
  batch, as it does in a live agent; ``outbox_messages`` says how many it wrote.
  With ``--broker none`` nothing listens where the agent connects: its link
  thread writes the outbox and sends nothing, which tells the outbox's cost to
  the reading loop from the sending's.
- The same readings again with ``--cpu any`` (the threads left to the OS):
  ``any_cpu_*``, what the one-CPU placement saves.
- Baseline: the very same agent and loop, its model's scores coming from
  per-row scikit-learn ``predict_proba`` of the same MLP (retrained from the
  same seed and data, which gives the same weights; its agreement with the
  packaged model is ``baseline_agreement``). So ``baseline_p99_us`` is timed by
  the same recorder over the same span (features, model, rule) in the same
  loop, and ``speedup_p99`` compares like with like. The baseline runs both
  with ``--cpu auto`` and ``--cpu any`` (``baseline_one_cpu_p99_us``,
  ``baseline_any_cpu_p99_us``); its figures and the speedup take the run with
  the lower p99: a reading that holds the GIL for 350 µs is interrupted by the
  link thread's forced switches on one CPU, so the baseline is better off
  without it.
- Paced latency: the same recorder while readings arrive at ``paced_rate_hz``,
  the loop sleeping between them as a live agent's does. Between readings
  the CPU's caches and predictors lose the hot path's state, so each reading
  pays to bring it back, the more the longer the wait: this is what the
  heartbeat of an agent reading at that rate reports, and the distance from
  the back-to-back figure says what a machine's other work costs the agent.
- Memory: resident set of a real ``edgeloop-agent`` process (simulated
  machine at 10 readings/s, default settings, so the disk outbox) connected
  to the broker, read ``idle_seconds`` after it said it was connected.
- Idle CPU: a real agent reading from a silent stdin, connected to the broker.
  Both are measured from the moment both say they are connected (the broker
  and agents come from :mod:`simulators.harness`).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np

from simulators.bench.arguments import non_negative_int, positive_float, positive_int
from simulators.harness import (
    HOST,
    AgentProcess,
    AmqttBroker,
    Broker,
    Mosquitto,
    find_mosquitto,
    free_port,
    wait_until,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_agent.engine import EdgeModel
    from edge_agent.rules import Decision
    from edge_agent.sources.base import Reading, StopSignal
    from shared.endpoint import BrokerEndpoint

__all__ = ["HELP", "add_arguments", "run", "run_edge_bench"]

HELP: Final = (
    "edge latency (reading in to urgent decision out) against per-row scikit-learn, "
    "agent memory and idle CPU"
)

TIMED_SPAN: Final = "features -> model -> urgent rule, by Agent.process's own recorder"
"""What ``p50_us``/``p99_us`` and ``baseline_p50_us``/``baseline_p99_us`` time, both."""

_AGENT_USER: Final = "bench-agent"
_CONNECT_TIMEOUT_S: Final = 30.0
_SHUTDOWN_S: Final = "1"
"""The in-process agents' --shutdown-timeout-s: no hub acks here, so do not wait 5 s for them."""

Phase = tuple[str, "npt.NDArray[np.float64]", float]
"""A phase of the bench's source: its name, its readings, their rate (0: back to back)."""


def _stream(seed: int, n: int) -> np.ndarray:
    import dataclasses  # noqa: PLC0415

    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415

    config = dataclasses.replace(MachineConfig(seed=seed, device_index=99), urgent_rate=2e-3)
    machine = SimulatedMachine(config)
    return np.array([r.values for r in machine.readings(n)])


class _PhasedSource:
    """The bench's source: phases of the seeded stream, back to back or paced.

    ``before(name)`` runs in the reading loop before each phase and
    ``before(None)`` after the last, between two ``process`` calls, where the
    bench may swap the agent's recorders.
    """

    def __init__(self, phases: Sequence[Phase], before: Callable[[str | None], None]) -> None:
        self.invalid: dict[str, int] = {}
        self._phases = phases
        self._before = before

    def readings(self, stop: StopSignal) -> Iterator[Reading]:
        from edge_agent.sources.base import Reading  # noqa: PLC0415

        for name, values, rate_hz in self._phases:
            self._before(name)
            period = 1.0 / rate_hz if rate_hz > 0 else 0.0
            due = time.monotonic()
            for row in values:
                if stop.is_set():
                    return
                if period:
                    due += period
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                yield Reading(time.time(), row)
        self._before(None)


def _figures(
    edge_dir: Path,
    endpoint: BrokerEndpoint,
    state_dir: Path,
    phases: Sequence[Phase],
    model: EdgeModel | None = None,
    *,
    connect: bool = True,
    cpu: str = "auto",
) -> tuple[dict[str, tuple[float, float]], int]:
    """Run an agent over ``phases``; per timed phase, (p50, p99) of its own recorder
    and of the whole ``process`` call (``NAME`` and ``NAME_process``); and the
    messages its disk outbox wrote. Phases named ``warm-up`` are not timed.

    ``model`` replaces the packaged int8 model (the baseline). With ``connect``
    the timing starts once the agent is connected; else nothing listens at
    ``endpoint`` and the agent only writes its outbox. ``cpu`` is the agent's
    ``--cpu``, applied as ``edgeloop-agent`` applies it, and undone after.
    """
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from edge_agent.scheduling import (  # noqa: PLC0415
        allowed_cpus,
        configure_threads,
        set_thread_cpus,
    )
    from edge_agent.settings import load_settings  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415
    from shared.latency import LatencyWindow  # noqa: PLC0415

    class TimedAgent(Agent):
        """The agent, with a second clock around each whole :meth:`process` call."""

        whole = LatencyWindow(1)  # each timed phase gives the agent a window of its own

        def process(self, ts: float, values: np.ndarray) -> tuple[Decision, ...]:
            t0 = time.perf_counter_ns()
            decisions = super().process(ts, values)
            self.whole.add((time.perf_counter_ns() - t0) / 1000.0)
            return decisions

    settings = load_settings(
        [
            "--model",
            str(edge_dir),
            "--device",
            state_dir.name,
            "--state-dir",
            str(state_dir),
            "--shutdown-timeout-s",
            _SHUTDOWN_S,
            "--cpu",
            cpu,
        ],
        env={"EDGELOOP_AGENT_BROKER": endpoint.url},
    )
    if settings.outbox != "disk":
        raise AssertionError(f"bench edge: the agent's default outbox is {settings.outbox!r}")
    found: dict[str, tuple[float, float]] = {}
    current: list[str] = []

    def before(name: str | None) -> None:
        if current and current[0] != "warm-up":
            found[current[0]] = agent.latency.percentiles()
            found[f"{current[0]}_process"] = agent.whole.percentiles()
        current[:] = [] if name is None else [name]
        if name == "warm-up" and connect:
            wait_until(
                "the bench's agent to connect to the broker",
                lambda: agent.link is not None and agent.link.connected.is_set(),
                timeout=_CONNECT_TIMEOUT_S,
                interval=0.01,
            )
        elif name is not None:
            n = max(len(values) for phase, values, _ in phases if phase == name)
            agent.latency = LatencyWindow(n)
            agent.whole = LatencyWindow(n)

    source = _PhasedSource(phases, before)
    if model is None:
        model = load_edge_model(edge_dir, __version__)
    agent = TimedAgent(settings, model, source, [])
    if os.environ.get("PIN1"):
        os.sched_setaffinity(0, {int(os.environ["PIN1"])})
    interval, cpus = sys.getswitchinterval(), allowed_cpus()
    configure_threads(settings.cpu)  # as edgeloop-agent does, before the agent's threads start
    try:
        agent.run(threading.Event())
    finally:
        sys.setswitchinterval(interval)
        if cpus:
            set_thread_cpus(cpus)
    return found, agent.outbox.last_seq


def _sklearn_model(
    models_dir: Path, seed: int, edge_dir: Path, values: npt.NDArray[np.float64]
) -> tuple[EdgeModel, float]:
    """The packaged edge model with scikit-learn's per-row ``predict_proba`` as its scores,
    and the two models' class agreement on ``values``."""
    from cloud_hub.pipeline.build import retrain_edge_sklearn  # noqa: PLC0415
    from edge_agent.engine import EdgeModel, load_edge_model  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415
    from shared.features import features_for_stream  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    sk = retrain_edge_sklearn(models_dir, seed)
    packaged = load_edge_model(edge_dir, __version__)

    class SklearnScored(EdgeModel):
        def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            # float64 as scikit-learn gives them: the agent reads one score and
            # the batcher stores float32, so no conversion is timed here.
            return cast("npt.NDArray[np.float32]", sk.predict_proba(features.reshape(1, -1))[0])

    feats = features_for_stream(
        values, packaged.manifest.input.window, packaged.manifest.input.fallback
    )
    agreement = float(
        np.mean(sk.predict_proba(feats).argmax(1) == packaged.score_batch(feats).argmax(1))
    )
    return SklearnScored(load_package(edge_dir)), round(agreement, 4)


def _start_broker(kind: str, work: Path, users: dict[str, str]) -> Broker:
    broker: Broker
    if kind == "mosquitto":
        broker = Mosquitto(work / "mosquitto", users=users)
    else:
        # One account plays both agents (devices bench-rss and bench-idle).
        broker = AmqttBroker(work / "amqtt", users=users, fleet=(_AGENT_USER,))
    return broker.start()


def _agent_processes(
    edge_dir: Path, endpoint: BrokerEndpoint, work: Path, idle_seconds: float
) -> dict[str, Any]:
    """RSS of an agent at 10 Hz (disk outbox) and CPU of an idle one, both connected."""
    import psutil  # noqa: PLC0415

    # Logging at INFO, each is ready once it says it is connected (after
    # imports, model load and smoke test); then the clock starts.
    busy = AgentProcess(
        edge_dir,
        work / "rss",
        broker=endpoint,
        device="bench-rss",
        args=["--source", "sim", "--rate-hz", "10"],
        log_level="INFO",
        stop_timeout=10.0,
    )
    idle = AgentProcess(
        edge_dir,
        work / "idle",
        broker=endpoint,
        device="bench-idle",
        args=["--source", "stdin"],
        log_level="INFO",
        stdin_pipe=True,
        stop_timeout=10.0,
    )
    with busy.start(wait=False), idle.start(wait=False):
        busy.wait_ready()
        idle.wait_ready()
        busy_p, idle_p = psutil.Process(busy.pid), psutil.Process(idle.pid)
        b0, i0, t0 = busy_p.cpu_times(), idle_p.cpu_times(), time.monotonic()
        time.sleep(idle_seconds)  # the measured interval itself
        b1, i1, t1 = busy_p.cpu_times(), idle_p.cpu_times(), time.monotonic()
        rss = busy_p.memory_info().rss / 2**20
        for agent in (busy, idle):
            agent.check_alive()
    wall = t1 - t0
    if not (work / "rss" / "outbox.db").is_file():
        raise AssertionError("bench edge: the measured agent wrote no disk outbox")

    def pct(a: Any, b: Any) -> float:
        used = float((b.user - a.user) + (b.system - a.system))
        return round(100.0 * used / wall, 2)

    return {
        "rss_mb": round(rss, 1),
        "rss_after_s": idle_seconds,
        "idle_cpu_pct": pct(i0, i1),
        "cpu_pct_at_10hz": pct(b0, b1),
    }


def _rounded(pair: tuple[float, float]) -> tuple[float, float]:
    return round(pair[0], 2), round(pair[1], 2)


def run_edge_bench(
    models_dir: Path,
    *,
    readings: int = 20000,
    baseline_readings: int = 5000,
    seed: int = 7,
    idle_seconds: float = 5.0,
    paced_readings: int = 2000,
    paced_rate_hz: float = 1000.0,
    broker: str = "auto",
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from edge_agent.scheduling import CPU_AUTO, allowed_cpus, choose_cpu  # noqa: PLC0415
    from shared.endpoint import BrokerEndpoint  # noqa: PLC0415

    load_before = round(os.getloadavg()[0], 2)
    built = build_default_models(models_dir, seed=seed)
    edge_dir = built.edge
    if broker == "auto":
        broker = "mosquitto" if find_mosquitto() else "embedded"
    values = _stream(seed, max(readings, baseline_readings) + paced_readings)
    timed = values[:readings]
    paced = values[readings : readings + paced_readings]  # continues the stream
    base = values[:baseline_readings]
    sk_model, agreement = _sklearn_model(models_dir, seed, edge_dir, base)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        work = Path(tmp)
        secret = secrets.token_urlsafe(24)
        running = None if broker == "none" else _start_broker(broker, work, {_AGENT_USER: secret})
        try:
            endpoint = (
                running.endpoint(_AGENT_USER)
                if running is not None
                else BrokerEndpoint(HOST, free_port(), _AGENT_USER, secret)  # nothing listens
            )
            phases: list[Phase] = [("warm-up", timed, 0.0), ("timed", timed, 0.0)]
            if paced_readings:
                phases.append(("paced", paced, paced_rate_hz))
            connect = running is not None
            agent, written = _figures(
                edge_dir, endpoint, work / "bench-edge", phases, connect=connect
            )
            # The same readings with the threads left to the OS (--cpu any), and the
            # baseline both ways: the speedup takes the baseline's better p99.
            free, _ = _figures(
                edge_dir, endpoint, work / "bench-any-cpu", phases, connect=connect, cpu="any"
            )
            baseline = {
                cpu: _figures(
                    edge_dir,
                    endpoint,
                    work / f"bench-baseline-{cpu}",
                    [("warm-up", base, 0.0), ("timed", base, 0.0)],
                    model=sk_model,
                    connect=connect,
                    cpu=cpu,
                )[0]
                for cpu in ("auto", "any")
            }
            procs = _agent_processes(edge_dir, endpoint, work, idle_seconds) if connect else {}
            broker_version = running.version if running is not None else None
        finally:
            if running is not None:
                running.stop()
    p50, p99 = _rounded(agent["timed"])
    paced50, paced99 = _rounded(agent.get("paced", (0.0, 0.0)))
    w50, w99 = _rounded(agent["timed_process"])
    f50, f99 = _rounded(free["timed"])
    fpaced50, fpaced99 = _rounded(free.get("paced", (0.0, 0.0)))
    pinned, unpinned = baseline["auto"], baseline["any"]
    best = min((pinned, unpinned), key=lambda b: b["timed"][1])
    b50, b99 = _rounded(best["timed"])
    bw50, bw99 = _rounded(best["timed_process"])
    return {
        "bench": "edge",
        "readings": readings,
        "cpu": choose_cpu(CPU_AUTO, allowed_cpus(), os.getpid()),
        "p50_us": p50,
        "p99_us": p99,
        "paced_p50_us": paced50,
        "paced_p99_us": paced99,
        "paced_rate_hz": paced_rate_hz,
        "paced_readings": paced_readings,
        "process_p50_us": w50,
        "process_p99_us": w99,
        "any_cpu_p50_us": f50,
        "any_cpu_p99_us": f99,
        "any_cpu_paced_p50_us": fpaced50,
        "any_cpu_paced_p99_us": fpaced99,
        "baseline_readings": baseline_readings,
        "baseline_p50_us": b50,
        "baseline_p99_us": b99,
        "baseline_process_p50_us": bw50,
        "baseline_process_p99_us": bw99,
        "baseline_one_cpu_p99_us": _rounded(pinned["timed"])[1],
        "baseline_any_cpu_p99_us": _rounded(unpinned["timed"])[1],
        "speedup_p99": round(b99 / p99, 2),
        "baseline_agreement": agreement,
        "timed_span": TIMED_SPAN,
        "outbox": "disk",
        "outbox_messages": written,
        **procs,
        "broker": broker,
        "broker_version": broker_version,
        "model": str(edge_dir),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_1m_before": load_before,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``edgeloop-sim bench edge``."""
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("var/models"),
        help="model directory; default models are built there if missing (default: var/models)",
    )
    parser.add_argument(
        "--readings",
        type=positive_int,
        default=20000,
        help="readings to time back to back, after as many untimed (default: 20000)",
    )
    parser.add_argument(
        "--baseline-readings",
        type=positive_int,
        default=5000,
        help="readings to time for the scikit-learn baseline (default: 5000)",
    )
    parser.add_argument(
        "--paced-readings",
        type=non_negative_int,
        default=2000,
        help="readings to time at --paced-rate-hz, sleeping between them; 0 skips (default: 2000)",
    )
    parser.add_argument(
        "--paced-rate-hz",
        type=positive_float,
        default=1000.0,
        help="arrival rate of the paced readings (default: 1000)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=7,
        help="seed of the models and of the timed stream (default: 7)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=positive_float,
        default=5.0,
        help="how long to watch an idle agent's CPU, and the 10 Hz agent before its "
        "memory is read (default: 5)",
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded", "none"),
        default="auto",
        help="broker the agents connect to: mosquitto, embedded (amqtt), auto: mosquitto "
        "when installed; or none: the timed agents' broker cannot be reached, so their link "
        "thread writes the disk outbox and sends nothing (no memory or CPU figures then) "
        "(default: auto)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``edgeloop-sim bench edge``: the result as a JSON-ready dict."""
    return run_edge_bench(
        args.models,
        readings=args.readings,
        baseline_readings=args.baseline_readings,
        seed=args.seed,
        idle_seconds=args.idle_seconds,
        paced_readings=args.paced_readings,
        paced_rate_hz=args.paced_rate_hz,
        broker=args.broker,
    )
