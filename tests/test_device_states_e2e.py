"""Device states end to end: ``edgeloop-hub serve`` (embedded broker) and a real agent.

The agent comes online; a fault injected into its simulated machine (a flow
sensor offset far beyond the sensor's valid range) makes its heartbeats show
inputs out of range: degraded. Paused with SIGSTOP it goes silent: stale after
the hub's short ``--stale-after-s``; resumed, it is degraded again; stopped
cleanly, offline. Every change is an event with its reason in
``GET /v1/events?kind=device_state``, and counted ``device_state:<state>``.
The hub's fallback ``--latency-budget-ms`` is set far below any real latency:
the agent's model declares its own budget in its manifest, so the hub judges it
by that one and latency never makes it degraded.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from simulators.harness import AgentProcess, HubProcess
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(90)
WAIT = 20.0
STALE_AFTER_S = 4.0


@pytest.mark.timeout(90)
def test_online_degraded_stale_offline_each_an_event_with_its_reason(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    hub = HubProcess(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        args=("--stale-after-s", str(STALE_AFTER_S), "--latency-budget-ms", "0.001"),
        log_level="INFO",
    )
    with hub:
        device = hub.provision("pi-01")
        agent = AgentProcess(
            model_packages.edge,
            tmp_path / "agents" / "pi-01",
            env=device.agent_env,
            # 20 readings/s: the flow sensor reads ~5,100 l/min (valid: 0..1,000) from 3 s on.
            args=(
                "--source",
                "sim",
                "--rate-hz",
                "20",
                "--heartbeat-s",
                "0.5",
                "--sim-drift",
                "offset:flow:60:5000",
            ),
            log_level="INFO",
        )

        def device_view() -> dict[str, Any]:
            return dict(hub.api.get_json("/v1/devices/pi-01"))

        def states() -> list[dict[str, Any]]:
            page = hub.api.get_json("/v1/events?kind=device_state&device=pi-01")
            return list(page["events"])

        def reached(state: str) -> bool:
            return bool(states()) and states()[-1]["state"] == state

        try:
            with agent:
                hub.wait_until(
                    "pi-01 online",
                    lambda: any(e["state"] == "online" for e in states()),
                    timeout=WAIT,
                )
                hub.wait_until("pi-01 degraded", lambda: reached("degraded"), timeout=WAIT)
                view = device_view()
                assert view["state"] == "degraded", view
                assert " out of range (flow " in view["state_reason"]
                agent.send_signal(signal.SIGSTOP)
                try:
                    hub.wait_until("pi-01 stale", lambda: reached("stale"), timeout=WAIT)
                finally:
                    agent.send_signal(signal.SIGCONT)
                hub.wait_until("pi-01 degraded again", lambda: reached("degraded"), timeout=WAIT)
            hub.wait_until("pi-01 offline", lambda: reached("offline"), timeout=WAIT)
        finally:
            agent.kill()
        events = states()
        sequence = [(e["previous"], e["state"]) for e in events]
        assert sequence == [
            ("never_seen", "online"),
            ("online", "degraded"),
            ("degraded", "stale"),
            ("stale", "degraded"),
            ("degraded", "offline"),
        ], events
        reasons = [e["reason"] for e in events]
        assert reasons[0].startswith("birth: agent ")
        assert " out of range (flow " in reasons[1]
        assert not any("latency" in r for r in reasons), reasons  # the manifest's 20 ms held
        assert reasons[2].startswith("silent for ") and "stale timeout of 4 s" in reasons[2]
        assert reasons[4] == "its status said offline as it stopped: a clean stop"
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        view = device_view()
        assert (view["state"], view["state_since"]) == ("offline", events[-1]["at"])
        assert view["counters"]["device_state:degraded"] == 2
        assert view["counters"]["device_state:stale"] == 1
        assert view["counters"]["device_state:offline"] == 1
        fleet = hub.api.get_json("/v1/devices")
        assert fleet["states"]["offline"] == 1 and sum(fleet["states"].values()) == 1
