"""``/v1/models``: registered model versions, their manifests, signatures and ONNX artifacts.

The manifest comes back byte for byte as the registry stored it: the package's
``manifest.json`` as it was on disk when registered, never re-serialized, so a
``manifest.sig`` over those bytes verifies against the download. The signature
is served from the package directory (``/signature``), only while the
directory's ``manifest.json`` is still those registered bytes; 404 for an
unsigned package. Agents download and verify them to update (OTA); a device's
own credential fetches only its desired version (:func:`device_may_fetch`).

The artifact streams ``model.onnx`` with ``Content-Length``, a strong
``ETag`` (the manifest's sha256) and single-range ``Range`` requests (206, or
416 past the end), so a download that broke off resumes where it stopped;
``If-Range`` with a stale ETag gets the whole file. ``HEAD`` gives the headers
alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from cloud_hub.api.artifacts import ArtifactError, artifact_path, package_file, signature_file
from cloud_hub.api.auth import AdminAccess, ModelReadAccess, ReadAccess, device_may_fetch
from cloud_hub.api.byteranges import RangeNotSatisfiableError, parse_range
from cloud_hub.api.deps import ApiState, StateDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import ModelName, ModelVersion, find_model
from cloud_hub.api.schemas import (
    ModelListOut,
    ModelOut,
    ModelRecordOut,
    RegisteredOut,
    StageChangedOut,
    StageChangeOut,
    StageHistoryOut,
    StageIn,
)
from cloud_hub.registry.register import RegistryError, change_stage, register_package
from cloud_hub.registry.stages import StageError
from cloud_hub.store.base import ModelRecord
from shared.manifest import PackageFile, manifest_file_bytes

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
    **responses(404, 416, 422, 500, 503),
}


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
    access: ModelReadAccess, store: StoreDep, name: ModelName, version: ModelVersion
) -> Response:
    """The manifest of one model version (a device's credential: its desired version only)."""
    record = find_model(store, name, version)
    device_may_fetch(access, store, record.name, record.version)
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
    responses={**_SIGNATURE_DOC, **responses(404, 422, 500, 503)},
)
def get_signature(
    access: ModelReadAccess, state: StateDep, name: ModelName, version: ModelVersion
) -> Response:
    """``manifest.sig`` of one model version: the Ed25519 signature of the manifest's bytes."""
    record = find_model(state.store, name, version)
    device_may_fetch(access, state.store, record.name, record.version)
    data = record.signature
    if data is None:  # a record from before the registry kept signatures
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


def _listed(record: ModelRecord, path: str) -> PackageFile:
    for entry in record.manifest.files:
        if entry.path == path:
            return entry
    if not record.manifest.files and path == record.manifest.model.file:
        m = record.manifest.model  # a manifest from before packages listed their files
        return PackageFile(m.file, m.sha256, m.size)
    listed = ", ".join(f.path for f in record.manifest.files) or record.manifest.model.file
    raise HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"model {record.name} {record.version} has no file {path!r}; its files: {listed}",
    )


def _file_response(
    request: Request, state: StateDep, record: ModelRecord, entry: PackageFile, *, body: bool
) -> Response:
    """``entry`` of ``record``'s package, whole or the one range asked for."""
    if entry.path == record.manifest.model.file:
        path: Path = artifact_path(record, state.models_root)
    else:
        path = package_file(record, state.models_root, entry)
    size = entry.size
    etag = f'"{entry.sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{entry.path}"',
    }
    if_range = request.headers.get("if-range")
    wanted = request.headers.get("range") if if_range in (None, etag) else None
    try:
        byte_range = parse_range(wanted, size)
    except RangeNotSatisfiableError as exc:
        raise HTTPException(
            status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
            detail=f"model {record.name} {record.version} {entry.path}: {exc}",
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
            f"model {record.name} {record.version} is registered but its file {entry.path} "
            "cannot be opened; the hub's operator must check the registry (the hub log names "
            "the path)",
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


def _artifact(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    name: str,
    version: str,
    *,
    body: bool,
) -> Response:
    record = find_model(state.store, name, version)
    device_may_fetch(access, state.store, record.name, record.version)
    response = _file_response(
        request, state, record, _listed(record, record.manifest.model.file), body=body
    )
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{record.name}-{record.version}.onnx"'
    )
    return response


@router.get("/{name}/{version}/artifact", response_class=StreamingResponse, responses=_ARTIFACT_DOC)
def get_artifact(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    name: ModelName,
    version: ModelVersion,
) -> Response:
    """Download ``model.onnx``; send ``Range: bytes=N-`` to resume at byte N."""
    return _artifact(access, request, state, name, version, body=True)


@router.head("/{name}/{version}/artifact", include_in_schema=False)
def head_artifact(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    name: ModelName,
    version: ModelVersion,
) -> Response:
    return _artifact(access, request, state, name, version, body=False)


def _file(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    *,
    name: str,
    version: str,
    path: str,
    body: bool,
) -> Response:
    record = find_model(state.store, name, version)
    device_may_fetch(access, state.store, record.name, record.version)
    return _file_response(request, state, record, _listed(record, path), body=body)


@router.get(
    "/{name}/{version}/files/{path}", response_class=StreamingResponse, responses=_ARTIFACT_DOC
)
def get_file(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    *,
    name: ModelName,
    version: ModelVersion,
    path: str,
) -> Response:
    """One file the manifest lists (``files``); send ``Range: bytes=N-`` to resume at byte N.
    A device's credential fetches its desired version only."""
    return _file(access, request, state, name=name, version=version, path=path, body=True)


@router.head("/{name}/{version}/files/{path}", include_in_schema=False)
def head_file(
    access: ModelReadAccess,
    request: Request,
    state: StateDep,
    *,
    name: ModelName,
    version: ModelVersion,
    path: str,
) -> Response:
    return _file(access, request, state, name=name, version=version, path=path, body=False)


@router.get(
    "/{name}/{version}/record", response_model=ModelRecordOut, responses=responses(404, 422)
)
def get_record(
    access: ReadAccess, store: StoreDep, name: ModelName, version: ModelVersion
) -> ModelRecordOut:
    """One version as the registry holds it: stage, who registered it, lineage, files,
    and every stage change."""
    record = find_model(store, name, version)
    m = record.manifest
    model = ModelOut.from_record(record)
    return ModelRecordOut(
        model=model,
        min_agent_version=m.min_agent_version,
        lineage=model.lineage,
        files=[{"path": f.path, "sha256": f.sha256, "size": f.size} for f in m.files],
        history=[
            StageHistoryOut(
                at=e.at,
                from_stage=None if e.from_stage is None else e.from_stage.value,
                to_stage=e.to_stage.value,
                by=e.by,
                reason=e.reason,
            )
            for e in store.stage_log(name, record.version)
        ],
    )


@router.post(
    "/{name}/{version}/stage",
    response_model=StageChangedOut,
    responses=responses(403, 404, 409, 422),
)
def change_model_stage(
    access: AdminAccess, store: StoreDep, name: ModelName, version: ModelVersion, body: StageIn
) -> StageChangedOut:
    """Move a version to another stage (admin token). Allowed: candidate -> canary,
    production or archived; canary -> production, candidate or archived; production ->
    archived; archived -> candidate. Promoting a version to production archives the
    one that was. A stage pushes nothing to devices."""
    record = find_model(store, name, version)
    try:
        changes = change_stage(
            store, name, record.version, body.stage, reason=body.reason, by="api:admin"
        )
    except (StageError, ValueError) as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    now = store.model(name, record.version)
    assert now is not None
    return StageChangedOut(
        changes=[
            StageChangeOut(
                version=c.version,
                from_stage=c.from_stage.value,
                to_stage=c.to_stage.value,
                reason=c.reason,
            )
            for c in changes
        ],
        model=ModelOut.from_record(now),
    )


def _register_upload(state: ApiState, body: Path, workdir: Path) -> RegisteredOut:
    from cloud_hub.registry.upload import unpack_package_zip  # noqa: PLC0415

    registry = state.registry
    assert registry is not None
    package = unpack_package_zip(body, workdir / "package", state.config.model_upload_max_bytes)
    done = register_package(
        state.store,
        registry.root,
        package,
        trusted=registry.trusted,
        key=None,  # the API never holds the private key: an unsigned upload stays unsigned
        by="api:admin",
        at=time.time(),
        label="the uploaded package",
    )
    return RegisteredOut(new=done.new, model=ModelOut.from_record(done.record))


@router.post(
    "",
    response_model=RegisteredOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": RegisteredOut, "description": "Registered already with this content."},
        **responses(403, 409, 413, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def register_model(
    access: AdminAccess, request: Request, response: Response, state: StateDep
) -> RegisteredOut:
    """Register a model package sent as a zip of its directory (admin token): verified
    (every file; a signature must verify with the hub's key), copied into the
    content-addressed registry and recorded as a candidate. The API never signs: sign
    before sending, or run ``edgeloop-hub models register`` where the key is. 201 for a new
    version; 200 when this content was registered already; 409 for other content under a
    registered version (versions are immutable)."""
    if state.registry is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="this hub takes no package uploads (it was started without a registry)",
        )
    uploads = state.registry.root / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=uploads))
    try:
        body = workdir / "package.zip"
        with body.open("wb") as fh:
            async for chunk in request.stream():
                fh.write(chunk)
        (workdir / "package").mkdir()
        try:
            out = await run_in_threadpool(_register_upload, state, body, workdir)
        except RegistryError as exc:
            code = {"version_exists": status.HTTP_409_CONFLICT, "too_large": 413}.get(
                exc.reason,
                422,  # (starlette renamed the 422 constant; the number is stable)
            )
            # The client knows its package, not where the hub unpacked it: name its
            # files as the package does, never the hub's own paths.
            message = str(exc).replace(f"{workdir / 'package'}{os.sep}", "")
            message = message.replace(str(workdir), "the upload")
            raise HTTPException(
                status_code=code, detail=f"{message} (reason: {exc.reason})"
            ) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not out.new:
        response.status_code = status.HTTP_200_OK
    return out
