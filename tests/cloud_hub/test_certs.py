"""``edgeloop-hub certs``: a private CA whose server certificate real TLS handshakes accept."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from cloud_hub.certs import CertsError, TlsFiles, init_ca, issue_server, parse_host
from cloud_hub.cli import main

pytestmark = pytest.mark.timeout(60)


def _handshake(files: TlsFiles, ca: Path, server_hostname: str) -> str:
    """A TLS handshake on loopback, server with ``files``' certificate, client trusting ``ca``.

    Returns what the server read, once the client is through.
    """
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    got: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(10)
                    got.append(tls.recv(64).decode())
            except (ssl.SSLError, OSError):
                pass  # the client refused us: that is the client's answer to check

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                tls.sendall(b"hello")
        finally:
            thread.join(10)
    return "".join(got)


def test_init_makes_a_ca_and_a_server_certificate_that_clients_verify(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    init_ca(files, ["localhost", "127.0.0.1", "hub.example.internal"])
    for path in (files.ca_key, files.server_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert _handshake(files, files.ca_cert, "localhost") == "hello"
    assert _handshake(files, files.ca_cert, "127.0.0.1") == "hello"


def test_a_client_with_another_ca_or_another_name_refuses_the_server(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "site-a")
    other = TlsFiles(tmp_path / "site-b")
    init_ca(files, ["localhost"])
    init_ca(other, ["localhost"])
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(files, other.ca_cert, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(files, files.ca_cert, "elsewhere.example")


def test_a_ca_is_never_replaced_silently_and_server_reissues_from_it(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    init_ca(files, ["localhost"])
    ca_before = files.ca_cert.read_bytes()
    with pytest.raises(CertsError, match=r"already exists.*--force"):
        init_ca(files, ["localhost"])
    issue_server(files, ["127.0.0.1"])
    assert files.ca_cert.read_bytes() == ca_before
    assert _handshake(files, files.ca_cert, "127.0.0.1") == "hello"
    init_ca(files, ["localhost"], force=True)
    assert files.ca_cert.read_bytes() != ca_before


def test_server_without_a_ca_and_bad_hosts_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match=r"no CA in .*certs init"):
        issue_server(TlsFiles(tmp_path / "none"), ["localhost"])
    for bad in ("bad host", "-lead.example", "a..b", ""):
        with pytest.raises(CertsError, match="neither an IP address nor a DNS name"):
            parse_host(bad)
    assert str(parse_host("::1")) == "::1" and parse_host("Hub.Example.") == "hub.example"


def test_the_command_line_prints_the_files_and_exits_2_on_a_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "hub")
    assert main(["certs", "init", "--data-dir", data, "--host", "localhost"]) == 0
    out = capsys.readouterr().out
    assert "ca.pem" in out and "for localhost" in out and "SHA-256 fingerprint" in out
    assert main(["certs", "init", "--data-dir", data]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["certs", "server", "--data-dir", data, "--host", "no such host!"]) == 2
    assert "neither an IP address nor a DNS name" in capsys.readouterr().err
