"""Content-addressed files of the registry, and each registered version's package view.

Layout under the registry's root (``DATA_DIR/registry`` by default)::

    blobs/sha256/ab/abcdef...      one file per distinct content, named by its sha256,
                                   read-only (0444); written once, never changed
    packages/NAME/VERSION/         a registered version as a package directory:
        manifest.json              the registered bytes (what manifest.sig signs)
        manifest.sig               when signed
        model.onnx, ...            hard links to their blobs (a copy where the file
                                   system has no hard links)

A version registered twice with the same content shares every blob; two
versions that differ only in their manifest (new thresholds) share the model
file. A blob is hashed while it is copied in, so what the registry holds is what
the manifest says, whatever happens to the source directory afterwards.

Errors: :class:`BlobError` (``str(exc)`` says which file and what to do).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shared.errors import EdgeloopError
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, PackageFile
from shared.secret_file import fsync_dir

__all__ = ["BlobError", "BlobStore"]

_CHUNK = 1 << 20


class BlobError(EdgeloopError):
    """A file could not be taken into the registry as the manifest describes it."""


class BlobStore:
    """The registry's files under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.packages = root / "packages"

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def put(self, source: Path, entry: PackageFile) -> Path:
        """Copy ``source`` in as the blob of ``entry.sha256``; it must have ``entry``'s
        size and sha256. A blob already held is checked by size and kept."""
        target = self.blob_path(entry.sha256)
        if target.is_file() and target.stat().st_size == entry.size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if size > entry.size:
                        break
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != entry.size or digest.hexdigest() != entry.sha256:
                what = (
                    f"is over {entry.size} bytes"
                    if size > entry.size
                    else f"is {size} bytes with sha256 {digest.hexdigest()[:12]}..."
                )
                raise BlobError(
                    f"{source}: {what}, but the manifest lists {entry.size} bytes with sha256 "
                    f"{entry.sha256[:12]}...; it changed after the package was built: rebuild it"
                )
            tmp.chmod(0o444)
            tmp.replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise BlobError(
                f"cannot copy {source} into the registry at {self.root}: {exc.strerror}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def package(
        self,
        name: str,
        version: str,
        files: Sequence[PackageFile],
        manifest_bytes: bytes,
        signature: bytes | None,
    ) -> Path:
        """The package directory of ``name`` ``version`` made of held blobs; made when
        missing, rewritten when its manifest or signature differ (a version signed
        after it was registered unsigned)."""
        target = self.packages / name / version
        if _same_package(target, manifest_bytes, signature):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            for entry in files:
                blob = self.blob_path(entry.sha256)
                try:
                    os.link(blob, staging / entry.path)
                except OSError:  # no hard links here (another file system): copy
                    shutil.copyfile(blob, staging / entry.path)
            (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
            if signature is not None:
                (staging / SIGNATURE_FILE).write_bytes(signature)
            staging.chmod(0o755)
            if target.exists():
                old = target.with_name(f".{version}-old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise BlobError(
                f"cannot lay out {name} {version} in the registry at {self.root}: {exc.strerror}"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _same_package(target: Path, manifest_bytes: bytes, signature: bytes | None) -> bool:
    try:
        if (target / MANIFEST_FILE).read_bytes() != manifest_bytes:
            return False
        sig = target / SIGNATURE_FILE
        return (sig.read_bytes() if sig.exists() else None) == signature
    except OSError:
        return False
