"""How the agent's threads share the interpreter and the CPU (``--cpu``).

The agent runs two threads of its own and paho's network thread, and only one
of them runs Python at a time (the GIL). The reading loop lets go of the GIL
inside onnxruntime; when the other threads can run on another core, one of
them takes it there and then, in the middle of the reading, and the reading
waits for it to finish its stretch of Python (encoding, publishing, handling
acks). Measured with ``edgeloop-sim bench edge`` while publishing back to back,
that took the p99 of reading -> urgent decision from about 50 µs to 130-250 µs.
On one core the others run when the reading loop waits for its next reading
or is descheduled, not at each release of the GIL; a second core buys the
agent nothing it could use, since its Python runs one thread at a time anyway.

So ``edgeloop-agent`` keeps its threads on one CPU: ``--cpu auto`` (the
default) picks one of the CPUs the process may use by its process id, so that
several agents on one host spread over the cores; ``--cpu N`` names the CPU;
``--cpu any`` leaves the placement to the operating system.

:func:`choose_cpu` is pure; :func:`configure_threads` applies the choice and
the switch interval to every thread of the process, and threads started later
inherit the CPU; the entry point calls it before it starts any of its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Set
from typing import Final

from shared.errors import ConfigError

__all__ = [
    "CPU_ANY",
    "CPU_AUTO",
    "SWITCH_INTERVAL_S",
    "allowed_cpus",
    "choose_cpu",
    "configure_threads",
    "parse_cpu",
    "set_thread_cpus",
]

CPU_AUTO: Final = "auto"
CPU_ANY: Final = "any"

SWITCH_INTERVAL_S: Final = 0.0005
"""The agent's GIL switch interval (Python's default is 5 ms): a thread that
wants the GIL asks its holder to let go after this long, which bounds how long
one stretch of the link thread's Python can keep a reading waiting."""


def parse_cpu(text: str) -> str | int:
    """``--cpu``'s value: ``auto``, ``any`` or a CPU number (>= 0)."""
    text = text.strip().lower()
    if text in (CPU_AUTO, CPU_ANY):
        return text
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"must be {CPU_AUTO!r}, {CPU_ANY!r} or a CPU number such as 0") from None
    if number < 0:
        raise ValueError("must be a CPU number >= 0 (or 'auto', or 'any')")
    return number


def choose_cpu(setting: str | int, allowed: Set[int], pid: int) -> int | None:
    """The CPU to keep the agent's threads on, or None to leave them to the OS.

    ``allowed`` are the CPUs the process may use (empty when the platform cannot
    pin threads). Raises :class:`ValueError` when ``setting`` names a CPU that is
    not allowed.
    """
    if setting == CPU_ANY:
        return None
    if setting == CPU_AUTO:
        if not allowed:
            return None
        cpus = sorted(allowed)
        return cpus[pid % len(cpus)]
    assert isinstance(setting, int)
    if setting not in allowed:
        if not allowed:
            raise ValueError(
                f"CPU {setting} was asked for, but this platform cannot keep threads on one CPU "
                f"(no os.sched_setaffinity); use --cpu {CPU_ANY}"
            )
        raise ValueError(
            f"CPU {setting} is not one this process may use ({_ranges(allowed)}); pick one of "
            f"those, or --cpu {CPU_AUTO}"
        )
    return setting


def allowed_cpus() -> frozenset[int]:
    """The CPUs this thread may run on (empty where the platform cannot tell)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return frozenset(os.sched_getaffinity(0))


def configure_threads(setting: str | int) -> int | None:
    """Set the switch interval and keep every thread of the process (those that
    exist, such as numpy's BLAS pool, and those started from now on) on the
    chosen CPU; returns that CPU, or None.

    Raises :class:`~shared.errors.ConfigError` for a CPU that cannot be used.
    """
    try:
        cpu = choose_cpu(setting, allowed_cpus(), os.getpid())
        if cpu is not None:
            set_thread_cpus({cpu})
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"setting 'cpu' = {setting}: {exc} (set --cpu or EDGELOOP_AGENT_CPU)", setting="cpu"
        ) from None
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return cpu


def set_thread_cpus(cpus: Set[int]) -> None:
    """Let every thread of this process run on ``cpus`` only (Linux)."""
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]  # no /proc: the calling thread
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, cpus)


def _ranges(cpus: Set[int]) -> str:
    """``{0, 1, 2, 5}`` as ``0-2, 5``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
