"""A retraining pipeline run as recorded: inputs, steps, gates, metrics, decision. Pure.

A run goes through :data:`STEPS` in order; each step is ``pending`` until it
starts (``running``), then ``ok``, ``failed``, ``rejected`` (the gate step
and heavy steps) or ``skipped`` (with why). The run's ``state`` is ``running``
until it ends, and it is the edge model's outcome:

- ``succeeded``: an edge candidate was registered (and, where asked, a canary started);
- ``rejected``: a gate refused the edge candidate; no edge model was registered;
- ``failed``: a step could not be done (no data, a conversion error, the time
  limit, the hub restarted under it); nothing was registered.

The last step, ``heavy``, retrains the heavy partner where the operators'
labels allow it; it runs after a succeeded or a rejected edge part and its
outcome stands on its own: ``ok`` (a heavy candidate registered,
``heavy_candidate``), ``rejected`` (its gate said no) or ``skipped`` (too few
labels, or no production heavy model), with why in its detail and in ``why``.

``decision`` says what came of it and ``why`` says why, in one sentence each.
The record travels as JSON (:meth:`PipelineRun.to_dict`, :meth:`PipelineRun.from_dict`)
between the run's process, the store and the API.

>>> run = new_run("r1", "machine-edge", "admin", PipelineInputs(0.0, 60.0, ("pi-1",), "1.1.0"), 5.0)
>>> [s.name for s in run.steps][:3], run.state
(['assemble', 'train', 'convert'], 'running')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "FINAL_STATES",
    "STEPS",
    "TRIGGERS",
    "GateResult",
    "PipelineInputs",
    "PipelineOptions",
    "PipelineRun",
    "RunState",
    "StepRecord",
    "StepStatus",
    "Trigger",
    "finish",
    "new_run",
    "set_step",
]

STEPS: Final = (
    "assemble",
    "train",
    "convert",
    "quantize",
    "gate",
    "register",
    "canary",
    "heavy",
)
TRIGGERS: Final = ("admin", "schedule", "drift")
Trigger = Literal["admin", "schedule", "drift"]
RunState = Literal["running", "succeeded", "rejected", "failed"]
StepStatus = Literal["pending", "running", "ok", "failed", "rejected", "skipped"]
FINAL_STATES: Final = frozenset({"succeeded", "rejected", "failed"})


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """What one run may be told (``POST /v1/pipeline/runs`` ``options``); every
    field has the hub's setting as its default, filled in when the run starts.

    ``sabotage_labels`` is for tests and ``edgeloop-sim bench loop`` only: that
    share of the training rows (train and validation, never the held-out slice)
    gets the wrong class ``(y + 1) mod classes``, so the candidate is worse on
    purpose and the gate can be seen to stop it; the heavy step's labelled
    training rows are sabotaged the same way."""

    seed: int = 7
    holdout_fraction: float = 0.2
    validation_fraction: float = 0.1
    f1_tolerance: float = 0.01
    min_agreement: float = 0.99
    max_latency_us: float = 5000.0
    max_model_bytes: int = 1_048_576
    sabotage_labels: float = 0.0
    heavy_min_train_labels: int = 200
    """Operator-labelled readings of every class the training part needs before the
    heavy model is retrained (fewer: the heavy step is skipped, saying which class);
    the hub's ``--pipeline-heavy-min-train-labels``."""
    heavy_min_holdout_labels: int = 50
    """The same for the held-out part, which the heavy candidate's gate scores
    (``--pipeline-heavy-min-holdout-labels``)."""

    def check(self) -> None:
        """ValueError naming the option and its range."""
        for name, lo, hi in (
            ("holdout_fraction", 0.05, 0.5),
            ("validation_fraction", 0.0, 0.5),
            ("f1_tolerance", 0.0, 1.0),
            ("min_agreement", 0.0, 1.01),
            ("sabotage_labels", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"option {name}={value!r} is out of range: give {lo} to {hi}")
        if self.holdout_fraction + self.validation_fraction >= 0.8:
            raise ValueError(
                "options holdout_fraction + validation_fraction must leave at least 20 % of "
                f"each device's readings to train on (they are {self.holdout_fraction} and "
                f"{self.validation_fraction})"
            )
        if self.max_latency_us <= 0 or self.max_model_bytes <= 0:
            raise ValueError("options max_latency_us and max_model_bytes must be positive")
        for name in ("heavy_min_train_labels", "heavy_min_holdout_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"option {name}={value!r} must be a whole number, at least 1")


@dataclass(frozen=True, slots=True)
class PipelineInputs:
    """The data a run trains on and the model it must beat."""

    since: float
    until: float
    devices: tuple[str, ...]
    parent: str | None
    """The production version of the edge model when the run started."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    name: str
    status: StepStatus = "pending"
    started_at: float | None = None
    finished_at: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate: what was measured against what, and whether it passed."""

    name: str
    measured: float
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PipelineRun:
    id: str
    model: str
    trigger: Trigger
    reason: str
    """Why it was started (the admin's note, the schedule, the drift alarm)."""
    inputs: PipelineInputs
    options: PipelineOptions
    created_at: float
    state: RunState = "running"
    steps: tuple[StepRecord, ...] = ()
    gates: tuple[GateResult, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    decision: str = ""
    why: str = ""
    candidate: str | None = None
    """The edge version registered (None until then, and for ever when rejected or failed)."""
    heavy_candidate: str | None = None
    """The heavy version the ``heavy`` step registered (None when it did not)."""
    rollout: str | None = None
    finished_at: float | None = None
    owner_pid: int = 0
    """The process that runs it (a hub, or ``edgeloop-hub pipeline run``)."""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def step(self, name: str) -> StepRecord:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"run {self.id} has no step {name!r}; its steps are {list(STEPS)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"]["devices"] = list(self.inputs.devices)
        d["steps"] = [dataclasses.asdict(s) for s in self.steps]
        d["gates"] = [dataclasses.asdict(g) for g in self.gates]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineRun:
        i = d["inputs"]
        return cls(
            id=d["id"],
            model=d["model"],
            trigger=d["trigger"],
            reason=d.get("reason", ""),
            inputs=PipelineInputs(
                float(i["since"]), float(i["until"]), tuple(i["devices"]), i.get("parent")
            ),
            options=PipelineOptions(**d.get("options", {})),
            created_at=float(d["created_at"]),
            state=d["state"],
            steps=tuple(StepRecord(**s) for s in d.get("steps", ())),
            gates=tuple(GateResult(**g) for g in d.get("gates", ())),
            metrics={k: float(v) for k, v in d.get("metrics", {}).items()},
            decision=d.get("decision", ""),
            why=d.get("why", ""),
            candidate=d.get("candidate"),
            heavy_candidate=d.get("heavy_candidate"),
            rollout=d.get("rollout"),
            finished_at=d.get("finished_at"),
            owner_pid=int(d.get("owner_pid", 0)),
        )


def new_run(
    run_id: str,
    model: str,
    trigger: Trigger,
    inputs: PipelineInputs,
    now: float,
    *,
    options: PipelineOptions | None = None,
    reason: str = "",
    owner_pid: int = 0,
) -> PipelineRun:
    """A run about to start: every step pending."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger {trigger!r} is not one of {', '.join(TRIGGERS)}")
    return PipelineRun(
        id=run_id,
        model=model,
        trigger=trigger,
        reason=reason,
        inputs=inputs,
        options=options or PipelineOptions(),
        created_at=now,
        steps=tuple(StepRecord(n) for n in STEPS),
        owner_pid=owner_pid,
    )


def set_step(
    run: PipelineRun, name: str, status: StepStatus, now: float, detail: str | None = None
) -> PipelineRun:
    """``run`` with step ``name`` moved to ``status`` (``running`` stamps its start,
    any other status its end; a step that never ran gets both stamps)."""
    run.step(name)  # KeyError for an unknown step
    steps = []
    for s in run.steps:
        if s.name != name:
            steps.append(s)
            continue
        started = now if status == "running" or s.started_at is None else s.started_at
        steps.append(
            StepRecord(
                name,
                status,
                started,
                None if status == "running" else now,
                s.detail if detail is None else detail,
            )
        )
    return dataclasses.replace(run, steps=tuple(steps))


def finish(run: PipelineRun, state: RunState, decision: str, why: str, now: float) -> PipelineRun:
    """End ``run``: a step still running takes the run's outcome (``failed``, or
    ``rejected`` for the gate), steps never reached are ``skipped``."""
    if state not in FINAL_STATES:
        raise ValueError(f"a run ends succeeded, rejected or failed, not {state!r}")
    steps = []
    for s in run.steps:
        if s.status == "running":
            outcome: StepStatus = "failed" if state != "rejected" else "rejected"
            steps.append(StepRecord(s.name, outcome, s.started_at, now, s.detail or why))
        elif s.status == "pending":
            why_not = s.detail or f"not reached: the run {state}"
            steps.append(StepRecord(s.name, "skipped", None, None, why_not))
        else:
            steps.append(s)
    return dataclasses.replace(
        run, state=state, steps=tuple(steps), decision=decision, why=why, finished_at=now
    )
