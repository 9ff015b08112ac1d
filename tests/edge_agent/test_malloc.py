"""glibc's allocator knobs the agent sets: one arena, trims (no-ops elsewhere)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from edge_agent import malloc

pytestmark = pytest.mark.timeout(30)


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not _is_glibc(), reason="glibc only; elsewhere both are no-ops")
def test_threads_share_one_arena_and_a_trim_gives_freed_pages_back() -> None:
    # In a child: the arena limit is process-wide and must come before the threads.
    code = """
import threading
from edge_agent import malloc

def rss_kb():
    return int(open("/proc/self/statm").read().split()[1]) * 4
assert malloc.limit_arenas(1)
kept = []
def churn():
    blocks = [bytearray(2000) for _ in range(20000)]  # 40 MB of small blocks
    kept.extend(blocks[::10])  # every tenth stays: the heap cannot shrink from its top
    del blocks
t = threading.Thread(target=churn)
t.start(); t.join()
before = rss_kb()
malloc.trim()
print(before - rss_kb())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10_000  # most of the 36 MB freed inside the heap went back


def test_off_glibc_both_say_they_did_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.limit_arenas() is False and malloc.trim() is False
