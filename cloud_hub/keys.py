"""The hub's package-signing key (``edgeloop-hub keys``) and signing built packages.

Files, in ``KEYS_DIR`` (default ``DATA_DIR/keys``):

- ``signing.key``: the Ed25519 private key, PEM (PKCS#8), mode 0600 from its
  first byte. It is never printed, logged or served; a key file that its group
  or others may read is refused. ``keys init`` never overwrites it.
- ``signing.pub``: its public key, PEM, for devices and for ``models verify
  --trust``.

Rotation: make a new key in another directory (``keys init --keys-dir NEW``),
add its public key to what devices trust *beside* the old one, sign with the
new key (``--signing-key NEW/signing.key``, or move it to ``DATA_DIR/keys``),
and retire the old public key once no device needs it. Signing a package again
with the new key replaces its ``manifest.sig``; the manifest is unchanged.

:func:`sign_package` signs ``manifest.json``'s bytes as they are on disk and
writes ``manifest.sig`` beside it (written aside, then renamed into place).
The key format and the signature file are :mod:`shared.signing`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.errors import ConfigError, EdgeloopError
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE
from shared.secret_file import check_private, write_file
from shared.signing import SigningKey, TrustedKey, load_public_key, verify_signature

__all__ = [
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "KeyFiles",
    "KeysError",
    "default_keys_dir",
    "init_keys",
    "load_signing_key",
    "public_key",
    "read_public_keys",
    "sign_package",
    "sign_packages",
    "signing_key_for",
    "trusted_keys",
]

log = logging.getLogger(__name__)

PRIVATE_FILE: Final = "signing.key"
PUBLIC_FILE: Final = "signing.pub"


class KeysError(EdgeloopError):
    """A signing key cannot be made, read or used; the message says what to do."""


def default_keys_dir(data_dir: Path) -> Path:
    return data_dir / "keys"


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """Where one signing key lives."""

    directory: Path

    @property
    def private(self) -> Path:
        return self.directory / PRIVATE_FILE

    @property
    def public(self) -> Path:
        return self.directory / PUBLIC_FILE


def init_keys(files: KeyFiles) -> TrustedKey:
    """Make a signing key in ``files``; refuse when one exists. Returns its public key."""
    if files.private.exists():
        try:
            existing = f" (key id {public_key(files).key_id})"
        except KeysError:
            existing = ""
        raise KeysError(
            f"a signing key already exists at {files.private}{existing}; keys are never "
            "overwritten. To rotate: 'edgeloop-hub keys init --keys-dir NEW_DIR', let devices "
            "trust NEW_DIR/signing.pub beside the old key, then sign with "
            "--signing-key NEW_DIR/signing.key and retire the old key"
        )
    if files.public.exists():
        raise KeysError(
            f"{files.public} exists without its signing key {files.private.name}: move it "
            "away (it may be another key's public half) and run 'keys init' again"
        )
    files.directory.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    try:
        # O_EXCL: a key made meanwhile by another 'keys init' is never replaced.
        fd = os.open(files.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeysError(
            f"a signing key appeared at {files.private} while this one was made; keys are "
            "never overwritten: use that one"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.to_pem())
        fh.flush()
        os.fsync(fh.fileno())
    write_file(files.public, key.public.pem().encode("ascii"), 0o644)
    log.info("made signing key %s in %s", key.key_id, files.directory)
    return TrustedKey(key.public.raw, str(files.public))


def public_key(files: KeyFiles) -> TrustedKey:
    """The public key of ``files``: ``signing.pub``, else derived from ``signing.key``."""
    if files.public.is_file():
        try:
            return load_public_key(files.public.read_bytes(), str(files.public))
        except (OSError, ValueError) as exc:
            raise KeysError(str(exc)) from None
    if files.private.is_file():
        return TrustedKey(load_signing_key(files.private).public.raw, str(files.private))
    raise KeysError(
        f"no signing key in {files.directory}; make one with "
        f"'edgeloop-hub keys init --keys-dir {files.directory}'"
    )


def load_signing_key(path: Path) -> SigningKey:
    """The private key in ``path``, refused when others may read it (the message never holds it)."""
    try:
        check_private(path, what="the package signing key", setting="signing_key")
    except ConfigError as exc:
        raise KeysError(str(exc)) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeysError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        return SigningKey.from_pem(data, str(path))
    except ValueError as exc:
        raise KeysError(str(exc)) from None


def signing_key_for(explicit: Path | None, data_dir: Path) -> SigningKey | None:
    """The key builds sign with: ``explicit`` (``--signing-key``; it must exist), else
    ``DATA_DIR/keys/signing.key`` when it exists, else None (packages stay unsigned)."""
    if explicit is not None:
        if not explicit.is_file():
            raise KeysError(
                f"--signing-key {explicit} does not exist; make a key with 'edgeloop-hub keys "
                f"init --keys-dir DIR' and give DIR/{PRIVATE_FILE}"
            )
        return load_signing_key(explicit)
    default = KeyFiles(default_keys_dir(data_dir)).private
    if default.exists():
        return load_signing_key(default)
    log.info("no signing key at %s: packages stay unsigned ('edgeloop-hub keys init')", default)
    return None


def sign_package(package: Path, key: SigningKey) -> str:
    """Sign ``package/manifest.json`` as it is on disk; returns a line saying what was done.

    A ``manifest.sig`` that already verifies with ``key`` is kept; any other is replaced.
    """
    try:
        data = (package / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise KeysError(
            f"cannot sign {package}: its {MANIFEST_FILE} cannot be read ({exc.strerror})"
        ) from None
    sig_path = package / SIGNATURE_FILE
    if sig_path.is_file():
        old = verify_signature(data, sig_path.read_bytes(), [key.public])
        if old.ok:
            return f"{package}: already signed by key id {key.key_id}"
        log.info("%s: replacing its signature (%s)", package, old.detail)
    write_file(sig_path, key.sign_manifest(data), 0o644)
    log.info("%s: signed by key id %s", package, key.key_id)
    return f"{package}: signed by key id {key.key_id} ({SIGNATURE_FILE})"


def sign_packages(explicit: Path | None, data_dir: Path, packages: list[Path]) -> list[str]:
    """Sign freshly built ``packages`` with :func:`signing_key_for`'s key, if any;
    returns a line per package (or one saying they stay unsigned)."""
    key = signing_key_for(explicit, data_dir)
    if key is None:
        where = KeyFiles(default_keys_dir(data_dir)).private
        return [
            f"packages not signed: no signing key at {where} (make one with 'edgeloop-hub keys "
            "init', or give --signing-key FILE)"
        ]
    return [sign_package(p, key) for p in packages]


def read_public_keys(paths: Sequence[Path], option: str = "--trust") -> list[TrustedKey]:
    """The public keys in ``paths`` (PEM, as ``signing.pub``); :class:`KeysError` names a bad one."""
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path.read_bytes(), str(path)))
        except OSError as exc:
            raise KeysError(f"{option} {path}: cannot read it ({exc.strerror})") from None
        except ValueError as exc:
            raise KeysError(f"{option} {exc}") from None
    return keys


def trusted_keys(data_dir: Path, extra: Sequence[Path] = ()) -> list[TrustedKey]:
    """What the hub trusts: its own public key (when it has a key) and the ``extra`` ones."""
    files = KeyFiles(default_keys_dir(data_dir))
    own = [public_key(files)] if files.public.is_file() or files.private.is_file() else []
    return own + read_public_keys(extra)
