"""Message types and their strict JSON codec (DESIGN.md section 3).

Two properties carry the suite: every valid message survives ``decode(encode(m))``
exactly, and no payload, however broken, makes :func:`decode` raise anything but
:class:`DecodeError` with a stable reason slug and, for a field problem, the
field's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.errors import ContractError, DecodeError, FieldError
from shared.messages import (
    DEFAULT_LIMITS,
    SCHEMA_VERSION,
    Ack,
    Desired,
    Event,
    Health,
    Limits,
    Message,
    Ota,
    Status,
    Telemetry,
    decode,
    encode,
)
from shared.messages import decode_as as decode_as_
from shared.topics import Kind

pytestmark = pytest.mark.timeout(30)

SLUGS = frozenset(
    {
        "not_json",
        "not_utf8",
        "not_object",
        "too_large",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "not_finite",
        "too_long",
        "bad_value",
        "length_mismatch",
        "wrong_shape",
        "batch_too_large",
        "unknown_version",
        "bad_device_id",
    }
)
# No example database: the suite writes nothing outside tmp_path.
FAST = settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
INT64_MAX = 2**63 - 1

# --------------------------------------------------------------------------- strategies

devices = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
counters64 = st.integers(0, INT64_MAX)
texts = st.text(max_size=40)
long_texts = st.one_of(texts, st.text(min_size=500, max_size=512))
non_negative = st.floats(min_value=0.0, max_value=1e300, allow_nan=False)
any_finite = st.floats(allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)

statuses = st.builds(
    Status,
    device=devices,
    epoch=counters64,
    seq=counters64,
    state=st.sampled_from(["online", "offline"]),
    agent_version=long_texts,
    model_version=texts,
    ts=non_negative,
    model=texts,
)


@st.composite
def telemetries(draw: st.DrawFn) -> Telemetry:
    n = draw(st.integers(1, 50))
    f = draw(st.integers(1, 40))
    c = draw(st.integers(1, 5))
    return Telemetry(
        device=draw(devices),
        epoch=draw(counters64),
        seq=draw(counters64),
        model_version=draw(texts),
        ts=draw(arrays(np.float64, n, elements=any_finite)),
        features=draw(arrays(np.float32, (n, f), elements=f32)),
        scores=draw(arrays(np.float32, (n, c), elements=f32)),
        model=draw(texts),
    )


events = st.builds(
    Event,
    device=devices,
    epoch=counters64,
    seq=counters64,
    ts=non_negative,
    model_version=texts,
    rule=st.sampled_from(["score", "hard_limit"]),
    score=unit,
    sensor=st.none() | texts,
    value=st.none() | any_finite,
    action=texts,
    action_ok=st.booleans(),
    detail=long_texts,
)
_counter_maps = st.dictionaries(st.text(max_size=30), counters64, max_size=8)
healths = st.builds(
    Health,
    device=devices,
    epoch=counters64,
    seq=counters64,
    ts=non_negative,
    model=texts,
    model_version=texts,
    uptime_s=non_negative,
    readings=counters64,
    latency_p50_us=non_negative,
    latency_p99_us=non_negative,
    cpu_pct=non_negative,
    rss_mb=non_negative,
    outbox_depth=counters64,
    acked_seq=st.integers(-1, INT64_MAX),
    dropped=_counter_maps,
    invalid=_counter_maps,
    baseline=st.none() | texts,
)
otas = st.builds(
    Ota,
    device=devices,
    epoch=counters64,
    seq=counters64,
    ts=non_negative,
    state=texts,
    reason=texts,
    from_version=st.none() | texts,
    to_version=st.none() | texts,
    detail=long_texts,
)
desireds = st.builds(
    Desired,
    device=devices,
    ts=non_negative,
    model_name=texts,
    model_version=texts,
    manifest_url=texts,
    manifest_sha256=texts,
    rollout=texts,
    allow_downgrade=st.booleans(),
    size=st.integers(0, 2**40),
)
acks = st.builds(Ack, device=devices, epoch=counters64, seq=counters64)

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Status: statuses,
    Telemetry: telemetries(),
    Event: events,
    Health: healths,
    Ota: otas,
    Desired: desireds,
    Ack: acks,
}
messages = st.one_of(*STRATEGIES.values())

# One fixed, valid example of every type: the base of the mutation tests.
EXAMPLES: dict[type, Message] = {
    Status: Status("pi-07", 3, 41, "online", "0.1.0", "1.4.0", 1_700_000_000.5, "rig-edge"),
    Telemetry: Telemetry(
        "pi-07",
        3,
        42,
        "1.4.0",
        np.array([1.0, 2.0, 3.0]),
        np.arange(12, dtype=np.float32).reshape(3, 4) / np.float32(3),
        np.array([[0.9, 0.1], [0.5, 0.5], [0.25, 0.75]], dtype=np.float32),
        "rig-edge",
    ),
    Event: Event(
        "pi-07",
        3,
        43,
        1_700_000_001.0,
        "1.4.0",
        "hard_limit",
        0.97,
        "temperature",
        120.5,
        "stop_motor",
        True,
        "temperature above 110 degC",
    ),
    Health: Health(
        "pi-07",
        3,
        43,
        1_700_000_002.0,
        "rig-edge",
        "1.4.0",
        3600.0,
        36000,
        41.0,
        97.5,
        12.5,
        61.0,
        4,
        40,
        {"outbox_full": 2},
        {"sensor_nan": 7},
        "2026-11-26T20:00:00Z",
    ),
    Ota: Ota("pi-07", 3, 44, 1_700_000_003.0, "staged", "smoke_test_passed", "1.4.0", "1.5.0", ""),
    Desired: Desired(
        "pi-07",
        1_700_000_004.0,
        "bearing",
        "1.5.0",
        "/v1/models/bearing/1.5.0",
        "ab" * 32,
        "canary-1",
        False,
        123_456,
    ),
    Ack: Ack("pi-07", 3, 44),
}


def exact_equal(a: Message, b: Message) -> bool:
    """Equality that also tells -0.0 from 0.0 and compares array bits and dtypes."""
    if not isinstance(a, Telemetry):
        return a == b and type(a) is type(b)
    assert isinstance(b, Telemetry)
    return (
        a == b
        and b.ts.dtype == np.float64
        and b.features.dtype == np.float32
        and b.scores.dtype == np.float32
        and all(
            x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))
            for x, y in (
                (a.ts.astype(np.float64), b.ts),
                (a.features.astype(np.float32), b.features),
                (a.scores.astype(np.float32), b.scores),
            )
        )
    )


def body_of(msg: Message) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(encode(msg))
    return body


def payload_of(body: dict[str, Any]) -> bytes:
    """JSON text of ``body``; NaN and inf become the NaN/Infinity literals, as a careless
    encoder would write them, and the marker ``"__1e999__"`` a number literal that parses
    to inf."""
    return json.dumps(body, allow_nan=True).replace('"__1e999__"', "1e999").encode()


def decode_garbage(
    kind: Kind, payload: bytes, limits: Limits = DEFAULT_LIMITS
) -> Message | DecodeError:
    """Decode; any exception but DecodeError escapes and fails the test."""
    try:
        return decode(kind, payload, limits)
    except DecodeError as exc:
        assert exc.reason in SLUGS, exc.reason
        assert isinstance(exc, ContractError)
        assert str(exc)  # a message for the dead-letter table
        if isinstance(exc, FieldError):
            assert isinstance(exc.field, str) and exc.field
        return exc


def expect_field_error(
    kind: Kind, payload: bytes, field: str, reason: str, limits: Limits = DEFAULT_LIMITS
) -> FieldError:
    with pytest.raises(FieldError) as info:
        decode(kind, payload, limits)
    assert (info.value.field, info.value.reason) == (field, reason), str(info.value)
    return info.value


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_example_round_trip(cls: type) -> None:
    msg = EXAMPLES[cls]
    assert exact_equal(msg, decode(msg.kind, encode(msg)))
    assert exact_equal(msg, decode_as_(cls, encode(msg)))


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_round_trip_property(cls: type) -> None:
    @given(STRATEGIES[cls])
    @settings(FAST, max_examples=80 if cls is Telemetry else 50)
    def check(msg: Message) -> None:
        payload = encode(msg)
        assert isinstance(payload, bytes)
        back = decode(msg.kind, payload)
        assert exact_equal(msg, back), (msg, back)
        assert encode(back) == payload  # encoding is deterministic

    check()


@given(msg=messages)
@FAST
def test_payload_is_readable_json_with_the_header(msg: Message) -> None:
    obj = json.loads(encode(msg).decode("utf-8"))
    assert obj["v"] == SCHEMA_VERSION
    assert obj["device"] == msg.device
    if not isinstance(msg, Desired):  # hub -> edge, no stream position
        assert (obj["epoch"], obj["seq"]) == (msg.epoch, msg.seq)


def test_telemetry_payload_is_columnar_and_float32_is_shortest() -> None:
    t = Telemetry(
        "pi-07",
        1,
        2,
        "1.0.0",
        np.array([0.5]),
        np.array([[0.1, 1e-45]], dtype=np.float32),
        np.array([[np.float32(1) / np.float32(3)]], dtype=np.float32),
        "rig-edge",
    )
    text = encode(t).decode()
    assert '"features":[[0.1,1e-45]]' in text  # not 0.10000000149011612
    assert '"scores":[[0.33333334]]' in text
    obj = json.loads(text)
    assert list(obj) == [
        *("v", "device", "epoch", "seq", "model", "model_version"),
        *("ts", "features", "scores"),
    ]
    assert len(t) == 1


@pytest.mark.parametrize(
    ("value", "name"),
    [(math.nan, "features"), (math.inf, "features"), (-math.inf, "scores"), (math.nan, "ts")],
)
def test_encoding_non_finite_telemetry_raises_value_error(value: float, name: str) -> None:
    t = EXAMPLES[Telemetry]
    assert isinstance(t, Telemetry)
    arr = getattr(t, name).copy()
    arr.flat[1] = value
    with pytest.raises(ValueError, match=name):
        encode(replace(t, **{name: arr}))


def test_encoding_float64_features_beyond_float32_range_raises() -> None:
    t = EXAMPLES[Telemetry]
    assert isinstance(t, Telemetry)
    big = t.features.astype(np.float64)
    big[0, 0] = 1e39  # finite as float64, inf as the float32 the wire carries
    with pytest.raises(ValueError, match="features"):
        encode(replace(t, features=big))


@pytest.mark.parametrize(
    ("cls", "key"),
    [(Status, "ts"), (Event, "score"), (Event, "value"), (Health, "cpu_pct"), (Desired, "ts")],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_encoding_non_finite_scalars_raises_value_error(cls: type, key: str, value: float) -> None:
    with pytest.raises(ValueError):
        encode(replace(EXAMPLES[cls], **{key: value}))


def test_telemetry_rows_must_agree() -> None:
    with pytest.raises(ValueError, match="rows"):
        Telemetry(
            "d",
            *(0, 0, "m"),
            *(np.zeros(3), np.zeros((2, 4), np.float32), np.zeros((3, 1), np.float32), "e"),
        )
    with pytest.raises(ValueError, match="rows"):
        Telemetry(
            "d",
            *(0, 0, "m"),
            *(np.zeros(3), np.zeros((3, 4), np.float32), np.zeros((4, 1), np.float32), "e"),
        )


def test_telemetry_is_not_hashable_and_compares_by_value() -> None:
    t = EXAMPLES[Telemetry]
    with pytest.raises(TypeError):
        hash(t)
    assert t != EXAMPLES[Ack]
    assert t == decode(Kind.TELEMETRY, encode(t))
    assert isinstance(t, Telemetry)
    other = replace(t, features=t.features + np.float32(1))
    assert t != other


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize("kind", list(Kind))
def test_arbitrary_bytes(kind: Kind) -> None:
    @given(st.binary(max_size=300))
    @settings(FAST, max_examples=60)
    def check(payload: bytes) -> None:
        decode_garbage(kind, payload)

    check()


_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**1400)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    _json_leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@given(kind=st.sampled_from(Kind), value=json_values)
@settings(FAST, max_examples=150)
def test_arbitrary_json(kind: Kind, value: Any) -> None:
    out = decode_garbage(kind, json.dumps(value).encode())
    if not isinstance(value, dict):
        assert isinstance(out, DecodeError)
        if not _has_non_finite(value):
            assert out.reason == "not_object"


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(map(_has_non_finite, value))
    if isinstance(value, dict):
        return any(map(_has_non_finite, value.values()))
    return False


@given(msg=messages, data=st.data())
@FAST
def test_truncated_and_corrupted_payloads(msg: Message, data: st.DataObject) -> None:
    payload = encode(msg)
    cut = data.draw(st.integers(0, len(payload) - 1))
    out = decode_garbage(msg.kind, payload[:cut])
    assert isinstance(out, DecodeError)
    pos = data.draw(st.integers(0, len(payload) - 1))
    byte = data.draw(st.integers(0, 255))
    decode_garbage(msg.kind, payload[:pos] + bytes([byte]) + payload[pos + 1 :])


@given(msg=messages, value=json_values, data=st.data())
@FAST
def test_one_field_replaced_by_arbitrary_json(
    msg: Message, value: Any, data: st.DataObject
) -> None:
    body = body_of(msg)
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = value
    out = decode_garbage(msg.kind, payload_of(body))
    if isinstance(out, FieldError):
        if isinstance(msg, Telemetry) and name in ("ts", "features", "scores"):
            # a valid array of another length is blamed on the column that disagrees
            assert out.field in ("ts", "features", "scores")
        else:
            assert out.field == name
    elif isinstance(out, DecodeError):
        assert out.reason == "not_finite"  # NaN / Infinity literal somewhere in value
        assert _has_non_finite(value)


@given(msg=messages, data=st.data())
@FAST
def test_one_field_removed(msg: Message, data: st.DataObject) -> None:
    body = body_of(msg)
    name = data.draw(st.sampled_from(sorted(body)))
    del body[name]
    out = decode_garbage(msg.kind, payload_of(body))
    if name in _OPTIONAL.get(type(msg), ()):
        assert not isinstance(out, DecodeError)
    else:
        assert isinstance(out, FieldError)
        assert (out.field, out.reason) == (name, "missing_field")


# --------------------------------------------------------------------------- mutation table

MISSING = object()


class Int:
    def __init__(self, lo: int = 0) -> None:
        self.lo = lo

    def expect(self, v: Any) -> str | None:
        if type(v) is float and v.is_integer() and abs(v) >= 2**63:
            # The parser reads integer literals beyond 64 bits as floats, so a
            # float this large in an integer field is out of range, not mistyped.
            return "out_of_range"
        if type(v) is not int:
            return "wrong_type"
        return None if self.lo <= v <= INT64_MAX else "out_of_range"


class Version(Int):
    def expect(self, v: Any) -> str | None:
        return super().expect(v) or (None if v == SCHEMA_VERSION else "unknown_version")


class Float:
    def __init__(self, lo: float = -math.inf, hi: float = math.inf, optional: bool = False) -> None:
        self.lo, self.hi, self.optional = lo, hi, optional

    def expect(self, v: Any) -> str | None:
        if v is None and self.optional:
            return None
        if type(v) not in (int, float):
            return "wrong_type"
        try:
            f = float(v)
        except OverflowError:
            return "out_of_range"
        if not math.isfinite(f):
            return "not_finite"
        return None if self.lo <= f <= self.hi else "out_of_range"


class Str:
    def __init__(
        self, choices: frozenset[str] | None = None, optional: bool = False, device: bool = False
    ) -> None:
        self.choices, self.optional, self.device = choices, optional, device

    def expect(self, v: Any) -> str | None:
        if v is None and self.optional:
            return None
        if type(v) is not str:
            return "wrong_type"
        if len(v) > Limits().max_text:
            return "too_long"
        if self.choices is not None and v not in self.choices:
            return "bad_value"
        if self.device and (not v or not v[0].isascii() or not v[0].isalnum()):
            return "bad_device_id"
        return None


class Bool:
    def expect(self, v: Any) -> str | None:
        return None if type(v) is bool else "wrong_type"


class Counters:
    def expect(self, v: Any) -> str | None:
        if not isinstance(v, dict):
            return "wrong_type"
        if any(type(c) is not int or c < 0 for c in v.values()):
            return "wrong_type"
        return "out_of_range" if any(c > INT64_MAX for c in v.values()) else None


class Array:
    def __init__(self, ndim: int) -> None:
        self.ndim = ndim

    def expect(self, v: Any) -> str | tuple[str, str] | None:
        # Every table value is a bad array here; test_telemetry_arrays covers the rest.
        if json.dumps(v) == "[1.0]":
            # one reading where the example has three: the features column disagrees
            return ("features", "length_mismatch") if self.ndim == 1 else "wrong_shape"
        return "wrong_type"


_HEAD = {"v": Version(), "device": Str(device=True), "epoch": Int(), "seq": Int()}
FIELDS: dict[type, dict[str, Any]] = {
    Status: {
        **_HEAD,
        "state": Str(frozenset({"online", "offline"})),
        "agent_version": Str(),
        "model_version": Str(),
        "ts": Float(0.0),
        "model": Str(),
    },
    Telemetry: {
        **_HEAD,
        "model": Str(),
        "model_version": Str(),
        "ts": Array(1),
        "features": Array(2),
        "scores": Array(2),
    },
    Event: {
        **_HEAD,
        "ts": Float(0.0),
        "model_version": Str(),
        "rule": Str(frozenset({"score", "hard_limit"})),
        "score": Float(0.0, 1.0),
        "sensor": Str(optional=True),
        "value": Float(optional=True),
        "action": Str(),
        "action_ok": Bool(),
        "detail": Str(),
    },
    Health: {
        **_HEAD,
        "ts": Float(0.0),
        "model": Str(),
        "model_version": Str(),
        "uptime_s": Float(0.0),
        "readings": Int(),
        "latency_p50_us": Float(0.0),
        "latency_p99_us": Float(0.0),
        "cpu_pct": Float(0.0),
        "rss_mb": Float(0.0),
        "outbox_depth": Int(),
        "acked_seq": Int(-1),
        "dropped": Counters(),
        "invalid": Counters(),
        "baseline": Str(optional=True),
    },
    Ota: {
        **_HEAD,
        "ts": Float(0.0),
        "state": Str(),
        "reason": Str(),
        "from_version": Str(optional=True),
        "to_version": Str(optional=True),
        "detail": Str(),
    },
    Desired: {
        "v": Version(),
        "device": Str(device=True),
        "ts": Float(0.0),
        "model_name": Str(),
        "model_version": Str(),
        "manifest_url": Str(),
        "manifest_sha256": Str(),
        "rollout": Str(),
        "allow_downgrade": Bool(),
        "size": Int(),
    },
    Ack: dict(_HEAD),
}
_OPTIONAL = {
    cls: {k for k, spec in spec_map.items() if getattr(spec, "optional", False)}
    for cls, spec_map in FIELDS.items()
}

MUTATIONS: list[Any] = [
    MISSING,
    None,
    True,
    False,
    0,
    -1,
    2,
    1.5,
    -0.5,
    2**63,
    -(2**63) - 1,
    2**64,
    10**400,  # an int no float can hold
    1e300,
    "__1e999__",  # a literal that parses to inf
    "",
    "x",
    "online",
    "score",
    "-x",
    "x" * 513,
    [],
    [1.0],
    ["1.0"],
    [True],
    {},
    {"a": 1},
    {"a": -1},
    {"a": True},
    {"a": 2**63},
    {"a": 1.5},
    {"a": "1"},
]
NON_FINITE_LITERALS = [math.nan, math.inf, -math.inf]


def _expected(spec: Any, value: Any) -> str | tuple[str, str] | None:
    if value is MISSING:
        return None if getattr(spec, "optional", False) else "missing_field"
    if value == "__1e999__":
        value = math.inf
    return spec.expect(value)


@pytest.mark.parametrize("cls", list(FIELDS), ids=lambda c: c.__name__)
def test_every_field_against_the_mutation_table(cls: type) -> None:
    assert set(FIELDS[cls]) == set(body_of(EXAMPLES[cls])), "the table must cover every field"
    failures = []
    for name, spec in FIELDS[cls].items():
        for value in MUTATIONS:
            body = body_of(EXAMPLES[cls])
            if value is MISSING:
                del body[name]
            else:
                body[name] = value
            want = _expected(spec, value)
            try:
                decode(cls.kind, payload_of(body))
                got: tuple[str, str] | None = None
            except FieldError as exc:
                got = (exc.field, exc.reason)
            except DecodeError as exc:
                got = ("", exc.reason)
            expected = want if want is None or isinstance(want, tuple) else (name, want)
            if got != expected:
                failures.append(f"{name}={str(value)[:30]!r}: expected {expected}, got {got}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("cls", list(FIELDS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", NON_FINITE_LITERALS, ids=["NaN", "Infinity", "-Infinity"])
def test_non_finite_literal_in_any_field(cls: type, value: float) -> None:
    for name in FIELDS[cls]:
        body = body_of(EXAMPLES[cls])
        body[name] = value
        payload = payload_of(body)
        assert b"NaN" in payload or b"Infinity" in payload
        with pytest.raises(DecodeError) as info:
            decode(cls.kind, payload)
        assert info.value.reason == "not_finite", name


def test_nan_literal_inside_an_array() -> None:
    payload = encode(EXAMPLES[Telemetry]).replace(b"[[0.0,", b"[[NaN,", 1)
    assert b"NaN" in payload
    with pytest.raises(DecodeError) as info:
        decode(Kind.TELEMETRY, payload)
    assert info.value.reason == "not_finite"


# --------------------------------------------------------------------------- specific cases


def _telemetry_body(**changes: Any) -> bytes:
    body = body_of(EXAMPLES[Telemetry])
    body.update(changes)
    return payload_of(body)


@pytest.mark.parametrize("v", [0, 1, 3, 99])
def test_unknown_schema_version(v: int) -> None:
    for cls, msg in EXAMPLES.items():
        body = body_of(msg)
        body["v"] = v
        err = expect_field_error(cls.kind, payload_of(body), "v", "unknown_version")
        assert str(v) in str(err) and "upgrade" in str(err)


# A telemetry payload as a v1 agent wrote it: no model name.
V1_TELEMETRY = (
    b'{"v":1,"device":"pi-07","epoch":3,"seq":42,"model_version":"1.4.0",'
    b'"ts":[1.0],"features":[[0.5,1.5]],"scores":[[0.9,0.1]]}'
)


def test_a_v1_agent_is_told_to_upgrade_and_a_v3_hub_message_says_upgrade_this_agent() -> None:
    assert SCHEMA_VERSION == 2
    err = expect_field_error(Kind.TELEMETRY, V1_TELEMETRY, "v", "unknown_version")
    assert "this hub reads v=2; the agent speaks v=1: upgrade the agent" in str(err)
    ack = body_of(EXAMPLES[Ack]) | {"v": 3}
    err = expect_field_error(Kind.ACK, payload_of(ack), "v", "unknown_version")
    assert "this agent reads v=2; the hub speaks v=3: upgrade the agent" in str(err)
    old_hub = body_of(EXAMPLES[Ack]) | {"v": 1}
    err = expect_field_error(Kind.ACK, payload_of(old_hub), "v", "unknown_version")
    assert "upgrade the hub" in str(err)


@pytest.mark.parametrize("cls", [Telemetry, Status, Health], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["model", "model_version"])
def test_telemetry_birth_will_and_heartbeat_must_name_the_model(cls: type, name: str) -> None:
    for state in ("online", "offline") if cls is Status else (None,):
        msg = EXAMPLES[cls] if state is None else replace(EXAMPLES[cls], state=state)
        body = body_of(msg)
        assert body["model"] == "rig-edge" and body["model_version"] == "1.4.0"
        del body[name]
        err = expect_field_error(cls.kind, payload_of(body), name, "missing_field")
        assert repr(name) in str(err)
        body[name] = None
        expect_field_error(cls.kind, payload_of(body), name, "wrong_type")


def test_rows_of_mismatched_length() -> None:
    expect_field_error(
        Kind.TELEMETRY,
        _telemetry_body(features=[[1.0, 2.0], [3.0], [4.0, 5.0]]),
        "features",
        "length_mismatch",
    )
    expect_field_error(
        Kind.TELEMETRY,
        _telemetry_body(scores=[[0.1, 0.9], [0.2, 0.8], [1.0]]),
        "scores",
        "length_mismatch",
    )


def test_ts_longer_than_features() -> None:
    err = expect_field_error(
        Kind.TELEMETRY, _telemetry_body(ts=[1.0, 2.0, 3.0, 4.0]), "features", "length_mismatch"
    )
    assert "'ts' has 4" in str(err)
    expect_field_error(
        Kind.TELEMETRY, _telemetry_body(ts=[1.0, 2.0]), "features", "length_mismatch"
    )
    body = body_of(EXAMPLES[Telemetry])
    body["scores"] = body["scores"][:2]
    expect_field_error(Kind.TELEMETRY, payload_of(body), "scores", "length_mismatch")


def test_batch_over_the_limit() -> None:
    def batch(n: int) -> bytes:
        return _telemetry_body(
            ts=[float(i) for i in range(n)], features=[[1.0]] * n, scores=[[0.5]] * n
        )

    limits = Limits()
    assert len(decode(Kind.TELEMETRY, batch(limits.max_batch))) == limits.max_batch  # type: ignore[arg-type]
    expect_field_error(Kind.TELEMETRY, batch(limits.max_batch + 1), "ts", "batch_too_large")
    expect_field_error(Kind.TELEMETRY, batch(6), "ts", "batch_too_large", Limits(max_batch=5))


def test_too_many_feature_or_score_columns() -> None:
    small = Limits(max_features=3, max_classes=1)
    expect_field_error(Kind.TELEMETRY, _telemetry_body(), "features", "batch_too_large", small)
    expect_field_error(
        Kind.TELEMETRY, _telemetry_body(features=[[1.0]] * 3), "scores", "batch_too_large", small
    )


def test_payload_over_the_limit_is_refused_unparsed() -> None:
    payload = b"\xff" * (2 * 1024 * 1024)  # would be not_utf8 if it were parsed
    start = time.perf_counter()
    for kind in Kind:
        with pytest.raises(DecodeError) as info:
            decode(kind, payload)
        assert info.value.reason == "too_large"
        assert not isinstance(info.value, FieldError)
        assert str(len(payload)) in str(info.value)
    assert time.perf_counter() - start < 1.0
    limits = Limits(max_payload_bytes=100)
    ack = encode(EXAMPLES[Ack])
    assert decode(Kind.ACK, ack + b" " * (100 - len(ack)), limits) == EXAMPLES[Ack]
    with pytest.raises(DecodeError, match="over the limit") as info:
        decode(Kind.ACK, ack + b" " * (101 - len(ack)), limits)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"{'v': 1}", "not_json"),
        (b"\xef\xbb\xbf{}", "not_json"),  # a UTF-8 BOM
        (b"[" * 100_000, "not_json"),  # nesting deep enough to exhaust the recursion limit
        (b'{"v": ' + b"1" * 5000 + b"}", "not_json"),  # over int_max_str_digits
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"device": "\xe9"}', "not_utf8"),
        (b"[]", "not_object"),
        (b"null", "not_object"),
        (b'"ack"', "not_object"),
        (b"1", "not_object"),
        (b"NaN", "not_finite"),
        (b'{"v": NaN}', "not_finite"),
        (b'{"v": 1, "device": "pi", "epoch": -Infinity}', "not_finite"),
    ],
)
def test_specific_payloads(payload: bytes, reason: str) -> None:
    for kind in Kind:
        with pytest.raises(DecodeError) as info:
            decode(kind, payload)
        assert info.value.reason == reason


def test_float_literal_overflowing_to_inf_is_not_finite() -> None:
    body = body_of(EXAMPLES[Status])
    body["ts"] = "__1e999__"
    expect_field_error(Kind.STATUS, payload_of(body), "ts", "not_finite")


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"ts": ["1.0", 2.0, 3.0]}, "ts", "wrong_type"),
        ({"features": [[1.0, "2"], [3.0, 4.0], [5.0, 6.0]]}, "features", "wrong_type"),
        ({"ts": [1.0, True, 3.0]}, "ts", "wrong_type"),
        ({"ts": [True, False, True]}, "ts", "wrong_type"),
        ({"features": [[1.0, True], [3.0, 4.0], [5.0, 6.0]]}, "features", "wrong_type"),
        ({"scores": [[0, 1], [1, 0], [False, 1]]}, "scores", "wrong_type"),
        ({"ts": [1.0, None, 3.0]}, "ts", "wrong_type"),
        ({"ts": [1.0, {}, 3.0]}, "ts", "wrong_type"),
        ({"ts": [10**400, 2.0, 3.0]}, "ts", "wrong_type"),
        ({"features": [[10**400, 1.0]] * 3}, "features", "wrong_type"),
        # beyond int64/uint64 numpy makes an object array: refused, though a float32 holds it
        # Beyond 64 bits the parser reads an integer as a float; 2**70 fits float32.
        ({"features": [[2**70, 1.0]] * 3}, "features", None),
        ({"features": [[2**63, 1.0]] * 3}, "features", None),
        ({"features": [[1e39, 1.0]] * 3}, "features", "not_finite"),  # beyond float32
        ({"features": [[-1e39, 1.0]] * 3}, "features", "not_finite"),
        ({"ts": [1e308, 1.0, 1.0]}, "ts", None),
        ({"ts": "__1e999__"}, "ts", "wrong_type"),
        ({"ts": []}, "ts", "wrong_type"),
        ({"ts": {}}, "ts", "wrong_type"),
        ({"ts": [[1.0], [2.0], [3.0]]}, "ts", "wrong_shape"),
        ({"features": [1.0, 2.0, 3.0]}, "features", "wrong_shape"),
        ({"features": [[[1.0]], [[2.0]], [[3.0]]]}, "features", "wrong_shape"),
        ({"features": [[1.0], 2.0, [3.0]]}, "features", "length_mismatch"),
        ({"features": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "ts": [1, 2, 3]}, "", None),
    ],
)
def test_telemetry_arrays(changes: dict[str, Any], field: str, reason: str | None) -> None:
    payload = _telemetry_body(**changes)
    if reason is None:
        out = decode(Kind.TELEMETRY, payload)
        assert isinstance(out, Telemetry)
        assert out.features.dtype == np.float32 and out.ts.dtype == np.float64
    else:
        expect_field_error(Kind.TELEMETRY, payload, field, reason)


@given(n=st.integers(1, 6), f=st.integers(1, 4), data=st.data())
@FAST
def test_telemetry_arrays_with_one_bad_element(n: int, f: int, data: st.DataObject) -> None:
    body = body_of(EXAMPLES[Telemetry])
    body.update(
        ts=[1.0] * n, features=[[1.0] * f for _ in range(n)], scores=[[0.5] for _ in range(n)]
    )
    name = data.draw(st.sampled_from(["ts", "features", "scores"]))
    bad = data.draw(
        st.sampled_from([True, False, None, "1", [], {}, 10**400, "__1e999__", 1e39, math.nan])
    )
    i = data.draw(st.integers(0, n - 1))
    if name == "ts":
        body["ts"][i] = bad
    else:
        body[name][i][data.draw(st.integers(0, len(body[name][i]) - 1))] = bad
    assume(not (name == "ts" and bad == 1e39))  # a fine float64 timestamp
    out = decode_garbage(Kind.TELEMETRY, payload_of(body))
    assert isinstance(out, DecodeError)
    if isinstance(out, FieldError):
        assert out.field == name
    else:
        assert out.reason == "not_finite"


def test_bad_device_id_in_a_payload() -> None:
    for cls, msg in EXAMPLES.items():
        for device in ["", "+", "#", "a/b", "-x", "caf\u00e9", "x" * 65]:
            body = body_of(msg)
            body["device"] = device
            err = expect_field_error(cls.kind, payload_of(body), "device", "bad_device_id")
            assert repr(device) in str(err)


def test_text_and_counter_limits() -> None:
    limits = Limits(max_text=20, max_counters=2)
    ok = body_of(EXAMPLES[Ota])
    ok["detail"] = "x" * 20
    assert decode(Kind.OTA, payload_of(ok), limits)
    ok["detail"] = "x" * 21
    expect_field_error(Kind.OTA, payload_of(ok), "detail", "too_long", limits)
    health = body_of(EXAMPLES[Health])
    health["dropped"] = {"a": 1, "b": 2, "c": 3}
    expect_field_error(Kind.HEALTH, payload_of(health), "dropped", "too_long", limits)
    health["dropped"] = {"a" * 21: 1}
    expect_field_error(Kind.HEALTH, payload_of(health), "dropped", "wrong_type", limits)
    health["dropped"] = {"a": INT64_MAX}
    assert isinstance(decode(Kind.HEALTH, payload_of(health)), Health)
    health["dropped"] = {"a": INT64_MAX + 1}
    expect_field_error(Kind.HEALTH, payload_of(health), "dropped", "out_of_range")


def test_decode_as_checks_the_kind() -> None:
    payload = encode(EXAMPLES[Ack])
    assert decode_as_(Ack, payload) == EXAMPLES[Ack]
    with pytest.raises(FieldError) as info:
        decode_as_(Status, payload)  # an ack is not a status
    assert info.value.reason == "missing_field"


def test_event_optional_fields_may_be_null_or_absent() -> None:
    body = body_of(EXAMPLES[Event])
    body["sensor"] = None
    del body["value"]
    out = decode(Kind.EVENTS, payload_of(body))
    assert isinstance(out, Event) and out.sensor is None and out.value is None


def test_upgrade_v1_rewrites_stream_messages_and_refuses_what_it_cannot_name() -> None:
    from shared.messages import upgrade_v1  # noqa: PLC0415

    named = V1_TELEMETRY.replace(b'"scores"', b'"model":"rig-edge","scores"')
    for payload, want in ((named, "rig-edge"), (V1_TELEMETRY, "machine-edge")):
        out = decode(Kind.TELEMETRY, upgrade_v1(Kind.TELEMETRY, payload, ("machine-edge", "1.4.0")))
        assert isinstance(out, Telemetry) and (out.model, out.model_version) == (want, "1.4.0")
    with pytest.raises(FieldError) as info:  # unnamed, and not the version the agent runs
        upgrade_v1(Kind.TELEMETRY, V1_TELEMETRY, ("machine-edge", "2.0.0"))
    assert (info.value.field, info.value.reason) == ("model", "missing_field")
    event = body_of(EXAMPLES[Event]) | {"v": 1}
    assert (
        decode(Kind.EVENTS, upgrade_v1(Kind.EVENTS, payload_of(event), ("m", "1")))
        == EXAMPLES[Event]
    )
    for kind, payload in (
        (Kind.TELEMETRY, encode(EXAMPLES[Telemetry])),  # already v2
        (Kind.HEALTH, payload_of(body_of(EXAMPLES[Health]) | {"v": 1})),  # not a stream kind
        (Kind.TELEMETRY, b"{not json"),
    ):
        with pytest.raises(DecodeError):
            upgrade_v1(kind, payload, ("m", "1"))


def test_a_clean_stop_says_so_and_births_and_wills_read_as_before() -> None:
    birth = EXAMPLES[Status]
    assert "clean" not in body_of(birth)  # the field is written only when true
    stop = dataclasses.replace(birth, state="offline", clean=True)
    assert body_of(stop)["clean"] is True
    assert decode(Kind.STATUS, encode(stop)) == stop
    assert decode(Kind.STATUS, encode(birth)) == birth  # absent: False
    body = body_of(stop)
    body["clean"] = "yes"
    expect_field_error(Kind.STATUS, payload_of(body), "clean", "wrong_type")
