"""The urgent rule the agent applies to each reading: :mod:`shared.urgent`.

It lives in ``shared`` because the hub's batch scoring applies the very same
rule to recorded series (the hub imports nothing of the agent).
"""

from __future__ import annotations

from shared.urgent import Decision, UrgentRule

__all__ = ["Decision", "UrgentRule"]
