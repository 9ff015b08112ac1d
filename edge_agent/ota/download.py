"""Fetch a model package over HTTP(S) into a staging directory, resuming after a cut.

Two calls, standard library only (``http.client``: the agent's memory budget
has no room for an HTTP client package):

- :func:`download_file` fetches one URL into ``dest``. Bytes go to
  ``dest.part``; a cut connection is retried and resumed with
  ``Range: bytes=N-`` (the answer must be 206 with ``Content-Range`` starting
  at N; a 200 means the server ignored the range, so the file restarts from
  byte 0). Only a complete file, of the expected size and sha256, is fsynced
  and renamed to ``dest``: a ``.part`` is never a finished file.
- :func:`fetch_package` fetches ``manifest.json`` (its sha256 must equal the
  desired message's before anything in it is read), ``manifest.sig`` and every
  file the manifest lists, from ``{manifest_url}``, ``{manifest_url}/signature``
  and ``{manifest_url}/files/{path}``. It checks the listed sizes against the
  size limit and the free disk space before fetching any file. It does not
  verify the signature: :func:`shared.package_verify.verify_package` does, on
  the staged directory.

Rules:

- Timeouts: one to connect, one for each read (``DownloadPolicy``); a file's
  attempts and waits together stop at ``deadline_s`` (checked between reads, so
  at most one timeout beyond it).
- Retries: a connection error, a timeout, a cut body, 408, 429 and 5xx are
  retried after a jittered exponential wait (:class:`shared.backoff.Backoff`),
  at most ``attempts`` requests per file, and never past the deadline. Any
  other status (401, 403, 404, 416...) fails at once: asking again would not
  change the answer; so does a 429 or 5xx whose ``Retry-After`` is longer than
  the longest backoff (the hub says so when a registered file is damaged:
  only its operator can fix it), keeping the ``.part``. An error's message
  repeats the answer's JSON ``detail``, cut short. ``sleep``, ``clock`` and ``rng`` are parameters so tests
  run the waits without waiting.
- Sizes: a response that declares, or streams, more than ``max_bytes`` or than
  the expected size stops at once (``too_large``); the transfer never holds
  more than one 64 KiB chunk in memory.
- What stays on disk after a failure: the ``.part`` of a file whose retries
  ran out (a later call resumes it); nothing for a failure that a resume would
  not fix (too large, sha256 mismatch, 416, another refusal, a full disk, a
  TLS certificate that does not verify).
- Staging leftovers: :func:`fetch_package` empties the staging directory at
  start, except the ``.part`` files of the same target (the same manifest
  sha256, recorded in ``.target`` while a fetch is under way and removed when
  the package is complete), so an agent restarted mid-download resumes.
- Credentials: ``headers`` (e.g. ``Authorization``) are sent and never logged
  nor put in an error message. Redirects are not followed (a 3xx fails).

Every failure is a :class:`DownloadError` whose ``reason`` is a
:class:`shared.reasons.OtaReason` (``download_failed``, ``download_timeout``,
``too_large``, ``no_space``) or, when the bytes are not the package the desired
message names, a :class:`shared.reasons.RejectReason` (``sha256_mismatch``,
``size_mismatch``, ``malformed_manifest``).

The agent's OTA worker (:mod:`edge_agent.ota.runner`) calls :func:`fetch_package`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import random
import re
import shutil
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, Protocol

from shared.backoff import Backoff
from shared.errors import ManifestError
from shared.manifest import MANIFEST_FILE, SIGNATURE_FILE, ModelManifest, parse_manifest
from shared.ota import Reason
from shared.reasons import OtaReason, RejectReason
from shared.secret_file import fsync_dir
from shared.signing import MAX_SIGNATURE_FILE_BYTES

__all__ = [
    "PART_SUFFIX",
    "TARGET_FILE",
    "DownloadError",
    "DownloadPolicy",
    "DownloadResult",
    "FetchedPackage",
    "Pacing",
    "download_file",
    "fetch_package",
]

log = logging.getLogger(__name__)

PART_SUFFIX: Final = ".part"
TARGET_FILE: Final = ".target"
"""In the staging directory while a fetch is under way: the manifest sha256 it fetches."""
_CHUNK: Final = 1 << 16
_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
_MAX_ERROR_BODY: Final = 4096
_MAX_ERROR_DETAIL: Final = 300
"""The most of an error answer's ``detail`` a download error repeats (reports carry 500)."""
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)", re.ASCII)


class DownloadError(Exception):
    """A download that failed: ``reason``, the ``url`` (no credentials), the HTTP
    ``status`` when a response said so, and whether trying again may help."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """Timeouts and retries for one file (settings, passed down by the caller)."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    attempts: int = 5
    """Requests per file at most, the first one included."""
    backoff_min_s: int = 1
    backoff_max_s: int = 30
    deadline_s: float = 600.0
    """A file's attempts and waits together, from the first request."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 1 <= self.backoff_min_s <= self.backoff_max_s:
            raise ValueError(
                f"download policy: attempts ({self.attempts}) must be >= 1 and "
                f"1 <= backoff_min_s ({self.backoff_min_s}) <= backoff_max_s ({self.backoff_max_s})"
            )
        if min(self.connect_timeout_s, self.read_timeout_s, self.deadline_s) <= 0:
            raise ValueError("download policy: timeouts and the deadline must be > 0 seconds")


@dataclass(frozen=True, slots=True)
class Pacing:
    """How waiting is done: real by default; tests pass a fake clock and sleep."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True, slots=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    bytes_fetched: int
    """Bytes received over the network by this call (a resumed prefix on disk not counted)."""
    resumes: int
    """Requests answered 206 from a byte offset above 0."""
    attempts: int


@dataclass(frozen=True, slots=True)
class FetchedPackage:
    """A package staged in ``path``: ``manifest.json``, ``manifest.sig`` and every listed file."""

    path: Path
    manifest: ModelManifest
    bytes_fetched: int
    resumes: int


class _DiskUsage(Protocol):
    @property
    def free(self) -> int: ...


class _Url(NamedTuple):
    scheme: str
    host: str
    port: int | None
    target: str


def _split(url: str) -> _Url:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"download URL {url!r} must be an absolute http:// or https:// URL")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Url(parts.scheme, parts.hostname, parts.port, target)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _hash_prefix(part: Path) -> tuple[int, hashlib._Hash]:
    """The size and running sha256 of what ``part`` holds (nothing if absent)."""
    hasher = hashlib.sha256()
    size = 0
    try:
        with part.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                hasher.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return size, hasher


class _Transfer:
    """One file's state across attempts: what ``.part`` holds and its sha256 so far."""

    def __init__(self, url: str, dest: Path, limit: int, expected_size: int | None) -> None:
        self.url = url
        self.part = _part_path(dest)
        self.limit = limit
        self.expected_size = expected_size
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:
            size = 0
        if size > limit or (expected_size is not None and size >= expected_size):
            # Not a prefix of what we want (or complete but never checked): start over.
            self.part.unlink()
        self.have, self.hasher = _hash_prefix(self.part)
        self.fetched = 0
        self.resumes = 0

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.have, self.hasher = 0, hashlib.sha256()

    def fail(
        self,
        reason: Reason,
        message: str,
        status: int | None = None,
        retryable: bool = False,
    ) -> DownloadError:
        if not retryable:
            self.part.unlink(missing_ok=True)
        return DownloadError(
            reason, f"{self.url}: {message}", url=self.url, status=status, retryable=retryable
        )

    def check_total(self, total: int | None) -> None:
        """Refuse a declared total beyond the limit or unlike the expected size."""
        if total is None:
            return
        if total > self.limit:
            raise self.fail(
                OtaReason.TOO_LARGE,
                f"the server declares {total} bytes, over the limit of {self.limit}",
            )
        if self.expected_size is not None and total != self.expected_size:
            raise self.fail(
                RejectReason.SIZE_MISMATCH,
                f"the server declares {total} bytes where the manifest says "
                f"{self.expected_size}: is the hub serving another file under this name?",
            )

    def write(self, fh: BinaryIO, chunk: bytes) -> None:
        if self.have + len(chunk) > self.limit:
            raise self.fail(
                OtaReason.TOO_LARGE,
                f"the server sent more than the limit of {self.limit} bytes; stopped there",
            )
        fh.write(chunk)
        self.hasher.update(chunk)
        self.have += len(chunk)
        self.fetched += len(chunk)


def _connect(
    url: _Url, policy: DownloadPolicy, tls: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(
            url.host,
            url.port,
            timeout=policy.connect_timeout_s,
            context=tls or ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(url.host, url.port, timeout=policy.connect_timeout_s)
    conn.connect()
    if conn.sock is not None:
        conn.sock.settimeout(policy.read_timeout_s)
    return conn


def _content_range_start(header: str | None) -> tuple[int, int | None] | None:
    m = _CONTENT_RANGE.fullmatch((header or "").strip())
    if m is None:
        return None
    return int(m[1]), None if m[3] == "*" else int(m[3])


def _attempt(
    t: _Transfer,
    url: _Url,
    *,
    headers: Mapping[str, str],
    policy: DownloadPolicy,
    deadline: float,
    clock: Callable[[], float],
    tls: ssl.SSLContext | None,
) -> None:
    """One request: append to ``.part`` until the body ends, or raise DownloadError."""
    conn = _connect(url, policy, tls)
    resp: http.client.HTTPResponse | None = None
    try:
        asked = t.have
        sent = {**headers, "Accept-Encoding": "identity"}
        if asked:
            sent["Range"] = f"bytes={asked}-"
        conn.request("GET", url.target, headers=sent)
        resp = conn.getresponse()
        status = resp.status
        if status == 206 and asked:
            start_total = _content_range_start(resp.getheader("Content-Range"))
            if start_total is None or start_total[0] != asked:
                t.restart()
                raise t.fail(
                    OtaReason.DOWNLOAD_FAILED,
                    f"asked for bytes from {asked}, the answer's Content-Range is "
                    f"{resp.getheader('Content-Range')!r}; starting over",
                    status,
                    retryable=True,
                )
            t.check_total(start_total[1])
            t.resumes += 1
        elif status == 200:
            if asked:
                log.info("%s: the server ignored Range; downloading from byte 0", t.url)
                t.restart()
            length = resp.getheader("Content-Length")
            t.check_total(int(length) if length and length.isdigit() else None)
        elif status == 416:
            raise t.fail(
                OtaReason.DOWNLOAD_FAILED,
                f"HTTP 416: the server has no byte {asked} of this file (its Content-Range: "
                f"{resp.getheader('Content-Range')!r}); the partial file was removed",
                status,
            )
        else:
            said = _detail(resp)
            later = _retry_after_s(resp.getheader("Retry-After"))
            if later is not None and later > policy.backoff_max_s:
                # The server says when to ask again, later than this download waits: the
                # update's own retry (retry_after_s) comes back for it. The .part stays.
                raise DownloadError(
                    OtaReason.DOWNLOAD_FAILED,
                    f"{t.url}: HTTP {status} {resp.reason}, the server asks to retry after "
                    f"{later} s{said}",
                    url=t.url,
                    status=status,
                )
            raise t.fail(
                OtaReason.DOWNLOAD_FAILED,
                f"HTTP {status} {resp.reason}{said}"
                + (
                    ": check the device's credential"
                    if status in (401, 403)
                    else ": is the version registered on the hub?"
                    if status == 404
                    else ""
                ),
                status,
                retryable=status in _RETRY_STATUSES,
            )
        with t.part.open("r+b" if t.have else "wb") as fh:
            fh.seek(t.have)
            fh.truncate()
            while chunk := resp.read(_CHUNK):
                t.write(fh, chunk)
                if clock() > deadline:
                    raise t.fail(
                        OtaReason.DOWNLOAD_TIMEOUT,
                        f"still downloading at byte {t.have} when the {policy.deadline_s} s "
                        "deadline passed",
                        retryable=True,
                    )
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        # A response that will close owns the socket: closing the connection alone
        # would leave its file descriptor open.
        if resp is not None:
            resp.close()
        conn.close()


def _detail(resp: http.client.HTTPResponse) -> str:
    """``: DETAIL`` of an error answer's JSON body (the hub's ``detail``), cut short; or ""."""
    try:
        body = resp.read(_MAX_ERROR_BODY)
        detail = json.loads(body).get("detail")
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return ""
    if not isinstance(detail, str) or not detail:
        return ""
    return f" ({detail[:_MAX_ERROR_DETAIL]})"


def _retry_after_s(header: str | None) -> int | None:
    """``Retry-After`` in seconds (its delay-seconds form); None if absent or a date."""
    value = (header or "").strip()
    return int(value) if value.isdigit() and len(value) < 10 else None


def _classify(t: _Transfer, exc: Exception) -> DownloadError:
    """An exception of the network or the disk as a DownloadError: retryable, but for
    a full disk and a certificate that does not verify (asking again would not help)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return t.fail(
            OtaReason.NO_SPACE,
            f"the disk is full writing {t.part} ({exc.strerror}): free space, then retry",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return t.fail(
            OtaReason.DOWNLOAD_FAILED,
            f"the server's TLS certificate does not verify ({exc.verify_message}): check the "
            "hub URL and the CA the agent trusts",
        )
    if isinstance(exc, TimeoutError):
        return t.fail(
            OtaReason.DOWNLOAD_TIMEOUT,
            f"timed out at byte {t.have} ({exc or 'no answer'})",
            retryable=True,
        )
    what = type(exc).__name__
    return t.fail(
        OtaReason.DOWNLOAD_FAILED,
        f"connection failed at byte {t.have} ({what}: {exc})",
        retryable=True,
    )


def download_file(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    expected_size: int | None = None,
    sha256: str | None = None,
    headers: Mapping[str, str] | None = None,
    policy: DownloadPolicy | None = None,
    pacing: Pacing | None = None,
    tls: ssl.SSLContext | None = None,
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (via ``dest.part``, resuming it), or raise :class:`DownloadError`.

    ``max_bytes`` bounds the file whatever the server says; ``expected_size``
    and ``sha256``, when given, must match before ``dest`` appears. ``tls``
    verifies an https server (default: the system's CAs), e.g. one trusting
    the hub's ``ca.pem``.
    """
    policy = policy or DownloadPolicy()
    pacing = pacing or Pacing()
    try:
        target = _split(url)
    except ValueError as exc:
        raise DownloadError(OtaReason.DOWNLOAD_FAILED, str(exc), url=url) from None
    limit = max_bytes if expected_size is None else min(max_bytes, expected_size)
    t = _Transfer(url, dest, limit, expected_size)
    if expected_size is not None and expected_size > max_bytes:
        raise t.fail(OtaReason.TOO_LARGE, f"{expected_size} bytes is over the limit of {max_bytes}")
    backoff = Backoff(policy.backoff_min_s, policy.backoff_max_s, pacing.rng)
    deadline = pacing.clock() + policy.deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            _attempt(
                t,
                target,
                headers=headers or {},
                policy=policy,
                deadline=deadline,
                clock=pacing.clock,
                tls=tls,
            )
        except DownloadError as exc:
            error = exc
        except (OSError, http.client.HTTPException) as exc:
            error = _classify(t, exc)
        else:
            if expected_size is None or t.have == expected_size:
                break
            error = t.fail(
                OtaReason.DOWNLOAD_FAILED,
                f"the body ended at byte {t.have} of {expected_size}",
                retryable=True,
            )
        if not error.retryable:
            raise error
        wait = backoff.next()
        if attempt >= policy.attempts or pacing.clock() + wait > deadline:
            raise DownloadError(
                error.reason,
                f"{error} (gave up after {attempt} attempt(s)"
                + (f"; {t.part.name} keeps {t.have} bytes to resume)" if t.have else ")"),
                url=url,
                status=error.status,
            ) from None
        log.warning("%s; attempt %d of %d in %d s", error, attempt + 1, policy.attempts, wait)
        pacing.sleep(wait)
    digest = t.hasher.hexdigest()
    if sha256 is not None and digest != sha256:
        raise t.fail(
            RejectReason.SHA256_MISMATCH,
            f"the {t.have} bytes have sha256 {digest[:16]}..., expected {sha256[:16]}...; "
            "the partial file was removed",
        )
    os.replace(t.part, dest)
    fsync_dir(dest.parent)
    log.info(
        "%s: %d bytes in %s (%d fetched, %d resume(s))",
        url,
        t.have,
        dest,
        t.fetched,
        t.resumes,
    )
    return DownloadResult(dest, t.have, digest, t.fetched, t.resumes, attempt)


def _clean_staging(staging: Path, manifest_sha256: str) -> None:
    """Empty ``staging``, keeping the ``.part`` files when it was fetching this same target."""
    staging.mkdir(parents=True, exist_ok=True)
    marker = staging / TARGET_FILE
    try:
        same = marker.read_text(encoding="ascii").strip() == manifest_sha256
    except (OSError, UnicodeDecodeError):
        same = False
    for entry in staging.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif not (
            same
            and entry.name.endswith(PART_SUFFIX)
            and entry.is_file()
            and not entry.is_symlink()  # a link could point the writes anywhere
        ):
            entry.unlink()
    marker.write_text(manifest_sha256 + "\n", encoding="ascii")
    fsync_dir(staging)


def fetch_package(
    manifest_url: str,
    staging_dir: Path,
    *,
    expected_manifest_sha256: str,
    size_limit: int,
    headers: Mapping[str, str] | None = None,
    policy: DownloadPolicy | None = None,
    pacing: Pacing | None = None,
    manifest_max_bytes: int = 1 << 20,
    space_margin_bytes: int = 16 << 20,
    disk_usage: Callable[[Path], _DiskUsage] = shutil.disk_usage,
    tls: ssl.SSLContext | None = None,
) -> FetchedPackage:
    """Stage the package at ``manifest_url`` in ``staging_dir`` (see the module docstring).

    ``size_limit`` bounds the total of the listed files' sizes;
    ``space_margin_bytes`` must stay free on the disk beyond them.
    """
    base = manifest_url.rstrip("/")

    def get(
        url: str, name: str, max_bytes: int, size: int | None = None, sha256: str | None = None
    ) -> DownloadResult:
        return download_file(
            url,
            staging_dir / name,
            max_bytes=max_bytes,
            expected_size=size,
            sha256=sha256,
            headers=headers,
            policy=policy,
            pacing=pacing,
            tls=tls,
        )

    _clean_staging(staging_dir, expected_manifest_sha256)
    got = [get(base, MANIFEST_FILE, manifest_max_bytes, sha256=expected_manifest_sha256)]
    mpath = staging_dir / MANIFEST_FILE
    try:
        manifest = parse_manifest(mpath.read_bytes(), mpath)
        if not manifest.files:
            raise ManifestError(f"{mpath} lists no files: the hub must serve a rebuilt package")
    except ManifestError as exc:
        raise DownloadError(RejectReason.MALFORMED_MANIFEST, str(exc), url=base) from None
    total = sum(f.size for f in manifest.files)
    if total > size_limit:
        raise DownloadError(
            OtaReason.TOO_LARGE,
            f"{base}: the package's files total {total} bytes, over the size limit of "
            f"{size_limit} the desired message allows",
            url=base,
        )
    waiting = sum(
        p.stat().st_size
        for p in staging_dir.iterdir()
        if p.name.endswith(PART_SUFFIX) and p.is_file()
    )
    free = disk_usage(staging_dir).free
    if free < total - waiting + space_margin_bytes:
        raise DownloadError(
            OtaReason.NO_SPACE,
            f"{base}: {staging_dir} has {free} bytes free; the package needs "
            f"{total - waiting} more plus a margin of {space_margin_bytes}: free space",
            url=base,
        )
    got.append(get(f"{base}/signature", SIGNATURE_FILE, MAX_SIGNATURE_FILE_BYTES))
    for entry in manifest.files:
        url = f"{base}/files/{urllib.parse.quote(entry.path)}"
        got.append(get(url, entry.path, entry.size, entry.size, entry.sha256))
    (staging_dir / TARGET_FILE).unlink()
    fsync_dir(staging_dir)
    return FetchedPackage(
        staging_dir,
        manifest,
        sum(r.bytes_fetched for r in got),
        sum(r.resumes for r in got),
    )
