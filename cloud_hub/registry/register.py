"""Registering a model package: verify, sign when unsigned and a key is at hand, store.

:func:`register_package` is the one way a version enters the registry: the CLI
(``edgeloop-hub models register DIR``), the API (``POST /v1/models``), the hub's
default build at ``serve`` and ``models train`` all call it.

1. The package verifies (:func:`shared.package_verify.verify_package`): its
   manifest, every listed file's size and sha256, nothing unlisted. A signed
   package's signature must verify with a key the hub trusts (its own
   ``signing.pub``, plus any ``--trust`` keys); an unsigned one is signed with
   the hub's signing key when it has one (the registry's copy is signed; the
   source directory is never written to) and registered unsigned otherwise
   (devices refuse unsigned packages: a rollout of one will be refused).
2. Each listed file is copied into the content-addressed blobs (hashed again
   while copied) and the version's package directory is laid out from them
   (:mod:`cloud_hub.registry.blobs`).
3. The store records the manifest's exact bytes, the signature, the stage
   (``candidate`` unless told otherwise), who registered it and from where.

Registering the same content again changes nothing (and signs an unsigned
record when a key is now at hand); other content under a registered version is
refused: versions are immutable.

Errors: :class:`RegistryError` (``str(exc)`` names the package, the failed
checks and what to do).
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.registry.blobs import BlobError, BlobStore
from cloud_hub.registry.stages import Stage, StageChange, parse_stage, plan_stage_change
from cloud_hub.store.base import ModelRecord
from shared.errors import EdgeloopError, ManifestError
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE
from shared.package_verify import verify_package
from shared.reasons import RejectReason
from shared.signing import MAX_SIGNATURE_FILE_BYTES, SigningKey, TrustedKey

__all__ = [
    "Registered",
    "RegistryError",
    "change_stage",
    "default_registrant",
    "find_version",
    "register_built",
    "register_package",
    "registry_root",
]

log = logging.getLogger(__name__)

_SIGNATURE_REASONS = frozenset(
    {RejectReason.UNSIGNED, RejectReason.UNKNOWN_KEY, RejectReason.BAD_SIGNATURE}
)


class RegistryError(EdgeloopError):
    """A package the registry refuses; the message lists why and what to do."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


def registry_root(data_dir: Path) -> Path:
    return data_dir / "registry"


@dataclass(frozen=True, slots=True)
class Registered:
    record: ModelRecord
    new: bool
    """False when the version was registered already with this content."""
    signed_now: bool
    """True when the registry signed it (the package came unsigned)."""

    def describe(self) -> str:
        r = self.record
        sig = "unsigned" if r.signature is None else "signed"
        how = "registered" if self.new else "already registered"
        extra = ", signed by the hub's key now" if self.signed_now else ""
        return (
            f"{how}: {r.name} {r.version} ({r.variant}, {r.stage.value}, {sig}{extra}) at {r.path}"
        )


def register_package(
    store: Any,
    root: Path,
    source: Path,
    *,
    trusted: Sequence[TrustedKey],
    key: SigningKey | None,
    by: str,
    at: float,
    stage: Stage = Stage.CANDIDATE,
    replace: bool = False,
    label: str | None = None,
) -> Registered:
    """Register the package directory ``source`` (see the module docstring).

    ``label`` names the package in errors instead of ``source`` (an upload's
    temporary directory means nothing to its sender).

    ``replace`` lets other content take a registered version (``models train
    --force`` rebuilding a version on purpose); the version keeps its stage."""
    shown = label or str(source)
    if source.is_dir() and not (source / MANIFEST_FILE).exists():
        inside = sorted(str(m.parent) for m in source.glob(f"*/*/{MANIFEST_FILE}"))[:4]
        inside = inside or sorted(str(m.parent) for m in source.glob(f"*/{MANIFEST_FILE}"))[:4]
        hint = f" (packages under it: {', '.join(inside)})" if inside else ""
        raise RegistryError(
            f"cannot register {shown}: it holds no {MANIFEST_FILE}; give one package's "
            f"directory, e.g. var/models/machine-edge/1.1.0{hint}",
            "not_a_package",
        )
    keys = [*trusted, *([key.public] if key is not None else [])]
    try:
        checked = verify_package(source, keys)
    except ManifestError as exc:
        raise RegistryError(f"cannot register {shown}: {exc}", "not_a_package") from None
    problems = [c for c in checked.checks if not c.ok and c.reason not in _SIGNATURE_REASONS]
    manifest = checked.manifest
    if problems or manifest is None:
        lines = "; ".join(f"{c.what}: {c.detail}" for c in problems)
        reason = problems[0].reason if problems else RejectReason.MALFORMED_MANIFEST
        raise RegistryError(
            f"cannot register {shown}: it does not verify ({lines}); rebuild the package, "
            f"and check it with 'edgeloop-hub models verify DIR'",
            str(reason),
        )
    manifest_bytes = (source / MANIFEST_FILE).read_bytes()
    signature: bytes | None = None
    signed_now = False
    sig_reason = checked.reason if checked.reason in _SIGNATURE_REASONS else None
    if sig_reason is None:
        with (source / SIGNATURE_FILE).open("rb") as fh:
            signature = fh.read(MAX_SIGNATURE_FILE_BYTES + 1)
    elif sig_reason is not RejectReason.UNSIGNED:
        failed = checked.failure
        assert failed is not None
        how = (
            "sign it with the hub's key before sending it, or register it where the hub runs "
            "('edgeloop-hub models register DIR --trust SIGNER.pub')"
            if label is not None
            else f"give the signer's public key with --trust FILE, or remove {SIGNATURE_FILE} "
            "to have the hub sign it"
        )
        raise RegistryError(
            f"cannot register {shown}: its signature does not verify with a key this hub "
            f"trusts ({failed.detail}); {how}",
            str(sig_reason),
        )
    existing: ModelRecord | None = store.model(manifest.name, manifest.version)
    if (
        signature is None
        and existing is not None
        and existing.manifest_bytes == manifest_bytes
        and existing.signature is not None
    ):
        signature = existing.signature  # registered signed before: keep that signature
    if signature is None and key is not None:
        signature = key.sign_manifest(manifest_bytes)
        signed_now = True
    if existing is not None and existing.manifest != manifest and not replace:
        raise RegistryError(
            f"cannot register {shown}: {manifest.name} {manifest.version} is registered "
            "already with other content; versions are immutable: give the new model a new "
            "version",
            "version_exists",
        )
    blobs = BlobStore(root)
    try:
        for entry in manifest.files:
            blobs.put(source / entry.path, entry)
        path = blobs.package(
            manifest.name, manifest.version, manifest.files, manifest_bytes, signature
        )
    except BlobError as exc:
        raise RegistryError(str(exc), "copy_failed") from None
    record = store.register_model(
        manifest,
        str(path.resolve()),
        at,
        manifest_bytes=manifest_bytes,
        registered_by=by,
        signature=signature,
        source=str(source.resolve()),
        replace=replace,
    )
    if existing is None:
        log.info("registered %s %s from %s by %s", manifest.name, manifest.version, source, by)
        if stage is not Stage.CANDIDATE:
            # Through the stage rules, so a second production version archives the first.
            change_stage(
                store,
                manifest.name,
                manifest.version,
                stage.value,
                reason="registered as " + stage.value,
                by=by,
            )
            record = find_version(store, manifest.name, manifest.version)
    return Registered(record, existing is None, signed_now)


def default_registrant() -> str:
    """``cli:USER`` for the CLI (the user name, else the uid)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"cli:uid{os.getuid()}"


def find_version(store: Any, name: str, version: str) -> ModelRecord:
    """The registered ``name`` ``version``, or :class:`RegistryError` (reason
    ``not_found``) naming the versions the model has."""
    record: ModelRecord | None = store.model(name, version)
    if record is None:
        known = sorted(r.version for r in store.models() if r.name == name)
        hint = (
            f"; its versions: {', '.join(known)}" if known else "; see 'edgeloop-hub models list'"
        )
        raise RegistryError(f"model {name} {version} is not registered{hint}", "not_found")
    return record


def change_stage(
    store: Any, name: str, version: str, to: str, *, reason: str, by: str
) -> list[StageChange]:
    """Move ``name`` ``version`` to stage ``to`` by :mod:`cloud_hub.registry.stages`'s
    rules (:class:`~cloud_hub.registry.stages.StageError` when they refuse);
    returns the changes made (a second one archives a replaced production version)."""
    find_version(store, name, version)
    stages = {r.version: r.stage for r in store.models() if r.name == name}
    changes = plan_stage_change(name, stages, version, parse_stage(to), reason)
    store.change_model_stages(name, changes, time.time(), by)
    return changes


def register_built(
    store: Any,
    data_dir: Path,
    signing_key: Path | None,
    packages: Sequence[Path],
    *,
    by: str,
    replace: bool = False,
    production_if_none: bool = False,
) -> list[Registered]:
    """Register packages the hub just built or trained (``serve``'s default build,
    ``models train``), trusting the hub's own key and signing with it when there is
    one. ``production_if_none``: a package whose name has no production version
    enters as production (the default models devices run from the factory)."""
    from cloud_hub.keys import signing_key_for, trusted_keys  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    key = signing_key_for(signing_key, data_dir)
    trusted = trusted_keys(data_dir)
    done = []
    for path in packages:
        name = load_package(path).manifest.name
        stage = Stage.CANDIDATE
        if production_if_none and not any(
            r.name == name and r.stage is Stage.PRODUCTION for r in store.models()
        ):
            stage = Stage.PRODUCTION
        done.append(
            register_package(
                store,
                registry_root(data_dir),
                path,
                trusted=trusted,
                key=key,
                by=by,
                at=time.time(),
                stage=stage,
                replace=replace,
            )
        )
    return done
