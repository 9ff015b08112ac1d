"""The stages a registered model version goes through, and the rules between them.

Pure: no I/O. The registry (:mod:`cloud_hub.registry.register`) and the store
apply what :func:`plan_stage_change` decides.

Rules:

1. Every version starts as ``candidate`` when registered (the hub's own default
   build, which devices run from the factory, is registered straight into
   ``production`` when its name has no production version yet).
2. The moves an operator may make are the table :data:`ALLOWED`:

   ========== =====================================
   from       to
   ========== =====================================
   candidate  canary, production, archived
   canary     production, candidate, archived
   production archived
   archived   candidate
   ========== =====================================

   A production version is never demoted to canary or candidate: it is
   replaced (rule 3) or archived. An archived version comes back only as a
   candidate, so it passes through the same steps as a new one.
3. A name has at most one production version: promoting another to
   production archives the one that was, in the same change, with the reason
   "replaced by VERSION".
4. Moving a version to the stage it is in is refused, naming the stage, so a
   script that repeats itself learns it did nothing.

What a stage does not do: it pushes nothing to devices. Desired state and
rollouts (:mod:`cloud_hub.ota`) set what devices run; a stage is the registry's
label for a version, and a rollout neither reads nor changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["ALLOWED", "Stage", "StageChange", "StageError", "parse_stage", "plan_stage_change"]


class Stage(StrEnum):
    CANDIDATE = "candidate"
    CANARY = "canary"
    PRODUCTION = "production"
    ARCHIVED = "archived"


ALLOWED: Final[Mapping[Stage, frozenset[Stage]]] = {
    Stage.CANDIDATE: frozenset({Stage.CANARY, Stage.PRODUCTION, Stage.ARCHIVED}),
    Stage.CANARY: frozenset({Stage.PRODUCTION, Stage.CANDIDATE, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.CANDIDATE}),
}


class StageError(ValueError):
    """A stage change the rules refuse; ``str(exc)`` says why and what to do."""


@dataclass(frozen=True, slots=True)
class StageChange:
    """One version's move: ``version`` of the model goes ``from_stage`` -> ``to_stage``."""

    version: str
    from_stage: Stage
    to_stage: Stage
    reason: str


def parse_stage(text: str) -> Stage:
    """``text`` as a :class:`Stage`, or :class:`StageError` listing the stages."""
    try:
        return Stage(text.strip().lower())
    except ValueError:
        raise StageError(
            f"{text!r} is not a stage; give one of {', '.join(s.value for s in Stage)}"
        ) from None


def plan_stage_change(
    name: str, stages: Mapping[str, Stage], version: str, to: Stage, reason: str
) -> list[StageChange]:
    """The moves that put ``version`` of model ``name`` into stage ``to``.

    ``stages`` holds every registered version of ``name`` with its stage. The
    first change is the one asked for; a second one archives the production
    version that ``to = production`` replaces.

    >>> s = {"1.0.0": Stage.PRODUCTION, "1.1.0": Stage.CANARY}
    >>> [(c.version, c.to_stage.value) for c in plan_stage_change("m", s, "1.1.0",
    ...     Stage.PRODUCTION, "canary held")]
    [('1.1.0', 'production'), ('1.0.0', 'archived')]
    """
    current = stages.get(version)
    if current is None:
        raise StageError(f"model {name} has no version {version}; see 'edgeloop-hub models list'")
    if current is to:
        raise StageError(f"model {name} {version} is already {to.value}: nothing to do")
    if to not in ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current]))
        raise StageError(
            f"model {name} {version} is {current.value}; "
            f"{'an' if current.value[0] in 'aeiou' else 'a'} {current.value} version can go to "
            f"{allowed} only, not {to.value}"
            + (
                " (register it again as a new version, or archive it and promote it back as a "
                "candidate)"
                if current is Stage.PRODUCTION
                else ""
            )
        )
    changes = [StageChange(version, current, to, reason)]
    if to is Stage.PRODUCTION:
        changes += [
            StageChange(v, Stage.PRODUCTION, Stage.ARCHIVED, f"replaced by {version}")
            for v, s in sorted(stages.items())
            if s is Stage.PRODUCTION and v != version
        ]
    return changes
