"""Desired state end to end on a real hub (``edgeloop-hub serve``, embedded broker): the
hub sends a device its desired model retained, sends it again while the device's
heartbeats name another model, and lets the device download only that version with
its own credential."""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.keys import KeyFiles, init_keys, load_signing_key
from cloud_hub.provision import provision_device
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from shared.messages import Desired, Health, Status, decode_as, encode
from shared.topics import Kind, Topics
from simulators.harness import HubProcess
from simulators.packages import variant, zip_package
from tests.cloud_hub.test_broker import Probe
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)

T = Topics()
WAIT = 30.0
NEW = "1.2.0"


@dataclass
class Rig:
    hub: HubProcess
    device: Probe
    secrets: dict[str, str]
    edge: str
    old: str


def hub_with_keys(
    tmp_path: Path, model_packages: ModelPaths, devices: tuple[str, ...]
) -> tuple[HubProcess, dict[str, str]]:
    """A hub (not started) with a signing key, re-sending desired every 0.5 s at most,
    and ``devices`` provisioned: their secrets by name."""
    models = tmp_path / "models"  # a copy: the hub signs its default build in place
    shutil.copytree(model_packages.edge.parent.parent, models)
    hub = HubProcess(tmp_path / "hub", models, log_level="INFO", args=["--desired-resend-s", "0.5"])
    init_keys(KeyFiles(hub.data_dir / "keys"))
    assert hub.broker_port is not None
    where = BrokerEndpoint("127.0.0.1", hub.broker_port)
    secrets = {
        name: provision_device(
            name, broker=where, topics=T, password_file=hub.data_dir / "broker-passwd"
        ).secret
        for name in devices
    }
    return hub, secrets


@pytest.fixture
def rig(tmp_path: Path, model_packages: ModelPaths) -> Iterator[Rig]:
    hub, secrets = hub_with_keys(tmp_path, model_packages, ("dev-a", "dev-b"))
    edge = load_package(model_packages.edge).manifest
    # A newer version of the edge model, signed with the hub's key, to desire.
    key = load_signing_key(hub.data_dir / "keys" / "signing.key")
    newer = variant(model_packages.edge, tmp_path / "newer", key, NEW)
    assert hub.broker_port is not None
    with hub:
        assert hub.admin_api.post("/v1/models", body=zip_package(newer)).status == 201
        device = Probe(
            BrokerEndpoint("127.0.0.1", hub.broker_port, "dev-a", secrets["dev-a"]), "dev-a"
        )
        assert not device.connect().is_failure
        device.subscribe(T.topic("dev-a", Kind.DESIRED))
        try:
            yield Rig(hub, device, secrets, edge.name, edge.version)
        finally:
            device.close()


def _birth(rig: Rig, version: str) -> None:
    status = Status("dev-a", 1, 0, "online", "0.1.0", version, time.time(), rig.edge)
    rig.device.publish(T.topic("dev-a", Kind.STATUS), encode(status))


def _heartbeat(rig: Rig, version: str) -> None:
    health = Health(
        "dev-a", 1, 0, time.time(), rig.edge, version, 1.0, 0, 0.0, 0.0, 0.0, 40.0, 0, -1, {}, {}
    )
    rig.device.publish(T.topic("dev-a", Kind.HEALTH), encode(health))


def _device(hub: HubProcess) -> dict[str, object]:
    reply = hub.api.get("/v1/devices/dev-a")
    return dict(reply.json()) if reply.status == 200 else {}


def _next_desired(rig: Rig, timeout: float = WAIT) -> Desired:
    msg = rig.device.messages.get(timeout=timeout)
    return decode_as(Desired, bytes(msg.payload))


def _basic(device: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{device}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_desired_is_sent_resent_until_the_device_runs_it_and_only_it_downloads(
    rig: Rig,
) -> None:
    hub = rig.hub
    _birth(rig, rig.old)
    hub.wait_until(
        "the device's model known",
        lambda: _device(hub).get("model") == rig.edge,
        timeout=WAIT,
    )
    reply = hub.admin_api.request(
        "PUT", "/v1/devices/dev-a/desired", json_body={"model": rig.edge, "version": NEW}
    )
    assert reply.status == 200, reply.body
    assert reply.json()["converged"] is False
    desired = _next_desired(rig)
    assert (desired.model_name, desired.model_version) == (rig.edge, NEW)
    assert desired.manifest_url == f"/v1/models/{rig.edge}/{NEW}" and desired.rollout == "manual"

    # While its heartbeats name the old model, the hub says it again (every 0.5 s at most).
    again = None
    for _ in range(20):
        _heartbeat(rig, rig.old)
        try:
            again = _next_desired(rig, timeout=1.0)
            break
        except queue.Empty:
            continue
    assert again == desired

    # The device downloads its desired version with its own credential, and only that.
    creds = _basic("dev-a", rig.secrets["dev-a"])
    manifest = hub.api.with_token(None).get(desired.manifest_url, headers=creds)
    assert manifest.status == 200
    assert hashlib.sha256(manifest.body).hexdigest() == desired.manifest_sha256
    sig = hub.api.with_token(None).get(f"{desired.manifest_url}/signature", headers=creds)
    files = [
        hub.api.with_token(None).get(f"{desired.manifest_url}/files/{f['path']}", headers=creds)
        for f in json.loads(manifest.body)["files"]
    ]
    assert sig.status == 200 and all(f.status == 200 for f in files)
    assert len(manifest.body) + len(sig.body) + sum(len(f.body) for f in files) == desired.size
    anon = hub.api.with_token(None)
    other = anon.get(f"/v1/models/{rig.edge}/{rig.old}", headers=creds)
    assert other.status == 403 and "may fetch only" in other.detail
    stranger = anon.get(desired.manifest_url, headers=_basic("dev-b", rig.secrets["dev-b"]))
    assert stranger.status == 403  # another device's credential: it is not desired there
    wrong = anon.get(desired.manifest_url, headers=_basic("dev-a", "not-the-secret"))
    assert wrong.status == 401
    hub_account = anon.get(desired.manifest_url, headers=_basic("hub", "x"))
    assert hub_account.status == 401

    # Once the device runs it, the hub stops: converged, and no more sends.
    _heartbeat(rig, NEW)
    hub.wait_until(
        "converged",
        lambda: hub.api.get_json("/v1/devices/dev-a/desired")["converged"] is True,
        timeout=WAIT,
    )
    while True:  # drain what was sent before the device converged
        try:
            rig.device.messages.get(timeout=1.5)
        except queue.Empty:
            break
    _heartbeat(rig, NEW)
    with pytest.raises(queue.Empty):
        rig.device.messages.get(timeout=2.0)


def test_desired_refuses_what_no_agent_would_run(rig: Rig) -> None:
    api = rig.hub.admin_api
    _birth(rig, rig.old)
    rig.hub.wait_until("the device known", lambda: bool(_device(rig.hub)), timeout=WAIT)
    heavy = rig.edge.removesuffix("-edge") + "-heavy"
    cases = {
        (heavy, rig.old): "not_edge",
        (rig.edge, "9.9.9"): "has no version",
    }
    for (model, version), says in cases.items():
        reply = api.request(
            "PUT", "/v1/devices/dev-a/desired", json_body={"model": model, "version": version}
        )
        assert reply.status in (404, 409) and says in reply.detail, reply.body
    unknown = api.request(
        "PUT", "/v1/devices/nobody/desired", json_body={"model": rig.edge, "version": NEW}
    )
    assert unknown.status == 404
    assert rig.hub.api.get("/v1/devices/dev-a/desired").status == 404  # none set
