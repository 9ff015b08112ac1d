"""The agent's Ed25519 check, in a short-lived child process: the agent never loads ``cryptography``.

Why: the ``cryptography`` package costs an agent 9 MB resident for as long as
it runs (its Rust bindings alone 7 MB), and issue 10 holds the agent to 80 MB
during an update. A signature is checked once per update, so the agent runs
:mod:`edge_agent.ota.ed25519_child` as a script for that check: the child
imports ``cryptography`` and the standard library and nothing else, answers,
and exits. It costs about 20 MB for about 0.05 s (README, "Agent memory with
--trust"), during ``verifying``, before the new model is loaded.

Everything else about the package (its files, their sizes and sha256, which
keys the signature file's key id names) is checked in the agent
(:func:`shared.package_verify.verify_package`); the child only answers which
of the candidate keys, if any, made the signature over the manifest's bytes.

Protocol: one JSON object on the child's stdin, ``{"keys": [base64 of the raw
32-byte keys], "data": base64, "signature": base64}``, and one on its stdout,
``{"verified_by": index or null}``, exit status 0. Anything else is a failure
of the checker, not of the package: :class:`shared.signing.VerifierError`
with what went wrong (not found, could not start, timed out and killed, killed
by a signal, exited with an error, answered something unreadable), which the
OTA runner reports as ``verifier_failed``, an update that may be retried.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from shared.signing import TrustedKey, Verifier, VerifierError

__all__ = ["CHILD_TIMEOUT_S", "child_command", "child_verifier"]

log = logging.getLogger(__name__)

CHILD_TIMEOUT_S: Final = 30.0
"""How long the child may take (it takes about 0.05 s; a loaded device more). Below the
verifying state's own deadline (60 s), so a hung child is named as such."""
_MAX_STDERR: Final = 400
_CHILD: Final = Path(__file__).with_name("ed25519_child.py")


def child_command() -> list[str]:
    """This interpreter, running the child script isolated (``-I``: no ``PYTHON*``
    variables, no user site, neither the working nor the script's directory on
    its path, so it loads the installed ``cryptography`` and nothing of ours)."""
    return [sys.executable, "-I", str(_CHILD)]


def child_verifier(
    command: Sequence[str] | None = None, timeout_s: float = CHILD_TIMEOUT_S
) -> Verifier:
    """A :data:`shared.signing.Verifier` that runs ``command`` (default :func:`child_command`)."""
    argv = list(command) if command is not None else child_command()

    def verify(
        candidates: Sequence[TrustedKey], data: bytes, signature: bytes
    ) -> TrustedKey | None:
        request = {
            "keys": [base64.b64encode(k.raw).decode("ascii") for k in candidates],
            "data": base64.b64encode(data).decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
        index = _run(argv, json.dumps(request).encode("ascii"), timeout_s, len(candidates))
        return None if index is None else candidates[index]

    return verify


def _run(argv: list[str], request: bytes, timeout_s: float, n_keys: int) -> int | None:
    what = f"the signature checker ({' '.join(argv)})"
    t0 = time.monotonic()
    try:
        done = subprocess.run(  # our own interpreter and module, no shell
            argv,
            input=request,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            close_fds=True,
        )
    except FileNotFoundError:
        raise VerifierError(f"{what} was not found; reinstall the agent") from None
    except subprocess.TimeoutExpired:  # run() has killed and reaped it
        raise VerifierError(
            f"{what} did not answer within {timeout_s:g} s and was killed; the device may be "
            "overloaded"
        ) from None
    except OSError as exc:
        raise VerifierError(
            f"{what} could not start ({exc.strerror or exc}); the device may be out of memory "
            "or processes"
        ) from None
    took_ms = (time.monotonic() - t0) * 1000.0
    err = done.stderr.decode("utf-8", "replace").strip()[-_MAX_STDERR:]
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise VerifierError(
            f"{what} was killed by {name} (out of memory?){': ' + err if err else ''}"
        )
    if done.returncode != 0:
        raise VerifierError(
            f"{what} exited with status {done.returncode}{': ' + err if err else ''}"
        )
    try:
        answer = json.loads(done.stdout)
        index = answer["verified_by"]
        if index is not None and not (
            isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n_keys
        ):
            raise ValueError(index)
    except (ValueError, KeyError, TypeError):
        raise VerifierError(
            f"{what} answered {done.stdout[:80]!r}, not {{'verified_by': index or null}}"
        ) from None
    log.info("OTA: signature checked in a child process in %.0f ms", took_ms)
    return None if index is None else int(index)
