"""The generated test rig's recordings for the tests: :mod:`simulators.rig` (the
benchmarks use them too)."""

from simulators.rig import *  # noqa: F403
