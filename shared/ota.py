"""The OTA update's states, and the fields of the ``Ota`` report of one transition.

Pure: no I/O. The agent's state machine (:mod:`edge_agent.ota.machine`) moves
between these states; every transition is reported on the ``ota`` topic as a
:class:`shared.messages.Ota` whose ``state`` and ``reason`` are values of
:class:`OtaState` and of :data:`Reason`. The hub reads the same enums.

::

    idle -> downloading -> verifying -> staged -> smoke_testing -> switching -> trial -> committed
                 |             |           |            |              |          |
                 +-------------+-----------+------------+--------------+          +-> reverted
                                  rejected

>>> t = OtaTransition(OtaState.REJECTED, OtaReason.DOWNGRADE, "1.4.0", "1.3.0", "no rollback")
>>> t.ota_fields()["reason"]
'downgrade'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.reasons import OtaReason, RejectReason

__all__ = [
    "IN_PROGRESS",
    "MAX_DETAIL",
    "TERMINAL",
    "OtaState",
    "OtaTransition",
    "Reason",
]

Reason = RejectReason | OtaReason
"""What an ``Ota`` report's ``reason`` holds: a package refusal or an OTA code."""

MAX_DETAIL: Final = 500
"""The most characters of ``detail`` a report carries (the wire takes 512, ``Limits.max_text``);
a longer one is cut, marked with '...'."""


class OtaState(StrEnum):
    """Where an update is. Values are stable: the ``Ota`` report's ``state``."""

    IDLE = "idle"
    """No update has begun since the agent started."""
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    """Size, sha256, signature, agent version, input compatibility, no downgrade."""
    STAGED = "staged"
    """Verified and placed beside the running model (slot B), being loaded."""
    SMOKE_TESTING = "smoke_testing"
    SWITCHING = "switching"
    """Waiting for the boundary between two readings (and for an urgent episode to end)."""
    TRIAL = "trial"
    """The new model scores; its figures are watched against the previous model's."""
    COMMITTED = "committed"
    REJECTED = "rejected"
    """Given up before the switch; the running model never changed."""
    REVERTED = "reverted"
    """Given up after the switch; the previous model is back."""


TERMINAL: Final = frozenset({OtaState.COMMITTED, OtaState.REJECTED, OtaState.REVERTED})
"""States an update ends in; the machine rests there until the next desired version."""

IN_PROGRESS: Final = frozenset(OtaState) - TERMINAL - {OtaState.IDLE}
"""States with a deadline: none may last forever."""


@dataclass(frozen=True, slots=True)
class OtaTransition:
    """One transition, as reported: fill :class:`shared.messages.Ota` with :meth:`ota_fields`.

    ``from_version`` is the version running when the update began, ``to_version``
    the version it aims at, whatever the state (so a ``reverted`` report names
    the model that was tried and the one now back).
    """

    state: OtaState
    reason: Reason
    from_version: str | None
    to_version: str | None
    detail: str = ""

    def ota_fields(self) -> dict[str, str | None]:
        """``state``, ``reason``, ``from_version``, ``to_version``, ``detail`` for
        ``Ota(device, epoch, seq, ts, **fields)``; ``detail`` cut to :data:`MAX_DETAIL`."""
        detail = self.detail
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
        return {
            "state": self.state.value,
            "reason": self.reason.value,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "detail": detail,
        }
