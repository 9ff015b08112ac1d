"""Ed25519 signatures over a model manifest's exact bytes: pure, bytes in and out.

DESIGN.md section 4. The hub signs ``manifest.json`` as it lies on disk (never
a re-serialization: one changed byte, even whitespace, fails verification);
devices hold only public keys, a list of them, so a new key can be trusted
before the old one is retired. All cryptography is the ``cryptography``
package's (no hand-written crypto); this module only frames it. No I/O.

The ``cryptography`` package (9 MB resident in the agent, its Rust bindings
alone 7 MB) is imported only by what signs or verifies (:class:`SigningKey`,
:meth:`TrustedKey.verifies`), never at import time: reading a public key or a
signature file does not need it. The agent runs the check in a child
process, through a :data:`Verifier`, so it never loads it.

Rules:

- **Key id**: the first 16 hex digits (64 bits) of the sha256 of the raw
  32-byte Ed25519 public key. It names a key in messages and in the signature
  file; it is a hint for choosing the key, never trusted by itself.
- **Public key**: PEM (``-----BEGIN PUBLIC KEY-----``, SubjectPublicKeyInfo),
  the form ``edgeloop-hub keys init`` prints and writes to ``signing.pub``.
  :func:`load_public_key` also takes the raw 32 bytes in base64 on one line.
  An Ed25519 SubjectPublicKeyInfo has one DER encoding (RFC 8410, section 4):
  the 12 bytes of :data:`_SPKI_PREFIX` (a SEQUENCE holding the algorithm
  OID 1.3.101.112 and a 33-byte BIT STRING) and the 32 raw bytes, so reading
  and writing it is framing, done here without ``cryptography``; any other
  key type has another OID there and is refused.
- **Private key**: PEM, PKCS#8, unencrypted (the file is mode 0600).
- **Signature file** (``manifest.sig``): one UTF-8 JSON object, sorted keys,
  final newline, at most 4096 bytes::

      {"alg": "ed25519", "key_id": "3f2a9c0d1e4b5a67", "signature": "<base64 of 64 bytes>"}

  Exactly these three keys; ``alg`` is ``"ed25519"``; ``key_id`` 16 lowercase
  hex digits; ``signature`` standard base64 (with padding) of the 64-byte
  Ed25519 signature of the manifest's bytes.
- **Verification** (:func:`verify_signature`): a malformed file is
  ``malformed_signature``; a key id that no trusted key has is
  ``unknown_key``; otherwise the signature must verify with the trusted key of
  that id (``bad_signature`` if not). The result names the key id that
  verified. Reason codes: :class:`shared.reasons.RejectReason`. The last
  step, the Ed25519 check itself, is a :data:`Verifier`: in this process by
  default, or another (the agent's child process) that may raise
  :class:`VerifierError` when it cannot say.

>>> key = SigningKey.generate()
>>> sig = key.sign_manifest(b'{"name": "m"}\\n')
>>> verify_signature(b'{"name": "m"}\\n', sig, [key.public]).key_id == key.key_id
True
>>> verify_signature(b'{"name": "m"} \\n', sig, [key.public]).reason
<RejectReason.BAD_SIGNATURE: 'bad_signature'>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shared.reasons import RejectReason

if TYPE_CHECKING:  # imported where used: see the module docstring
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ALG",
    "MAX_SIGNATURE_FILE_BYTES",
    "SignatureCheck",
    "SigningKey",
    "TrustedKey",
    "Verifier",
    "VerifierError",
    "decode_signature_file",
    "encode_signature_file",
    "key_id",
    "load_public_key",
    "signature_key_id",
    "verify_in_process",
    "verify_signature",
]

ALG: Final = "ed25519"
MAX_SIGNATURE_FILE_BYTES: Final = 4096
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_RAW_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo before its 32 raw bytes (RFC 8410)."""
_PEM_BEGIN: Final = b"-----BEGIN PUBLIC KEY-----"
_PEM_END: Final = b"-----END PUBLIC KEY-----"


def key_id(raw_public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key (see the module docstring).

    >>> key_id(bytes(32))
    '66687aadf862bd77'
    """
    if len(raw_public_key) != _RAW_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw_public_key)}")
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key that may sign packages; ``source`` says where it came from (for messages)."""

    raw: bytes
    source: str = ""

    def __post_init__(self) -> None:
        key_id(self.raw)  # checks the length

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def pem(self) -> str:
        """The key as PEM (SubjectPublicKeyInfo), as ``signing.pub`` holds it."""
        body = base64.b64encode(_SPKI_PREFIX + self.raw)  # 60 characters: one line
        return (_PEM_BEGIN + b"\n" + body + b"\n" + _PEM_END + b"\n").decode("ascii")

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's over ``data`` (loads ``cryptography``)."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - module docstring
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def load_public_key(data: bytes, source: str = "") -> TrustedKey:
    """A trusted key from PEM, or from base64 of the raw 32 bytes; ``ValueError`` names ``source``.

    >>> key = TrustedKey(bytes(range(32)))
    >>> load_public_key(key.pem().encode()) == key
    True
    """
    where = source or "the public key"
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        lines = text.splitlines()
        if lines[0].strip() != _PEM_BEGIN or lines[-1].strip() != _PEM_END:
            raise ValueError(
                f"{where}: not a PEM public key (it must start with {_PEM_BEGIN.decode()} and "
                f"end with {_PEM_END.decode()}); give the signing.pub that 'edgeloop-hub keys "
                "init' wrote"
            )
        try:
            der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: not a PEM public key (its body is not base64)") from None
        if len(der) != len(_SPKI_PREFIX) + _RAW_KEY_BYTES or not der.startswith(_SPKI_PREFIX):
            raise ValueError(
                f"{where}: a public key, but not Ed25519 (another algorithm, or not one key); "
                "give the signing.pub that 'edgeloop-hub keys init' wrote"
            )
        return TrustedKey(der[len(_SPKI_PREFIX) :], source)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _RAW_KEY_BYTES:
        raise ValueError(
            f"{where}: neither a PEM public key (-----BEGIN PUBLIC KEY-----) nor the base64 of a "
            "32-byte Ed25519 key; 'edgeloop-hub keys show' prints the hub's"
        )
    return TrustedKey(raw, source)


class SigningKey:
    """An Ed25519 private key. Its material never appears in ``repr`` or ``str``.

    >>> key = SigningKey.generate()
    >>> SigningKey.from_pem(key.to_pem()).key_id == key.key_id
    True
    >>> "PRIVATE" in repr(key)
    False
    """

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = TrustedKey(raw, "this signing key")

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, source: str = "") -> SigningKey:
        """Load a PKCS#8 PEM private key; ``ValueError`` names ``source``, never the content."""
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        where = source or "the signing key"
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(
                f"{where}: not an unencrypted PEM private key; make one with 'edgeloop-hub keys init'"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{where}: not an Ed25519 key; make one with 'edgeloop-hub keys init'")
        return cls(key)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted: for a file of mode 0600, never for a log."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign_manifest(self, manifest_bytes: bytes) -> bytes:
        """The ``manifest.sig`` content for these exact manifest bytes."""
        return encode_signature_file(self.key_id, self._key.sign(manifest_bytes))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def encode_signature_file(kid: str, signature: bytes) -> bytes:
    """The signature file (see the module docstring) for a 64-byte signature."""
    if not _KEY_ID_RE.fullmatch(kid) or len(signature) != _SIGNATURE_BYTES:
        raise ValueError("a signature file needs a 16-hex-digit key id and a 64-byte signature")
    body = {"alg": ALG, "key_id": kid, "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(body, sort_keys=True) + "\n").encode("ascii")


def signature_key_id(data: bytes | None) -> str | None:
    """The key id a signature file names, for display: None for no file,
    ``"unreadable"`` for one that does not decode."""
    if data is None:
        return None
    try:
        return decode_signature_file(data)[0]
    except ValueError:
        return "unreadable"


def decode_signature_file(data: bytes) -> tuple[str, bytes]:
    """``(key_id, signature)`` from a signature file; ``ValueError`` says what is wrong."""
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise ValueError(f"is {len(data)} bytes, over {MAX_SIGNATURE_FILE_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"alg", "key_id", "signature"}:
        raise ValueError("must be a JSON object with exactly 'alg', 'key_id' and 'signature'")
    if obj["alg"] != ALG:
        raise ValueError(f"has alg {obj['alg']!r}; this build verifies {ALG!r} only")
    kid, text = obj["key_id"], obj["signature"]
    if not isinstance(kid, str) or not _KEY_ID_RE.fullmatch(kid):
        raise ValueError("has a key_id that is not 16 lowercase hex digits")
    try:
        signature = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise ValueError("has a signature that is not the base64 of 64 bytes")
    return kid, signature


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """What :func:`verify_signature` found: ``key_id`` that verified (``reason`` None),
    or why not (``key_id`` is then the one the file names, if it could be read)."""

    reason: RejectReason | None
    key_id: str | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.reason is None


Verifier = Callable[[Sequence["TrustedKey"], bytes, bytes], "TrustedKey | None"]
"""``(candidates, data, signature)``: the first candidate key whose Ed25519
signature over ``data`` ``signature`` is, or None. May raise
:class:`VerifierError`."""


class VerifierError(RuntimeError):
    """A :data:`Verifier` could not check the signature at all (its message says why):
    this says nothing about the package."""


def verify_in_process(
    candidates: Sequence[TrustedKey], data: bytes, signature: bytes
) -> TrustedKey | None:
    """The default :data:`Verifier`: ``cryptography`` in this process."""
    return next((k for k in candidates if k.verifies(data, signature)), None)


def verify_signature(
    manifest_bytes: bytes,
    signature_file: bytes,
    trusted: Sequence[TrustedKey],
    verifier: Verifier = verify_in_process,
) -> SignatureCheck:
    """Check a signature file over ``manifest_bytes`` against the ``trusted`` keys.

    ``verifier`` does the Ed25519 check of the keys the file's key id names; its
    :class:`VerifierError` goes to the caller."""
    try:
        kid, signature = decode_signature_file(signature_file)
    except ValueError as exc:
        return SignatureCheck(
            RejectReason.MALFORMED_SIGNATURE,
            None,
            f"the signature file {exc}; sign the package again ('edgeloop-hub models build')",
        )
    candidates = [k for k in trusted if k.key_id == kid]
    if not candidates:
        known = ", ".join(sorted({k.key_id for k in trusted})) or "none"
        return SignatureCheck(
            RejectReason.UNKNOWN_KEY,
            kid,
            f"signed with key id {kid}, which no trusted public key has (trusted: {known}); "
            "trust that key's public key, or sign the package with a trusted key",
        )
    key = verifier(candidates, manifest_bytes, signature)
    if key is not None:
        origin = f" ({key.source})" if key.source else ""
        return SignatureCheck(None, kid, f"signature by key id {kid}{origin} verifies")
    return SignatureCheck(
        RejectReason.BAD_SIGNATURE,
        kid,
        f"the signature by key id {kid} does not verify over manifest.json's bytes: the manifest "
        "changed after it was signed, or the signature was not made by this key",
    )
