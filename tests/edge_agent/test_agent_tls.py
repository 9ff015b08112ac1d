"""MQTT over TLS: a real agent verifies a real Mosquitto's certificate from ``certs init``.

Mosquitto gets a second listener with the server certificate; the agent connects
with an ``mqtts://`` URL and ``--broker-ca-file``. The right CA connects and the
birth arrives; another CA, or TLS against the plain port, is reported with what
to check, and the agent keeps retrying.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.certs import TlsFiles, init_ca
from edge_agent.settings import load_settings
from shared.endpoint import BrokerEndpoint, parse_broker_url
from shared.errors import ConfigError
from simulators.harness import HOST, AgentProcess, Mosquitto, free_port, wait_until
from tests.brokers import EDGELOOP_SECRET, EDGELOOP_USER, USERS, require_mosquitto
from tests.conftest import ModelPaths

pytestmark = [pytest.mark.timeout(90), pytest.mark.mosquitto]
WAIT = 30.0


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    files = TlsFiles(tmp_path / "hub" / "tls")
    init_ca(files, [HOST, "localhost"])
    return files


@pytest.fixture
def tls_mosquitto(tmp_path: Path, tls_files: TlsFiles) -> Iterator[tuple[Mosquitto, int]]:
    """Mosquitto with its plain listener and a TLS one (the server certificate)."""
    require_mosquitto()
    tls_port = free_port()
    with Mosquitto(
        tmp_path / "mosquitto",
        users=USERS,
        extra_conf=[
            f"listener {tls_port} {HOST}",
            f"certfile {tls_files.server_cert}",
            f"keyfile {tls_files.server_key}",
        ],
    ) as broker:
        yield broker, tls_port


def _agent(model: Path, state: Path, url: str, ca: Path) -> AgentProcess:
    return AgentProcess(
        model,
        state,
        broker=parse_broker_url(url),
        device="dev-tls",
        root=f"edgeloop-test/{uuid.uuid4().hex[:10]}",
        args=("--broker-ca-file", str(ca), "--reconnect-min-s", "1", "--reconnect-max-s", "1"),
        log_level="INFO",
    )


def _report(agent: AgentProcess, text: str) -> str:
    """Start ``agent`` (it never connects) until it logs a line with ``text``; that line."""
    agent.start(wait=False)
    try:
        wait_until(f"the agent to log {text!r}", lambda: text in agent.output(), timeout=WAIT)
        agent.check_alive()  # it keeps retrying
    finally:
        agent.kill()
    assert "connected to" not in agent.output()
    return next(ln for ln in agent.output().splitlines() if text in ln)


def _tls_url(port: int) -> str:
    return BrokerEndpoint(HOST, port, EDGELOOP_USER, EDGELOOP_SECRET, tls=True).url


def test_an_agent_connects_over_tls_with_the_hubs_ca(
    tls_mosquitto: tuple[Mosquitto, int],
    tls_files: TlsFiles,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    _, tls_port = tls_mosquitto
    agent = _agent(model_packages.edge, tmp_path / "agent", _tls_url(tls_port), tls_files.ca_cert)
    with agent.start():  # ready once it says it is connected
        agent.check_alive()
    assert f"connected to mqtts://{EDGELOOP_USER}:***@{HOST}:{tls_port}" in agent.output()
    assert EDGELOOP_SECRET not in agent.output()


def test_another_ca_is_refused_and_the_report_says_what_to_check(
    tls_mosquitto: tuple[Mosquitto, int], model_packages: ModelPaths, tmp_path: Path
) -> None:
    _, tls_port = tls_mosquitto
    other = TlsFiles(tmp_path / "other-site")
    init_ca(other, [HOST])
    agent = _agent(model_packages.edge, tmp_path / "agent", _tls_url(tls_port), other.ca_cert)
    line = _report(agent, "is not trusted")
    assert f"{HOST} port {tls_port}" in line and "--broker-ca-file" in line, line


def test_tls_against_the_plain_port_says_which_port_is_which(
    tls_mosquitto: tuple[Mosquitto, int],
    tls_files: TlsFiles,
    model_packages: ModelPaths,
    tmp_path: Path,
) -> None:
    broker, _ = tls_mosquitto
    agent = _agent(
        model_packages.edge, tmp_path / "agent", _tls_url(broker.port), tls_files.ca_cert
    )
    line = _report(agent, "TLS with")
    assert "8883" in line and "mqtt://" in line, line


def test_a_ca_file_needs_tls_and_a_certificate(tls_files: TlsFiles, tmp_path: Path) -> None:
    base = ["--model", str(tmp_path), "--device", "d1"]
    ca = str(tls_files.ca_cert)
    settings = load_settings(
        [*base, "--broker", "mqtts://d1@hub.example:8883", "--broker-ca-file", ca], env={}
    )
    assert settings.broker.tls and settings.broker.port == 8883
    assert parse_broker_url("mqtts://hub.example").port == 8883
    with pytest.raises(ConfigError, match=r"broker_ca_file.*mqtt:// \(no TLS\).*mqtts://"):
        load_settings([*base, "--broker", "mqtt://hub.example", "--broker-ca-file", ca], env={})
    tls = ["--broker", "mqtts://hub.example"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings([*base, *tls, "--broker-ca-file", str(tmp_path / "nope.pem")], env={})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no usable PEM certificate"):
        load_settings([*base, *tls, "--broker-ca-file", str(junk)], env={})
