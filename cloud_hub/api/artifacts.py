"""Where a registered model's ``model.onnx`` is on disk, and whether it is still the one registered.

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
from shared.manifest import sha256_file

__all__ = ["ArtifactError", "artifact_path", "verify_sha256"]

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


def artifact_path(record: ModelRecord, models_root: Path | None) -> Path:
    """The registered model's ONNX file, checked to exist with the manifest's size."""
    path = Path(record.path)
    if not path.is_absolute():
        if models_root is None:
            raise _fail(record, "has a relative path and the API has no models_root", path)
        path = models_root / path
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


def verify_sha256(record: ModelRecord, path: Path) -> None:
    """Raise :class:`ArtifactError` unless ``path`` hashes to the manifest's sha256."""
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise _fail(record, f"cannot be read ({exc.strerror})", path) from None
    if digest != record.manifest.model.sha256:
        raise _fail(record, "no longer matches the manifest's sha256", path)
