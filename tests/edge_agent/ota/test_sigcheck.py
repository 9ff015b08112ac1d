"""The agent's Ed25519 check in a child process (real children): it verifies and refuses as
the in-process check does, the agent's side never loads ``cryptography``, and every way the
child can fail is a :class:`VerifierError` that the runner reports as ``verifier_failed``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.engine import load_edge_model
from edge_agent.ota import sigcheck
from edge_agent.ota.machine import OtaSettings, Refused, Target, Verified
from edge_agent.ota.runner import OtaConfig, OtaRunner
from edge_agent.ota.sigcheck import child_verifier
from edge_agent.ota.slots import ModelSlots
from shared import __version__
from shared.manifest import MANIFEST_FILE, load_package
from shared.package_verify import verify_package
from shared.reasons import OtaReason, RejectReason
from shared.signing import SigningKey, VerifierError, verify_in_process
from simulators.packages import variant
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def package(model_packages: ModelPaths, tmp_path: Path, key: SigningKey) -> Path:
    return variant(model_packages.edge, tmp_path / "pkg", key, "1.2.0")


def test_the_child_verifies_a_signature_and_refuses_a_changed_manifest(
    package: Path, key: SigningKey
) -> None:
    result = verify_package(package, [key.public], child_verifier())
    assert result.ok and result.key_id == key.key_id
    manifest = package / MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes() + b" ")  # still valid JSON, not what was signed
    assert verify_package(package, [key.public], child_verifier()).reason is (
        RejectReason.BAD_SIGNATURE
    )
    other = SigningKey.generate()
    assert verify_package(package, [other.public], child_verifier()).reason is (
        RejectReason.UNKNOWN_KEY  # decided in the agent: no child needed
    )


def test_the_agent_side_of_a_verification_never_loads_cryptography(
    package: Path, key: SigningKey, tmp_path: Path
) -> None:
    pub = tmp_path / "signing.pub"
    pub.write_text(key.public.pem())
    code = f"""
import sys
import edge_agent.cli, edge_agent.ota.runner, edge_agent.ota.download
from pathlib import Path
from edge_agent.settings import load_settings
from edge_agent.ota.sigcheck import child_verifier
from shared.package_verify import verify_package
settings = load_settings(["--device", "d", "--model", {str(package)!r}, "--trust", {str(pub)!r}], env={{}})
result = verify_package(Path({str(package)!r}), settings.trusted, child_verifier())
print(result.ok, any(m.split(".")[0] == "cryptography" for m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


@pytest.mark.parametrize(
    ("command", "timeout_s", "says"),
    [
        (["/nonexistent/python3"], 10.0, r"was not found; reinstall"),
        ([sys.executable, "-c", "import os; os.abort()"], 10.0, r"killed by SIGABRT"),
        ([sys.executable, "-c", "import sys; sys.exit('boom')"], 10.0, r"status 1: boom"),
        (
            [sys.executable, "-c", "import time; time.sleep(20)"],
            0.5,
            r"within 0.5 s and was killed",
        ),
        ([sys.executable, "-c", "print('hello')"], 10.0, r"answered b'hello"),
        ([sys.executable, "-c", "print('{\"verified_by\": 7}')"], 10.0, r"answered"),
    ],
    ids=["not-found", "crash", "error", "timeout", "garbage", "bad-index"],
)
def test_a_child_that_cannot_answer_is_a_verifier_error_naming_why(
    package: Path, key: SigningKey, command: list[str], timeout_s: float, says: str
) -> None:
    with pytest.raises(VerifierError, match=says):
        verify_package(package, [key.public], child_verifier(command, timeout_s))


def test_the_child_refuses_an_unreadable_request() -> None:
    done = subprocess.run(
        sigcheck.child_command(), input=b"{}", capture_output=True, timeout=50, check=False
    )
    assert done.returncode == 2 and b"unreadable request" in done.stderr
    request = {"keys": [], "data": "", "signature": ""}
    done = subprocess.run(
        sigcheck.child_command(),
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0 and json.loads(done.stdout) == {"verified_by": None}


class _Host:
    def switch_model(self, model: object) -> object:
        raise AssertionError("no switch while verifying")

    def report_ota(self, transition: object) -> None:
        raise AssertionError("the runner's _verify reports nothing itself")


def test_the_runner_refuses_an_update_whose_checker_cannot_run_as_verifier_failed(
    package: Path,
    key: SigningKey,
    model_packages: ModelPaths,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slots = ModelSlots(tmp_path / "state")
    slots.prepare()
    shutil.rmtree(slots.staging)
    shutil.copytree(package, slots.staging)
    model = load_edge_model(model_packages.edge, __version__)
    sensors = model.manifest.input.sensor_names
    config = OtaConfig(
        "http://127.0.0.1:1", (key.public,), OtaSettings(), 1 << 20, __version__, sensors
    )
    runner = OtaRunner(config, slots, model, _Host())  # type: ignore[arg-type]
    target = Target(model.manifest.name, "1.2.0", "a" * 64, "http://127.0.0.1:1/m")
    assert isinstance(runner._verify(target), Verified)  # the real child

    monkeypatch.setattr(sigcheck, "child_command", lambda: ["/nonexistent/python3"])
    refused = runner._verify(target)
    assert isinstance(refused, Refused) and refused.reason is OtaReason.VERIFIER_FAILED
    assert "signature checker" in refused.detail and "not found" in refused.detail
    assert load_package(slots.staging).manifest.version == "1.2.0"  # nothing touched
    # A host of many simulated agents checks in its own process: no child is run.
    in_process = OtaRunner(replace(config, verifier=verify_in_process), slots, model, _Host())  # type: ignore[arg-type]
    assert isinstance(in_process._verify(target), Verified)
