"""``python -m simulators.small_disk_agent --disk-bytes N -- AGENT_ARGS``: the real agent on a
simulated small disk, for fault tests where no small filesystem can be mounted.

The chaos bench puts an agent's state directory on a small tmpfs when it may
mount one (root). Where it may not, it runs the agent through this module
instead: the unchanged ``edgeloop-agent`` (``edge_agent.cli.main``), except
that the outbox's view of its disk (``Outbox._disk_free``, its disk seam) is a
filesystem of ``--disk-bytes`` that holds only the state directory's files.
The outbox's free-space reserve then acts as it would on such a disk. What a
simulation cannot show is SQLite itself meeting a full disk (ENOSPC), which
only the real tmpfs does. This is fault injection; nothing else imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _usage(directory: Path) -> int:
    """Bytes the files directly in ``directory`` occupy (in 4 KiB blocks, as tmpfs counts)."""
    total = 0
    for entry in directory.iterdir():
        try:
            if entry.is_file():
                total += -(-entry.stat().st_size // 4096) * 4096
        except FileNotFoundError:  # a file SQLite removed meanwhile
            continue
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.small_disk_agent",
        description="Run edgeloop-agent with its outbox on a simulated disk of --disk-bytes.",
    )
    parser.add_argument("--disk-bytes", type=int, required=True, help="size of the simulated disk")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER, help="-- then edgeloop-agent args")
    args = parser.parse_args(argv)
    agent_args = list(args.agent_args)
    if agent_args[:1] == ["--"]:
        agent_args = agent_args[1:]
    size = int(args.disk_bytes)
    if size < 1:
        parser.error("--disk-bytes must be >= 1")

    from edge_agent import cli  # noqa: PLC0415
    from edge_agent.outbox import Outbox  # noqa: PLC0415

    def disk_free(self: Outbox) -> int:
        assert self.path is not None
        return max(0, size - _usage(self.path.parent))

    Outbox._disk_free = disk_free  # type: ignore[method-assign]
    return cli.main(agent_args)


if __name__ == "__main__":
    sys.exit(main())
