"""``edgeloop-hub devices add``: reserved names, and the Mosquitto files it writes."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.broker.rules import BrokerRules
from cloud_hub.provision import MosquittoFiles, ReservedNameError, provision_device
from shared.endpoint import BrokerEndpoint, parse_broker_url
from shared.topics import Kind, Topics
from simulators.harness import HUB_USER, Mosquitto
from tests.brokers import require_mosquitto
from tests.test_broker_rules import Peer

pytestmark = pytest.mark.timeout(120)

EXTERNAL = ("--broker", "mqtt://hub@127.0.0.1:1883")


def _hub(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.parametrize("name", ["hub", "edgeloop-hub"])
@pytest.mark.parametrize("external", [False, True])
def test_devices_add_refuses_the_hubs_names(tmp_path: Path, name: str, external: bool) -> None:
    data = ("--data-dir", str(tmp_path / "hub"), *(EXTERNAL if external else ()))
    done = _hub("devices", "add", name, *data, cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert f"device name {name!r} is refused" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "hub" / "broker-passwd").exists()


def test_a_custom_hub_account_is_reserved_too() -> None:
    with pytest.raises(ReservedNameError, match="hub's own broker account"):
        provision_device(
            "central",
            broker=BrokerEndpoint("127.0.0.1", 1883),
            topics=Topics(),
            password_file=None,
            hub_user="central",
        )


def test_devices_add_writes_the_mosquitto_files(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "edgeloop.passwd", tmp_path / "edgeloop.acl"
    acl.write_text("# site notes stay\n")
    files = ("--mosquitto-password-file", str(passwd), "--mosquitto-acl-file", str(acl))
    data = ("--data-dir", str(tmp_path / "hub"), *EXTERNAL, *files)
    first = _hub("devices", "add", "pi-07", *data, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "kill -HUP" in first.stdout and str(passwd) in first.stdout
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    assert _hub("devices", "add", "pi-08", *data, cwd=tmp_path).returncode == 0
    rotated = _hub("devices", "add", "pi-07", "--rotate", *data, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    lines = passwd.read_text().splitlines()
    assert [line.partition(":")[0] for line in lines] == ["pi-08", "pi-07"]
    text = acl.read_text()
    assert text.startswith("# site notes stay\n")
    assert text.count("user hub\n") == 1 and text.count("user pi-07\n") == 1
    rules = BrokerRules()
    assert rules.mosquitto_acl("pi-08") in text and rules.mosquitto_acl("hub") in text
    half = _hub("devices", "add", "pi-09", *data[:-2], cwd=tmp_path)
    assert half.returncode == 2 and "--mosquitto-acl-file" in half.stderr


@pytest.mark.mosquitto
def test_mosquitto_runs_on_the_files_devices_add_wrote(tmp_path: Path) -> None:
    require_mosquitto()
    files = MosquittoFiles(tmp_path / "passwd", tmp_path / "acl")
    where = BrokerEndpoint("127.0.0.1", 1883)
    made = {
        name: provision_device(
            name, broker=where, topics=Topics(), password_file=None, mosquitto_files=files
        )
        for name in ("pi-07", "pi-08")
    }
    with Mosquitto(
        tmp_path / "mosquitto",
        users={HUB_USER: "hub-secret"},
        password_lines=files.password_file.read_text().splitlines(),
        acl=files.acl_file.read_text(),
        username_as_clientid=True,
    ) as mq:
        hub = Peer(mq.endpoint(HUB_USER), HUB_USER, password="hub-secret")
        secret = parse_broker_url(made["pi-07"].agent_env["EDGELOOP_AGENT_BROKER"]).password
        device = Peer(mq.endpoint("pi-07"), "pi-07", password=secret)
        try:
            assert not hub.connect().is_failure
            assert hub.subscribe(Topics().device_filter(Kind.TELEMETRY))
            assert not device.connect().is_failure
            device.publish(Topics().topic("pi-08", Kind.TELEMETRY), b"forged")
            device.publish(Topics().topic("pi-07", Kind.TELEMETRY), b"marker")
            assert hub.received_until(b"marker") == [
                (Topics().topic("pi-07", Kind.TELEMETRY), b"marker")
            ]
        finally:
            hub.close()
            device.close()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def test_the_shipped_mosquitto_files_match_the_rules() -> None:
    example = (DEPLOY / "edgeloop.acl.example").read_text()
    rules = BrokerRules()
    assert rules.mosquitto_acl("hub") in example and rules.mosquitto_acl("pi-07") in example
    conf = {
        line.split()[0]: line.split(maxsplit=1)[1]
        for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert conf["use_username_as_clientid"] == "true"
    assert conf["allow_anonymous"] == "false"
    assert conf["persistence"] == "true" and conf["autosave_on_changes"] == "false"
    assert "acl_file" in conf and "password_file" in conf
