"""TLS end to end: ``certs init``, a hub whose embedded broker and API serve TLS, an agent over it.

A real hub (``edgeloop-hub serve --mqtt-tls-port P --http-tls true``) with the
certificate ``certs init`` made; a real agent connects with ``mqtts://`` and the
hub's ``ca.pem``; its readings are read back through the API over HTTPS. A
client with another CA is refused on both ports, and a hub asked for TLS
without a certificate, or with a key others may read, refuses to start and
says what to run.
"""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.certs import TlsFiles, init_ca
from shared.endpoint import BrokerEndpoint, parse_broker_url
from simulators.harness import HOST, AgentProcess, HubApi, HubProcess, free_port, wait_until
from tests.conftest import ModelPaths
from tests.readings import count_readings

pytestmark = pytest.mark.timeout(120)
WAIT = 60.0


def _tls_hub(tmp_path: Path, models: Path, files: TlsFiles, tls_port: int) -> HubProcess:
    return HubProcess(
        tmp_path / "hub",
        models,
        https_ca=files.ca_cert,
        args=["--mqtt-tls-port", str(tls_port), "--http-tls", "true"],
        log_level="INFO",
    )


def test_an_agent_over_mqtts_is_stored_and_read_back_over_https(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    files = TlsFiles(tmp_path / "hub" / "tls")
    init_ca(files, [HOST])
    tls_port = free_port()
    hub = _tls_hub(tmp_path, model_packages.edge.parent.parent, files, tls_port)
    with hub.start():  # ready once GET /healthz answers 200 over HTTPS
        device = hub.provision("dev-tls")
        plain = parse_broker_url(device.agent_env["EDGELOOP_AGENT_BROKER"])
        endpoint = dataclasses.replace(plain, port=tls_port, tls=True)
        agent = AgentProcess(
            model_packages.edge,
            tmp_path / "agent",
            broker=endpoint,
            device="dev-tls",
            root=hub.root,
            args=("--broker-ca-file", str(files.ca_cert), "--readings", "200", "--rate-hz", "100"),
            log_level="INFO",
        )
        with agent.start():
            wait_until(
                "200 readings stored, read over HTTPS",
                lambda: count_readings(hub, "dev-tls") >= 200,
                timeout=WAIT,
            )
        assert f"connected to mqtts://dev-tls:***@{HOST}:{tls_port}" in agent.output()
        # Another CA: the API refuses to be trusted.
        other = TlsFiles(tmp_path / "other")
        init_ca(other, [HOST])
        with pytest.raises(ssl.SSLCertVerificationError):
            dataclasses.replace(hub.api, ca_file=other.ca_cert).get("/healthz")
        # Plain HTTP to the HTTPS port gets no API answer: the connection is closed.
        plain_api = HubApi(f"http://{HOST}:{hub.http_port}", hub.read_token)
        with pytest.raises(ConnectionResetError):
            plain_api.get("/healthz")


def _serve(data_dir: Path, models: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``edgeloop-hub serve`` that must refuse to start (so it returns at once)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_hub",
            "serve",
            "--insecure-dev",
            "true",
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(models),
            "--http-port",
            str(free_port()),
            "--broker-port",
            str(free_port()),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tls_without_a_certificate_or_with_an_open_key_refuses_to_start(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    data = tmp_path / "hub"
    models = model_packages.edge.parent.parent
    done = _serve(data, models, "--mqtt-tls-port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "does not exist" in done.stderr and "edgeloop-hub certs init" in done.stderr
    files = TlsFiles(data / "tls")
    init_ca(files, [HOST])
    files.server_key.chmod(0o644)
    done = _serve(data, models, "--http-tls", "true")
    assert done.returncode == 2, done.stderr
    assert f"chmod 600 {files.server_key}" in done.stderr


def test_an_external_broker_ca_file_needs_an_mqtts_url(
    model_packages: ModelPaths, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("unused\n")
    done = _serve(
        tmp_path / "hub",
        model_packages.edge.parent.parent,
        "--broker",
        BrokerEndpoint(HOST, 1883, "hub").url,
        "--broker-ca-file",
        str(ca),
    )
    assert done.returncode == 2, done.stderr
    assert "applies only to an external mqtts:// broker" in done.stderr


def test_devices_add_gives_a_tls_hubs_devices_mqtts_and_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.cli import main  # noqa: PLC0415

    data = tmp_path / "hub"
    init_ca(TlsFiles(data / "tls"), [HOST])
    assert (
        main(["devices", "add", "pi-07", "--data-dir", str(data), "--mqtt-tls-port", "8883"]) == 0
    )
    out = capsys.readouterr().out
    url = next(ln for ln in out.splitlines() if ln.startswith("EDGELOOP_AGENT_BROKER="))
    endpoint = parse_broker_url(url.partition("=")[2])
    assert endpoint.tls and endpoint.port == 8883 and endpoint.username == "pi-07", endpoint
    assert "EDGELOOP_AGENT_BROKER_CA_FILE=/etc/edgeloop/ca.pem" in out
    assert f"copy the hub's {(data / 'tls' / 'ca.pem').resolve()} onto the device" in out
