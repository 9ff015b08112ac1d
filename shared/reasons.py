"""Reason codes both sides report: why a package is refused, why an OTA step went as it did.

In ``shared/``, so the hub's ``models verify`` and the agent's OTA state
machine (:mod:`edge_agent.ota.machine`) name a
refusal with the same code on the wire and in logs. The values are short
snake_case strings, stable once released: reports and dashboards match on them.

Two enums, with disjoint values (a test holds them apart), because they answer
different questions. :class:`RejectReason` says why a *package* does not
verify: the hub's ``models verify`` uses only it, and every code is a refusal.
:class:`OtaReason` says why an *update* moved from one state to the next on a
device: download, compatibility, smoke test, trial, deadlines, and the happy
codes (``ok``, ``already_running``) that are no refusal at all; folding those
into :class:`RejectReason` would make ``models verify`` offer codes it can
never return. An ``Ota`` report's ``reason`` holds a value of either
(:data:`shared.ota.Reason`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["OtaReason", "RejectReason"]


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


# --- OTA (issue 10): the agent's update state machine. One block, so additions
# for the registry or rollouts can sit beside it without touching it.


class OtaReason(StrEnum):
    """Why an OTA update moved to its state (:class:`shared.ota.OtaState`).

    A refusal while verifying a package is reported with its
    :class:`RejectReason` instead.
    """

    OK = "ok"
    """The step succeeded (downloaded, verified, staged, smoke-tested, switched, committed)."""
    ALREADY_RUNNING = "already_running"
    """The desired version is the one running: nothing to do."""
    IN_PROGRESS = "in_progress"
    """The desired version is the one being updated to: nothing new to do."""
    REFUSED_BEFORE = "refused_before"
    """This package was refused before and may not be retried (yet): nothing to do."""
    DOWNLOAD_FAILED = "download_failed"
    """The download failed after its retries (HTTP error, connection refused or cut)."""
    DOWNLOAD_TIMEOUT = "download_timeout"
    """The download made no progress within its timeout."""
    TOO_LARGE = "too_large"
    """The package is larger than the size limit the desired message sets."""
    NO_SPACE = "no_space"
    """The disk has too little free space for the package."""
    DOWNGRADE = "downgrade"
    """The desired version is older than the running one and the desired message allows no rollback."""
    INCOMPATIBLE_INPUT = "incompatible_input"
    """The model needs a sensor the agent's source does not deliver, or in another unit."""
    VERIFIER_FAILED = "verifier_failed"
    """The signature checker (the agent's child process) could not run or answer: not
    found, killed, timed out. Says nothing about the package (may be retried)."""
    AGENT_TOO_OLD = "agent_too_old"
    """The manifest's ``min_agent_version`` is newer than this agent."""
    LOAD_FAILED = "load_failed"
    """The verified model could not be staged: onnxruntime refused it, or it could not be placed on disk."""
    SMOKE_FAILED = "smoke_failed"
    """The model's scores on the manifest's test vectors differ from the expected ones beyond ``atol``."""
    SMOKE_TOO_SLOW = "smoke_too_slow"
    """The model scores the test vectors right but slower than the latency budget."""
    CRASHED_IN_SMOKE = "crashed_in_smoke"
    """The agent started and found it had stopped while smoke-testing this package."""
    URGENT_ACTIVE = "urgent_active"
    """The switch waited its longest for an urgent episode to end; the running model keeps it."""
    TRIAL_ERRORS = "trial_errors"
    """The new model raised errors while scoring during its trial."""
    TRIAL_NAN = "trial_nan"
    """The new model produced a NaN or infinite score during its trial."""
    TRIAL_LATENCY = "trial_latency"
    """The new model's latency p99 over its trial is too far above the previous model's."""
    TRIAL_URGENT_RATE = "trial_urgent_rate"
    """The new model's urgent-event rate over its trial is too far above the previous model's."""
    CRASHED_IN_TRIAL = "crashed_in_trial"
    """The agent started and found it had stopped while switching to or trying this model."""
    INTERRUPTED = "interrupted"
    """The agent started and found it had stopped before the smoke test (may be retried)."""
    STOPPED = "stopped"
    """The agent was stopped cleanly (a signal, the end of its readings) mid-update; the
    update was abandoned (reverted in its trial) and is tried again at the next start."""
    DEADLINE = "deadline"
    """The state's deadline passed."""
    SUPERSEDED = "superseded"
    """A different desired version arrived mid-update; this update was abandoned."""
