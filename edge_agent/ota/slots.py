"""The agent's models on disk: slots, the committed model, the download dir and the breadcrumb.

Layout under the state directory (``--state-dir``)::

    models/NAME/VERSION/     a verified package, copied in whole (a slot)
    ota/current.json         the committed model to load at start: {"name", "version"}
    ota/staging/             the download directory (edge_agent.ota.download)
    ota/breadcrumb.json      the update in progress (edge_agent.ota.machine.Breadcrumb)

Without ``ota/current.json`` (or when its slot does not load) the agent runs the
factory model, ``--model DIR``, which is never deleted: it is not under the state
directory. The last known good model (``current.json``'s) stays until a newer
version commits; :meth:`ModelSlots.prune` then deletes every other slot.

Every file is written atomically (temp file, fsync, rename:
:func:`shared.secret_file.write_file`); a slot is copied into a temporary
directory beside it and renamed into place, so a slot that exists is whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge_agent.ota.machine import Breadcrumb
from shared.secret_file import fsync_dir, write_file

__all__ = ["ModelSlots", "SlotName"]

log = logging.getLogger(__name__)

_CURRENT: Final = "current.json"
_BREADCRUMB: Final = "breadcrumb.json"


@dataclass(frozen=True, slots=True)
class SlotName:
    """A model version on disk: its package name and version."""

    name: str
    version: str


def _safe_part(text: str) -> bool:
    """A name or version usable as one path component (the manifest allows no worse, but
    these come from files on disk and a desired message)."""
    return bool(text) and text not in (".", "..") and "/" not in text and "\0" not in text


class ModelSlots:
    """The paths and files of one agent's OTA state (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.models = state_dir / "models"
        self.ota = state_dir / "ota"
        self.staging = self.ota / "staging"

    def prepare(self) -> None:
        """Create the directories; remove a slot copy that a crash left half done."""
        for d in (self.models, self.ota, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        for name_dir in self.models.iterdir():
            if name_dir.is_dir():
                for tmp in name_dir.glob(".*.tmp"):
                    shutil.rmtree(tmp, ignore_errors=True)

    def slot(self, name: str, version: str) -> Path:
        if not (_safe_part(name) and _safe_part(version)):
            raise ValueError(f"model name {name!r} or version {version!r} is not a path component")
        return self.models / name / version

    # -- the committed model --

    def current(self) -> SlotName | None:
        """The committed model ``ota/current.json`` names, or None (none, or unreadable: logged)."""
        path = self.ota / _CURRENT
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            name, version = obj["name"], obj["version"]
            if not (isinstance(name, str) and isinstance(version, str)):
                raise TypeError("name and version must be strings")
            self.slot(name, version)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "OTA: %s is unreadable (%s); starting on the factory model (--model). Delete "
                "the file to silence this",
                path,
                exc,
            )
            return None
        return SlotName(name, version)

    def set_current(self, name: str, version: str) -> None:
        self.slot(name, version)
        body = json.dumps({"name": name, "version": version}).encode() + b"\n"
        write_file(self.ota / _CURRENT, body, mode=0o644)
        fsync_dir(self.ota)

    # -- slots --

    def install(self, package_dir: Path, name: str, version: str) -> Path:
        """Copy the verified package in ``package_dir`` into its slot (replacing one there)."""
        dest = self.slot(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for src in sorted(package_dir.iterdir()):
            if src.is_file() and not src.is_symlink() and not src.name.startswith("."):
                write_file(tmp / src.name, src.read_bytes(), mode=0o644)
        fsync_dir(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest

    def remove(self, name: str, version: str, keep: set[SlotName]) -> None:
        """Delete a slot unless it is one of ``keep`` (the running or last known good model)."""
        if SlotName(name, version) in keep:
            return
        try:
            shutil.rmtree(self.slot(name, version))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("OTA: could not delete slot %s %s: %s", name, version, exc)

    def prune(self, keep: SlotName) -> list[SlotName]:
        """Delete every slot but ``keep`` (after a commit); returns those deleted."""
        gone: list[SlotName] = []
        for name_dir in sorted(self.models.iterdir()):
            if not name_dir.is_dir():
                continue
            for version_dir in sorted(name_dir.iterdir()):
                slot = SlotName(name_dir.name, version_dir.name)
                if slot != keep and version_dir.is_dir():
                    shutil.rmtree(version_dir, ignore_errors=True)
                    gone.append(slot)
            if not any(name_dir.iterdir()):
                name_dir.rmdir()
        return gone

    def clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    # -- the breadcrumb --

    def breadcrumb(self) -> Breadcrumb | None:
        """The breadcrumb on disk, or None (none; or unreadable: logged and deleted)."""
        path = self.ota / _BREADCRUMB
        try:
            return Breadcrumb.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("OTA: %s is unusable (%s); deleted", path, exc)
            path.unlink(missing_ok=True)
            return None

    def write_breadcrumb(self, crumb: Breadcrumb) -> None:
        write_file(self.ota / _BREADCRUMB, json.dumps(crumb.to_dict()).encode(), mode=0o644)
        fsync_dir(self.ota)

    def clear_breadcrumb(self) -> None:
        (self.ota / _BREADCRUMB).unlink(missing_ok=True)
        fsync_dir(self.ota)
