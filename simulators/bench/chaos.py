"""``edgeloop-sim bench chaos``: delivery under real faults, one at a time, every reading counted.

It starts its own Mosquitto (persistence on, per-device accounts and ACLs)
and hub on free loopback ports, and for each chosen fault a fresh fleet of
``--devices`` real ``edgeloop-agent`` processes reading at ``--rate-hz``
(see :mod:`simulators.chaos` for the faults, what is counted and how):

    a  Mosquitto SIGKILLed, restarted after --broker-down-s
    b  Mosquitto stopped for --network-cut-s (the network cut)
    c  one agent SIGKILLed, restarted after --agent-down-s
    d  the hub SIGKILLed and restarted, then SIGTERMed and restarted (--hub-down-s each)
    e  one agent's state directory on a small disk (--disk-bytes), filled by a
       broker outage of --outage-s (a tmpfs mounted here; simulated where mounting
       is refused, which the result says)
    f  the agents started during a broker outage of --outage-s with --outbox-max

For each fault it prints a line (produced, stored, duplicates_stored,
lost_at_edge, lost_unexplained, catch-up time); the last line on stdout is one
JSON object: ``faults`` (one object per fault) and the totals ``produced``,
``stored``, ``duplicates_stored``, ``lost_unexplained`` and
``lost_at_edge_recoverable`` (lost at the edge in faults a-d, which must be 0).
Progress goes to stderr. Nothing here is pass/fail; the figures are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Final

from simulators.bench.arguments import (
    add_dir_options,
    non_negative_float,
    positive_float,
    positive_int,
)
from simulators.bench.workdir import in_work_dir

__all__ = ["HELP", "add_arguments", "run"]

HELP: Final = (
    "delivery under real faults (broker killed, network cut, agent killed, hub killed, disk "
    "full, outbox smaller than the outage), every reading counted (starts its own Mosquitto, "
    "hub and agents)"
)


def _faults(text: str) -> tuple[str, ...]:
    from simulators.chaos import FAULTS  # noqa: PLC0415

    chosen = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose faults from {','.join(FAULTS)} (comma-separated)"
        )
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``edgeloop-sim bench chaos``."""
    parser.add_argument(
        "--faults",
        type=_faults,
        default=("a", "b", "c", "d", "e", "f"),
        metavar="LIST",
        help="faults to run, comma-separated, in order (default: a,b,c,d,e,f)",
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=20,
        help="agents per fault, each a real edgeloop-agent process (default: 20)",
    )
    parser.add_argument(
        "--rate-hz", type=positive_float, default=10.0, help="readings/s per agent (default: 10)"
    )
    parser.add_argument(
        "--warmup-s",
        type=non_negative_float,
        default=5.0,
        metavar="S",
        help="readings each device has stored, in seconds' worth, before a fault starts "
        "(default: 5)",
    )
    parser.add_argument(
        "--broker-down-s",
        type=non_negative_float,
        default=10.0,
        metavar="S",
        help="(a) the broker stays dead this long after its SIGKILL (default: 10)",
    )
    parser.add_argument(
        "--network-cut-s",
        type=non_negative_float,
        default=60.0,
        metavar="S",
        help="(b) the broker is stopped this long (default: 60)",
    )
    parser.add_argument(
        "--agent-down-s",
        type=non_negative_float,
        default=5.0,
        metavar="S",
        help="(c) the killed agent stays down this long (default: 5)",
    )
    parser.add_argument(
        "--hub-down-s",
        type=non_negative_float,
        default=5.0,
        metavar="S",
        help="(d) the hub stays down this long after its SIGKILL, and after its SIGTERM "
        "(default: 5)",
    )
    parser.add_argument(
        "--outage-s",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="(e, f) the broker outage that fills the small disk, or the small outbox "
        "(default: 30)",
    )
    parser.add_argument(
        "--disk-bytes",
        type=positive_int,
        default=1024 * 1024,
        metavar="BYTES",
        help="(e) size of the small disk (default: 1048576)",
    )
    parser.add_argument(
        "--disk-rate-hz",
        type=positive_float,
        default=50.0,
        help="(e) readings/s of the agent on the small disk, so that it fills within "
        "--outage-s (default: 50)",
    )
    parser.add_argument(
        "--disk",
        choices=("auto", "simulated"),
        default="auto",
        help="(e) auto: a tmpfs mounted here where that is allowed (root), else a simulated "
        "disk; simulated: always the simulated one (default: auto)",
    )
    parser.add_argument(
        "--outbox-max",
        type=positive_int,
        default=10,
        metavar="N",
        help="(f) the agents' --outbox-max, in messages (about one a second) (default: 10)",
    )
    parser.add_argument(
        "--settle-timeout-s",
        type=positive_float,
        default=300.0,
        metavar="S",
        help="longest wait for the hub to settle everything after a fault (default: 300)",
    )
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more edgeloop-agent flag for every agent (repeatable; e.g. "
        "--agent-arg=--resend-after-s --agent-arg=2)",
    )
    add_dir_options(parser, "the broker, hub and agents' files and logs")


def _say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen faults; returns the JSON-ready result (the CLI prints it last)."""
    from simulators.chaos import ChaosConfig  # noqa: PLC0415

    config = ChaosConfig(
        devices=args.devices,
        rate_hz=args.rate_hz,
        warmup_s=args.warmup_s,
        broker_down_s=args.broker_down_s,
        network_cut_s=args.network_cut_s,
        agent_down_s=args.agent_down_s,
        hub_down_s=args.hub_down_s,
        outage_s=args.outage_s,
        disk_bytes=args.disk_bytes,
        disk_rate_hz=args.disk_rate_hz,
        disk=args.disk,
        outbox_max=args.outbox_max,
        settle_timeout_s=args.settle_timeout_s,
        agent_args=tuple(args.agent_arg),
    )
    config.check()
    return in_work_dir(
        args.work_dir, "edgeloop-bench-chaos-", lambda work: _run(args, config, work)
    )


def _run(args: argparse.Namespace, config: Any, work: Path) -> dict[str, Any]:
    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from simulators.chaos import RECOVERABLE, ChaosError, ChaosRig, run_fault  # noqa: PLC0415
    from simulators.harness import find_mosquitto  # noqa: PLC0415

    if find_mosquitto() is None:
        raise ChaosError(
            "bench chaos: needs Mosquitto, the production broker (apt-get install mosquitto)"
        )
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.monotonic()
    built = build_default_models(args.models_dir)
    results = []
    with ChaosRig(work, args.models_dir, built.edge, say=_say) as rig:
        for letter in args.faults:
            result = run_fault(rig, letter, config, say=_say)
            print(result.line(), flush=True)
            results.append(result)
    faults = [r.as_dict() for r in results]
    return {
        "bench": "chaos",
        "faults": faults,
        "produced": sum(r.produced for r in results),
        "stored": sum(r.stored for r in results),
        "duplicates_stored": sum(r.duplicates_stored for r in results),
        "lost_unexplained": sum(r.lost_unexplained for r in results),
        "lost_at_edge_recoverable": sum(r.lost_at_edge for r in results if r.fault in RECOVERABLE),
        "lost_at_edge": sum(r.lost_at_edge for r in results),
        "all_settled": all(r.settled for r in results),
        "devices": config.devices,
        "rate_hz": config.rate_hz,
        "broker": "mosquitto (persistence on)",
        "broker_version": rig.broker.version,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_1m_before": load_before,
    }
