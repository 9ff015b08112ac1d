"""``edgeloop-hub serve`` and ``devices add`` as an operator runs them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.endpoint import BrokerEndpoint
from simulators.harness import free_port
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(120)


def _hub(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_clear_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_serve_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    done = _hub("serve", "--data-dir", str(tmp_path), cwd=tmp_path)
    _one_clear_line(done, "read_token", "--insecure-dev")


def test_serve_refuses_placeholder_tokens(tmp_path: Path) -> None:
    done = _hub("serve", "--read-token", "changeme", "--admin-token", "x" * 20, cwd=tmp_path)
    _one_clear_line(done, "placeholder")


def test_serve_names_a_busy_broker_port(tmp_path: Path, model_packages: ModelPaths) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _hub(
            "serve",
            "--insecure-dev",
            "true",
            "--data-dir",
            str(tmp_path / "hub"),
            "--models-dir",
            str(model_packages.edge.parent.parent),
            "--broker-port",
            str(port),
            cwd=tmp_path,
        )
    _one_clear_line(done, str(port), "--broker-port")


def test_serve_names_an_unreachable_external_broker(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    url = f"mqtt://hub:secret@127.0.0.1:{free_port()}"
    done = _hub(
        "serve",
        "--insecure-dev",
        "true",
        "--data-dir",
        str(tmp_path / "hub"),
        "--models-dir",
        str(model_packages.edge.parent.parent),
        "--broker",
        url,
        cwd=tmp_path,
    )
    _one_clear_line(done, "127.0.0.1")
    assert "secret" not in done.stderr


def test_serve_names_bad_credentials(
    tmp_path: Path, model_packages: ModelPaths, broker: BrokerEndpoint
) -> None:
    url = BrokerEndpoint(broker.host, broker.port, "hub", "not-the-password").url
    done = _hub(
        "serve",
        "--insecure-dev",
        "true",
        "--data-dir",
        str(tmp_path / "hub"),
        "--models-dir",
        str(model_packages.edge.parent.parent),
        "--broker",
        url,
        cwd=tmp_path,
    )
    _one_clear_line(done, "credentials")
    assert "not-the-password" not in done.stderr


def test_devices_add_prints_agent_settings_and_mosquitto_lines(tmp_path: Path) -> None:
    done = _hub("devices", "add", "pi-07", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "EDGELOOP_AGENT_DEVICE=pi-07" in done.stdout
    assert "EDGELOOP_AGENT_BROKER=mqtt://pi-07:" in done.stdout
    assert (tmp_path / "hub" / "broker-passwd").read_text().startswith("pi-07:")
    external = _hub(
        "devices",
        "add",
        "pi-08",
        "--data-dir",
        str(tmp_path / "hub"),
        "--broker",
        "mqtt://hub:pw@broker.example:1883",
        cwd=tmp_path,
    )
    assert external.returncode == 0, external.stderr
    assert (
        "pi-08:$7$101$" in external.stdout
        and "topic write edgeloop/v1/dev/pi-08/telemetry" in external.stdout
    )
    bad = _hub("devices", "add", "bad/name", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert bad.returncode == 2 and "bad/name" in bad.stderr and "Traceback" not in bad.stderr
