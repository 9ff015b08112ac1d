"""``edgeloop-sim bench edge``: the edge agent's hot path, memory and idle CPU.

- Latency: every reading of a seeded simulated stream goes through the agent's
  own :meth:`~edge_agent.agent.Agent.process` after an untimed pass over the
  same stream to warm caches. ``p50_us``/``p99_us`` are reading in to urgent
  decision out (features, int8 ONNX, urgent rule), as the agent's own latency
  recorder measures it for its heartbeat; ``process_*`` time the whole call,
  action and queueing included. The baseline, timed in the same run on the
  same stream, is the same features and rule around per-row scikit-learn
  ``predict_proba`` of the same MLP (retrained from the same seed and data,
  which gives the same weights; its agreement with the packaged model is
  reported as ``baseline_agreement``).
- Paced latency: the same recorder while readings arrive at ``paced_rate_hz``,
  the loop sleeping between them as a live agent's does. Between readings
  the CPU's caches and predictors lose the hot path's state, so each reading
  pays to bring it back, the more the longer the wait: this is what the
  heartbeat of an agent reading at that rate reports, and the distance from
  the back-to-back figure says what a machine's other work costs the agent.
- Memory: resident set of a real ``edgeloop-agent`` process running the
  simulated machine at 10 Hz against the embedded broker.
- Idle CPU: a real agent reading from a silent stdin, connected to the broker.
  Both are measured from the moment both say they are connected (the broker
  and agents come from :mod:`simulators.harness`).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from simulators.bench.arguments import non_negative_int, positive_float, positive_int
from simulators.harness import AgentProcess, AmqttBroker

__all__ = ["HELP", "add_arguments", "run", "run_edge_bench"]

HELP: Final = (
    "edge latency (reading in to urgent decision out) against per-row scikit-learn, "
    "agent memory and idle CPU"
)

_AGENT_USER = "bench-agent"
_AGENT_SECRET = "bench-agent-secret-0123456789abcdef"


def _percentiles(samples_ns: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(samples_ns / 1000.0, [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def _stream(seed: int, n: int) -> np.ndarray:
    import dataclasses  # noqa: PLC0415

    from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415

    config = dataclasses.replace(MachineConfig(seed=seed, device_index=99), urgent_rate=2e-3)
    machine = SimulatedMachine(config)
    return np.array([r.values for r in machine.readings(n)])


def _time_agent(
    edge_dir: Path, values: np.ndarray, paced: np.ndarray, paced_rate_hz: float, state_dir: Path
) -> tuple[tuple[float, float], np.ndarray, tuple[float, float]]:
    from edge_agent.agent import Agent  # noqa: PLC0415
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from edge_agent.settings import load_settings  # noqa: PLC0415
    from edge_agent.sources.stdin_jsonl import StdinSource  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415
    from shared.latency import LatencyWindow  # noqa: PLC0415

    settings = load_settings(
        [
            "--model",
            str(edge_dir),
            "--device",
            "bench-edge",
            "--state-dir",
            str(state_dir),
            "--outbox-max",
            "100000",
        ],
        env={},
    )
    agent = Agent(settings, load_edge_model(edge_dir, __version__), StdinSource(sys.stdin), [])
    now = time.time()
    gc.freeze()  # as Agent.run does before its loop

    def one(row: np.ndarray) -> None:
        agent.process(now, row)

    for row in values:  # warm-up
        one(row)
    # The agent's own recorder times reading in -> urgent decision out, the
    # figure the heartbeat reports; the outer clock adds action and queueing.
    agent.latency = LatencyWindow(values.shape[0])
    whole = _timed(one, values, warm_up=False)
    warm = agent.latency.percentiles()
    agent.latency = LatencyWindow(max(paced.shape[0], 1))
    period = 1.0 / paced_rate_hz
    due = time.monotonic()
    for row in paced:
        due += period
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        one(row)
    return warm, whole, agent.latency.percentiles()


def _timed(
    step: Callable[[np.ndarray], object], values: np.ndarray, warm_up: bool = True
) -> np.ndarray:
    """Nanoseconds per call of ``step``, after an untimed warm-up pass over ``values``."""
    if warm_up:
        for row in values:
            step(row)
    times = np.empty(values.shape[0], dtype=np.int64)
    clock = time.perf_counter_ns
    for i, row in enumerate(values):
        t0 = clock()
        step(row)
        times[i] = clock() - t0
    return times


def _time_baseline(
    models_dir: Path, seed: int, edge_dir: Path, values: np.ndarray
) -> tuple[np.ndarray, float]:
    from cloud_hub.pipeline.build import retrain_edge_sklearn  # noqa: PLC0415
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from edge_agent.rules import UrgentRule  # noqa: PLC0415
    from shared import __version__  # noqa: PLC0415
    from shared.features import SENSOR_NAMES, FeatureWindow, features_for_stream  # noqa: PLC0415

    model = load_edge_model(edge_dir, __version__)
    manifest = model.manifest
    sk = retrain_edge_sklearn(models_dir, seed)
    feats = features_for_stream(values, manifest.input.window)
    agreement = float(
        np.mean(sk.predict_proba(feats).argmax(1) == model.score_batch(feats).argmax(1))
    )
    fw = FeatureWindow(manifest.input.window)
    rule = UrgentRule(manifest.urgent, manifest.output.urgent_index, SENSOR_NAMES)
    ui = manifest.output.urgent_index

    def one(row: np.ndarray) -> None:
        f = fw.push(row)
        scores = sk.predict_proba(f.reshape(1, -1))[0]
        rule.check(row, float(scores[ui]))

    return _timed(one, values), round(agreement, 4)


def _agent_processes(edge_dir: Path, work: Path, idle_seconds: float) -> dict[str, float]:
    """RSS of an agent at 10 Hz and CPU of an idle one, both against the embedded broker."""
    import psutil  # noqa: PLC0415

    with AmqttBroker(work / "broker", users={_AGENT_USER: _AGENT_SECRET}) as broker:
        endpoint = broker.endpoint(_AGENT_USER)
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

    def pct(a: Any, b: Any) -> float:
        used = float((b.user - a.user) + (b.system - a.system))
        return round(100.0 * used / wall, 2)

    return {"rss_mb": round(rss, 1), "idle_cpu_pct": pct(i0, i1), "cpu_pct_at_10hz": pct(b0, b1)}


def run_edge_bench(
    models_dir: Path,
    *,
    readings: int = 20000,
    baseline_readings: int = 5000,
    seed: int = 7,
    idle_seconds: float = 5.0,
    paced_readings: int = 2000,
    paced_rate_hz: float = 1000.0,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

    built = build_default_models(models_dir, seed=seed)
    edge_dir = built.edge
    values = _stream(seed, max(readings, baseline_readings) + paced_readings)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        work = Path(tmp)
        # The paced readings continue the stream where the timed ones end.
        (p50, p99), whole, (paced50, paced99) = _time_agent(
            edge_dir,
            values[:readings],
            values[readings : readings + paced_readings],
            paced_rate_hz,
            work / "state",
        )
        base, agreement = _time_baseline(models_dir, seed, edge_dir, values[:baseline_readings])
        procs = _agent_processes(edge_dir, work, idle_seconds)
    w50, w99 = _percentiles(whole)
    b50, b99 = _percentiles(base)
    return {
        "bench": "edge",
        "readings": readings,
        "p50_us": round(p50, 2),
        "p99_us": round(p99, 2),
        "paced_p50_us": round(paced50, 2),
        "paced_p99_us": round(paced99, 2),
        "paced_rate_hz": paced_rate_hz,
        "paced_readings": paced_readings,
        "process_p50_us": w50,
        "process_p99_us": w99,
        "baseline_p50_us": b50,
        "baseline_p99_us": b99,
        "speedup_p99": round(b99 / p99, 2),
        "baseline_agreement": agreement,
        **procs,
        "model": str(edge_dir),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
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
        help="how long to watch an idle agent's CPU (default: 5)",
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
    )
