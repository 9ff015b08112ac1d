"""Ed25519 over a manifest's exact bytes: key ids, the signature file, each reason to refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pytest

from shared.reasons import RejectReason
from shared.signing import (
    SigningKey,
    TrustedKey,
    decode_signature_file,
    encode_signature_file,
    key_id,
    load_public_key,
    verify_signature,
)

pytestmark = pytest.mark.timeout(30)

MANIFEST = b'{\n  "name": "bearing-fault",\n  "version": "1.4.0"\n}\n'


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def test_round_trip_names_the_key_that_verified(key: SigningKey) -> None:
    sig = key.sign_manifest(MANIFEST)
    check = verify_signature(MANIFEST, sig, [key.public])
    assert check.ok and check.reason is None
    assert check.key_id == key.key_id
    assert key.key_id in check.detail


def test_key_id_is_sha256_of_the_raw_key_first_16_hex(key: SigningKey) -> None:
    assert key.key_id == hashlib.sha256(key.public.raw).hexdigest()[:16]
    assert key_id(key.public.raw) == key.key_id
    with pytest.raises(ValueError, match="32 bytes"):
        key_id(b"\0" * 31)


def test_signature_file_format(key: SigningKey) -> None:
    sig = key.sign_manifest(MANIFEST)
    obj = json.loads(sig)
    assert sig.endswith(b"\n") and sig == (json.dumps(obj, sort_keys=True) + "\n").encode()
    assert obj["alg"] == "ed25519" and obj["key_id"] == key.key_id
    assert len(base64.b64decode(obj["signature"], validate=True)) == 64
    assert decode_signature_file(sig) == (key.key_id, base64.b64decode(obj["signature"]))


def test_one_changed_byte_of_the_manifest_is_a_bad_signature(key: SigningKey) -> None:
    sig = key.sign_manifest(MANIFEST)
    for i in (0, len(MANIFEST) // 2, len(MANIFEST) - 1):
        tampered = bytearray(MANIFEST)
        tampered[i] ^= 0x01
        check = verify_signature(bytes(tampered), sig, [key.public])
        assert check.reason is RejectReason.BAD_SIGNATURE, i
        assert check.key_id == key.key_id and "does not verify" in check.detail
    # Re-serializing the same JSON is a different file: refused too.
    reserialized = json.dumps(json.loads(MANIFEST)).encode()
    assert verify_signature(reserialized, sig, [key.public]).reason is RejectReason.BAD_SIGNATURE


def test_a_forged_signature_under_a_trusted_key_id_is_a_bad_signature(key: SigningKey) -> None:
    other = SigningKey.generate()
    forged = json.loads(other.sign_manifest(MANIFEST))
    forged["key_id"] = key.key_id  # claims the trusted key
    data = json.dumps(forged).encode()
    assert verify_signature(MANIFEST, data, [key.public]).reason is RejectReason.BAD_SIGNATURE


def test_unknown_key(key: SigningKey) -> None:
    stranger = SigningKey.generate()
    check = verify_signature(MANIFEST, stranger.sign_manifest(MANIFEST), [key.public])
    assert check.reason is RejectReason.UNKNOWN_KEY and not check.ok
    assert check.key_id == stranger.key_id
    assert stranger.key_id in check.detail and key.key_id in check.detail  # says what is trusted
    nobody = verify_signature(MANIFEST, key.sign_manifest(MANIFEST), [])
    assert nobody.reason is RejectReason.UNKNOWN_KEY and "trusted: none" in nobody.detail


def test_rotation_two_trusted_keys_each_verify_their_own(key: SigningKey) -> None:
    new = SigningKey.generate()
    trusted = [key.public, new.public]
    for signer in (key, new):
        check = verify_signature(MANIFEST, signer.sign_manifest(MANIFEST), trusted)
        assert check.ok and check.key_id == signer.key_id
    # The old key retired: what it signed is now from an unknown key.
    retired = verify_signature(MANIFEST, key.sign_manifest(MANIFEST), [new.public])
    assert retired.reason is RejectReason.UNKNOWN_KEY


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"alg": "ed25519", "key_id": "0011223344556677"}',
        b'{"alg": "rsa", "key_id": "0011223344556677", "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": "0011", "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": "0011223344556677", "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": "0011223344556677", "signature": "!!"}',
        b'{"alg": "ed25519", "key_id": "0011223344556677", "signature": 5}',
        b'{"alg": "ed25519", "extra": 1, "key_id": "0011223344556677", "signature": "AAAA"}',
        b" " * 5000,
    ],
)
def test_malformed_signature_files(key: SigningKey, data: bytes) -> None:
    check = verify_signature(MANIFEST, data, [key.public])
    assert check.reason is RejectReason.MALFORMED_SIGNATURE
    assert check.detail.startswith("the signature file ")


def test_public_key_from_pem_or_base64(key: SigningKey) -> None:
    pem = key.public.pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert load_public_key(pem.encode(), "a.pub") == TrustedKey(key.public.raw, "a.pub")
    raw64 = base64.b64encode(key.public.raw) + b"\n"
    assert load_public_key(raw64).key_id == key.key_id
    for bad in (b"", b"hello", base64.b64encode(b"\0" * 31), key.to_pem()):
        with pytest.raises(ValueError, match=r"k\.pub"):
            load_public_key(bad, "k.pub")


def test_private_key_never_shows_itself(key: SigningKey) -> None:
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKey.from_pem(pem).key_id == key.key_id
    body = b"".join(pem.splitlines()[1:-1]).decode()
    for text in (repr(key), str(key)):
        assert body not in text and "PRIVATE" not in text and key.key_id in text
    with pytest.raises(ValueError, match=r"secret\.key") as info:
        SigningKey.from_pem(pem[:-40], "secret.key")
    assert body[:20] not in str(info.value)


def test_encode_refuses_what_it_cannot_frame() -> None:
    with pytest.raises(ValueError):
        encode_signature_file("XYZ", bytes(64))
    with pytest.raises(ValueError):
        encode_signature_file("0011223344556677", bytes(63))


def test_public_key_pem_is_cryptographys_and_reads_without_it(key: SigningKey) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

    public = ed25519.Ed25519PublicKey.from_public_bytes(key.public.raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.public.pem().encode() == pem
    assert load_public_key(pem.replace(b"\n", b"\r\n")).raw == key.public.raw
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match=r"ec\.pub: a public key, but not Ed25519"):
        load_public_key(ec_pem, "ec.pub")
    with pytest.raises(ValueError, match=r"body is not base64"):
        load_public_key(pem.replace(b"MCow", b"M*ow"), "x.pub")


def test_importing_signing_and_reading_keys_does_not_load_cryptography(key: SigningKey) -> None:
    code = (
        "import sys, shared.signing as s\n"
        f"k = s.load_public_key({key.public.pem().encode()!r})\n"
        f"print(k.key_id, s.signature_key_id({key.sign_manifest(MANIFEST)!r}),\n"
        "      any(m.split('.')[0] == 'cryptography' for m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.split() == [key.key_id, key.key_id, "False"], done.stderr
