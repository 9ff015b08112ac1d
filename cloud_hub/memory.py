"""The hub's (and its embedded broker's) malloc setting: a large block goes back to the
system when it is freed.

glibc serves a block over its mmap threshold (128 KiB at start) from a mapping
of its own, unmapped at ``free``; but each time it frees such a block it raises
the threshold to that block's size (up to 32 MiB). After a flood of large MQTT
payloads or request bodies, blocks of that size then come from the heaps of
the threads that allocated them (paho's, the worker's, the server's), which
glibc seldom gives back: the hub's RSS stayed some 36 MB over its baseline
after 1,500 payloads of 870 KB (``edgeloop-sim bench flood``). Setting the
threshold explicitly turns that adjustment off, so every block over it keeps
its own mapping and the RSS returns to its baseline after the flood. The
embedded broker (amqtt reads every packet whole) grew by 460 MB over the same
floods and kept it; with the same setting it returns too.

Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

__all__ = ["MMAP_THRESHOLD", "return_large_blocks"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD: Final = 128 * 1024
"""Blocks of this size and more get their own mapping (glibc's own starting value)."""
_M_MMAP_THRESHOLD: Final = -3  # from glibc's <malloc.h>


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt here (not glibc): large blocks are left to the allocator")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
