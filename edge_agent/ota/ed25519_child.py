"""The child process of :mod:`edge_agent.ota.sigcheck`: one Ed25519 check with ``cryptography``.

Run as a script (``python -I .../ed25519_child.py``), never imported by the
agent: it imports the standard library and ``cryptography`` only, not
``shared`` or ``edge_agent`` (whose packages load numpy, 15 MB), so the child
costs a bare interpreter and ``cryptography``. The protocol is in
:mod:`edge_agent.ota.sigcheck`: one JSON request on stdin, ``{"verified_by":
index or null}`` on stdout, exit status 0; an unreadable request exits 2.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Final

_MAX_INPUT: Final = 1 << 20
"""The child reads at most this much: a manifest is a few KB (the download caps it)."""


def main() -> int:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - after the request
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    try:
        request = json.loads(sys.stdin.buffer.read(_MAX_INPUT))
        keys = [
            Ed25519PublicKey.from_public_bytes(base64.b64decode(k, validate=True))
            for k in request["keys"]
        ]
        data = base64.b64decode(request["data"], validate=True)
        signature = base64.b64decode(request["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"ed25519_child: unreadable request ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    index = None
    for i, key in enumerate(keys):
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        index = i
        break
    sys.stdout.write(json.dumps({"verified_by": index}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
