"""OTA faults end to end (issue 10 section 6): a real hub (``edgeloop-hub serve``, embedded
broker) and real agents (``edgeloop-agent``), with one fault each, injected where it
would happen:

- on the wire, by :class:`FaultProxy`, a loopback HTTP proxy in front of the hub's API
  that cuts an answer after N bytes or serves other bytes (a signature from a trusted
  key over a manifest changed since; a file shorter than listed);
- on the hub, a registry file shortened on disk;
- in the agent, through :mod:`tests.ota_fault_agent` (a launcher that patches one
  step, then runs the real agent): a pause that holds the agent in one update state
  until the test SIGKILLs it, a scorer 60 ms slower on real readings, a desired
  message's size below the package's.

The reject reasons ``tests/test_ota_agent.py`` does not cover (it shares its helpers):
``bad_signature``, ``size_mismatch``, ``too_large``, a hub that cannot serve a file
(``download_failed``), a download cut on every answer (``download_failed``) and
``trial_latency``; a SIGKILL in verifying, staged, smoke_testing and switching; a download
cut once resuming with a Range request to the hub; a clean stop (SIGTERM) in the trial
reported as ``stopped``, then retried and committed."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import pytest

from cloud_hub.keys import load_signing_key
from shared.manifest import load_package
from simulators.harness import AgentProcess
from simulators.packages import variant, zip_package
from tests.conftest import ModelPaths
from tests.ota_fault_agent import PAUSED_STEP
from tests.test_desired_state import hub_with_keys
from tests.test_ota_agent import (  # _no_agent_left: its autouse fixture, here too
    OLD,
    WAIT,
    Hub,
    _agent,
    _desire,
    _ended,
    _no_agent_left,  # noqa: F401
    _ota,
    _running,
    _stored,
)

pytestmark = pytest.mark.timeout(90)

NEW = "1.2.0"
DAMAGED = "1.3.0"
KILLED = ("verifying", "staged", "smoke_testing", "switching")
DEVICES = (
    "badsig",
    "sizemm",
    "toolarge",
    "damaged",
    "cut-always",
    "slow",
    "resume",
    "term",
    *(f"kill-{s}" for s in KILLED),
)
SHORT_TRIAL = ["--ota-trial-readings", "20", "--ota-trial-s", "1"]
LONG_TRIAL = ["--ota-trial-s", "600", "--ota-trial-readings", "100000"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("ota-faults")
    hub, secrets = hub_with_keys(tmp, model_packages, DEVICES)
    src = model_packages.edge
    edge = load_package(src).manifest
    assert edge.version == OLD
    key = load_signing_key(hub.data_dir / "keys" / "signing.key")
    made = tmp / "variants"
    with hub:
        for version in (NEW, DAMAGED):
            package = variant(src, made / version, key, version)
            reply = hub.admin_api.post("/v1/models", body=zip_package(package))
            assert reply.status == 201, reply.body
        # The registry's copy of a file of 1.3.0 shortened on disk after registration.
        served = hub.data_dir / "registry" / "packages" / edge.name / DAMAGED / edge.model.file
        data = served.read_bytes()
        served.unlink()  # a hard link to its blob: the blob stays whole
        served.write_bytes(data[:-100])
        yield Hub(hub, secrets, edge.name, src, hub.data_dir / "keys" / "signing.pub", tmp)


# --- the wire: a loopback proxy in front of the hub's API ------------------------------


class Seen(NamedTuple):
    """One request the proxy took: its path, its Range header, the hub's status (None:
    answered by the proxy, never forwarded)."""

    path: str
    range: str | None
    status: int | None


@dataclass
class FaultProxy:
    """Forwards GETs to the hub's API, but for the faults set on paths ending so."""

    upstream: tuple[str, int]
    cut_once: dict[str, int] = field(default_factory=dict)
    """Send the hub's headers and this many bytes of its body, then close (once)."""
    cut_always: dict[str, int] = field(default_factory=dict)
    """The same, on every answer."""
    replace: dict[str, bytes] = field(default_factory=dict)
    """Answer 200 with these bytes instead of asking the hub."""
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, path: str) -> tuple[str, int | bytes] | None:
        with self.lock:
            for end, body in self.replace.items():
                if path.endswith(end):
                    return "replace", body
            for end, n in list(self.cut_once.items()):
                if path.endswith(end):
                    del self.cut_once[end]
                    return "cut", n
            for end, n in self.cut_always.items():
                if path.endswith(end):
                    return "cut", n
        return None

    def _note(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def requests(self, end: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.endswith(end)]

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        wanted = h.headers.get("Range")
        fault = self._fault(h.path)
        if fault is not None and fault[0] == "replace":
            body = fault[1]
            assert isinstance(body, bytes)
            self._note(Seen(h.path, wanted, None))
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            sent = {k: v for k in ("Authorization", "Range") if (v := h.headers.get(k))}
            conn.request("GET", h.path, headers=sent)
            resp = conn.getresponse()
            body = resp.read()
            self._note(Seen(h.path, wanted, resp.status))
            h.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in ("connection", "date", "server", "transfer-encoding"):
                    h.send_header(name, value)
            h.send_header("Connection", "close")
            h.end_headers()
            if fault is not None:
                assert isinstance(fault[1], int)
                h.wfile.write(body[: fault[1]])  # then the connection closes: a cut
            else:
                h.wfile.write(body)
        finally:
            conn.close()


@pytest.fixture
def proxy(hub: Hub) -> Iterator[tuple[FaultProxy, str]]:
    """A :class:`FaultProxy` in front of the hub's API, and its URL (an agent's --hub-url)."""
    port = hub.hub.http_port
    faults = FaultProxy(("127.0.0.1", port))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            faults.answer(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield faults, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _faulty(agent: AgentProcess, *faults: str) -> AgentProcess:
    """``agent``, run through :mod:`tests.ota_fault_agent` with ``faults``."""
    assert agent.argv[1:3] == ["-m", "edge_agent"]
    agent.argv[2:3] = ["tests.ota_fault_agent", *faults, "--"]
    return agent


def _refused(
    h: Hub, device: str, agent: AgentProcess, state: str, reason: str, *, version: str = NEW
) -> str:
    """The update to ``version`` ends ``state`` ``reason``, the agent runs its old model on,
    every reading it scored is stored once; the report's detail."""
    end = _ended(h, device)
    assert (end.state, end.reason, end.from_version, end.to_version) == (
        state,
        reason,
        OLD,
        version,
    ), end
    time.sleep(1.5)  # the hub re-sends desired meanwhile: refused once, not tried again
    assert agent.is_running and _running(h, device) == OLD
    assert not (agent.state_dir / "ota" / "current.json").exists()
    assert not (agent.state_dir / "ota" / "breadcrumb.json").exists()
    assert not (agent.state_dir / "models" / h.edge / str(end.to_version)).exists()
    assert [o.state for o in _ota(h, device)].count(state) == 1
    assert agent.stop() == 0
    produced = int(re.findall(r"stopped after (\d+) readings", agent.output())[-1])
    assert _stored(h, device) == produced
    return end.detail


# --- reject reasons ---------------------------------------------------------------------


def test_a_signature_over_a_manifest_changed_since_is_a_bad_signature(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    h, (faults, url) = hub, proxy
    manifest = h.hub.api.get(f"/v1/models/{h.edge}/{NEW}").body
    before = manifest.replace(b'"version": "1.2.0"', b'"version": "1.2.9"')
    assert before != manifest
    key = load_signing_key(h.hub.data_dir / "keys" / "signing.key")  # a trusted key
    faults.replace["/signature"] = key.sign_manifest(before)
    agent = _agent(h, "badsig", "--trust", str(h.pub), "--hub-url", url).start()
    _desire(h, "badsig", NEW)
    detail = _refused(h, "badsig", agent, "rejected", "bad_signature")
    assert "signature" in detail


def test_a_file_served_shorter_than_listed_is_a_size_mismatch(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    h, (faults, url) = hub, proxy
    model = (h.edge_dir / "model.onnx").read_bytes()
    faults.replace["/files/model.onnx"] = model[:-100]  # what a truncating cache would serve
    agent = _agent(h, "sizemm", "--trust", str(h.pub), "--hub-url", url).start()
    _desire(h, "sizemm", NEW)
    detail = _refused(h, "sizemm", agent, "rejected", "size_mismatch")
    assert f"declares {len(model) - 100} bytes where the manifest says {len(model)}" in detail


def test_a_package_larger_than_the_desired_size_is_refused_before_any_file(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    h, (faults, url) = hub, proxy
    args = ["--trust", str(h.pub), "--hub-url", url]
    agent = _faulty(_agent(h, "toolarge", *args), "--desired-size", "1000").start()
    _desire(h, "toolarge", NEW)
    detail = _refused(h, "toolarge", agent, "rejected", "too_large")
    assert "over the size limit of 1000 the desired message allows" in detail
    assert faults.requests("/files/model.onnx") == []  # refused on the manifest alone


def test_a_file_the_hub_cannot_serve_as_registered_fails_the_download_at_once(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    """The registry's copy shortened on disk: bad state on the hub, not the device's fault.
    The hub answers 503 with Retry-After, logs and counts it; the agent does not retry
    within the download and reports download_failed (retried ``--ota-retry-s`` later,
    once the operator restored the file) with the hub's reason in its detail."""
    h, (faults, url) = hub, proxy
    counted = h.hub.api.get_json("/v1/stats/ingest")["counters"].get("artifact_errors", 0)
    agent = _agent(h, "damaged", "--trust", str(h.pub), "--hub-url", url).start()
    _desire(h, "damaged", DAMAGED)
    detail = _refused(h, "damaged", agent, "rejected", "download_failed", version=DAMAGED)
    assert "HTTP 503" in detail and "where the manifest says" in detail
    assert "retry after 300 s" in detail
    assert [s.status for s in faults.requests("/files/model.onnx")] == [503]  # asked once
    counters = h.hub.api.get_json("/v1/stats/ingest")["counters"]
    assert counters["artifact_errors"] == counted + 1
    log = h.hub.output()
    assert f"model {h.edge} {DAMAGED}: is " in log  # the cause, with the path
    assert f"/files/model.onnx: 503, model {h.edge} {DAMAGED} is not served" in log


@pytest.mark.timeout(120)
def test_a_download_cut_on_every_answer_fails_after_its_retries(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    """Each answer breaks off 300 bytes in: the agent resumes each time where it stopped,
    and gives up after its attempts (5, with backoff: about 10 s)."""
    h, (faults, url) = hub, proxy
    faults.cut_always["/files/model.onnx"] = 300
    agent = _agent(h, "cut-always", "--trust", str(h.pub), "--hub-url", url).start()
    _desire(h, "cut-always", NEW)
    detail = _refused(h, "cut-always", agent, "rejected", "download_failed")
    assert "gave up after 5 attempt(s)" in detail
    ranges = [s.range for s in faults.requests("/files/model.onnx")]
    assert ranges == [None, "bytes=300-", "bytes=600-", "bytes=900-", "bytes=1200-"]


def test_a_model_much_slower_than_the_running_one_is_reverted_after_its_trial(
    hub: Hub,
) -> None:
    h = hub
    args = ["--trust", str(h.pub), *SHORT_TRIAL]
    agent = _faulty(_agent(h, "slow", *args), "--slow-version", NEW, "--slow-ms", "60").start()
    _desire(h, "slow", NEW)
    detail = _refused(h, "slow", agent, "reverted", "trial_latency")
    assert "latency p99" in detail


# --- SIGKILL in each state in progress --------------------------------------------------


@pytest.mark.parametrize("state", KILLED)
def test_an_agent_killed_in_each_state_restarts_on_its_model_and_converges(
    hub: Hub, state: str
) -> None:
    h, device = hub, f"kill-{state}"
    assert state in PAUSED_STEP
    state_dir = h.tmp / "agents" / device
    args = ["--trust", str(h.pub), *SHORT_TRIAL, "--ota-retry-s", "1"]
    held = _faulty(_agent(h, device, *args, state=state_dir), "--pause-in", state).start()
    _desire(h, device, NEW)
    crumb = state_dir / "ota" / "breadcrumb.json"

    def holds() -> bool:
        reported = [o.state for o in _ota(h, device)]
        return reported[-1:] == [state] and crumb.exists()

    h.hub.wait_until(f"the agent holds in {state}", holds, timeout=WAIT)
    held.kill()
    assert json.loads(crumb.read_text())["state"] == state

    again = _agent(h, device, *args, state=state_dir).start()
    end = _ended(h, device)
    expected = {
        "verifying": ("rejected", "interrupted"),
        "staged": ("rejected", "interrupted"),
        "smoke_testing": ("rejected", "crashed_in_smoke"),
        "switching": ("reverted", "crashed_in_trial"),
    }[state]
    assert (end.state, end.reason, end.to_version) == (*expected, NEW), end
    assert f"the agent stopped in state {state}" in end.detail
    assert again.is_running
    if end.reason == "interrupted":
        # Nothing about the package: tried again (--ota-retry-s 1 later) and committed.
        h.hub.wait_until(
            "committed after the restart",
            lambda: "committed" in [o.state for o in _ota(h, device)],
            timeout=WAIT,
        )
        h.hub.wait_until("the new model runs", lambda: _running(h, device) == NEW, timeout=WAIT)
        current = json.loads((state_dir / "ota" / "current.json").read_text())
        assert current == {"name": h.edge, "version": NEW}
    else:
        # The package may be what crashed it: refused from now on, on the old model.
        time.sleep(1.5)
        assert _running(h, device) == OLD
        assert not (state_dir / "models" / h.edge / NEW).exists()
        assert [o.state for o in _ota(h, device)].count("downloading") == 1
    assert not crumb.exists()
    assert again.stop() == 0


# --- a download cut once resumes --------------------------------------------------------


def test_a_download_cut_midway_resumes_with_a_range_request_to_the_hub(
    hub: Hub, proxy: tuple[FaultProxy, str]
) -> None:
    h, (faults, url) = hub, proxy
    size = (h.edge_dir / "model.onnx").stat().st_size
    cut = size // 2
    faults.cut_once["/files/model.onnx"] = cut
    agent = _agent(h, "resume", "--trust", str(h.pub), "--hub-url", url).start()
    _desire(h, "resume", NEW)
    end = _ended(h, "resume")
    assert (end.state, end.reason, end.to_version) == ("committed", "ok", NEW), end
    # The hub answered the whole file (cut on the way), then the rest from where it stopped.
    assert faults.requests("/files/model.onnx") == [
        Seen(f"/v1/models/{h.edge}/{NEW}/files/model.onnx", None, 200),
        Seen(f"/v1/models/{h.edge}/{NEW}/files/model.onnx", f"bytes={cut}-", 206),
    ]
    assert "1 resume(s)" in agent.output()
    assert agent.stop() == 0


# --- a clean stop in the trial ----------------------------------------------------------


def test_a_clean_stop_in_the_trial_reverts_says_stopped_and_the_next_start_commits(
    hub: Hub,
) -> None:
    h, device = hub, "term"
    state_dir = h.tmp / "agents" / device
    agent = _agent(h, device, "--trust", str(h.pub), *LONG_TRIAL, state=state_dir).start()
    _desire(h, device, NEW)
    h.hub.wait_until(
        "the trial began", lambda: "trial" in [o.state for o in _ota(h, device)], timeout=WAIT
    )
    assert agent.stop() == 0  # SIGTERM: a clean stop, no crash
    end = _ended(h, device)  # reported before the agent exited: the outbox drains at stop
    assert (end.state, end.reason, end.to_version) == ("reverted", "stopped", NEW), end
    assert "the agent was stopped in state trial" in end.detail
    assert not (state_dir / "ota" / "breadcrumb.json").exists()
    assert not (state_dir / "ota" / "current.json").exists()

    again = _agent(h, device, "--trust", str(h.pub), *SHORT_TRIAL, state=state_dir).start()
    h.hub.wait_until(
        "committed at the next start",
        lambda: "committed" in [o.state for o in _ota(h, device)],
        timeout=WAIT,
    )
    reasons = [(o.state, o.reason) for o in _ota(h, device)]
    assert ("reverted", "crashed_in_trial") not in reasons
    assert reasons.count(("reverted", "stopped")) == 1
    h.hub.wait_until("the new model runs", lambda: _running(h, device) == NEW, timeout=WAIT)
    assert again.stop() == 0
    # Both runs' readings, the ones scored around the stop's revert included: each stored once.
    produced = sum(int(n) for n in re.findall(r"stopped after (\d+) readings", again.output()))
    assert _stored(h, device) == produced
