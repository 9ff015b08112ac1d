"""Rewriting a broker's account files (password and ACL files) without a half-written moment."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(path: Path, text: str, *, mode: int = 0o600, keep_mode: bool = False) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory,
    fsync'd, then renamed over ``path``; a broker reading it sees the old or the new file.

    The file gets ``mode``; with ``keep_mode`` an existing file keeps its mode and,
    where this process may set them, its owner and group (Mosquitto often reads its
    files as its own user).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if keep_mode:
        with contextlib.suppress(FileNotFoundError):
            old = path.stat()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode if old is None else old.st_mode & 0o7777)
        if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            # Not root: the file becomes ours, as any editor would leave it.
            with contextlib.suppress(PermissionError):
                os.chown(tmp_name, old.st_uid, old.st_gid)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
