"""``edgeloop-hub serve`` and ``devices add`` as an operator runs them."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.settings import OPTIONS, resolve_settings
from cloud_hub.store import open_store
from shared.endpoint import BrokerEndpoint
from shared.manifest import MODEL_FILE, load_package
from shared.secret_file import write_private
from simulators.harness import free_port
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(120)


def _hub(
    *args: str, cwd: Path, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``edgeloop-hub ARGS``; ``env`` is added to ours (secrets go there or in files, never in
    flags)."""
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def _serving(*args: str, cwd: Path) -> Iterator[str]:
    """``edgeloop-hub serve ARGS`` in ``cwd``; yields the API URL it announces once it
    holds its port, and stops it with SIGTERM (it must exit 0)."""
    log = (cwd / "hub.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub", "serve", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # "" once the hub exits without announcing
        assert "API http://" in line, (cwd / "hub.log").read_text()[-3000:]
        yield line.split("API ", 1)[1].split()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0, (cwd / "hub.log").read_text()[-3000:]


def _call(url: str, token: str, body: Any = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _one_clear_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_serve_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    done = _hub("serve", "--data-dir", str(tmp_path), cwd=tmp_path)
    _one_clear_line(done, "read_token", "--insecure-dev")


def test_serve_refuses_placeholder_tokens(tmp_path: Path) -> None:
    tokens = {"EDGELOOP_HUB_READ_TOKEN": "changeme", "EDGELOOP_HUB_ADMIN_TOKEN": "x" * 20}
    done = _hub("serve", cwd=tmp_path, env=tokens)
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
            "--http-port",
            str(free_port()),
            "--broker-port",
            str(port),
            cwd=tmp_path,
        )
    _one_clear_line(done, str(port), "--broker-port")
    assert "http://" not in done.stdout, "the API was announced by a hub that did not start"


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
        "--http-port",
        str(free_port()),
        cwd=tmp_path,
        env={"EDGELOOP_HUB_BROKER": url},
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
        "--http-port",
        str(free_port()),
        cwd=tmp_path,
        env={"EDGELOOP_HUB_BROKER": url},
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
        "mqtt://hub@broker.example:1883",
        cwd=tmp_path,
    )
    assert external.returncode == 0, external.stderr
    assert (
        "pi-08:$7$101$" in external.stdout
        and "topic write edgeloop/v1/dev/pi-08/telemetry" in external.stdout
    )
    bad = _hub("devices", "add", "bad/name", "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
    assert bad.returncode == 2 and "bad/name" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_names_a_busy_http_port_and_starts_nothing(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    broker_port = free_port()
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
            str(broker_port),
            "--http-port",
            str(port),
            cwd=tmp_path,
        )
    _one_clear_line(done, str(port), "--http-port")
    assert "Errno" not in done.stderr, done.stderr
    assert "http://" not in done.stdout, "the API was announced on a port it never got"
    # Nothing was started before the check: the broker never took its port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", broker_port))
    assert not (tmp_path / "hub" / "broker.log").exists()


def test_serve_with_the_default_relative_models_dir_serves_predict_and_artifacts(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    # The defaults, var/hub and var/models, are relative to the working directory;
    # the packages are put where the hub would build them, so it finds them.
    for package in (model_packages.edge, model_packages.heavy):
        shutil.copytree(
            package, tmp_path / "var" / "models" / package.parent.name / DEFAULT_VERSION
        )
    edge = load_package(model_packages.edge)
    # As an earlier hub stored it: relative to the working directory, not to the models dir.
    store = open_store(f"sqlite:///{tmp_path / 'var' / 'hub' / 'hub.db'}")
    try:
        store.register_model(edge.manifest, "var/models/machine-edge/1.1.0", 0.0)
    finally:
        store.close()
    read, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    write_private(tmp_path / "read-token", read + "\n")
    write_private(tmp_path / "admin-token", admin + "\n")
    flags = ("--read-token-file", "read-token", "--admin-token-file", "admin-token")
    flags += ("--http-port", "0")
    row = dict.fromkeys(edge.manifest.input.features, 1.0)
    with _serving(*flags, "--broker-port", "0", cwd=tmp_path) as api:
        status, body = _call(api + "/v1/predict", read, {"model": "machine-edge", "rows": [row]})
        assert status == 200, body
        assert json.loads(body)["count"] == 1
        status, body = _call(api + "/v1/models/machine-heavy/1.1.0/artifact", read)
        assert status == 200, body
        assert body == (model_packages.heavy / MODEL_FILE).read_bytes()


def test_a_second_serve_on_the_same_data_dir_names_the_hub_holding_it(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    hub_dir = tmp_path / "hub"
    flags = ("--insecure-dev", "true", "--data-dir", str(hub_dir), "--models-dir")
    flags += (str(model_packages.edge.parent.parent), "--http-port", "0", "--broker-port", "0")
    with _serving(*flags, cwd=tmp_path):
        holder = (hub_dir / "hub.lock").read_text().strip()
        assert holder.isdigit() and int(holder) != os.getpid()
        second = _hub("serve", *flags, cwd=tmp_path)
        assert second.returncode == 2
        _one_clear_line(second, "another hub", f"PID {holder}", str(hub_dir), "--data-dir")
        assert "http://" not in second.stdout
    # The lock went with the first hub: a new one starts.
    # SIGTERM at once after the announcement, before uvicorn has taken the signals: exit 0.
    with _serving(*flags, cwd=tmp_path):
        assert (hub_dir / "hub.lock").read_text().strip() != holder


def test_devices_add_refuses_an_existing_device_unless_rotate(tmp_path: Path) -> None:
    data = ("--data-dir", str(tmp_path / "hub"))
    passwd = tmp_path / "hub" / "broker-passwd"
    first = _hub("devices", "add", "pi-07", *data, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = passwd.read_text()
    again = _hub("devices", "add", "pi-07", *data, cwd=tmp_path)
    _one_clear_line(again, "'pi-07' already exists", "--rotate")
    assert passwd.read_text() == before, "a refused add must not touch the password file"
    rotated = _hub("devices", "add", "pi-07", "--rotate", *data, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert passwd.read_text() != before
    assert "keeps its session" in rotated.stdout and "next reconnect" in rotated.stdout
    old_url = next(x for x in first.stdout.splitlines() if x.startswith("EDGELOOP_AGENT_BROKER="))
    assert old_url not in rotated.stdout and "EDGELOOP_AGENT_BROKER=" in rotated.stdout

    external = (*data, "--broker", "mqtt://hub@broker.example:1883")
    assert _hub("devices", "add", "pi-08", *external, cwd=tmp_path).returncode == 0
    again = _hub("devices", "add", "pi-08", *external, cwd=tmp_path)
    _one_clear_line(again, "'pi-08' already exists", "--rotate")
    rotated = _hub("devices", "add", "pi-08", "--rotate", *external, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "replace the line that starts with 'pi-08:'" in rotated.stdout
    assert "on reload Mosquitto 2 disconnects" in rotated.stdout


def test_devices_add_help_lists_only_its_own_options(tmp_path: Path) -> None:
    add = _hub("devices", "add", "--help", cwd=tmp_path)
    assert add.returncode == 0, add.stderr
    for own in ("--data-dir", "--store", "--broker", "--broker-port", "--root", "--rotate"):
        assert own in add.stdout, own
    for serve_only in ("--http-port", "--read-token", "--models-dir", "--ingest-queue-max"):
        assert serve_only not in add.stdout, serve_only
    serve = _hub("serve", "--help", cwd=tmp_path)
    assert "--http-port" in serve.stdout and "--read-token" in serve.stdout


def test_devices_add_reads_a_config_file_that_holds_serve_settings_too(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(f'data_dir = "{tmp_path / "hub"}"\nhttp_port = 8081\nroot = "plant-3/v1"\n')
    done = _hub("devices", "add", "pi-07", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "EDGELOOP_AGENT_ROOT=plant-3/v1" in done.stdout
    assert (tmp_path / "hub" / "broker-passwd").read_text().startswith("pi-07:")


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_says_how_to_make_tokens_the_hub_accepts(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = _section(readme, "Running the hub")
    recipes = re.findall(r"python3 -c '([^']*secrets[^']*)'", section)
    assert len(recipes) == 2, "the section shows how to make the read and the admin token"
    tokens = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        for code in recipes
    ]
    files = re.findall(r"--read-token-file (\S+) --admin-token-file (\S+)", section)
    assert len(files) == 1, "the section shows serve reading the tokens from files"
    # As the shell writes them (print adds a newline): the hub accepts what the recipe makes.
    for name, token in zip(files[0], tokens, strict=True):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_private(tmp_path / name, token + "\n")
    flags = ["--read-token-file", str(tmp_path / files[0][0])]
    flags += ["--admin-token-file", str(tmp_path / files[0][1])]
    args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(flags)
    settings = resolve_settings(args, env={}, serving=True)
    assert (settings.read_token, settings.admin_token) == tuple(tokens)


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """``edgeloop-hub models list | head``: the pipe closes before the hub writes; the
    command stops with 141 (as SIGPIPE would) and prints no error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_hub", "models", "list", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line
    try:
        err = process.stderr.read()
        assert process.wait(timeout=60) == 141, err
    finally:
        if process.poll() is None:
            process.kill()
    assert "Broken pipe" not in err and "error" not in err, err
