"""Reading a baseline file (:mod:`shared.baseline`'s file form): the agent's
``--baseline FILE`` and ``edgeloop-hub batch score --baseline FILE``.

The I/O half of :mod:`shared.baseline`, which stays pure.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.baseline import Baseline, BaselineError

__all__ = ["read_baseline"]


def read_baseline(path: Path, device: str = "DEVICE") -> Baseline:
    """The baseline in ``path``, validated (:meth:`Baseline.from_dict`) but not yet
    checked against a device or model; :class:`BaselineError` names the file
    (and the field). ``device`` only words the advice of an unreadable file."""
    where = f"baseline file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(
            f"{where} cannot be read ({exc}); give the file GET /v1/devices/{device}/baseline "
            "or 'edgeloop-hub devices baseline' wrote",
        ) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"{where} is not valid JSON ({exc})") from None
    return Baseline.from_dict(obj, where)
