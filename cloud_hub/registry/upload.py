"""A model package sent as a zip (``POST /v1/models``), unpacked for registration.

The zip holds the package's files, at its top or in one directory (``zip -r
pkg.zip 1.1.0/`` and ``cd 1.1.0 && zip ../pkg.zip *`` both work). It is
refused, before anything is written beside it, when it is not a zip, holds
more than :data:`MAX_MEMBERS` files, a name that is not a plain file name (a
path outside the package, a subdirectory, a hidden file), or more than
``max_bytes`` when unpacked (counted while unpacking, whatever the zip's
headers claim). What it unpacks to is then registered like a directory
(:func:`cloud_hub.registry.register.register_package`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Final

from cloud_hub.registry.register import RegistryError

__all__ = ["MAX_MEMBERS", "unpack_package_zip"]

MAX_MEMBERS: Final = 64
_CHUNK = 1 << 20


def _plain_names(names: list[str]) -> list[str]:
    """The members' names inside the package: a common top directory taken off."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        names = [n.split("/", 1)[1] for n in names]
    for n in names:
        if not n or "/" in n or "\\" in n or n.startswith(".") or n in ("..",):
            raise RegistryError(
                f"the zip holds {n!r}, which is not a plain file name of a package (a package "
                "is flat: manifest.json, manifest.sig and the files it lists)",
                "bad_zip",
            )
    if len(set(names)) != len(names):
        raise RegistryError("the zip holds a file name twice", "bad_zip")
    return names


def unpack_package_zip(zip_path: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack the package zip at ``zip_path`` into the empty directory ``dest``."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise RegistryError(
            "the request body is not a zip file: send the package directory zipped, e.g. "
            "(cd var/models/machine-edge/1.1.0 && zip -q - *) | curl --data-binary @- ...",
            "not_zip",
        ) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise RegistryError("the zip holds no files", "bad_zip")
        if len(members) > MAX_MEMBERS:
            raise RegistryError(
                f"the zip holds {len(members)} files, over the {MAX_MEMBERS} a package may have",
                "bad_zip",
            )
        names = _plain_names([m.filename for m in members])
        total = 0
        try:
            for member, name in zip(members, names, strict=True):
                with archive.open(member) as src, (dest / name).open("xb") as out:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise RegistryError(
                                f"the package unpacks to over {max_bytes} bytes (the hub's "
                                "--model-upload-max-bytes setting)",
                                "too_large",
                            )
                        out.write(chunk)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            # A corrupt member (CRC), an unsupported compression, an encrypted file.
            raise RegistryError(f"the zip cannot be unpacked: {exc}", "bad_zip") from None
    return dest
