"""OTA states and reason codes, and the ``Ota`` report built from a transition."""

from __future__ import annotations

import re

import pytest

from shared.messages import DEFAULT_LIMITS, Ota, decode, encode
from shared.ota import IN_PROGRESS, MAX_DETAIL, TERMINAL, OtaState, OtaTransition
from shared.reasons import OtaReason, RejectReason
from shared.topics import Kind

pytestmark = pytest.mark.timeout(10)


def test_codes_are_stable_short_snake_case_and_the_two_enums_never_share_one() -> None:
    values = [*map(str, OtaState), *map(str, RejectReason), *map(str, OtaReason)]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]{1,31}", v) for v in values)
    assert not {r.value for r in RejectReason} & {r.value for r in OtaReason}
    for name in (
        "ok",
        "already_running",
        "download_failed",
        "download_timeout",
        "too_large",
        "no_space",
        "downgrade",
        "incompatible_input",
        "agent_too_old",
        "verifier_failed",
        "smoke_failed",
        "smoke_too_slow",
        "trial_errors",
        "trial_nan",
        "trial_latency",
        "trial_urgent_rate",
        "crashed_in_trial",
        "deadline",
        "superseded",
    ):
        assert OtaReason(name).value == name


def test_package_codes_kept_their_values() -> None:
    assert RejectReason.BAD_SIGNATURE.value == "bad_signature"
    assert len(RejectReason) == 9


def test_states_split_into_idle_in_progress_and_terminal() -> None:
    assert IN_PROGRESS | TERMINAL | {OtaState.IDLE} == set(OtaState)
    assert not IN_PROGRESS & TERMINAL and OtaState.IDLE not in IN_PROGRESS | TERMINAL


def test_a_transition_fills_an_ota_message_that_round_trips() -> None:
    t = OtaTransition(OtaState.REJECTED, RejectReason.BAD_SIGNATURE, "1.0.0", "1.1.0", "x" * 900)
    fields = t.ota_fields()
    assert DEFAULT_LIMITS.max_text >= MAX_DETAIL
    assert len(fields["detail"] or "") == MAX_DETAIL and (fields["detail"] or "").endswith("...")
    msg = Ota("pi-07", 1, 42, 1700000000.0, **fields)  # type: ignore[arg-type]
    back = decode(Kind.OTA, encode(msg))
    assert isinstance(back, Ota)
    assert (back.state, back.reason, back.from_version, back.to_version) == (
        "rejected",
        "bad_signature",
        "1.0.0",
        "1.1.0",
    )
