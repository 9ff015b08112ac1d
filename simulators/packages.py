"""Model packages made from a built one: a signed variant (another version, edited), and its zip.

For tests and benchmarks (`edgeloop-sim bench ota` registers a new version made so)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, sha256_file
from shared.signing import SigningKey

__all__ = ["variant", "zip_package"]


def variant(
    src: Path,
    dest: Path,
    key: SigningKey,
    version: str,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    model_bytes: bytes | None = None,
) -> Path:
    """A copy of package ``src`` as ``version``, edited, its files listed again, signed."""
    shutil.copytree(src, dest)
    (dest / SIGNATURE_FILE).unlink(missing_ok=True)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["version"] = version
    if model_bytes is not None:
        (dest / manifest["model"]["file"]).write_bytes(model_bytes)
    if edit is not None:
        edit(manifest)
    for entry in [*manifest["files"], manifest["model"]]:
        path = dest / entry.get("path", entry.get("file", ""))
        entry["sha256"], entry["size"] = sha256_file(path), path.stat().st_size
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    (dest / SIGNATURE_FILE).write_bytes(key.sign_manifest((dest / MANIFEST_FILE).read_bytes()))
    return dest


def zip_package(directory: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, path.name)
    return buf.getvalue()
