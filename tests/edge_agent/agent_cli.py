"""Run ``edgeloop-agent`` as a real process to its end (tests of how a run starts or ends)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from simulators.harness import child_env


def run_agent_cli(
    *args: str, timeout: float = 50.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m edge_agent ARGS`` with a clean environment plus ``env``; its output
    captured."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
