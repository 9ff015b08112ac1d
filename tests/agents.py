"""Real agent processes for tests: ``python -m edge_agent`` against a broker, and its log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from shared.endpoint import BrokerEndpoint
from shared.topics import Topics

__all__ = ["start_agent", "stop_agent"]


def start_agent(
    endpoint: BrokerEndpoint,
    topics: Topics,
    model: Path,
    state: Path,
    *args: str,
    device: str = "dev-a",
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start an agent; the broker URL (with its secret) goes by environment, not argv."""
    argv = [
        sys.executable,
        "-m",
        "edge_agent",
        "--device",
        device,
        "--root",
        topics.root,
        "--model",
        str(model),
        "--state-dir",
        str(state),
        "--log-level",
        "INFO",
        *args,
    ]
    env = {**os.environ, "EDGELOOP_AGENT_BROKER": endpoint.url}
    return subprocess.Popen(
        argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def stop_agent(proc: subprocess.Popen[bytes]) -> str:
    """Kill the agent if it still runs, close its stdin, and return everything it printed."""
    if proc.poll() is None:
        proc.kill()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    assert proc.stdout is not None
    out = proc.stdout.read()  # to EOF: the agent has exited or been killed
    proc.wait(10)
    return out.decode(errors="replace")
