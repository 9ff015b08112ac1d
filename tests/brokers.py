"""The test accounts of every broker, and the Mosquitto policy: skip locally, fail in CI.

Brokers themselves come from :mod:`simulators.harness`, as for the demo and the
benchmarks; ``conftest.py`` wraps them in fixtures. Tests talk to real brokers,
each on an ephemeral loopback port with password authentication on.

Mosquitto is optional on a laptop (tests needing it are skipped) and mandatory in
CI: with ``CI=true`` a missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

from shared.topics import DEFAULT_ROOT
from simulators import harness

EDGELOOP_USER = "edgeloop"
EDGELOOP_SECRET = "edgeloop-test-secret"
HUB_USER = harness.HUB_USER
HUB_SECRET = "hub-test-secret"
USERS = {EDGELOOP_USER: EDGELOOP_SECRET, HUB_USER: HUB_SECRET}
#: Accounts that act as many devices: ``edgeloop`` plays every test device.
FLEET = (EDGELOOP_USER,)
#: Topic roots the test brokers allow: the default, and one fresh root per test
#: (``Topics(f"edgeloop-test/{uuid}")``).
ROOTS = (DEFAULT_ROOT, "edgeloop-test/+")


def require_mosquitto() -> str:
    """Path of the ``mosquitto`` binary; skip the test without it, or fail it under CI."""
    return require_tool(harness.find_mosquitto(), "mosquitto", "the Mosquitto tests")


def require_tool(found: str | None, package: str, tests: str) -> str:
    """``found`` (a tool's path); without it, skip the test, or fail it under CI=true,
    which must run ``tests``."""
    if found:
        return found
    message = f"{package} is not installed (apt-get install {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run {tests}, not skip them")
    pytest.skip(message)
