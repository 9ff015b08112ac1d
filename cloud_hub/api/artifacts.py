"""Where a registered model's files are on disk, and whether they are still the ones registered.

A :class:`~cloud_hub.store.base.ModelRecord` keeps the path it was registered
with: the package directory (or the model file itself). The hub registers
absolute paths; a relative one (registered by other code) is taken relative
to the API's ``models_root``, never to the working directory.

Errors::

    ArtifactError   the file is missing, unreadable, or its size (or sha256)
                    differs from the registered manifest's
"""

from __future__ import annotations

import logging
from pathlib import Path

from cloud_hub.store.base import ModelRecord
from shared.errors import EdgeloopError
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, PackageFile, sha256_file
from shared.signing import MAX_SIGNATURE_FILE_BYTES

__all__ = ["ArtifactError", "artifact_path", "package_file", "signature_file", "verify_sha256"]

log = logging.getLogger(__name__)


class ArtifactError(EdgeloopError):
    """A registered model's artifact cannot be served as registered.

    ``str(exc)`` is safe to show a client; ``path`` (for the log) is not.
    """

    def __init__(self, message: str, *, name: str, version: str, path: str | None) -> None:
        super().__init__(message)
        self.name = name
        self.version = version
        self.path = path


def _fail(record: ModelRecord, why: str, path: Path | None) -> ArtifactError:
    log.error(
        "model %s %s: %s (path %s, registered as %r)",
        record.name,
        record.version,
        why,
        path,
        record.path,
    )
    return ArtifactError(
        f"model {record.name} {record.version} is registered but its artifact {why}; the "
        "hub's operator must restore the package directory or register the model again "
        "(the hub log names the path)",
        name=record.name,
        version=record.version,
        path=None if path is None else str(path),
    )


def _registered_path(record: ModelRecord, models_root: Path | None) -> Path:
    path = Path(record.path)
    if not path.is_absolute():
        if models_root is None:
            raise _fail(record, "has a relative path and the API has no models_root", path)
        path = models_root / path
    return path


def artifact_path(record: ModelRecord, models_root: Path | None) -> Path:
    """The registered model's ONNX file, checked to exist with the manifest's size."""
    path = _registered_path(record, models_root)
    if path.is_dir():
        path = path / record.manifest.model.file
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(record, f"cannot be read ({exc.strerror})", path) from None
    if not path.is_file():
        raise _fail(record, "is not a regular file", path)
    if size != record.manifest.model.size:
        raise _fail(
            record,
            f"is {size} bytes where the manifest says {record.manifest.model.size}",
            path,
        )
    return path


def package_file(record: ModelRecord, models_root: Path | None, entry: PackageFile) -> Path:
    """A listed file of the registered package, checked to exist with its listed size."""
    package = _registered_path(record, models_root)
    if not package.is_dir():
        raise _fail(record, f"is a single file, which holds no {entry.path}", package)
    path = package / entry.path
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(record, f"file {entry.path} cannot be read ({exc.strerror})", path) from None
    if not path.is_file() or size != entry.size:
        raise _fail(record, f"file {entry.path} is not the {entry.size} bytes listed", path)
    return path


def verify_sha256(record: ModelRecord, path: Path) -> None:
    """Raise :class:`ArtifactError` unless ``path`` hashes to the manifest's sha256."""
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise _fail(record, f"cannot be read ({exc.strerror})", path) from None
    if digest != record.manifest.model.sha256:
        raise _fail(record, "no longer matches the manifest's sha256", path)


def signature_file(record: ModelRecord, models_root: Path | None) -> bytes | None:
    """The package's ``manifest.sig``, or None when it has none. Raises
    :class:`ArtifactError` when the package's ``manifest.json`` is no longer the
    registered bytes: its signature would be over something else."""
    path = _registered_path(record, models_root)
    package = path if path.is_dir() else path.parent
    try:
        on_disk = (package / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise _fail(record, f"manifest cannot be read ({exc.strerror})", package) from None
    if on_disk != record.manifest_bytes:
        raise _fail(record, "manifest on disk differs from the registered one", package)
    try:
        with (package / SIGNATURE_FILE).open("rb") as fh:
            data = fh.read(MAX_SIGNATURE_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fail(record, f"signature cannot be read ({exc.strerror})", package) from None
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise _fail(record, f"signature file is over {MAX_SIGNATURE_FILE_BYTES} bytes", package)
    return data
