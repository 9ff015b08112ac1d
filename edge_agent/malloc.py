"""The C allocator's resident memory: one malloc arena for the agent's threads, and trims.

On glibc every thread that allocates gets its own malloc *arena* (up to eight
per core), and memory freed in an arena stays resident there until that arena
reuses it. The agent has four threads (reading loop, link, paho's network
thread, the OTA worker): the worker's arena kept what a download, a
verification and a model load had used, and an agent's resident set rose
from 80.3 to 80.8 MB over five updates (README, "Agent memory with
--trust"; 78.0 to 78.9 MB with both). :func:`limit_arenas` makes them share one
arena, which the agent calls before its first thread starts, and
:func:`trim` gives the free pages at the top and inside the heap back to the
kernel (``malloc_trim(0)``), which the OTA worker calls after each of its
steps. Sharing one arena costs the reading loop nothing measurable: the
threads run one at a time anyway (one CPU, the GIL), so the arena's lock is
never contended for long (``edgeloop-sim bench edge``, README).

Both do nothing, and say so by returning False, where the C library is not
glibc (musl, macOS): the agent runs the same, with more resident memory.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Final

__all__ = ["limit_arenas", "trim"]

_M_ARENA_MAX: Final = -8
"""glibc's ``mallopt`` parameter number for ``M_ARENA_MAX`` (malloc.h)."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 1) -> bool:
    """At most ``arenas`` malloc arenas from now on: call it before any thread starts."""
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, arenas) == 1


def trim() -> bool:
    """Return the heap's free pages to the kernel; True if any were (always False off glibc)."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
