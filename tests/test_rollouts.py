"""Staged rollouts on a real hub (``edgeloop-hub serve``, embedded broker).

The devices here are MQTT clients speaking the wire contract as an agent does
(births, heartbeats, telemetry, events, OTA reports): the hub's side of a
rollout is under test, so each device's answer (commit, reject, a noisy model)
is chosen by the test. The agent's own update is tested in tests/edge_agent/.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from cloud_hub.keys import KeyFiles, init_keys, load_signing_key
from cloud_hub.provision import provision_device
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from shared.messages import Desired, Event, Health, Ota, Status, Telemetry, decode_as, encode
from shared.topics import Kind, Topics
from simulators.harness import HubProcess
from simulators.packages import variant, zip_package
from tests.cloud_hub.test_broker import Probe
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(240)

T = Topics()
WAIT = 30.0
NEW = "1.2.0"
N_DEVICES = 10


@dataclass
class Device:
    name: str
    probe: Probe
    model: str
    version: str
    endpoint: BrokerEndpoint | None = None
    seq: int = 0
    desired: list[Desired] = field(default_factory=list)

    def reconnect(self) -> None:
        """Come back online: a new connection, subscribed again, and a birth."""
        assert self.endpoint is not None
        self.probe = Probe(self.endpoint, self.name)
        assert not self.probe.connect().is_failure
        self.probe.subscribe(T.topic(self.name, Kind.DESIRED))
        self.birth()

    def send(self, kind: Kind, msg: Any) -> None:
        self.probe.publish(T.topic(self.name, kind), encode(msg))

    def birth(self) -> None:
        self.send(
            Kind.STATUS,
            Status(
                self.name, 1, self.seq, "online", "0.1.0", self.version, time.time(), self.model
            ),
        )

    def heartbeat(self) -> None:
        self.send(
            Kind.HEALTH,
            Health(
                self.name,
                1,
                self.seq,
                time.time(),
                self.model,
                self.version,
                1.0,
                0,
                0.0,
                50.0,
                0.0,
                40.0,
                0,
                -1,
            ),
        )

    def run(self, version: str) -> None:
        """Say it runs ``version`` now (as an agent that committed it would)."""
        self.version = version
        self.heartbeat()

    def ota(self, state: str, reason: str) -> None:
        self.seq += 1
        self.send(
            Kind.OTA, Ota(self.name, 1, self.seq, time.time(), state, reason, "1.1.0", NEW, "")
        )

    def readings(self, n: int, urgent: int) -> None:
        """``n`` readings scored by the model it runs, ``urgent`` of them raising an event."""
        rng = np.random.default_rng(self.seq)
        self.seq += 1
        scores = rng.random((n, 3)).astype(np.float32)
        scores /= scores.sum(axis=1, keepdims=True)
        self.send(
            Kind.TELEMETRY,
            Telemetry(
                self.name,
                1,
                self.seq,
                self.version,
                time.time() - 1 + np.arange(n, dtype=np.float64) * 1e-4,
                rng.normal(size=(n, 32)).astype(np.float32),
                scores,
                self.model,
            ),
        )
        for _ in range(urgent):
            self.seq += 1
            self.send(
                Kind.EVENTS,
                Event(
                    self.name,
                    1,
                    self.seq,
                    time.time(),
                    self.version,
                    "score",
                    0.99,
                    None,
                    None,
                    "log",
                    True,
                    "",
                ),
            )

    def take_desired(self, timeout: float = 0.0) -> list[Desired]:
        end = time.monotonic() + timeout
        while True:
            try:
                msg = self.probe.messages.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return self.desired
            self.desired.append(decode_as(Desired, bytes(msg.payload)))


@dataclass
class Fleet:
    hub: HubProcess
    devices: dict[str, Device]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.hub.api.get_json(f"/v1/rollouts/{rollout_id}"))

    def wait_state(self, rollout_id: str, state: str) -> dict[str, Any]:
        self.hub.wait_until(
            f"rollout {state}", lambda: self.rollout(rollout_id)["state"] == state, timeout=WAIT
        )
        return self.rollout(rollout_id)

    def told(self) -> set[str]:
        """Devices that have been sent the new version as desired (so far)."""
        for d in self.devices.values():
            d.take_desired()
        return {
            n for n, d in self.devices.items() if any(x.model_version == NEW for x in d.desired)
        }

    def wait_told(self, n: int) -> set[str]:
        """The devices told the new version, once there are ``n`` (and a moment for more)."""
        self.hub.wait_until(f"{n} device(s) told", lambda: len(self.told()) >= n, timeout=WAIT)
        time.sleep(0.5)
        return self.told()


@dataclass
class Rig:
    hub: HubProcess
    edge: str
    old: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[Rig]:
    """One hub for the module, with the hub's key and a signed newer edge version."""
    tmp = tmp_path_factory.mktemp("rollouts")
    models = tmp / "models"  # a copy: the hub signs its default build in place
    shutil.copytree(model_packages.edge.parent.parent, models)
    hub = HubProcess(
        tmp / "hub",
        models,
        log_level="INFO",
        args=["--desired-resend-s", "0.5", "--rollout-tick-s", "0.2"],
    )
    init_keys(KeyFiles(hub.data_dir / "keys"))
    edge = load_package(model_packages.edge).manifest
    key = load_signing_key(hub.data_dir / "keys" / "signing.key")
    newer = variant(model_packages.edge, tmp / "newer", key, NEW)
    with hub:
        assert hub.admin_api.post("/v1/models", body=zip_package(newer)).status == 201
        yield Rig(hub, edge.name, edge.version)


_FLEETS = iter(range(1000))


@pytest.fixture
def fleet(rig: Rig) -> Iterator[Fleet]:
    """Ten fresh devices on the module's hub, each online on the old version."""
    hub = rig.hub
    assert hub.broker_port is not None
    prefix = f"f{next(_FLEETS)}"
    devices: dict[str, Device] = {}
    try:
        for i in range(N_DEVICES):
            name = f"{prefix}-pi-{i:02d}"
            secret = provision_device(
                name,
                broker=BrokerEndpoint("127.0.0.1", hub.broker_port),
                topics=T,
                password_file=hub.data_dir / "broker-passwd",
            ).secret
            where = BrokerEndpoint("127.0.0.1", hub.broker_port, name, secret)
            probe = Probe(where, name)
            assert not probe.connect().is_failure
            probe.subscribe(T.topic(name, Kind.DESIRED))
            devices[name] = Device(name, probe, rig.edge, rig.old, where)
            devices[name].birth()

        def known() -> int:
            found = hub.api.get_json("/v1/devices")["devices"]
            return sum(d["device"] in devices and d.get("model") == rig.edge for d in found)

        hub.wait_until("every device's model known", lambda: known() == N_DEVICES, timeout=WAIT)
        yield Fleet(hub, devices)
    finally:
        for d in devices.values():
            d.probe.close()


def _start(fleet: Fleet, **body: Any) -> dict[str, Any]:
    edge = next(iter(fleet.devices.values())).model
    reply = fleet.hub.admin_api.post(
        "/v1/rollouts",
        json_body={"model": edge, "version": NEW, "devices": sorted(fleet.devices), **body},
    )
    assert reply.status == 201, reply.body
    return dict(reply.json())


def test_a_rollout_moves_the_fleet_cohort_by_cohort(fleet: Fleet) -> None:
    r = _start(fleet, cohorts=[10, 100], gates={"device_timeout_s": 60})
    assert r["state"] == "running" and [len(c["devices"]) for c in r["cohorts"]] == [1, 9]
    canary = r["cohorts"][0]["devices"]
    assert fleet.wait_told(1) == set(canary)  # only the canary is told at first
    by_hand = fleet.hub.admin_api.request(
        "PUT",
        f"/v1/devices/{canary[0]}/desired",
        json_body={"model": fleet.devices[canary[0]].model, "version": "1.1.0"},
    )
    assert by_hand.status == 409 and r["id"] in by_hand.detail  # the rollout owns it
    for name in canary:
        fleet.devices[name].run(NEW)
    assert fleet.wait_told(N_DEVICES) == set(fleet.devices)
    for name in r["cohorts"][1]["devices"]:
        fleet.devices[name].run(NEW)
    done = fleet.wait_state(r["id"], "completed")
    assert done["devices"]["committed"] == N_DEVICES
    assert [d["what"] for d in done["decisions"]][-1] == "completed"
    desired = fleet.hub.api.get_json(f"/v1/devices/{canary[0]}/desired")
    assert desired["converged"] is True and desired["rollout"] == r["id"]


def test_a_rejecting_canary_aborts_and_only_it_is_rolled_back(fleet: Fleet) -> None:
    r = _start(fleet, cohorts=[10, 100])
    [canary] = r["cohorts"][0]["devices"]
    assert fleet.wait_told(1) == {canary}
    fleet.devices[canary].ota("rejected", "smoke_failed")
    aborted = fleet.wait_state(r["id"], "aborted")
    assert aborted["device_states"][canary] == "rolled_back"
    assert "1 failed" in aborted["decisions"][-1]["why"]
    assert aborted["decisions"][-1]["gates"]["failures"] == {canary: "smoke_failed"}
    back = fleet.devices[canary]
    fleet.hub.wait_until(
        "the canary told its old version back",
        lambda: any(
            x.model_version == "1.1.0" and x.allow_downgrade for x in back.take_desired(0.5)
        ),
        timeout=WAIT,
    )
    others = [d for n, d in fleet.devices.items() if n != canary]
    assert all(not d.take_desired() for d in others)  # never touched


def test_a_canary_raising_the_urgent_rate_past_its_gate_is_rolled_back(fleet: Fleet) -> None:
    r = _start(
        fleet,
        cohorts=[10, 100],
        gates={
            "max_urgent_ratio": 2.0,
            "urgent_floor": 0.001,
            "min_readings": 50,
            "device_timeout_s": 60,
        },
    )
    [canary] = r["cohorts"][0]["devices"]
    assert fleet.wait_told(1) == {canary}
    fleet.devices[canary].run(NEW)
    fleet.hub.wait_until(
        "the canary settled",
        lambda: fleet.rollout(r["id"])["device_states"][canary] == "committed",
        timeout=WAIT,
    )
    fleet.devices[canary].readings(100, urgent=20)  # 20 % of readings urgent
    for name, d in fleet.devices.items():
        if name != canary:
            d.readings(100, urgent=0)
    aborted = fleet.wait_state(r["id"], "aborted")
    last = aborted["decisions"][-1]
    assert "urgent_rate" in last["why"]
    assert last["gates"]["urgent_rate"]["value"] == pytest.approx(0.2)
    assert aborted["device_states"][canary] == "rolled_back"
    assert sum(s == "pending" for s in aborted["device_states"].values()) == N_DEVICES - 1


def test_rollout_state_survives_a_hub_restart_and_the_shell_commands_work(fleet: Fleet) -> None:
    r = _start(fleet, cohorts=[10, 100], gates={"device_timeout_s": 120})
    [canary] = r["cohorts"][0]["devices"]
    hub = fleet.hub
    hub.stop()
    hub.start()
    # The broker restarted with the hub: paho reconnects by itself, after its backoff.
    back = fleet.devices[canary].probe.connack.get(timeout=WAIT)
    assert not back.is_failure, back
    fleet.devices[canary].run(NEW)
    hub.wait_until(
        "advanced after the restart", lambda: fleet.rollout(r["id"])["cohort"] == 2, timeout=WAIT
    )
    cli = [sys.executable, "-m", "cloud_hub", "rollout"]
    flags = ["--data-dir", str(hub.data_dir)]
    paused = subprocess.run(
        [*cli, "pause", r["id"], "--reason", "look", *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert paused.returncode == 0, paused.stderr
    fleet.wait_state(r["id"], "paused")
    shown = subprocess.run(
        [*cli, "show", r["id"], *flags], check=False, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "paused: look" in shown.stdout
    subprocess.run(
        [*cli, "abort", r["id"], "--reason", "enough", *flags],
        check=True,
        timeout=60,
        capture_output=True,
    )
    aborted = fleet.wait_state(r["id"], "aborted")
    assert aborted["decisions"][-1]["why"] == "aborted by hand: enough"
    again = subprocess.run(
        [*cli, "resume", r["id"], *flags], check=False, capture_output=True, text=True, timeout=60
    )
    assert again.returncode != 0 and "aborted" in again.stderr  # refused here, before queueing
    bad = subprocess.run(
        [*cli, "start", "machine-edge", NEW, "--cohorts", "50,10", *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "must rise" in bad.stderr
    refused = subprocess.run(
        [*cli, "show", "no-such-rollout", *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "no rollout" in refused.stderr


def test_a_rollout_that_could_not_roll_back_is_refused(fleet: Fleet) -> None:
    odd = fleet.devices[sorted(fleet.devices)[0]]
    odd.version = "0.9.0"  # a version the registry does not hold
    odd.birth()
    fleet.hub.wait_until(
        "its version known",
        lambda: fleet.hub.api.get_json(f"/v1/devices/{odd.name}")["model_version"] == "0.9.0",
        timeout=WAIT,
    )
    reply = fleet.hub.admin_api.post(
        "/v1/rollouts",
        json_body={"model": odd.model, "version": NEW, "devices": sorted(fleet.devices)},
    )
    assert (
        reply.status == 409
        and "0.9.0" in reply.detail
        and "could not send them back" in reply.detail
    )
    others = sorted(set(fleet.devices) - {odd.name})
    ok = fleet.hub.admin_api.post(
        "/v1/rollouts", json_body={"model": odd.model, "version": NEW, "devices": others}
    )
    assert ok.status == 201
    assert fleet.hub.admin_api.post(f"/v1/rollouts/{ok.json()['id']}/abort").status == 200


def test_a_device_offline_when_its_cohort_starts_converges_when_it_returns(fleet: Fleet) -> None:
    away = fleet.devices[sorted(fleet.devices)[0]]
    away.probe.close()  # offline: it hears nothing now
    r = _start(fleet, cohorts=[100], gates={"device_timeout_s": 60})
    here = [d for name, d in fleet.devices.items() if name != away.name]
    fleet.hub.wait_until(
        "the devices online told", lambda: all(d.take_desired() for d in here), timeout=WAIT
    )
    for d in here:
        d.run(NEW)
    time.sleep(1.0)
    assert fleet.rollout(r["id"])["state"] == "running"  # waiting for the one away
    away.desired.clear()
    away.reconnect()  # back, still on the old model
    fleet.hub.wait_until(
        "told on its return",
        lambda: any(x.model_version == NEW for x in away.take_desired()),
        timeout=WAIT,
    )
    away.run(NEW)
    done = fleet.wait_state(r["id"], "completed")
    assert done["devices"]["committed"] == N_DEVICES


def test_a_rollout_whose_version_is_archived_midway_aborts(fleet: Fleet) -> None:
    r = _start(fleet, cohorts=[10, 100], gates={"device_timeout_s": 60})
    [canary] = r["cohorts"][0]["devices"]
    fleet.devices[canary].run(NEW)
    edge = fleet.devices[canary].model
    stage = f"/v1/models/{edge}/{NEW}/stage"
    assert fleet.hub.admin_api.post(stage, json_body={"stage": "archived"}).status == 200
    try:
        aborted = fleet.wait_state(r["id"], "aborted")
        assert "archived" in aborted["decisions"][-1]["why"]
        assert aborted["device_states"][canary] == "rolled_back"
    finally:  # the module's other tests roll this version out
        fleet.hub.admin_api.post(stage, json_body={"stage": "candidate"})
