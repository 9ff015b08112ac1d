"""``python -m tests.ota_fault_agent [FAULTS] -- AGENT_ARGS``: the real agent with one OTA fault.

Fault injection for the OTA end-to-end tests (``tests/test_ota_agent_faults.py``),
like :mod:`simulators.small_disk_agent`: it patches one seam, then calls the
unchanged ``edgeloop-agent`` entry point (``edge_agent.cli.main``). Nothing
else imports it.

- ``--pause-in STATE``: the OTA runner's step of that state waits
  ``--pause-s`` seconds before it runs, so the agent sits in STATE (reported
  to the hub, breadcrumb written) until the test kills it: ``downloading``
  (the worker's download), ``verifying``, ``staged`` (the stage), ``smoke_testing``
  (the smoke test), ``switching`` (the switch, on the reading thread: readings
  wait too, as they would for a swap that takes that long).
- ``--slow-version V --slow-ms MS``: model version V takes MS milliseconds more
  per score on real readings (a slow scorer, for the trial's latency gate). Not
  on the OTA worker's thread, where the smoke test scores the test vectors: a
  20 ms budget (``--ota-smoke-budget-ms``) would refuse the model there, and a slowness
  short of it is not sure to fail the trial's gate on a loaded machine, where
  the previous model's p99 is a few ms.
- ``--desired-size N``: every desired message says the package is N bytes (a
  desired message smaller than the package it names).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

__all__ = ["PAUSED_STEP", "main"]

log = logging.getLogger("tests.ota_fault_agent")

PAUSED_STEP: Final = {
    "downloading": "_download",
    "verifying": "_verify",
    "staged": "_stage",
    "smoke_testing": "_smoke",
    "switching": "_switch",
}
"""The :class:`edge_agent.ota.runner.OtaRunner` method each ``--pause-in`` state holds."""
OTA_WORKER: Final = "edgeloop-ota"
"""The name of the OTA runner's worker thread."""


def _paused(step: Callable[..., Any], state: str, pause_s: float) -> Callable[..., Any]:
    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log.warning("fault: the OTA holds in %s for %g s", state, pause_s)
        time.sleep(pause_s)
        return step(*args, **kwargs)

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.ota_fault_agent",
        description="Run edgeloop-agent with one OTA fault injected.",
    )
    parser.add_argument("--pause-in", choices=sorted(PAUSED_STEP))
    parser.add_argument("--pause-s", type=float, default=60.0)
    parser.add_argument("--slow-version")
    parser.add_argument("--slow-ms", type=float, default=0.0)
    parser.add_argument("--desired-size", type=int)
    parser.add_argument("agent_args", nargs=argparse.REMAINDER, help="-- then edgeloop-agent args")
    args = parser.parse_args(argv)
    agent_args = list(args.agent_args)
    if agent_args[:1] == ["--"]:
        agent_args = agent_args[1:]

    from edge_agent import cli  # noqa: PLC0415
    from edge_agent.engine import EdgeModel  # noqa: PLC0415
    from edge_agent.ota.machine import Target  # noqa: PLC0415
    from edge_agent.ota.runner import OtaRunner  # noqa: PLC0415

    if args.pause_in is not None:
        name = PAUSED_STEP[args.pause_in]
        setattr(OtaRunner, name, _paused(getattr(OtaRunner, name), args.pause_in, args.pause_s))
    if args.slow_version is not None:
        score = EdgeModel.score
        slow_version, extra_s = str(args.slow_version), float(args.slow_ms) / 1000.0

        def slow_score(self: EdgeModel, features: Any) -> Any:
            if self.version == slow_version and threading.current_thread().name != OTA_WORKER:
                time.sleep(extra_s)
            return score(self, features)

        EdgeModel.score = slow_score  # type: ignore[method-assign]
    if args.desired_size is not None:
        from_desired = Target.from_desired
        size = int(args.desired_size)

        def sized(desired: Any) -> Target:
            return dataclasses.replace(from_desired(desired), size=size)

        Target.from_desired = staticmethod(sized)  # type: ignore[method-assign,assignment]
    return cli.main(agent_args)


if __name__ == "__main__":
    sys.exit(main())
