"""``edgeloop-hub rollout start|list|show|pause|resume|abort``: staged rollouts from the shell.

    edgeloop-hub rollout start NAME VERSION [--cohorts 1,10,50,100] [--gate KEY=VALUE]...
        [--devices a,b,...]
    edgeloop-hub rollout list
    edgeloop-hub rollout show ID [--json]
    edgeloop-hub rollout pause|resume|abort ID [--reason TEXT]

A command is checked here by the same rules the hub applies, then queued in
the store for the running hub's rollout manager, which carries it out within
``--rollout-tick-s``; the command waits (at most :data:`WAIT_S`) for the hub's
answer and exits 1 with the hub's reason when it refuses. With no hub running
it says so and leaves the command queued: the hub carries it out when it
starts. The API (``/v1/rollouts``) does the same at once. Importing this
module loads nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["add_rollout_parsers"]

ROLLOUT_OPTIONS: Final = ("data_dir", "store")
WAIT_S: Final = 10.0
"""How long a command waits for the running hub to carry it out."""


def _await(store: Any, command_id: int, what: str) -> bool | None:
    """Wait for the hub's answer to a queued command: True done, False refused (said on
    stderr), None not taken yet (said on stdout)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        done, error = store.rollout_command_result(command_id)
        if done:
            if error is not None:
                print(f"edgeloop-hub: the hub refused {what}: {error}", file=sys.stderr)
                return False
            return True
        time.sleep(0.2)
    print(
        f"{what}: queued, but no hub has taken it within {WAIT_S:g} s (is 'edgeloop-hub serve' "
        "running on this data directory?); the hub carries it out when it runs"
    )
    return None


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[Any]:
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from cloud_hub.store import open_store  # noqa: PLC0415

    store = open_store(resolve_settings(args, serving=False).store)
    try:
        yield store
    finally:
        store.close()


def _cohorts(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give cumulative percentages, e.g. 1,10,50,100"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one percentage, e.g. 100")
    return values


def _gate(text: str) -> tuple[str, float]:
    from cloud_hub.ota.rollout import Gates  # noqa: PLC0415

    names = [f.name for f in dataclasses.fields(Gates)]
    key, sep, value = text.partition("=")
    if not sep or key not in names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give KEY=VALUE with KEY one of {', '.join(names)}"
        )
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def _start(args: argparse.Namespace) -> int:
    from cloud_hub.ota.rollout import Gates, RolloutError  # noqa: PLC0415
    from cloud_hub.ota.rollouts import StartRequest, check_start, new_rollout_id  # noqa: PLC0415

    given: dict[str, Any] = dict(args.gate or [])
    if "min_readings" in given:
        if not float(given["min_readings"]).is_integer():
            args.parser.error(f"--gate min_readings={given['min_readings']:g}: give a whole number")
        given["min_readings"] = int(given["min_readings"])
    try:
        gates = Gates(**given)
    except (RolloutError, TypeError) as exc:
        args.parser.error(f"--gate: {exc}")
    devices = (
        None if args.devices is None else [d.strip() for d in args.devices.split(",") if d.strip()]
    )
    req = StartRequest(args.name, args.version, args.cohorts, gates, devices)
    with _store(args) as store:
        try:
            previous = check_start(store, req)
        except RolloutError as exc:
            raise ValueError(str(exc)) from None
        rollout_id = new_rollout_id(args.name, args.version, time.time())
        command_id = store.add_rollout_command(rollout_id, "start", req.to_json(), time.time())
        print(
            f"rollout {rollout_id}: {args.name} {args.version} on {len(previous)} device(s), "
            f"cohorts {','.join(f'{c:g}' for c in args.cohorts)}"
        )
        done = _await(store, command_id, f"rollout {rollout_id}")
    if done:
        print(f"started; watch it with 'edgeloop-hub rollout show {rollout_id}'")
    return 1 if done is False else 0


def _list(args: argparse.Namespace) -> int:
    from cloud_hub.ota.rollout import Rollout  # noqa: PLC0415

    with _store(args) as store:
        rows = store.rollouts()
    if not rows:
        print("no rollouts ('edgeloop-hub rollout start NAME VERSION')")
        return 0
    for row in rows:
        r = Rollout.from_dict(json.loads(row.body))
        counts = ", ".join(f"{k} {v}" for k, v in r.counts().items() if v)
        print(
            f"{r.id}  {r.state.value:<9} cohort {min(r.cohort + 1, len(r.cohorts))}/{len(r.cohorts)}  {counts}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from cloud_hub.ota.rollout import Rollout  # noqa: PLC0415

    with _store(args) as store:
        row = store.rollout(args.id)
    if row is None:
        raise ValueError(
            f"there is no rollout {args.id!r} (a start queued while the hub is not running "
            "appears once it runs); 'edgeloop-hub rollout list' lists them"
        )
    r = Rollout.from_dict(json.loads(row.body))
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    print(f"rollout {r.id}: {r.model} {r.version}, {r.state.value}")
    for i, cohort in enumerate(r.cohorts):
        states: dict[str, int] = {}
        for d in cohort:
            states[r.devices[d].value] = states.get(r.devices[d].value, 0) + 1
        mark = "->" if i == r.cohort and not r.finished else "  "
        print(
            f" {mark} cohort {i + 1}: {len(cohort)} device(s): "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        )
    for decision in r.decisions:
        when = time.strftime("%H:%M:%S", time.gmtime(decision.at))
        gates = f"  {json.dumps(dict(decision.gates))}" if decision.gates else ""
        print(f"  {when} {decision.what}: {decision.why}{gates}")
    return 0


def _control(args: argparse.Namespace) -> int:
    from cloud_hub.ota.rollout import Rollout, RolloutError, command  # noqa: PLC0415

    with _store(args) as store:
        row = store.rollout(args.id)
        if row is None:
            raise ValueError(f"there is no rollout {args.id!r}; 'edgeloop-hub rollout list'")
        try:  # the hub's own rule, on the state as stored now
            command(Rollout.from_dict(json.loads(row.body)), args.what, time.time())
        except RolloutError as exc:
            raise ValueError(str(exc)) from None
        command_id = store.add_rollout_command(
            args.id, args.what, json.dumps({"reason": args.reason or ""}), time.time()
        )
        done = _await(store, command_id, f"rollout {args.id}: {args.what}")
    if done:
        print(f"rollout {args.id}: {args.what} done")
    return 1 if done is False else 0


def add_rollout_parsers(commands: Any) -> None:
    """Add ``rollout`` and its subcommands."""
    from cloud_hub.settings import OPTIONS  # noqa: PLC0415  (imports nothing heavy)

    rollout = commands.add_parser(
        "rollout",
        help="staged rollouts of an edge model version to the devices that run the model",
        description="Move the devices that run model NAME to VERSION in cohorts (canary first), "
        "each advancing when its devices have committed and its gates hold, aborting and "
        "rolling the moved devices back when a gate fails.",
    )
    rollout.set_defaults(parser=rollout)
    sub = rollout.add_subparsers(title="rollout commands", metavar="COMMAND")
    start = sub.add_parser(
        "start",
        help="start a rollout",
        description="Start moving the devices that run NAME to VERSION (a registered, signed "
        "edge model). Gates (--gate KEY=VALUE, repeatable): min_commit_fraction (1.0), "
        "max_failure_fraction (0.0), device_timeout_s (600; a timeout counts as a failure), "
        "soak_s (0), max_latency_ratio, max_disagreement_delta, max_urgent_ratio (cohort "
        "against the devices still on the old version), urgent_floor (0.001), min_readings (100).",
    )
    start.add_argument("name", metavar="NAME", help="the edge model, e.g. machine-edge")
    start.add_argument("version", metavar="VERSION")
    start.add_argument(
        "--cohorts",
        type=_cohorts,
        default=[1.0, 10.0, 50.0, 100.0],
        metavar="P,P,...",
        help="cumulative percentages of the devices, rising to 100 (default: 1,10,50,100)",
    )
    start.add_argument(
        "--gate", type=_gate, action="append", metavar="KEY=VALUE", help="a gate (see above)"
    )
    start.add_argument(
        "--devices", metavar="A,B,...", help="only these devices (default: every one on NAME)"
    )
    OPTIONS.add_to(start, only=ROLLOUT_OPTIONS)
    start.set_defaults(handler=_start, parser=start)

    lst = sub.add_parser("list", help="every rollout with its state", description="List rollouts.")
    OPTIONS.add_to(lst, only=ROLLOUT_OPTIONS)
    lst.set_defaults(handler=_list, parser=lst)

    show = sub.add_parser(
        "show",
        help="one rollout: cohorts, devices per state, decisions and gate values",
        description="Show rollout ID: each cohort's devices per state and every decision with "
        "its gate values against their thresholds.",
    )
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    OPTIONS.add_to(show, only=ROLLOUT_OPTIONS)
    show.set_defaults(handler=_show, parser=show)

    for what, summary in (
        ("pause", "stop advancing (devices in flight go on converging)"),
        ("resume", "go on after a pause"),
        ("abort", "stop, and give every device already moved its previous version back"),
    ):
        p = sub.add_parser(
            what, help=summary, description=f"{what.capitalize()} rollout ID: {summary}."
        )
        p.add_argument("id", metavar="ID")
        p.add_argument("--reason", metavar="TEXT", help="why, for the record")
        OPTIONS.add_to(p, only=ROLLOUT_OPTIONS)
        p.set_defaults(handler=_control, parser=p, what=what)
