"""Why a model package is refused: reason codes both sides report.

One enum, in ``shared/``, so the hub's ``models verify`` and (not yet) the
agent's OTA state machine (issue 10) name a refusal with the same code on the
wire and in logs. The values are short snake_case strings, stable once
released: reports and dashboards match on them. The OTA state machine will add
its own codes here (download, compatibility, smoke test, trial): not yet.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RejectReason"]


class RejectReason(StrEnum):
    """Why a package does not verify (:mod:`shared.package_verify`, :mod:`shared.signing`)."""

    MALFORMED_MANIFEST = "malformed_manifest"
    """``manifest.json`` is missing, not JSON, invalid, or lists no files."""
    MISSING_FILE = "missing_file"
    """A file the manifest lists is not in the package."""
    SIZE_MISMATCH = "size_mismatch"
    """A listed file's size differs from the manifest's."""
    SHA256_MISMATCH = "sha256_mismatch"
    """A listed file's sha256 differs from the manifest's."""
    UNLISTED_FILE = "unlisted_file"
    """The package holds a file the manifest does not list."""
    UNSIGNED = "unsigned"
    """There is no ``manifest.sig``."""
    MALFORMED_SIGNATURE = "malformed_signature"
    """``manifest.sig`` is not a signature file this build reads."""
    UNKNOWN_KEY = "unknown_key"
    """The signature names a key id that no trusted public key has."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify over the manifest's bytes with the trusted key of its id."""
