"""OTA end to end: a real hub (``edgeloop-hub serve``, embedded broker) with a signing key
and signed versions of the edge model, and real agents (``edgeloop-agent``) that are
desired another version. The agent downloads, verifies, smoke-tests, switches, tries
and commits, or refuses with a reason code; every transition lands in the hub's
``ota`` table; an agent killed in its trial comes back on its last known good model."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.keys import load_signing_key
from cloud_hub.store import open_store
from cloud_hub.store.base import TelemetryRows
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from shared.messages import Ota
from shared.signing import SigningKey
from shared.topics import Topics
from simulators.harness import AgentProcess, HubProcess
from simulators.packages import variant, zip_package
from tests.conftest import ModelPaths
from tests.test_desired_state import hub_with_keys

pytestmark = pytest.mark.timeout(120)

T = Topics()
WAIT = 45.0
OLD = "1.1.0"
HAPPY = "1.2.0"
DEVICES = (
    "happy",
    "no-trust",
    "unknown-key",
    "sha",
    "downgrade",
    "too-old",
    "smoke",
    "nan",
    "crash",
    "crash-dl",
    "urgent",
    "units",
)


@dataclass
class Hub:
    hub: HubProcess
    secrets: dict[str, str]
    edge: str
    edge_dir: Path
    pub: Path
    tmp: Path


def _nan_model(model_path: Path) -> bytes:
    """The edge model, but its scores are NaN for any feature row other than all zeros."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper  # noqa: PLC0415

    m = onnx.load(str(model_path))
    g = m.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    inp = g.input[0].name
    g.initializer.extend(
        [
            helper.make_tensor("nan_c", TensorProto.FLOAT, [1], [math.nan]),
            helper.make_tensor("zero_c", TensorProto.FLOAT, [1], [0.0]),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Abs", [inp], ["abs_x"]),
            helper.make_node("ReduceSum", ["abs_x"], ["sum_x"], keepdims=1),
            helper.make_node("Greater", ["sum_x", "zero_c"], ["nonzero"]),
            helper.make_node("Where", ["nonzero", "nan_c", f"{out}_raw"], [out]),
        ]
    )
    return bytes(m.SerializeToString())


def _zero_vectors(model_path: Path) -> Callable[[dict[str, Any]], None]:
    """Test vectors of one all-zeros row, with the scores the original model gives it."""
    from edge_agent.engine import open_session  # noqa: PLC0415

    def edit(manifest: dict[str, Any]) -> None:
        n = len(manifest["test_vectors"]["inputs"][0])
        session = open_session(model_path)
        row = np.zeros((1, n), dtype=np.float32)
        scores = session.run([manifest["model"]["scores_output"]], {"features": row})[0]
        manifest["test_vectors"]["inputs"] = [[0.0] * n]
        manifest["test_vectors"]["expected_scores"] = [[float(x) for x in scores[0]]]

    return edit


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("ota")
    hub, secrets = hub_with_keys(tmp, model_packages, DEVICES)
    src = model_packages.edge
    edge = load_package(src).manifest
    assert edge.version == OLD
    key = load_signing_key(hub.data_dir / "keys" / "signing.key")
    made = tmp / "variants"
    model_file = src / edge.model.file

    def bump_expected(m: dict[str, Any]) -> None:
        m["test_vectors"]["expected_scores"][0][0] += 0.5

    def too_new(m: dict[str, Any]) -> None:
        m["min_agent_version"] = "99.0.0"

    def fahrenheit(m: dict[str, Any]) -> None:
        m["input"]["sensors"][0]["unit"] = "degF"

    variants = [
        variant(src, made / "happy", key, HAPPY),
        variant(src, made / "sha", key, "1.3.0"),
        variant(src, made / "down", key, "1.0.0"),
        variant(src, made / "old", key, "1.4.0", edit=too_new),
        variant(src, made / "smoke", key, "1.5.0", edit=bump_expected),
        variant(src, made / "units", key, "1.8.0", edit=fahrenheit),
        variant(
            src,
            made / "nan",
            key,
            "1.6.0",
            edit=_zero_vectors(model_file),
            model_bytes=_nan_model(model_file),
        ),
    ]
    with hub:
        for package in variants:
            reply = hub.admin_api.post("/v1/models", body=zip_package(package))
            assert reply.status == 201, reply.body
        # A file of 1.3.0 changed on the hub after registration: what it serves is not
        # what the signed manifest lists.
        served = hub.data_dir / "registry" / "packages" / edge.name / "1.3.0" / edge.model.file
        data = bytearray(served.read_bytes())
        served.unlink()
        data[-1] ^= 0xFF
        served.write_bytes(bytes(data))
        yield Hub(hub, secrets, edge.name, src, hub.data_dir / "keys" / "signing.pub", tmp)


_STARTED: list[AgentProcess] = []


@pytest.fixture(autouse=True)
def _no_agent_left() -> Iterator[None]:
    """Every agent a test made is stopped when the test ends, passed or failed: one left
    running would be counted by later tests (tests/test_secrets.py counts agents)."""
    yield
    while _STARTED:
        agent = _STARTED.pop()
        if agent.is_running:
            agent.kill()


def _agent(h: Hub, device: str, *args: str, state: Path | None = None) -> AgentProcess:
    assert h.hub.broker_port is not None
    agent = AgentProcess(
        h.edge_dir,
        state or h.tmp / "agents" / device,
        broker=BrokerEndpoint("127.0.0.1", h.hub.broker_port, device, h.secrets[device]),
        device=device,
        args=[
            "--hub-url",
            h.hub.api.base_url,
            "--heartbeat-s",
            "1",
            "--rate-hz",
            "50",
            "--ota-trial-readings",
            "20",
            "--ota-trial-s",
            "1",
            "--outbox",
            "disk",
            *args,
        ],
        log_level="INFO",
    )
    _STARTED.append(agent)
    return agent


def _desire(h: Hub, device: str, version: str) -> None:
    h.hub.wait_until(
        f"the hub knows {device}",
        lambda: h.hub.api.get(f"/v1/devices/{device}").status == 200,
        timeout=WAIT,
    )
    reply = h.hub.admin_api.request(
        "PUT", f"/v1/devices/{device}/desired", json_body={"model": h.edge, "version": version}
    )
    assert reply.status == 200, reply.body


def _ota(h: Hub, device: str) -> list[Ota]:
    store = open_store(f"sqlite:///{h.hub.db_path}")
    try:
        return [r.ota for r in store.ota_reports(0) if r.ota.device == device]
    finally:
        store.close()


def _ended(h: Hub, device: str) -> Ota:
    """The first report of ``device`` that ends an update."""
    found: list[Ota] = []

    def done() -> bool:
        found[:] = [o for o in _ota(h, device) if o.state in ("committed", "rejected", "reverted")]
        return bool(found)

    h.hub.wait_until(f"{device} ends its update", done, timeout=WAIT)
    return found[0]


def _telemetry(h: Hub, device: str) -> list[TelemetryRows]:
    store = open_store(f"sqlite:///{h.hub.db_path}")
    try:
        return store.telemetry(device, 0.0, math.inf, 1_000_000).items
    finally:
        store.close()


def _stored(h: Hub, device: str) -> int:
    """Readings of ``device`` the hub stored, each distinct."""
    ts = np.concatenate([r.ts for r in _telemetry(h, device)])
    assert len(np.unique(ts)) == len(ts)
    return len(ts)


def _running(h: Hub, device: str) -> str:
    reply = h.hub.api.get(f"/v1/devices/{device}")
    return str(reply.json().get("model_version")) if reply.status == 200 else ""


def test_an_update_commits_and_no_reading_is_lost_or_scored_twice(hub: Hub) -> None:
    h, device, readings = hub, "happy", 1000
    agent = _agent(h, device, "--trust", str(h.pub), "--readings", str(readings)).start()
    _desire(h, device, HAPPY)
    end = _ended(h, device)
    assert (end.state, end.reason, end.from_version, end.to_version) == (
        "committed",
        "ok",
        OLD,
        HAPPY,
    ), end
    states = [o.state for o in _ota(h, device)]
    assert states == [
        "downloading",
        "verifying",
        "staged",
        "smoke_testing",
        "switching",
        "trial",
        "committed",
    ]
    h.hub.wait_until(
        "the heartbeat names the new version", lambda: _running(h, device) == HAPPY, timeout=WAIT
    )
    h.hub.wait_until(
        "desired converged",
        lambda: h.hub.api.get_json(f"/v1/devices/{device}/desired")["converged"] is True,
        timeout=WAIT,
    )
    assert agent.wait(timeout=WAIT) == 0
    assert f"OTA: packages signed by key {_key_id(h)} ({h.pub}) are trusted" in agent.output()
    current = json.loads((agent.state_dir / "ota" / "current.json").read_text())
    assert current == {"name": h.edge, "version": HAPPY}
    assert not (agent.state_dir / "ota" / "breadcrumb.json").exists()

    rows = _telemetry(h, device)
    assert _stored(h, device) == readings  # none lost, none twice
    # Every batch names one model, and the switch is one cut in time: old, then new.
    versions = [v for r in sorted(rows, key=lambda r: r.ts[0]) for v in [r.edge_model_version]]
    cut = versions.index(HAPPY)
    assert set(versions[:cut]) == {OLD} and set(versions[cut:]) == {HAPPY}
    ordered = sorted(rows, key=lambda r: r.ts[0])
    assert ordered[cut - 1].ts[-1] < ordered[cut].ts[0]


def _key_id(h: Hub) -> str:
    from shared.signing import load_public_key  # noqa: PLC0415

    return load_public_key(h.pub.read_bytes(), str(h.pub)).key_id


def _other_key(h: Hub) -> Path:
    path = h.tmp / "other.pub"
    if not path.exists():
        path.write_text(SigningKey.generate().public.pem())
    return path


@pytest.mark.parametrize(
    "case",
    [
        ("no-trust", HAPPY, "", "rejected", "unknown_key"),
        ("unknown-key", HAPPY, "other", "rejected", "unknown_key"),
        ("sha", "1.3.0", "hub", "rejected", "sha256_mismatch"),
        ("downgrade", "1.0.0", "hub", "rejected", "downgrade"),
        ("units", "1.8.0", "hub", "rejected", "incompatible_input"),
        ("too-old", "1.4.0", "hub", "rejected", "agent_too_old"),
        ("smoke", "1.5.0", "hub", "rejected", "smoke_failed"),
        ("nan", "1.6.0", "hub", "reverted", "trial_nan"),
    ],
    ids=lambda case: str(case[4]),
)
def test_a_package_that_must_not_run_is_refused_and_the_agent_stays_on_its_model(
    hub: Hub, case: tuple[str, str, str, str, str]
) -> None:
    h, (device, version, trust, state, reason) = hub, case
    keys = {"": [], "other": ["--trust", str(_other_key(h))], "hub": ["--trust", str(h.pub)]}
    agent = _agent(h, device, *keys[trust]).start()
    _desire(h, device, version)
    end = _ended(h, device)
    assert (end.state, end.reason, end.from_version, end.to_version) == (
        state,
        reason,
        OLD,
        version,
    ), end
    if not trust:
        assert "OTA: no --trust key, updates refused" in agent.output()
    # It runs its model on: its heartbeats name it, the hub is told and keeps desiring.
    time.sleep(1.5)
    assert _running(h, device) == OLD
    assert agent.is_running
    assert not (agent.state_dir / "ota" / "current.json").exists()
    assert not (agent.state_dir / "models" / h.edge / version).exists()
    assert h.hub.api.get_json(f"/v1/devices/{device}/desired")["converged"] is False
    # Desired again and again (the hub re-sends it): refused once, not tried again.
    assert [o.state for o in _ota(h, device)].count(state) == 1
    assert agent.stop() == 0
    # Every reading it scored is stored once, the one a NaN made it revert on included.
    produced = int(re.findall(r"stopped after (\d+) readings", agent.output())[-1])
    assert _stored(h, device) == produced


def test_an_agent_killed_in_its_trial_restarts_on_its_last_known_good_model(hub: Hub) -> None:
    h, device = hub, "crash"
    state_dir = h.tmp / "agents" / device
    long_trial = ["--trust", str(h.pub), "--ota-trial-s", "600", "--ota-trial-readings", "100000"]
    agent = _agent(h, device, *long_trial, state=state_dir).start()
    _desire(h, device, HAPPY)
    h.hub.wait_until(
        "the trial began",
        lambda: "trial" in [o.state for o in _ota(h, device)],
        timeout=WAIT,
    )
    h.hub.wait_until("the new model runs", lambda: _running(h, device) == HAPPY, timeout=WAIT)
    agent.kill()
    assert json.loads((state_dir / "ota" / "breadcrumb.json").read_text())["state"] == "trial"

    again = _agent(h, device, *long_trial, state=state_dir).start()
    end = _ended(h, device)
    assert (end.state, end.reason, end.from_version, end.to_version) == (
        "reverted",
        "crashed_in_trial",
        OLD,
        HAPPY,
    ), end
    assert "the agent stopped in state trial" in end.detail
    h.hub.wait_until("back on the old model", lambda: _running(h, device) == OLD, timeout=WAIT)
    assert not (state_dir / "ota" / "breadcrumb.json").exists()
    assert not (state_dir / "models" / h.edge / HAPPY).exists()
    time.sleep(1.5)  # the hub keeps desiring 1.2.0: refused before, not tried again
    assert [o.state for o in _ota(h, device)].count("downloading") == 1
    assert again.is_running and _running(h, device) == OLD
    again.stop()


@pytest.fixture
def stalled_hub() -> Iterator[str]:
    """An HTTP address that takes connections and never answers: a download hangs there."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_an_agent_killed_while_downloading_restarts_and_reports_it(
    hub: Hub, stalled_hub: str
) -> None:
    h, device = hub, "crash-dl"
    state_dir = h.tmp / "agents" / device
    args = ["--trust", str(h.pub), "--hub-url", stalled_hub]
    agent = _agent(h, device, *args, state=state_dir).start()
    _desire(h, device, HAPPY)
    h.hub.wait_until(
        "the download began",
        lambda: [o.state for o in _ota(h, device)] == ["downloading"],
        timeout=WAIT,
    )
    crumb = state_dir / "ota" / "breadcrumb.json"
    h.hub.wait_until("the breadcrumb is written", crumb.exists, timeout=WAIT)
    agent.kill()
    assert json.loads(crumb.read_text())["state"] == "downloading"

    again = _agent(h, device, *args, state=state_dir).start()
    end = _ended(h, device)
    assert (end.state, end.reason, end.to_version) == ("rejected", "interrupted", HAPPY), end
    assert "the agent stopped in state downloading" in end.detail
    assert again.is_running and _running(h, device) == OLD
    assert not crumb.exists()
    again.stop()


def test_the_switch_waits_for_an_urgent_episode_and_gives_up_rather_than_cut_it(
    hub: Hub,
) -> None:
    h, device = hub, "urgent"
    # Vibration recalibrated 30 mm/s up from the first reading: beyond its hard limit
    # (15 mm/s) for good, so the urgent episode never ends.
    args = ["--trust", str(h.pub), "--sim-drift", "offset:vibration:0:30"]
    args += ["--ota-switch-wait-s", "1"]
    agent = _agent(h, device, *args).start()
    _desire(h, device, HAPPY)
    end = _ended(h, device)
    assert (end.state, end.reason, end.to_version) == ("rejected", "urgent_active", HAPPY), end
    states = [o.state for o in _ota(h, device)]
    assert states[-2:] == ["switching", "rejected"]  # smoke-tested, never switched
    assert _running(h, device) == OLD
    events = h.hub.api.get_json(f"/v1/events?device={device}")
    assert events, "the urgent episode went on being handled"
    agent.stop()
