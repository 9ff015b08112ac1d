"""The hub's malloc setting takes where there is glibc, and is a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)


def test_return_large_blocks_takes_on_glibc() -> None:
    # In a child process: the setting is process-wide and must not leak into the test run.
    code = "from cloud_hub.memory import return_large_blocks; print(return_large_blocks())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    ).stdout.strip()
    assert out == str(platform.libc_ver()[0] == "glibc")
