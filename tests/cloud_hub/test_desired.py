"""Desired state, pure part: which versions may be desired, the message, when to re-send."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from cloud_hub.ota.desired import check_desirable, desired_message, desired_record, needs_resend
from cloud_hub.registry.stages import Stage
from cloud_hub.store.base import ModelRecord
from shared.manifest import load_package
from shared.messages import Desired, decode_as, encode
from shared.signing import SigningKey
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(30)


def _record(path: Path, *, signed: bool = True, stage: Stage = Stage.CANDIDATE) -> ModelRecord:
    pkg = load_package(path)
    sig = SigningKey.generate().sign_manifest(pkg.manifest_bytes) if signed else None
    m = pkg.manifest
    return ModelRecord(
        m.name, m.version, m.variant, str(path), 1.0, m, pkg.manifest_bytes, stage, 1.0, "t", sig
    )


def test_only_signed_edge_models_not_archived_unless_a_rollback(model_packages: ModelPaths) -> None:
    edge = _record(model_packages.edge)
    assert check_desirable(edge, allow_downgrade=False) is None
    heavy = check_desirable(_record(model_packages.heavy), allow_downgrade=False)
    assert heavy is not None and heavy.reason == "not_edge"
    unsigned = check_desirable(_record(model_packages.edge, signed=False), allow_downgrade=True)
    assert unsigned is not None and unsigned.reason == "unsigned"
    archived = _record(model_packages.edge, stage=Stage.ARCHIVED)
    refusal = check_desirable(archived, allow_downgrade=False)
    assert refusal is not None and refusal.reason == "archived"
    assert check_desirable(archived, allow_downgrade=True) is None


def test_the_message_names_the_package_by_what_the_agent_checks(
    model_packages: ModelPaths,
) -> None:
    record = _record(model_packages.edge)
    d = desired_record(record, "pi-07", rollout="manual", allow_downgrade=False, at=5.0)
    assert d.manifest_sha256 == hashlib.sha256(record.manifest_bytes).hexdigest()
    assert record.signature is not None
    assert d.size == (
        sum(f.size for f in record.manifest.files)
        + len(record.manifest_bytes)
        + len(record.signature)
    )
    msg = desired_message(d)
    assert msg.manifest_url == f"/v1/models/{record.name}/{record.version}"  # a path, never a host
    assert decode_as(Desired, encode(msg)) == msg


def test_re_send_when_the_device_runs_another_model_at_most_every_interval(
    model_packages: ModelPaths,
) -> None:
    d = desired_record(
        _record(model_packages.edge), "pi-07", rollout="r", allow_downgrade=False, at=0.0
    )
    same = (d.model, d.version)
    assert not needs_resend(d, same, None, 100.0, 10.0)
    assert needs_resend(d, (d.model, "0.0.1"), None, 100.0, 10.0)
    assert needs_resend(d, (None, d.version), 95.0, 105.0, 10.0)  # no name: another model
    assert not needs_resend(d, (d.model, "0.0.1"), 95.0, 100.0, 10.0)
    other = dataclasses.replace(d, model="rig-edge")
    assert needs_resend(other, same, 0.0, 100.0, 10.0)
