"""``edgeloop-sim``: the tester's front door (simulated data, benchmarks)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.errors import EdgeloopError
from shared.logformat import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging, default_log_format
from shared.stdout import after_broken_pipe

__all__ = ["main"]


def _add_log_format(parser: argparse.ArgumentParser, default: str) -> None:
    """``--log-format`` before the command, and after it (``default`` SUPPRESS there, so
    a subcommand without it does not undo the one given before)."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help=f"log lines as text, or one JSON object per line (default: ${LOG_FORMAT_ENV}, "
        "else text); the hub and agents the command starts log the same way",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop-sim",
        description="Simulated sensors, data sets and benchmarks for edgeloop.",
    )
    _add_log_format(parser, default="")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate", help="write a simulated machine's readings as CSV (the format CSV replay reads)"
    )
    gen.add_argument("--out", type=Path, required=True, help="CSV file to write ('-' for stdout)")
    gen.add_argument(
        "--readings", type=int, default=1000, help="number of readings (default: 1000)"
    )
    gen.add_argument(
        "--seed", type=int, default=1, help="random seed; same seed, same stream (default: 1)"
    )
    gen.add_argument(
        "--device-index",
        type=int,
        default=0,
        help="device number within the seed's fleet (default: 0)",
    )
    gen.add_argument(
        "--rate-hz",
        type=float,
        default=10.0,
        help="readings per second of simulated time (default: 10)",
    )
    gen.add_argument(
        "--urgent-rate",
        type=float,
        default=None,
        help="chance per reading of an urgent condition (default: the simulator's)",
    )
    gen.add_argument(
        "--fault-rate",
        type=float,
        default=None,
        help="chance per reading that a slow fault starts (default: the simulator's)",
    )
    gen.add_argument(
        "--drift",
        action="append",
        default=[],
        metavar="KIND:SENSOR:START:MAGNITUDE",
        help="inject drift, e.g. mean_shift:temperature:500:1.0 (repeatable)",
    )

    demo = sub.add_parser(
        "demo",
        help="the main job: embedded broker plus a fleet of simulated agents, with a live summary",
    )
    demo.add_argument(
        "--devices",
        type=int,
        default=20,
        help="simulated devices, each a real agent process (default: 20)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--rate-hz", type=float, default=5.0, help="readings per second per device (default: 5)"
    )
    demo.add_argument(
        "--seed", type=int, default=1, help="seed of the simulated fleet (default: 1)"
    )
    demo.add_argument(
        "--models",
        type=Path,
        default=Path("var/models"),
        help="model directory; default models are built there if missing (default: var/models)",
    )
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=Path("var/demo"),
        help="where the run keeps broker accounts, agent state and logs (default: var/demo)",
    )
    demo.add_argument(
        "--summary-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between summary lines (default: 5)",
    )

    _add_replay(sub)
    for command in (gen, demo):
        _add_log_format(command, default=argparse.SUPPRESS)

    bench = sub.add_parser("bench", help="run a benchmark; prints one JSON object as its last line")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    for name in _BENCHES:
        module = importlib.import_module(f"simulators.bench.{name}")
        module.add_arguments(bench_sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def _hub_url(text: str) -> str:
    """``replay --hub``: an http(s) URL with a host. Without its scheme
    (``127.0.0.1:8080``) the request went nowhere and the error said the hub "does
    not answer", as if it were down.

    >>> _hub_url("http://127.0.0.1:8080/")
    'http://127.0.0.1:8080/'
    >>> _hub_url("127.0.0.1:8080")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '127.0.0.1:8080' is not an http:// or https:// URL with a host; give the hub's API with its scheme, e.g. http://127.0.0.1:8080
    """
    import urllib.parse  # noqa: PLC0415

    url = urllib.parse.urlsplit(text.strip())
    if url.scheme in ("http", "https") and url.hostname:
        return text.strip()
    example = text.strip() if "://" not in text and text.strip() else "127.0.0.1:8080"
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an http:// or https:// URL with a host; give the hub's API "
        f"with its scheme, e.g. http://{example}"
    )


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cloud_hub.settings import OPTIONS, PROVISION_OPTIONS  # noqa: PLC0415
    from simulators.bench.arguments import positive_float  # noqa: PLC0415

    replay = sub.add_parser(
        "replay",
        help="replay a folder of CSV recordings into a running hub, one agent per file; "
        "prints rows read, sent and stored and urgent events per file, then one JSON object",
        description="Replay CSV recordings (the format 'generate' writes and --source csv "
        "reads) into a running hub: one real agent per file, named after the file (or "
        "--device-column), its broker account made as 'edgeloop-hub devices add' makes it "
        "(the hub options below, for the hub's embedded broker) and kept under --state-dir. "
        "A recording replayed again is stored once: its messages carry the recording's "
        "identity (see docs/architecture.md). Prints one line per file, a summary, and last "
        "one JSON object; exits 1 if a file was refused or what it sent was not stored, 2 if "
        "the hub's API does not answer (nothing is replayed).",
    )
    replay.add_argument(
        "recordings", nargs="+", type=Path, metavar="DIR_OR_FILE", help="CSV files or folders"
    )
    replay.add_argument(
        "--hub",
        required=True,
        type=_hub_url,
        metavar="URL",
        help="the hub's HTTP API, e.g. http://127.0.0.1:8080 (asked what it stored)",
    )
    replay.add_argument(
        "--read-token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file (mode 0600) holding the hub's read token (default: $EDGELOOP_HUB_READ_TOKEN)",
    )
    replay.add_argument(
        "--hub-ca-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="CA certificate to verify an https:// --hub with (default: the system's CAs)",
    )
    replay.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="edge model package (default: the default edge model in --models-dir, built if missing)",
    )
    replay.add_argument(
        "--models-dir",
        type=Path,
        default=Path("var/models"),
        metavar="DIR",
        help="model directory for the default model (default: var/models)",
    )
    replay.add_argument(
        "--pace",
        choices=("fast", "recorded"),
        default="fast",
        help="as fast as possible, or at the pace the timestamps say (default: fast)",
    )
    replay.add_argument(
        "--device-column",
        default=None,
        metavar="NAME",
        help="name each file's device by this column (one value per file) instead of the file name",
    )
    replay.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/replay"),
        metavar="DIR",
        help="agents' state (outbox) and broker credentials, DEVICE/ each (default: var/replay)",
    )
    replay.add_argument(
        "--rotate",
        action="store_true",
        help="give a device that has broker credentials this replay did not make new ones",
    )
    replay.add_argument(
        "--agent-args",
        default="",
        metavar="FLAGS",
        help="more edgeloop-agent flags for every agent, one string (e.g. '--max-batch 100')",
    )
    replay.add_argument(
        "--timeout-s",
        type=positive_float,
        default=3600.0,
        metavar="S",
        help="stop every agent after this long (default: 3600)",
    )
    replay.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="WARNING",
        help="log level (default: WARNING; each urgent event is logged only at INFO or DEBUG)",
    )
    OPTIONS.add_to(replay, only=PROVISION_OPTIONS)
    _add_log_format(replay, default=argparse.SUPPRESS)


# Benchmarks with a module of their own: HELP, add_arguments(parser), run(args) -> dict.
# Their modules import nothing heavy at the top, so --help stays fast.
_BENCHES = (
    "drift",
    "edge",
    "hub",
    "fleet",
    "ota",
    "chaos",
    "flood",
    "batch",
    "anomaly",
    "baseline",
    "urgent",
    "loop",
    "dashboard",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(
        logging.WARNING,
        args.log_format or default_log_format(),
        "%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "bench" and args.bench in _BENCHES:
            module = importlib.import_module(f"simulators.bench.{args.bench}")
            print(json.dumps(module.run(args)), flush=True)
            return 0
    except BrokenPipeError:  # `| head` read what it wanted
        return after_broken_pipe()
    except (EdgeloopError, ValueError, OSError) as exc:
        print(f"edgeloop-sim: {exc}", file=sys.stderr)
        return 2
    parser.print_help(sys.stderr)
    return 2


def _demo(args: argparse.Namespace) -> int:
    import threading  # noqa: PLC0415

    from simulators.demo import DemoConfig, install_signal_handlers, run_demo  # noqa: PLC0415

    if args.devices < 1 or args.rate_hz <= 0 or args.duration < 0:
        raise ValueError("demo needs --devices >= 1, --rate-hz > 0 and --duration >= 0")
    stop = threading.Event()
    install_signal_handlers(stop)
    config = DemoConfig(
        devices=args.devices,
        duration_s=args.duration,
        models_dir=args.models,
        work_dir=args.work_dir,
        rate_hz=args.rate_hz,
        seed=args.seed,
        summary_every_s=args.summary_every,
    )
    return run_demo(config, stop)


def _replay(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    import shlex  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from simulators.demo import install_signal_handlers  # noqa: PLC0415
    from simulators.harness import HubApi  # noqa: PLC0415
    from simulators.replay import ReplayConfig, read_token, run_replay  # noqa: PLC0415

    logging.getLogger().setLevel(args.log_level)
    if args.log_level not in ("DEBUG", "INFO"):  # one line per urgent event drowns the report
        logging.getLogger("edge_agent.actuators").setLevel(logging.ERROR)
    settings = resolve_settings(args, serving=False)
    if not settings.embedded_broker:
        raise ValueError(
            "replay makes its devices' accounts on the hub's embedded broker; with an external "
            f"broker ({settings.broker}) it cannot yet: run 'edgeloop-agent --source csv "
            "--csv-path FILE' per file with the settings 'edgeloop-hub devices add' prints"
        )
    api = HubApi(args.hub.rstrip("/"), read_token(args.read_token_file, dict(os.environ)))
    if args.hub_ca_file is not None:
        api = HubApi(api.base_url, api.token, ca_file=args.hub_ca_file)
    model = args.model
    if model is None:
        from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415

        model = build_default_models(args.models_dir).edge
    config = ReplayConfig(
        paths=tuple(args.recordings),
        hub=api,
        hub_settings=settings,
        model=model,
        state_dir=args.state_dir,
        pace=args.pace,
        device_column=args.device_column,
        rotate=args.rotate,
        agent_args=tuple(shlex.split(args.agent_args)),
        timeout_s=args.timeout_s,
    )
    stop = threading.Event()
    install_signal_handlers(stop)
    report = run_replay(config, stop, sys.stdout)
    print(json.dumps(report), flush=True)
    return 1 if report["refused"] or report["not_stored"] else 0


def _generate(args: argparse.Namespace) -> int:
    import dataclasses  # noqa: PLC0415

    from simulators.drift import parse_drift  # noqa: PLC0415
    from simulators.generate import write_csv  # noqa: PLC0415
    from simulators.machine import MachineConfig  # noqa: PLC0415

    config = MachineConfig(
        seed=args.seed,
        device_index=args.device_index,
        rate_hz=args.rate_hz,
        drifts=tuple(parse_drift(d) for d in args.drift),
    )
    if args.urgent_rate is not None:
        config = dataclasses.replace(config, urgent_rate=args.urgent_rate)
    if args.fault_rate is not None:
        config = dataclasses.replace(config, fault_rate=args.fault_rate)
    if str(args.out) == "-":
        write_csv(sys.stdout, config, args.readings)
    else:
        write_csv(args.out, config, args.readings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
