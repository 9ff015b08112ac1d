"""Replaying a recording: ``edgeloop-agent --source csv`` twice against a real hub stores it once.

The recording is the simulator's (``edgeloop-sim generate``: its sensor names,
a ``ts`` column, timestamps of November 2025), replayed as fast as possible by
a real agent process into ``edgeloop-hub serve`` with its embedded broker,
first from one state directory, then from a fresh one (another machine), so
that the second run's messages reach the hub and its dedupe must recognise
them. The device also has a live agent, whose epoch the replays must not
disturb. Retention, counted from arrival, keeps the year-old recording.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.store import open_store
from edge_agent.agent import EXIT_NEVER_CONNECTED
from shared.endpoint import parse_broker_url
from simulators.generate import write_csv
from simulators.harness import AgentProcess, HubProcess, free_port
from simulators.machine import MachineConfig
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(180)
ROWS = 600


def recording(path: Path, seed: int, rows: int = ROWS) -> Path:
    config = dataclasses.replace(MachineConfig(seed=seed, rate_hz=10.0), urgent_rate=0.02)
    write_csv(path, config, rows)
    return path


def counters(hub: HubProcess, device: str) -> dict[str, int]:
    detail: dict[str, Any] = hub.api.get_json(f"/v1/devices/{device}")
    return dict(detail["counters"])


def run_agent(hub: HubProcess, model: Path, state: Path, env: dict[str, str], *args: str) -> None:
    agent = AgentProcess(model, state, env=env, args=args, log_level="INFO")
    with agent.start():
        assert agent.wait(120) == 0, agent.log_tail(40)


def test_a_recording_replayed_twice_is_stored_once(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    csv = recording(tmp_path / "press-7.csv", seed=3)
    with HubProcess(tmp_path / "hub", model_packages.edge.parent.parent) as hub:
        env = hub.provision("press-7").agent_env
        run_agent(hub, model_packages.edge, tmp_path / "live", env, "--readings", "30")
        live_epoch = hub.api.get_json("/v1/devices/press-7")["epoch"]
        replay = ("--source", "csv", "--csv-path", str(csv), "--csv-pace", "fast")

        run_agent(hub, model_packages.edge, tmp_path / "replay-a", env, *replay)
        hub.wait_until(
            "the recording stored",
            lambda: counters(hub, "press-7").get("stored_readings", 0) >= 30 + ROWS,
            timeout=60,
        )
        first = counters(hub, "press-7")
        assert first["stored_readings"] == 30 + ROWS
        assert first["stored_events"] > 0, "urgent events were expected at a 2 % urgent rate"

        # A fresh state directory: nothing local says what the hub has; the hub's dedupe does.
        run_agent(hub, model_packages.edge, tmp_path / "replay-b", env, *replay)
        hub.wait_until(
            "the second replay's messages counted as duplicates",
            lambda: counters(hub, "press-7").get("duplicates", 0) > 0,
            timeout=60,
        )
        second = counters(hub, "press-7")
        assert second["stored_readings"] == first["stored_readings"]
        assert second["stored_events"] == first["stored_events"]
        assert "epoch_regressed" not in second  # a replay is not a wiped device
        detail = hub.api.get_json("/v1/devices/press-7")
        assert detail["epoch"] == live_epoch and detail["gaps"] == []
        readings = hub.api.get_json("/v1/devices/press-7/telemetry?since=0&limit=1000")
        replayed = [r for r in readings["readings"] if r["epoch"] != live_epoch]
        assert len(replayed) == ROWS
        assert len({r["ts"] for r in replayed}) == ROWS
        assert len({r["epoch"] for r in replayed}) == 1
        # The device's epoch stays its live agent's; the recording is listed by its own.
        assert [r["epoch"] for r in detail["replays"]] == [replayed[0]["epoch"]]
        assert detail["replays"][0]["acked_seq"] > 0  # every message of it stored
        stats = hub.api.get_json("/v1/stats/ingest")
        assert stats["invalid_total"] == 0, stats

        # Retention counts from arrival: the recording (stamped November 2025) stays.
        store = open_store(f"sqlite:///{hub.db_path}")
        try:
            assert store.prune_telemetry(received_before=time.time() - 7 * 86_400) == 0
            assert store.prune_telemetry(received_before=time.time() + 1) == 30 + ROWS
        finally:
            store.close()


def sim_replay(
    hub: HubProcess,
    model: Path,
    state: Path,
    *paths: Path,
    extra: tuple[str, ...] = (),
    hub_url: str | None = None,
) -> tuple[int, list[str]]:
    """Run ``edgeloop-sim replay``; its exit status and stdout's lines (stderr's if none)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators",
            "replay",
            *map(str, paths),
            "--hub",
            hub_url or hub.base_url,
            "--read-token-file",
            str(hub.secrets_dir / "read-token"),
            "--model",
            str(model),
            "--state-dir",
            str(state),
            *hub.devices_add_flags,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    return done.returncode, (done.stdout or done.stderr).splitlines()


def test_sim_replay_runs_a_folder_as_a_fleet_and_a_second_run_stores_nothing_twice(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    recording(folder / "line 1 press.csv", seed=1, rows=300)
    recording(folder / "mill-2.csv", seed=2, rows=200)
    (folder / "broken.csv").write_text("ts,foo\n1763700000,1\n")
    (tmp_path / "empty").mkdir()
    missing = tmp_path / "nowhere.csv"
    state = tmp_path / "replay-state"
    with HubProcess(tmp_path / "hub", model_packages.edge.parent.parent) as hub:
        code, first = sim_replay(
            hub, model_packages.edge, state, folder, tmp_path / "empty", missing
        )
        assert code == 1, first  # some input was refused; the rest was replayed
        report = json.loads(first[-1])
        assert (report["replayed"], report["refused"]) == (2, 3), first
        assert report["rows_sent"] == report["rows_stored"] == 500, first
        lines = "\n".join(first)
        assert "mill-2.csv -> mill-2: 200 rows sent, 200 stored" in lines
        assert "line 1 press.csv -> line-1-press: 300 rows sent, 300 stored" in lines
        assert "broken.csv: REFUSED" in lines and "lacks the sensor(s)" in lines
        assert f"{tmp_path / 'empty'}: REFUSED: directory" in lines
        assert f"{missing}: REFUSED" in lines and "does not exist" in lines
        assert first[-2].startswith("replay: 2 files replayed, 3 refused; 500 rows read, 500 sent")
        events = {f["device"]: f["urgent_events"] for f in report["files"] if not f["error"]}
        assert sum(events.values()) > 0

        code, second = sim_replay(hub, model_packages.edge, state, folder / "mill-2.csv", folder)
        again = json.loads(second[-1])
        # mill-2.csv twice in one run is one device twice: the second is refused.
        assert (again["replayed"], again["refused"]) == (2, 2), second
        assert again["rows_stored"] == 500 and again["rows_sent"] == 0, second
        assert "mill-2: 200 rows read, 0 sent (all held by the hub already), 200 stored" in (
            "\n".join(second)
        )
        for device, rows in (("line-1-press", 300), ("mill-2", 200)):
            assert counters(hub, device)["stored_readings"] == rows
        assert {f["device"]: f["urgent_events"] for f in again["files"] if not f["error"]} == events
        refused = [f["error"] for f in again["files"] if f["error"]]
        assert any("'mill-2' is" in e and "already" in e for e in refused), refused


def outbox_messages(state: Path) -> int:
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def test_a_replay_interrupted_away_from_its_hub_is_completed_by_the_next_one(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    """The first run cannot reach its broker and is stopped half-way: its outbox holds
    the first messages of the recording's epoch, unsent. The next run, from the same
    state directory, sends those as they are and numbers the rest after them."""
    csv = tmp_path / "kiln-3.csv"
    write_csv(csv, MachineConfig(seed=5, rate_hz=100.0), ROWS)  # 6 s of recorded time
    state = tmp_path / "kiln-3"
    with HubProcess(tmp_path / "hub", model_packages.edge.parent.parent) as hub:
        env = hub.provision("kiln-3").agent_env
        away = parse_broker_url(env["EDGELOOP_AGENT_BROKER"])
        first = AgentProcess(
            model_packages.edge,
            state,
            env={**env, "EDGELOOP_AGENT_BROKER": dataclasses.replace(away, port=free_port()).url},
            args=(
                *("--source", "csv", "--csv-path", str(csv), "--csv-pace", "recorded"),
                *("--shutdown-timeout-s", "0.5"),
            ),
            log_level="INFO",
        )
        with first.start(wait=False):
            first.wait_until(
                "some messages in the outbox",
                lambda: outbox_messages(state) >= 5,
                timeout=30,
                ignore=(sqlite3.Error,),
            )
            # It never reached its broker: it says so and exits non-zero.
            assert first.stop() == EXIT_NEVER_CONNECTED, first.log_tail(20)
        held = outbox_messages(state)
        assert 5 <= held < ROWS // 10, held

        # At another pace: the identity does not depend on it.
        fast = ("--source", "csv", "--csv-path", str(csv), "--csv-pace", "fast")
        run_agent(hub, model_packages.edge, state, env, *fast)
        hub.wait_until(
            "the recording stored",
            lambda: counters(hub, "kiln-3").get("stored_readings", 0) >= ROWS,
            timeout=60,
        )
        stored = counters(hub, "kiln-3")
        assert stored["stored_readings"] == ROWS and "duplicates" not in stored, stored
        readings = hub.api.get_json("/v1/devices/kiln-3/telemetry?since=0&limit=1000")
        assert len({r["ts"] for r in readings["readings"]}) == ROWS
        assert hub.api.get_json("/v1/devices/kiln-3")["gaps"] == []
        assert outbox_messages(state) == 0


def test_sim_replay_says_when_nothing_was_stored_and_keeps_its_timeout(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    """A broker port nothing listens on: refused up front, naming it. A port that takes
    connections but speaks no MQTT: the rows are read, none sent or stored; the run ends
    by --timeout-s (not after the agents' 60 s drain) and exits 1. A wrong --hub: refused
    up front."""
    csv = recording(tmp_path / "kiln-4.csv", seed=6, rows=300)
    state = tmp_path / "replay-state"
    with HubProcess(tmp_path / "hub", model_packages.edge.parent.parent) as hub:
        closed = free_port()
        code, lines = sim_replay(
            hub,
            model_packages.edge,
            state,
            csv,
            extra=("--broker-port", str(closed), "--timeout-s", "600"),
        )
        assert code == 2, lines
        text = "\n".join(lines)
        assert f"broker at 127.0.0.1:{closed} does not answer" in text, text
        assert "nothing was replayed" in text and "--broker-port" in text, text
        assert not state.exists()
        with socket.socket() as mute:
            mute.bind(("127.0.0.1", 0))
            mute.listen()
            wrong = ("--broker-port", str(mute.getsockname()[1]), "--timeout-s", "3")
            code, lines = sim_replay(hub, model_packages.edge, state, csv, extra=wrong)
        assert code == 1, lines
        report = json.loads(lines[-1])
        assert (report["replayed"], report["not_stored"], report["rows_stored"]) == (0, 1, 0)
        assert report["rows_read"] == 300 and report["rows_sent"] == 0, report
        text = "\n".join(lines)
        assert "kiln-4: NOT STORED: 300 rows read, 0 stored" in text, text
        assert "never connected" in text and "--broker-port" in text, text
        assert lines[-2].startswith("replay: 0 files replayed, 1 not stored, 0 refused"), lines
        assert "300 rows read, 0 sent" in lines[-2], lines
        # The right broker: what the outbox kept is sent now, and counted as sent.
        code, lines = sim_replay(hub, model_packages.edge, state, csv)
        assert code == 0 and "kiln-4: 300 rows sent, 300 stored" in "\n".join(lines), lines

        other = tmp_path / "other"
        url = f"http://127.0.0.1:{free_port()}"
        code, lines = sim_replay(hub, model_packages.edge, other, csv, hub_url=url)
        assert code == 2, lines
        text = "\n".join(lines)
        assert "does not answer" in text and "nothing was replayed" in text, text
        assert "Check --hub" in text and not other.exists()
