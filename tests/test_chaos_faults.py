"""The faults of ``bench chaos``, short, against Mosquitto: every reading stored once or declared lost.

One Mosquitto (persistence on) and one hub serve the whole module; each test
runs one fault of :mod:`simulators.chaos` against its own fresh agents (real
``edgeloop-agent`` processes, device names prefixed by the fault's letter),
for seconds instead of the bench's minute. Each counts, through the API and
reading by reading, what the agents issued (their own records) against what
the hub stored and what the devices declared lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from simulators.chaos import ChaosConfig, ChaosRig, FaultResult, run_fault
from tests.brokers import require_mosquitto
from tests.conftest import ModelPaths

pytestmark = [pytest.mark.timeout(120), pytest.mark.mosquitto]

CONFIG = ChaosConfig(
    devices=2,
    rate_hz=10.0,
    warmup_s=1.0,
    broker_down_s=2.0,
    network_cut_s=3.0,
    agent_down_s=1.0,
    hub_down_s=1.0,
    outage_s=8.0,
    disk_rate_hz=200.0,
    outbox_max=3,
    settle_timeout_s=60.0,
    start_timeout_s=60.0,
    shutdown_timeout_s=30.0,
    agent_args=("--resend-after-s", "2", "--reconnect-max-s", "2"),
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[ChaosRig]:
    require_mosquitto()
    with ChaosRig(
        tmp_path_factory.mktemp("chaos"), model_packages.edge.parent.parent, model_packages.edge
    ) as started:
        yield started


def _every_reading_accounted_for(r: FaultResult) -> None:
    detail = r.as_dict()
    assert r.settled, detail
    assert r.produced > 0, detail
    assert r.stored + r.lost_at_edge == r.produced, detail
    assert r.lost_unexplained == 0 and r.lost_unexplained_messages == 0, detail
    assert r.duplicates_stored == 0, detail
    assert r.stored_counter == r.stored, detail  # the hub's counters agree with the API
    assert r.open_gaps == 0 and r.refused_readings == 0, detail
    assert r.read_not_issued == 0, detail  # each agent's last run issued all it read
    assert r.notes["agent_exit_status"] == ["0"], detail


def _nothing_lost(r: FaultResult) -> None:
    _every_reading_accounted_for(r)
    assert r.lost_at_edge == 0 and r.dropped_by_agents == {}, r.as_dict()


def test_broker_killed_and_restarted(rig: ChaosRig) -> None:
    starts = rig.broker.starts
    result = run_fault(rig, "a", CONFIG)
    assert rig.broker.starts == starts + 1
    _nothing_lost(result)


def test_network_cut(rig: ChaosRig) -> None:
    starts = rig.broker.starts
    result = run_fault(rig, "b", CONFIG)
    assert rig.broker.starts == starts + 1 and result.fault_s >= CONFIG.network_cut_s
    _nothing_lost(result)


def test_agent_killed_and_restarted(rig: ChaosRig) -> None:
    result = run_fault(rig, "c", CONFIG)
    assert result.notes["killed_epochs"] == 2  # the run it was killed in, and the next
    _nothing_lost(result)


def test_hub_killed_then_stopped_and_restarted(rig: ChaosRig) -> None:
    starts = rig.hub.starts
    result = run_fault(rig, "d", CONFIG)
    assert rig.hub.starts == starts + 2 and result.notes["hub_sigterm_exit"] == 0
    _nothing_lost(result)


@pytest.mark.parametrize("disk", ["auto", "simulated"])
def test_outbox_disk_full_drops_are_declared(rig: ChaosRig, disk: str) -> None:
    result = run_fault(rig, "e", dataclasses.replace(CONFIG, disk=disk), prefix=f"e{disk[0]}")
    if disk == "simulated":
        assert result.notes["disk"].startswith("simulated")
    _every_reading_accounted_for(result)
    lost = result.lost_at_edge_by_reason
    assert set(lost) == {"disk_full"} and lost["disk_full"] > 0, result.as_dict()
    # Dropped and declared by the agent; a dropped message the hub had stored
    # already (its ack lost with the broker) counts once, as stored.
    assert lost["disk_full"] <= result.dropped_by_agents["disk_full"], result.as_dict()


def test_outbox_smaller_than_the_outage_drops_are_declared(rig: ChaosRig) -> None:
    result = run_fault(rig, "f", CONFIG)
    _every_reading_accounted_for(result)
    lost = result.lost_at_edge_by_reason
    assert set(lost) == {"outbox_full"} and lost["outbox_full"] > 0, result.as_dict()
    assert lost["outbox_full"] <= result.dropped_by_agents["outbox_full"], result.as_dict()
