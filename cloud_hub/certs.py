"""A small private certificate authority for a site that has none (``edgeloop-hub certs init``).

It makes, under ``DATA_DIR/tls/``:

- ``ca.pem`` and ``ca.key``: a self-signed CA (ECDSA P-256, 10 years). Devices
  get ``ca.pem`` to verify the hub's broker; ``ca.key`` never leaves the hub.
- ``server.pem`` and ``server.key``: a server certificate signed by that CA
  for the host names and addresses devices and operators use to reach the hub
  (825 days, TLS server use only).

Keys are written 0600 and never replaced silently: ``--force`` makes a new CA,
after which every device needs the new ``ca.pem``. ``certs server`` issues a
new server certificate from the existing CA (new host names, or renewal), which
devices accept without any change.

Built on ``cryptography`` (the well-kept binding to OpenSSL) rather than by
running the ``openssl`` command, whose flags differ between versions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import EdgeloopError
from shared.secret_file import write_file

__all__ = [
    "CA_DAYS",
    "SERVER_DAYS",
    "CertsError",
    "TlsFiles",
    "default_hosts",
    "describe",
    "init_ca",
    "issue_server",
    "parse_host",
]

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 825
"""The longest validity common TLS clients accept for a server certificate."""

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class CertsError(EdgeloopError):
    """A certificate cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the server certificate live (``DATA_DIR/tls``)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


def parse_host(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """A host for the certificate: an IP address, or a DNS name (lower-cased)."""
    text = text.strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    if not _HOSTNAME.match(name):
        raise CertsError(
            f"--host {text!r} is neither an IP address nor a DNS name (letters, digits, '-' "
            "and dots, e.g. hub.example.internal or 10.0.0.5)"
        )
    return name


def default_hosts() -> list[str]:
    """Names a hub is reached by when none are given: this host's name, localhost, loopback."""
    hosts = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    seen: list[str] = []
    for host in hosts:
        if host and host not in seen:
            seen.append(host)
    return seen


def init_ca(
    files: TlsFiles, hosts: Sequence[str], *, force: bool = False, now: dt.datetime | None = None
) -> None:
    """Make the CA and a server certificate for ``hosts``; refuse to replace a CA unless ``force``."""
    if files.ca_key.exists() and not force:
        raise CertsError(
            f"a CA already exists in {files.directory}; `certs server` issues a new server "
            "certificate from it, and --force makes a new CA (every device then needs the new "
            "ca.pem)"
        )
    sans = _sans(hosts)  # before anything is written
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgeloop hub CA {now:%Y-%m-%d}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    files.directory.mkdir(parents=True, exist_ok=True)
    _write_key(files.ca_key, key)
    _write_cert(files.ca_cert, cert)
    _issue(files, sans, now)


def issue_server(files: TlsFiles, hosts: Sequence[str], *, now: dt.datetime | None = None) -> None:
    """A new server certificate for ``hosts`` from the existing CA."""
    if not files.ca_key.exists() or not files.ca_cert.exists():
        raise CertsError(
            f"no CA in {files.directory} (ca.pem and ca.key); make one with "
            "`edgeloop-hub certs init`"
        )
    _issue(files, _sans(hosts), now or dt.datetime.now(dt.UTC))


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:

    if not hosts:
        raise CertsError("no host names: give at least one --host (a DNS name or an IP address)")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        parsed = parse_host(host)
        entry: x509.GeneralName = (
            x509.DNSName(parsed) if isinstance(parsed, str) else x509.IPAddress(parsed)
        )
        if entry not in sans:
            sans.append(entry)
    return sans


def _issue(files: TlsFiles, sans: list[x509.GeneralName], now: dt.datetime) -> None:

    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{files.ca_key} is not the EC key `certs init` makes")
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    first = sans[0]
    common = str(first.value) if isinstance(first, (x509.DNSName, x509.IPAddress)) else "hub"
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.server_key, key)
    _write_cert(files.server_cert, cert)


def _write_key(path: Path, key: object) -> None:
    """A private key, PEM, 0600 from its first byte (written beside, then renamed)."""

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file(path, data, 0o600)


def _write_cert(path: Path, cert: object) -> None:

    assert isinstance(cert, x509.Certificate)
    write_file(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def describe(files: TlsFiles) -> str:
    """What ``certs init``/``certs server`` made: the files, the server's names, the CA's fingerprint."""
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [str(n.value) for n in names]
    fingerprint = ca.fingerprint(hashes.SHA256()).hex(":")
    return "\n".join(
        [
            f"CA certificate      {files.ca_cert}  (give it to devices and API clients; "
            "they verify the hub with it)",
            f"CA key              {files.ca_key}  (0600; keep it on the hub, back it up)",
            f"server certificate  {files.server_cert}  for {', '.join(hosts)}, "
            f"valid until {server.not_valid_after_utc:%Y-%m-%d}",
            f"server key          {files.server_key}  (0600)",
            f"CA SHA-256 fingerprint {fingerprint}",
        ]
    )
