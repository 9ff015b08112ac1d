"""``/v1/models``: registered model versions, their manifests, signatures and ONNX artifacts.

The manifest comes back byte for byte as the registry stored it: the package's
``manifest.json`` as it was on disk when registered, never re-serialized, so a
``manifest.sig`` over those bytes verifies against the download. The signature
is served from the package directory (``/signature``), only while the
directory's ``manifest.json`` is still those registered bytes; 404 for an
unsigned package. (The agent does not download or verify them yet.)

The artifact streams ``model.onnx`` with ``Content-Length``, a strong
``ETag`` (the manifest's sha256) and single-range ``Range`` requests (206, or
416 past the end), so a download that broke off resumes where it stopped;
``If-Range`` with a stale ETag gets the whole file. ``HEAD`` gives the headers
alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse

from cloud_hub.api.artifacts import ArtifactError, artifact_path, signature_file
from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.byteranges import RangeNotSatisfiableError, parse_range
from cloud_hub.api.deps import StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import ModelName, ModelVersion, find_model
from cloud_hub.api.schemas import ModelListOut, ModelOut
from cloud_hub.store.base import ModelRecord
from shared.manifest import manifest_file_bytes

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/models", tags=["models"], responses=responses(401))

_CHUNK = 64 * 1024
_MANIFEST_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "manifest.json, byte for byte as the pipeline writes it.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_SIGNATURE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "manifest.sig: {alg: ed25519, key_id, signature (base64)}, byte for byte.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_ARTIFACT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The whole model.onnx.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {
        "description": "The bytes the Range header asked for (Content-Range says which).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **responses(404, 416, 422, 500),
}


def _etag(record: ModelRecord) -> str:
    return f'"{record.manifest.model.sha256}"'


@router.get("", response_model=ModelListOut)
def list_models(access: ReadAccess, store: StoreDep) -> ModelListOut:
    """Every registered model version, by name, then version."""
    models = [ModelOut.from_record(r) for r in store.models()]
    return ModelListOut(count=len(models), models=models)


@router.get(
    "/{name}/{version}",
    response_class=Response,
    responses={**_MANIFEST_DOC, **responses(404, 422)},
)
def get_manifest(
    access: ReadAccess, store: StoreDep, name: ModelName, version: ModelVersion
) -> Response:
    """The manifest of one model version."""
    record = find_model(store, name, version)
    # A store that keeps no bytes (none does today) falls back to the file's canonical form.
    content = record.manifest_bytes or manifest_file_bytes(record.manifest)
    return Response(
        content=content,
        media_type="application/json",
        headers={"ETag": f'"{hashlib.sha256(content).hexdigest()}"'},
    )


@router.get(
    "/{name}/{version}/signature",
    response_class=Response,
    responses={**_SIGNATURE_DOC, **responses(404, 422, 500)},
)
def get_signature(
    access: ReadAccess, state: StateDep, name: ModelName, version: ModelVersion
) -> Response:
    """``manifest.sig`` of one model version: the Ed25519 signature of the manifest's bytes."""
    record = find_model(state.store, name, version)
    data = signature_file(record, state.models_root)
    if data is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"model {record.name} {record.version} is not signed; the hub's operator "
            "signs packages by making a key ('edgeloop-hub keys init') and building again",
        )
    return Response(
        content=data,
        media_type="application/json",
        headers={"ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
    )


def _read(fh: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``fh`` from ``start``, in chunks; closes ``fh`` at the end."""
    try:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(_CHUNK, length))
            if not chunk:  # the file shrank under us: the client sees a short body
                log.error("artifact %s ended %d bytes early", fh.name, length)
                return
            length -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _artifact(
    request: Request, state: StateDep, name: str, version: str, *, body: bool
) -> Response:
    record = find_model(state.store, name, version)
    path: Path = artifact_path(record, state.models_root)
    size = record.manifest.model.size
    etag = _etag(record)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{record.name}-{record.version}.onnx"',
    }
    if_range = request.headers.get("if-range")
    wanted = request.headers.get("range") if if_range in (None, etag) else None
    try:
        byte_range = parse_range(wanted, size)
    except RangeNotSatisfiableError as exc:
        raise HTTPException(
            status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
            detail=f"model {record.name} {record.version}: {exc}",
            headers={"Content-Range": f"bytes */{size}", **headers},
        ) from None
    start, length, code = 0, size, status.HTTP_200_OK
    if byte_range is not None:
        start, length, code = byte_range.start, byte_range.length, status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = byte_range.content_range(size)
    headers["Content-Length"] = str(length)
    if not body:
        return Response(status_code=code, headers=headers, media_type="application/octet-stream")
    try:
        fh = path.open("rb")
    except OSError as exc:
        log.error("model %s %s: cannot open %s: %s", record.name, record.version, path, exc)
        raise ArtifactError(
            f"model {record.name} {record.version} is registered but its artifact cannot be "
            "opened; the hub's operator must check the model directory (the hub log names the "
            "path)",
            name=record.name,
            version=record.version,
            path=str(path),
        ) from None
    return StreamingResponse(
        _read(fh, start, length),
        status_code=code,
        headers=headers,
        media_type="application/octet-stream",
    )


@router.get("/{name}/{version}/artifact", response_class=StreamingResponse, responses=_ARTIFACT_DOC)
def get_artifact(
    access: ReadAccess, request: Request, state: StateDep, name: ModelName, version: ModelVersion
) -> Response:
    """Download ``model.onnx``; send ``Range: bytes=N-`` to resume at byte N."""
    return _artifact(request, state, name, version, body=True)


@router.head("/{name}/{version}/artifact", include_in_schema=False)
def head_artifact(
    access: ReadAccess, request: Request, state: StateDep, name: ModelName, version: ModelVersion
) -> Response:
    return _artifact(request, state, name, version, body=False)
