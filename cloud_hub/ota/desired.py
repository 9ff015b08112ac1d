"""Desired state, pure: which model versions a device may be told to run, the message
that tells it, and when to tell it again.

Rules:

1. Only an *edge* model may be desired (a heavy model runs on the hub), only a
   signed one (agents refuse unsigned packages), and not an archived one
   unless the desired state is a rollback (``allow_downgrade``: going back to
   the version a rollout replaced, which promoting the new one archived).
2. The message names the package by what the agent can check: the model's
   name and version, the sha256 of the registered manifest bytes, and the
   most it may download (every listed file plus the manifest and its
   signature). ``manifest_url`` is a path on the hub's API, never a full URL:
   the agent joins it to the hub URL it was configured with, so a desired
   message can never send a device's credential to another host.
3. Re-sending: retained is a convenience, not the mechanism (DESIGN.md
   section 5). Whenever a device's birth or heartbeat names a model other than
   its desired one, the desired message goes again, at most once per
   ``min_interval_s`` per device (an agent mid-download reports its old model
   in every heartbeat; it need not be told again each time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cloud_hub.registry.stages import Stage
from cloud_hub.store.base import DesiredRecord, ModelRecord
from shared.messages import Desired

__all__ = ["DesiredRefusal", "check_desirable", "desired_message", "desired_record", "needs_resend"]


@dataclass(frozen=True, slots=True)
class DesiredRefusal:
    """Why a model version cannot be desired; ``reason`` is a stable code."""

    reason: str
    detail: str


def check_desirable(record: ModelRecord, *, allow_downgrade: bool) -> DesiredRefusal | None:
    """Rule 1: None when ``record`` may be a device's desired model."""
    what = f"model {record.name} {record.version}"
    if record.variant != "edge":
        return DesiredRefusal(
            "not_edge",
            f"{what} is a {record.variant} model; devices run edge models "
            f"(e.g. {record.name.removesuffix('-heavy')}-edge)",
        )
    if record.signature is None:
        return DesiredRefusal(
            "unsigned",
            f"{what} is unsigned and every agent would refuse it; register its package again "
            f"where the hub's key is ('edgeloop-hub models register "
            f"DATA_DIR/registry/packages/{record.name}/{record.version}' signs it with "
            "DATA_DIR/keys/signing.key; 'edgeloop-hub keys init' makes one)",
        )
    if record.stage is Stage.ARCHIVED and not allow_downgrade:
        return DesiredRefusal(
            "archived",
            f"{what} is archived; promote it back ('edgeloop-hub models promote ... --to "
            "candidate') or send it as a rollback (allow_downgrade)",
        )
    return None


def desired_record(
    record: ModelRecord, device: str, *, rollout: str, allow_downgrade: bool, at: float
) -> DesiredRecord:
    """Rule 2: what ``device`` is to run, for the store."""
    signature = record.signature or b""
    size = sum(f.size for f in record.manifest.files) + len(record.manifest_bytes) + len(signature)
    return DesiredRecord(
        device,
        record.name,
        record.version,
        hashlib.sha256(record.manifest_bytes).hexdigest(),
        size,
        rollout,
        allow_downgrade,
        at,
    )


def desired_message(d: DesiredRecord) -> Desired:
    """The retained message that tells ``d.device`` what to run."""
    return Desired(
        d.device,
        d.set_at,
        d.model,
        d.version,
        f"/v1/models/{d.model}/{d.version}",
        d.manifest_sha256,
        d.rollout,
        d.allow_downgrade,
        d.size,
    )


def needs_resend(
    d: DesiredRecord,
    reported: tuple[str | None, str | None],
    last_sent: float | None,
    now: float,
    min_interval_s: float,
) -> bool:
    """Rule 3: does a device that says it runs ``reported`` (model name, version) need
    its desired message again? A report without a model name (an agent of an older
    schema) counts as different."""
    if reported == (d.model, d.version):
        return False
    return last_sent is None or now - last_sent >= min_interval_s
