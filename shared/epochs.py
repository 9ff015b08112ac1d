"""Which epochs are a live agent's and which are a replayed recording's. Pure.

A live agent's epoch is a counter that starts at the unix time of its first
start and grows by one per restart (``edge_agent.epoch``): about 1.8e9 today,
far below 2**52 for as long as anyone will run this. An agent replaying a
recording (``--source csv``) takes an epoch derived from the recording instead
(``edge_agent.replay_identity``), in ``[REPLAY_EPOCH_MIN, REPLAY_EPOCH_MAX]``:
the same recording replayed again has the same epoch, so the hub's dedupe on
``(device, epoch, seq)`` recognises it. The two ranges never meet, so the hub
can tell a replay from a live start by its epoch alone, without a new field in
the wire contract; and the upper bound keeps every epoch exact in JSON clients
that read numbers as doubles (2**53).

>>> is_replay_epoch(1_764_000_000), is_replay_epoch(REPLAY_EPOCH_MIN)
(False, True)
"""

from __future__ import annotations

from typing import Final

__all__ = ["REPLAY_EPOCH_MAX", "REPLAY_EPOCH_MIN", "is_replay_epoch"]

REPLAY_EPOCH_MIN: Final = 2**52
REPLAY_EPOCH_MAX: Final = 2**53 - 1


def is_replay_epoch(epoch: int) -> bool:
    """Whether ``epoch`` belongs to a replayed recording rather than a live agent start."""
    return REPLAY_EPOCH_MIN <= epoch <= REPLAY_EPOCH_MAX
