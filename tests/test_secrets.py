"""No secret where other users or other programs can see it, while the demo runs.

The demo (hub, embedded broker, agents) runs for real; while it does, this reads
every process it started (``/proc/PID/cmdline`` and ``/proc/PID/environ``,
through psutil, children of children included), every log, the demo's own
output and the ``repr`` of the settings each process resolves, and looks for
every token, device secret and broker password in them.
"""

from __future__ import annotations

import argparse
import io
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from cloud_hub.broker.auth import add_user
from cloud_hub.broker.embedded import EmbeddedBroker
from cloud_hub.settings import OPTIONS, resolve_settings
from edge_agent.settings import load_settings
from shared.secret_file import write_private
from simulators.demo import DemoConfig, run_demo
from simulators.harness import HubApi, wait_until
from tests.conftest import ModelPaths

_DEVICES = 2


def _descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _cmdline_after(proc_args: list[str], marker: str) -> list[str]:
    return proc_args[proc_args.index(marker) + 1 :]


def _secrets_of(run_dir: Path) -> dict[str, str]:
    """Every secret of the demo's run, by where it is kept."""
    found = {
        "hub's own broker secret": (run_dir / "hub" / "hub-broker-secret").read_text().strip(),
        "read token": (run_dir / "hub.secrets" / "read-token").read_text().strip(),
        "admin token": (run_dir / "hub.secrets" / "admin-token").read_text().strip(),
    }
    for file in sorted((run_dir / "agents").glob("*.secrets/broker-password")):
        found[f"secret of {file.parent.name}"] = file.read_text().strip()
    assert len(found) == 3 + _DEVICES, found
    assert all(len(s) >= 16 for s in found.values()), "secrets long enough not to match by chance"
    return found


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret in text]


@pytest.mark.timeout(240)
def test_no_secret_in_ps_child_environments_logs_or_repr_while_the_demo_runs(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    out = io.StringIO()
    stop = threading.Event()
    config = DemoConfig(
        devices=_DEVICES,
        duration_s=0.0,  # until stop
        models_dir=model_packages.edge.parent.parent,
        work_dir=tmp_path / "demo",
        rate_hz=20.0,
        summary_every_s=1.0,
        out=out,
    )
    result: list[int] = []
    demo = threading.Thread(target=lambda: result.append(run_demo(config, stop)), daemon=True)
    demo.start()
    try:
        wait_until("the demo's agents", lambda: "agents: " in out.getvalue(), timeout=150)
        run_dir = next((tmp_path / "demo").iterdir())
        secrets = _secrets_of(run_dir)
        base_url = out.getvalue().split("hub: API ", 1)[1].split()[0]
        api = HubApi(base_url, secrets["read token"])

        def online() -> bool:
            states = api.get_json("/v1/devices")["states"]
            return int(states.get("online", 0)) == _DEVICES

        wait_until("every agent online", online, timeout=60, ignore=(OSError,))

        # Every process the demo started, while it runs: the hub, its broker, the agents.
        procs = _descendants()
        kinds = {
            name: [p for p in procs if marker in p.cmdline()]
            for name, marker in (
                ("hub", "cloud_hub"),
                ("broker", "cloud_hub.broker"),
                ("agent", "edge_agent"),
            )
        }
        assert len(kinds["broker"]) == 1 and len(kinds["agent"]) == _DEVICES, kinds
        assert len(kinds["hub"]) == 1, kinds
        for proc in procs:
            cmdline = "\0".join(proc.cmdline())
            environ = "\0".join(f"{k}={v}" for k, v in proc.environ().items())
            assert not _leaks(cmdline, secrets), (proc.pid, "cmdline", _leaks(cmdline, secrets))
            assert not _leaks(environ, secrets), (proc.pid, "environ", _leaks(environ, secrets))
        broker_env = kinds["broker"][0].environ()
        assert not [k for k in broker_env if k.startswith("EDGELOOP_")], sorted(broker_env)

        # What each process resolves from its own command line and environment.
        hub = kinds["hub"][0]
        hub_args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(
            _cmdline_after(hub.cmdline(), "serve")
        )
        hub_settings = resolve_settings(hub_args, env=hub.environ(), serving=True)
        assert hub_settings.read_token == secrets["read token"]
        assert not _leaks(repr(hub_settings), secrets), repr(hub_settings)
        for agent in kinds["agent"]:
            settings = load_settings(_cmdline_after(agent.cmdline(), "edge_agent"), agent.environ())
            assert settings.broker.password is not None
            assert settings.broker.password in secrets.values()
            assert not _leaks(repr(settings), secrets), repr(settings)

        # The database, which holds every device's data, and the secret files: owner only.
        for private in [
            run_dir / "hub" / "hub.db",
            run_dir / "hub" / "hub.db-wal",
            run_dir / "hub" / "hub-broker-secret",
            run_dir / "hub" / "broker-passwd",
            *run_dir.glob("hub.secrets/*"),
            *run_dir.glob("agents/*.secrets/*"),
        ]:
            mode = stat.S_IMODE(private.stat().st_mode)
            assert mode & 0o077 == 0, (private, oct(mode))
    finally:
        stop.set()
        demo.join(timeout=120)
    assert not demo.is_alive() and result == [0], out.getvalue()[-2000:]

    # Logs, after the fact: the hub's, the broker's, every agent's, and the demo's output.
    texts = {"demo output": out.getvalue()}
    for log in [*run_dir.glob("*.log"), *run_dir.glob("hub/*.log"), *run_dir.glob("agents/*.log")]:
        texts[str(log)] = log.read_text(errors="replace")
    assert len(texts) >= 3 + _DEVICES, sorted(texts)
    for where, text in texts.items():
        assert not _leaks(text, secrets), (where, _leaks(text, secrets))


@pytest.mark.timeout(60)
def test_a_token_file_others_may_read_stops_the_hub_with_the_chmod(tmp_path: Path) -> None:
    read, admin = tmp_path / "read-token", tmp_path / "admin-token"
    write_private(read, "read-token-Pw7-0123456789\n")
    write_private(admin, "admin-token-Pw7-0123456789\n")
    read.chmod(0o644)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cloud_hub", "serve", "--data-dir", str(tmp_path / "hub")),
            *("--read-token-file", str(read), "--admin-token-file", str(admin)),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"chmod 600 {read}" in done.stderr and "Traceback" not in done.stderr
    assert "Pw7" not in done.stderr + done.stdout
    assert not (tmp_path / "hub").exists(), "refused before anything was started or made"


@pytest.mark.timeout(60)
def test_a_missing_metrics_token_file_stops_the_hub_saying_what_to_do(tmp_path: Path) -> None:
    # It said only "cannot read FILE: No such file or directory".
    read, admin = tmp_path / "read-token", tmp_path / "admin-token"
    write_private(read, "read-token-Pw7-0123456789\n")
    write_private(admin, "admin-token-Pw7-0123456789\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cloud_hub", "serve", "--data-dir", str(tmp_path / "hub")),
            *("--read-token-file", str(read), "--admin-token-file", str(admin)),
            *("--metrics-token-file", "secrets/metrics-tokn"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "(--metrics-token-file): cannot read secrets/metrics-tokn" in done.stderr
    assert f"check the path (relative to the current directory {tmp_path})" in done.stderr
    assert "write the secret into it, alone on one line" in done.stderr
    assert "Traceback" not in done.stderr and "Pw7" not in done.stderr + done.stdout
    assert not (tmp_path / "hub").exists(), "refused before anything was started or made"


@pytest.mark.timeout(60)
def test_the_embedded_broker_child_does_not_get_the_hubs_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_HUB_READ_TOKEN", "read-token-Pw7-0123456789")
    monkeypatch.setenv("EDGELOOP_HUB_BROKER_PASSWORD", "broker-Pw7-0123456789")
    monkeypatch.setenv("SOME_OTHER_SECRET", "other-Pw7-0123456789")
    add_user(tmp_path / "passwd", "hub", "hub-secret-0123456789")
    with EmbeddedBroker(password_file=tmp_path / "passwd", log_path=tmp_path / "b.log") as broker:
        assert broker.pid is not None
        environ = psutil.Process(broker.pid).environ()
    assert not [v for v in environ.values() if "Pw7" in v], sorted(environ)
    assert "PATH" in environ


@pytest.mark.timeout(30)
def test_api_config_and_a_provisioned_device_hide_their_secrets_in_repr(tmp_path: Path) -> None:
    from cloud_hub.api import ApiConfig  # noqa: PLC0415
    from cloud_hub.provision import provision_device  # noqa: PLC0415
    from shared.endpoint import BrokerEndpoint  # noqa: PLC0415
    from shared.topics import Topics  # noqa: PLC0415

    config = ApiConfig(read_token="read-token-Pw7-0123456789", admin_token="admin-Pw7-0123456789")
    assert "Pw7" not in repr(config)
    done = provision_device(
        "pi-07",
        broker=BrokerEndpoint("127.0.0.1", 1883),
        topics=Topics("edgeloop/v1"),
        password_file=tmp_path / "passwd",
    )
    assert done.secret not in repr(done) and "pi-07" in repr(done)
