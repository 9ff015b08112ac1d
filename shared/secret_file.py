"""Files that hold secrets: read only when no one else may read them, written so no one else can.

A token or password on a command line is visible to every local user through
``ps``, and one in a parent's environment leaks to every child it starts. So
edgeloop's programs take secrets from files (or from their own environment).
This is the one place that reads and writes such files:

- :func:`read_secret_file` refuses a file that its group or others may read,
  with the ``chmod`` to run, strips one trailing newline and refuses an empty
  secret;
- :func:`check_private` is the mode check alone (for a TOML file that holds a
  secret among its settings);
- :func:`write_private` creates (or replaces) a file with mode 0600 from the
  start, never readable by others even for a moment;
- :func:`write_file` writes a key or certificate beside its place with the
  given mode from the first byte, syncs it and renames it into place, so a
  reader never sees it half-written.

:func:`mode_problem` is the rule without I/O. Errors are
:class:`~shared.errors.ConfigError`; their messages name the file, never its
content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shared.errors import ConfigError

__all__ = [
    "check_private",
    "fsync_dir",
    "mode_problem",
    "read_secret_file",
    "write_file",
    "write_private",
]

_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def mode_problem(mode: int) -> str | None:
    """What is wrong with a secret file's permission bits, or None if only its owner has access.

    >>> mode_problem(0o100600) is None
    True
    >>> mode_problem(0o100644)
    'mode 0644 lets other users read it'
    >>> mode_problem(0o100640)
    'mode 0640 lets its group read it'
    """
    bits = stat.S_IMODE(mode)
    if bits & stat.S_IRWXO:
        return f"mode {bits:04o} lets other users read it"
    if bits & stat.S_IRWXG:
        return f"mode {bits:04o} lets its group read it"
    return None


def check_private(path: Path, *, what: str, setting: str = "") -> None:
    """Refuse ``path`` (it holds ``what``) unless only its owner may read or write it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{what}: cannot read {path}: {exc.strerror}; check the path"
            + ("" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})")
            + ", or write the secret into it, alone on one line, as a file only you can read "
            "(umask 077, or chmod 600 it)",
            setting=setting,
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}", setting=setting) from None
    problem = mode_problem(mode)
    if problem is not None:
        raise ConfigError(
            f"{what}: {path} holds a secret but its {problem}; run 'chmod 600 {path}' "
            "and start again",
            setting=setting,
        )


def read_secret_file(path: Path, *, what: str, setting: str = "") -> str:
    """The secret in ``path``: its text without one trailing newline.

    Refused (:class:`ConfigError`) when the file is open to its group or others,
    unreadable, not UTF-8, empty, or more than one line.
    """
    check_private(path, what=what, setting=setting)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}", setting=setting) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text", setting=setting) from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text.strip():
        raise ConfigError(
            f"{what}: {path} is empty; write the secret into it (one line)", setting=setting
        )
    if "\n" in text or text != text.strip():
        raise ConfigError(
            f"{what}: {path} must hold the secret alone on one line, without spaces around it",
            setting=setting,
        )
    return text


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # An existing file keeps its old mode through O_CREAT; set it before writing.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path``: beside it first (mode ``mode`` from the first byte), then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a crashed write's leftover
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failed write (a full disk, say) leaves nothing beside ``path``: in a model
        # package a stray file would fail verification as unlisted.
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make the names in ``directory`` durable (after a rename or delete in it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
