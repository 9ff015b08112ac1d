"""Verify a model package directory: every file, and the signature over the manifest's bytes.

What :func:`verify_package` checks, in order, going on after a failure so one
run names every problem (the first one is the package's ``reason``):

1. ``manifest.json`` reads and validates (:func:`shared.manifest.parse_manifest`)
   and lists its files (``files``; a manifest written before that list has
   none and cannot be verified: rebuild it);
2. every listed file is present with its size and sha256 (a file whose size
   differs is not hashed);
3. the directory holds nothing the manifest does not list, except
   ``manifest.json`` and ``manifest.sig`` (a package is flat: a subdirectory is
   unlisted too, as is a hidden file);
4. ``manifest.sig`` verifies over the manifest's bytes *as read from disk* (the
   same bytes step 1 parsed, never re-serialized) against the trusted keys
   (:func:`shared.signing.verify_signature`).

:func:`check_files` is steps 2-3 without I/O, on what the directory holds.
Reason codes: :class:`shared.reasons.RejectReason`. The hub's
``edgeloop-hub models verify`` prints the result; the agent verifies a package
it is desired to run with it (:mod:`edge_agent.ota.runner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ManifestError
from shared.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    ModelManifest,
    PackageFile,
    parse_manifest,
    sha256_file,
)
from shared.reasons import RejectReason
from shared.signing import (
    MAX_SIGNATURE_FILE_BYTES,
    TrustedKey,
    Verifier,
    verify_in_process,
    verify_signature,
)

__all__ = ["Check", "FileFacts", "PackageVerification", "check_files", "verify_package"]


@dataclass(frozen=True, slots=True)
class Check:
    """One thing verified: ``what`` (a file name, "manifest", "signature"), and
    ``reason`` None when it passed; ``detail`` says what was found."""

    what: str
    reason: RejectReason | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the package directory holds under one name. ``sha256`` may be None
    when it was not worth computing (not a regular file, or the size is wrong)."""

    is_file: bool
    size: int
    sha256: str | None


@dataclass(frozen=True, slots=True)
class PackageVerification:
    """The result of :func:`verify_package`: every check, in order."""

    path: Path
    manifest: ModelManifest | None
    checks: tuple[Check, ...]
    key_id: str | None
    """The key id whose signature verified (None unless it did)."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failure(self) -> Check | None:
        """The first check that failed."""
        return next((c for c in self.checks if not c.ok), None)

    @property
    def reason(self) -> RejectReason | None:
        failed = self.failure
        return None if failed is None else failed.reason


def check_files(listed: Sequence[PackageFile], found: Mapping[str, FileFacts]) -> list[Check]:
    """Steps 2-3 of the module docstring, on ``found`` (every entry of the directory
    but ``manifest.json`` and ``manifest.sig``).

    >>> entry = PackageFile("model.onnx", "ab" * 32, 3)
    >>> [c.reason for c in check_files([entry], {"model.onnx": FileFacts(True, 3, "ab" * 32)})]
    [None]
    >>> [c.reason.value for c in check_files([entry], {"model.onnx": FileFacts(True, 4, None)})]
    ['size_mismatch']
    """
    checks: list[Check] = []
    for entry in listed:
        facts = found.get(entry.path)
        if facts is None or not facts.is_file:
            checks.append(
                Check(
                    entry.path,
                    RejectReason.MISSING_FILE,
                    f"{entry.path} is listed in the manifest but "
                    f"{'is not a regular file' if facts else 'missing'} in the package",
                )
            )
        elif facts.size != entry.size:
            checks.append(
                Check(
                    entry.path,
                    RejectReason.SIZE_MISMATCH,
                    f"{entry.path} is {facts.size} bytes where the manifest says {entry.size}: "
                    "truncated or replaced",
                )
            )
        elif facts.sha256 != entry.sha256:
            checks.append(
                Check(
                    entry.path,
                    RejectReason.SHA256_MISMATCH,
                    f"{entry.path} has sha256 {str(facts.sha256)[:16]}... where the manifest says "
                    f"{entry.sha256[:16]}...: corrupt or replaced",
                )
            )
        else:
            checks.append(
                Check(entry.path, None, f"{entry.path} {entry.size} bytes, sha256 matches")
            )
    names = {e.path for e in listed}
    for name in sorted(set(found) - names):
        checks.append(
            Check(
                name,
                RejectReason.UNLISTED_FILE,
                f"{name} is in the package but not listed in the manifest: remove it, or "
                "rebuild the package",
            )
        )
    return checks


def _facts(directory: Path, listed: Mapping[str, PackageFile]) -> dict[str, FileFacts]:
    found: dict[str, FileFacts] = {}
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise ManifestError(
            f"model package {str(directory)!r} cannot be listed ({exc.strerror or exc})",
            path=str(directory),
        ) from None
    for entry in entries:
        if entry.name in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        # A symlink is not a file of the package: it could point anywhere.
        is_file = entry.is_file() and not entry.is_symlink()
        want = listed.get(entry.name)
        try:
            size = entry.stat().st_size if is_file else 0
            check = is_file and want is not None and want.size == size
            digest = sha256_file(entry) if check else None
        except OSError:  # unreadable: as good as absent, and reported so
            is_file, size, digest = False, 0, None
        found[entry.name] = FileFacts(is_file, size, digest)
    return found


def verify_package(
    path: Path, trusted: Sequence[TrustedKey], verifier: Verifier = verify_in_process
) -> PackageVerification:
    """Verify the package directory ``path`` against the ``trusted`` public keys.

    Raises :class:`ManifestError` only when ``path`` is not a readable
    directory, and :class:`shared.signing.VerifierError` when ``verifier``
    (the Ed25519 check, :func:`shared.signing.verify_signature`) could not run;
    everything about the package itself is in the result.
    """
    if not path.is_dir():
        raise ManifestError(f"model package {str(path)!r} is not a directory", path=str(path))
    checks: list[Check] = []
    manifest: ModelManifest | None = None
    mpath = path / MANIFEST_FILE
    try:
        data: bytes | None = mpath.read_bytes()
    except OSError as exc:
        data = None
        checks.append(
            Check(
                MANIFEST_FILE,
                RejectReason.MALFORMED_MANIFEST,
                f"{MANIFEST_FILE} cannot be read ({exc.strerror})",
            )
        )
    if data is not None:
        try:
            manifest = parse_manifest(data, mpath)
        except ManifestError as exc:
            checks.append(Check(MANIFEST_FILE, RejectReason.MALFORMED_MANIFEST, str(exc)))
    if manifest is not None and not manifest.files:
        checks.append(
            Check(
                MANIFEST_FILE,
                RejectReason.MALFORMED_MANIFEST,
                f"{MANIFEST_FILE} lists no files (it was written before manifests listed "
                "every file): rebuild the package ('edgeloop-hub models build --force')",
            )
        )
    elif manifest is not None:
        checks.append(
            Check(
                MANIFEST_FILE,
                None,
                f"{manifest.name} {manifest.version} ({manifest.variant}), "
                f"{len(manifest.files)} file(s) listed",
            )
        )
        listed = {f.path: f for f in manifest.files}
        checks += check_files(manifest.files, _facts(path, listed))
    key_id = None
    sig_path = path / SIGNATURE_FILE
    if not sig_path.is_file():
        checks.append(
            Check(
                SIGNATURE_FILE,
                RejectReason.UNSIGNED,
                f"no {SIGNATURE_FILE}: the package is not signed (make a key with "
                "'edgeloop-hub keys init'; builds then sign)",
            )
        )
    elif data is not None:
        with sig_path.open("rb") as fh:
            sig = fh.read(MAX_SIGNATURE_FILE_BYTES + 1)
        result = verify_signature(data, sig, trusted, verifier)
        key_id = result.key_id if result.ok else None
        checks.append(Check(SIGNATURE_FILE, result.reason, result.detail))
    return PackageVerification(path, manifest, tuple(checks), key_id)
