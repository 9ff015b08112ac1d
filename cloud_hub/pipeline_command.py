"""``edgeloop-hub pipeline run|list|show``: retraining runs from the shell.

    edgeloop-hub pipeline run MODEL --from T --to T [--devices a,b,...] [--option KEY=VALUE]...
        [--reason TEXT] [--data-dir DIR] [--store URL] [--pipeline-* ...]
    edgeloop-hub pipeline list [--model NAME] [--limit N]
    edgeloop-hub pipeline show ID [--json]

``run`` runs the pipeline here, in a process of its own, against the hub's
store (whether or not the hub runs: SQLite in WAL mode takes a second
writer), as an admin run: it registers a candidate and starts no rollout. It
prints each step as it starts and ends and exits 0 when a candidate was
registered, 1 with the reason when the run was rejected or failed, 2 when it
could not start (a run of the model still running, an unknown model or
device). Importing this module loads nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Final

from cloud_hub.registry_command import settings_and_store
from shared.isotime import iso_utc

__all__ = ["add_pipeline_parsers"]

_POLL_S: Final = 0.5
EXIT_REFUSED: Final = 1


def _option(text: str) -> tuple[str, float]:
    from cloud_hub.retrain.runs import PipelineOptions  # noqa: PLC0415

    names = [f for f in PipelineOptions.__dataclass_fields__]
    key, sep, value = text.partition("=")
    if not sep or key not in names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give KEY=VALUE with KEY one of {', '.join(names)}"
        )
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    return key, number


def _time(text: str) -> float:
    from shared.columns import parse_timestamp  # noqa: PLC0415

    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give unix seconds or ISO 8601 (2026-11-26T20:00:00Z)"
        ) from None


def _when(t: float | None) -> str:
    return "-" if t is None else iso_utc(t)


def _step_line(step: Any) -> str:
    took = (
        f" {step.finished_at - step.started_at:.1f} s"
        if step.started_at is not None and step.finished_at is not None
        else ""
    )
    return f"  {step.name:<9} {step.status:<8}{took}  {step.detail}".rstrip()


def _run(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.runner import (  # noqa: PLC0415
        PipelineRequestError,
        PipelineRunner,
        runner_settings,
    )

    options: dict[str, Any] = dict(args.option or [])
    if "seed" in options:
        options["seed"] = int(options["seed"])
    if "max_model_bytes" in options:
        options["max_model_bytes"] = int(options["max_model_bytes"])
    devices = (
        None if args.devices is None else [d.strip() for d in args.devices.split(",") if d.strip()]
    )
    with settings_and_store(args, create=False) as (settings, store):
        runner = PipelineRunner(store, runner_settings(settings, None))
        try:
            run = runner.submit(
                args.model,
                args.since,
                args.until,
                devices=devices,
                options=options,
                trigger="admin",
                reason=args.reason,
            )
        except PipelineRequestError as exc:
            print(f"edgeloop-hub: pipeline run refused: {exc}", file=sys.stderr)
            return 2
        print(
            f"pipeline run {run.id}: {run.model} (production {run.inputs.parent}) on "
            f"{len(run.inputs.devices)} device(s), {_when(run.inputs.since)} to "
            f"{_when(run.inputs.until)}",
            flush=True,
        )
        shown: dict[str, str] = {}
        deadline = time.monotonic() + settings.pipeline_max_s + 120.0
        try:
            while True:
                run = runner.wait(run.id, _POLL_S)
                for step in run.steps:
                    if step.status != "pending" and shown.get(step.name) != step.status:
                        shown[step.name] = step.status
                        print(_step_line(step), flush=True)
                if run.finished or time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            runner.stop()
            raise
        runner.stop()
    print(f"succeeded: {run.decision}" if run.state == "succeeded" else run.decision)
    if run.state != "succeeded":
        print(f"edgeloop-hub: pipeline run {run.id} {run.state}: {run.why}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"  {run.why}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.runs import PipelineRun  # noqa: PLC0415

    with settings_and_store(args, create=False) as (_, store):
        rows = store.pipeline_runs(args.model, args.limit)
    if not rows:
        print("no pipeline runs")
        return 0
    for row in rows:
        run = PipelineRun.from_dict(json.loads(row.body))
        print(
            f"{run.id}  {run.model}  {run.trigger:<8} {run.state:<9} {_when(run.created_at)}  "
            f"{run.decision or '(running)'}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from cloud_hub.retrain.runs import PipelineRun  # noqa: PLC0415

    with settings_and_store(args, create=False) as (_, store):
        row = store.pipeline_run(args.id)
    if row is None:
        raise ValueError(f"there is no pipeline run {args.id!r}; 'edgeloop-hub pipeline list'")
    run = PipelineRun.from_dict(json.loads(row.body))
    if args.json:
        print(json.dumps(run.to_dict(), indent=1, sort_keys=True))
        return 0
    i = run.inputs
    print(f"run       {run.id}")
    print(f"model     {run.model} (parent: production {i.parent})")
    print(f"trigger   {run.trigger}{f' ({run.reason})' if run.reason else ''}")
    print(f"window    {_when(i.since)} <= ts < {_when(i.until)}; devices {', '.join(i.devices)}")
    print(f"state     {run.state}: {run.decision}")
    if run.why:
        print(f"why       {run.why}")
    print("steps")
    for step in run.steps:
        print(_step_line(step))
    if run.gates:
        print("gates")
        for g in run.gates:
            print(f"  {'ok  ' if g.passed else 'FAIL'} {g.name}: {g.detail}")
    if run.metrics:
        print("metrics   " + " ".join(f"{k}={v:.4g}" for k, v in sorted(run.metrics.items())))
    return 0


def add_pipeline_parsers(commands: Any) -> None:
    """Add ``pipeline`` and its subcommands."""
    from cloud_hub.settings import OPTIONS, PIPELINE_OPTIONS  # noqa: PLC0415  (nothing heavy)

    pipeline = commands.add_parser(
        "pipeline",
        help="retraining runs: run one, list them, show one",
        description="The retraining pipeline over stored telemetry: assemble (heavy-model "
        "scores as teacher labels, operators' labels winning), train the edge student, "
        "convert, quantize, gate against the production model on a held-out slice, register "
        "a candidate.",
    )
    pipeline.set_defaults(parser=pipeline)
    sub = pipeline.add_subparsers(title="pipeline commands", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the pipeline for an edge model and show its progress",
        description="Run the pipeline for edge model MODEL over the telemetry stored with "
        "FROM <= ts < TO; exits 0 when a candidate was registered, 1 when the run was "
        "rejected by a gate or failed (with the reason), 2 when it cannot start. Options "
        "(--option KEY=VALUE, repeatable): seed, holdout_fraction (0.2), validation_fraction "
        "(0.1), f1_tolerance, min_agreement, max_latency_us, max_model_bytes (defaults: the "
        "--pipeline-* settings), sabotage_labels (tests and benchmarks only: that share of "
        "the training labels made wrong on purpose).",
    )
    run.add_argument("model", metavar="MODEL", help="the edge model, e.g. machine-edge")
    run.add_argument(
        "--from",
        dest="since",
        type=_time,
        required=True,
        metavar="T",
        help="start of the window, unix seconds or ISO 8601 (inclusive)",
    )
    run.add_argument(
        "--to", dest="until", type=_time, required=True, metavar="T", help="its end (exclusive)"
    )
    run.add_argument(
        "--devices", metavar="A,B,...", help="only these devices (default: every one on MODEL)"
    )
    run.add_argument(
        "--option", type=_option, action="append", metavar="KEY=VALUE", help="see above"
    )
    run.add_argument("--reason", default="", help="why, for the record")
    OPTIONS.add_to(run, only=PIPELINE_OPTIONS)
    run.set_defaults(handler=_run, parser=run)

    lst = sub.add_parser("list", help="the newest runs", description="List pipeline runs.")
    lst.add_argument("--model", metavar="NAME", help="only this model's runs")
    lst.add_argument("--limit", type=int, default=50, metavar="N")
    OPTIONS.add_to(lst, only=("data_dir", "store"))
    lst.set_defaults(handler=_list, parser=lst)

    show = sub.add_parser(
        "show", help="one run: steps, gates, metrics, decision", description="Show a run."
    )
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="the whole record as JSON")
    OPTIONS.add_to(show, only=("data_dir", "store"))
    show.set_defaults(handler=_show, parser=show)
