"""Message types of the wire contract and their strict JSON codec.

Each topic kind (:class:`shared.topics.Kind`) has one frozen message type.
Edge-to-hub messages carry ``v`` (schema version), ``device``, ``epoch`` (bumped
at every agent start) and ``seq``. Telemetry, events and ota messages form the
device's *stream*: each takes the next ``seq`` of its epoch, and the hub stores
and acks that stream. Status and health are not part of the stream (health goes
at QoS 0 and may be lost); their ``seq`` is the last stream seq issued so far,
which lets the hub notice a lost tail without waiting for the next batch.
A ``dropped`` message (:class:`Dropped`) declares stream seqs the device
dropped; it takes no seq of its own.

Schema version 2 (:data:`SCHEMA_VERSION`): telemetry, the birth and every
heartbeat name the model the agent runs, by ``model`` (its name) and
``model_version``, both required; so does the last will (the agent composes
it at connect, naming the model it runs then; the hub takes a device's model
from its birth and heartbeats, not from its will). Events name the model
version only. A message of any other version is refused with reason
``unknown_version`` and an error saying which side to upgrade; there is no
reader of version 1 (version 1 left the model name out, or made it optional),
only :func:`upgrade_v1`, which rewrites a stream message an agent of version 1
left in its outbox.

Telemetry is columnar: ``ts`` (n), ``features`` (n x f) and ``scores`` (n x c)
are numpy arrays. Floats of float32 arrays are written in their shortest
float32 form, so the hub decodes exactly the numbers the edge computed.

Decoding is strict: it takes bytes and either returns a valid message or raises
:class:`~shared.errors.DecodeError` (or its :class:`~shared.errors.FieldError`)
naming the field and a reason slug the receivers count by. Nothing else escapes
:func:`decode`.

>>> ack = Ack(device="pi-07", epoch=3, seq=41)
>>> decode(Kind.ACK, encode(ack)) == ack
True
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import orjson

from shared.errors import DecodeError, FieldError, TopicError
from shared.topics import EDGE_TO_HUB, Kind, validate_device_id

__all__ = [
    "SCHEMA_VERSION",
    "Ack",
    "Desired",
    "Dropped",
    "Event",
    "Health",
    "Limits",
    "Message",
    "Ota",
    "Status",
    "Telemetry",
    "decode",
    "encode",
    "upgrade_v1",
]

SCHEMA_VERSION: Final = 2
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits a decoder enforces before it trusts a payload."""

    max_payload_bytes: int = 1_048_576
    max_batch: int = 1000
    max_features: int = 256
    max_classes: int = 16
    max_text: int = 512
    max_counters: int = 256


DEFAULT_LIMITS: Final = Limits()


# --------------------------------------------------------------------------- reading fields


class _Fields:
    """Reads typed fields out of a decoded JSON object, raising FieldError."""

    __slots__ = ("kind", "limits", "obj")

    def __init__(self, obj: Mapping[str, Any], kind: Kind, limits: Limits) -> None:
        self.obj = obj
        self.kind = kind
        self.limits = limits

    def _get(self, name: str) -> Any:
        try:
            return self.obj[name]
        except KeyError:
            raise FieldError(
                f"{self.kind.value} message has no field {name!r}",
                field=name,
                reason="missing_field",
            ) from None

    def _wrong(self, name: str, want: str, got: Any) -> FieldError:
        return FieldError(
            f"{self.kind.value} field {name!r} must be {want}, got {type(got).__name__}",
            field=name,
            reason="wrong_type",
        )

    def int_(self, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
        value = self._get(name)
        if type(value) is float and value.is_integer() and abs(value) >= 2**63:
            # orjson reads an integer literal beyond 64 bits as a float.
            value = int(value)
        if type(value) is not int:
            raise self._wrong(name, "an integer", value)
        if not lo <= value <= hi:
            raise FieldError(
                f"{self.kind.value} field {name!r} = {value} is outside [{lo}, {hi}]",
                field=name,
                reason="out_of_range",
            )
        return value

    def float_(self, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        value = self._get(name)
        if type(value) not in (int, float):
            raise self._wrong(name, "a number", value)
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range: float() raises, never returns inf
            raise FieldError(
                f"{self.kind.value} field {name!r} is outside the range of a float",
                field=name,
                reason="out_of_range",
            ) from None
        if not math.isfinite(value):
            raise FieldError(
                f"{self.kind.value} field {name!r} must be finite, got {value}",
                field=name,
                reason="not_finite",
            )
        if not lo <= value <= hi:
            raise FieldError(
                f"{self.kind.value} field {name!r} = {value} is outside [{lo}, {hi}]",
                field=name,
                reason="out_of_range",
            )
        return value

    def opt_float(self, name: str) -> float | None:
        return None if self.obj.get(name) is None else self.float_(name)

    def bool_(self, name: str) -> bool:
        value = self._get(name)
        if type(value) is not bool:
            raise self._wrong(name, "true or false", value)
        return value

    def str_(self, name: str, choices: frozenset[str] | None = None) -> str:
        value = self._get(name)
        if type(value) is not str:
            raise self._wrong(name, "a string", value)
        if len(value) > self.limits.max_text:
            raise FieldError(
                f"{self.kind.value} field {name!r} is longer than {self.limits.max_text} characters",
                field=name,
                reason="too_long",
            )
        if choices is not None and value not in choices:
            raise FieldError(
                f"{self.kind.value} field {name!r} = {value!r} is not one of {sorted(choices)}",
                field=name,
                reason="bad_value",
            )
        return value

    def opt_str(self, name: str) -> str | None:
        return None if self.obj.get(name) is None else self.str_(name)

    def counters(self, name: str) -> dict[str, int]:
        value = self._get(name)
        if not isinstance(value, dict):
            raise self._wrong(name, "an object of counters", value)
        if len(value) > self.limits.max_counters:
            raise FieldError(
                f"{self.kind.value} field {name!r} has more than {self.limits.max_counters} counters",
                field=name,
                reason="too_long",
            )
        for key, count in value.items():
            if len(key) > self.limits.max_text or type(count) is not int or count < 0:
                raise FieldError(
                    f"{self.kind.value} field {name!r} must map names to counts >= 0; "
                    f"entry {key[:40]!r} is {count!r}",
                    field=name,
                    reason="wrong_type",
                )
            if count > 2**63 - 1:
                raise FieldError(
                    f"{self.kind.value} field {name!r}: count {key[:40]!r} is over 2**63-1",
                    field=name,
                    reason="out_of_range",
                )
        return dict(value)

    def array(self, name: str, ndim: int, dtype: type[np.floating[Any]]) -> npt.NDArray[Any]:
        """A finite numeric array of ``ndim`` dimensions, rectangular, non-empty."""
        value = self._get(name)
        if not isinstance(value, list) or not value:
            raise self._wrong(name, f"a non-empty array of {ndim} dimension(s)", value)
        try:
            raw = np.array(value)
        except (ValueError, TypeError):
            raise FieldError(
                f"{self.kind.value} field {name!r} is ragged: its rows differ in length",
                field=name,
                reason="length_mismatch",
            ) from None
        if raw.dtype.kind not in "iuf":
            raise FieldError(
                f"{self.kind.value} field {name!r} must hold only numbers",
                field=name,
                reason="wrong_type",
            )
        if raw.ndim != ndim:
            raise FieldError(
                f"{self.kind.value} field {name!r} must have {ndim} dimension(s), has {raw.ndim}",
                field=name,
                reason="wrong_shape",
            )
        # numpy turns true/false mixed with numbers into 1/0; the codec is strict.
        items = value if ndim == 1 else itertools.chain.from_iterable(value)
        if bool in set(map(type, items)):
            raise FieldError(
                f"{self.kind.value} field {name!r} must hold only numbers, not true/false",
                field=name,
                reason="wrong_type",
            )
        with np.errstate(over="ignore", invalid="ignore"):
            arr = raw.astype(dtype)
        if not np.isfinite(arr).all():
            raise FieldError(
                f"{self.kind.value} field {name!r} holds NaN or infinite values (or values "
                f"beyond {np.dtype(dtype).name} range)",
                field=name,
                reason="not_finite",
            )
        return arr


def _header(f: _Fields) -> tuple[str, int, int]:
    try:
        device = validate_device_id(f.str_("device"))
    except TopicError as exc:
        raise FieldError(str(exc), field="device", reason="bad_device_id") from None
    return device, f.int_("epoch"), f.int_("seq")


def _fields_dict(msg: Any) -> dict[str, Any]:
    """A message's fields as a JSON-ready dict, in declaration order."""
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


def _float32_json(arr: F32) -> str:
    """JSON for a finite float32 array, each number in its shortest float32 form."""
    if arr.ndim == 1:
        return "[" + ",".join(map(str, arr)) + "]"
    return "[" + ",".join(map(_float32_json, arr)) + "]"


# --------------------------------------------------------------------------- message types


@dataclass(frozen=True, slots=True)
class Status:
    """Birth (``online``, retained) or last will (``offline``) of an agent.

    Both name the model the agent runs. The will is composed at connect, so it
    names the model of that moment; the hub records a device's model from its
    birth and heartbeats only.

    ``clean`` (optional, written only when true): an ``offline`` status the agent
    sends as it stops cleanly, so a hub knows it from its will however late it
    arrives. A hub that does not know the field ignores it (decoding ignores
    fields it does not read).
    """

    device: str
    epoch: int
    seq: int
    state: Literal["online", "offline"]
    agent_version: str
    model_version: str
    """The version of the model the agent runs."""
    ts: float
    model: str
    """The name of the model the agent runs."""
    clean: bool = False
    """An ``offline`` status of a clean stop (never set in a will)."""
    kind: ClassVar[Kind] = Kind.STATUS

    def to_dict(self) -> dict[str, Any]:
        body = _fields_dict(self)
        if not self.clean:
            del body["clean"]  # births and wills read as before the field
        return body

    @classmethod
    def from_fields(cls, f: _Fields) -> Status:
        device, epoch, seq = _header(f)
        state = cast(
            Literal["online", "offline"], f.str_("state", frozenset({"online", "offline"}))
        )
        return cls(
            device,
            epoch,
            seq,
            state,
            f.str_("agent_version"),
            f.str_("model_version"),
            f.float_("ts", 0.0),
            f.str_("model"),
            f.bool_("clean") if "clean" in f.obj else False,
        )


@dataclass(frozen=True, slots=True, eq=False)
class Telemetry:
    """A columnar micro-batch: ``n`` readings' timestamps, features and edge scores."""

    device: str
    epoch: int
    seq: int
    model_version: str
    ts: F64
    features: F32
    scores: F32
    model: str
    """The name of the edge model that computed ``scores`` (``model_version`` is its version)."""
    kind: ClassVar[Kind] = Kind.TELEMETRY

    def __post_init__(self) -> None:
        n = self.ts.shape[0]
        if self.features.shape[0] != n or self.scores.shape[0] != n:
            raise ValueError(
                f"telemetry for {self.device!r}: ts has {n} rows, features "
                f"{self.features.shape[0]}, scores {self.scores.shape[0]}; they must match"
            )

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Telemetry):
            return NotImplemented
        return (
            (self.device, self.epoch, self.seq, self.model_version, self.model)
            == (other.device, other.epoch, other.seq, other.model_version, other.model)
            and np.array_equal(self.ts, other.ts)
            and np.array_equal(self.features, other.features)
            and np.array_equal(self.scores, other.scores)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> str:
        with np.errstate(over="ignore"):
            features = self.features.astype(np.float32, copy=False)
            scores = self.scores.astype(np.float32, copy=False)
        for name, arr in (("ts", self.ts), ("features", features), ("scores", scores)):
            if not np.isfinite(arr).all():
                raise ValueError(
                    f"telemetry for {self.device!r}: {name} holds NaN or inf "
                    "(or values beyond float32 range)"
                )
        # orjson writes float32 arrays in their shortest float32 form and float64
        # in their shortest float64 form: exact, compact and ~30x faster than
        # formatting each number in Python.
        body = {
            "v": SCHEMA_VERSION,
            "device": self.device,
            "epoch": self.epoch,
            "seq": self.seq,
            "model": self.model,
            "model_version": self.model_version,
            "ts": np.ascontiguousarray(self.ts, dtype=np.float64),
            "features": np.ascontiguousarray(features),
            "scores": np.ascontiguousarray(scores),
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def to_dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], orjson.loads(self.to_json()))

    @classmethod
    def from_fields(cls, f: _Fields) -> Telemetry:
        device, epoch, seq = _header(f)
        model = f.str_("model")
        model_version = f.str_("model_version")
        ts = f.array("ts", 1, np.float64)
        n = ts.shape[0]
        if n > f.limits.max_batch:
            raise FieldError(
                f"telemetry batch of {n} readings is over the limit of {f.limits.max_batch}",
                field="ts",
                reason="batch_too_large",
            )
        features = f.array("features", 2, np.float32)
        scores = f.array("scores", 2, np.float32)
        for name, arr, limit in (
            ("features", features, f.limits.max_features),
            ("scores", scores, f.limits.max_classes),
        ):
            if arr.shape[0] != n:
                raise FieldError(
                    f"telemetry field {name!r} has {arr.shape[0]} rows but 'ts' has {n}",
                    field=name,
                    reason="length_mismatch",
                )
            if arr.shape[1] > limit:
                raise FieldError(
                    f"telemetry field {name!r} has {arr.shape[1]} columns, over the limit of {limit}",
                    field=name,
                    reason="batch_too_large",
                )
        return cls(device, epoch, seq, model_version, ts, features, scores, model)


@dataclass(frozen=True, slots=True)
class Event:
    """An urgent event and the local action the agent took, sent at once."""

    device: str
    epoch: int
    seq: int
    ts: float
    model_version: str
    rule: Literal["score", "hard_limit"]
    score: float
    sensor: str | None
    value: float | None
    action: str
    action_ok: bool
    detail: str
    kind: ClassVar[Kind] = Kind.EVENTS

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_fields(cls, f: _Fields) -> Event:
        device, epoch, seq = _header(f)
        rule = cast(
            Literal["score", "hard_limit"], f.str_("rule", frozenset({"score", "hard_limit"}))
        )
        return cls(
            device,
            epoch,
            seq,
            f.float_("ts", 0.0),
            f.str_("model_version"),
            rule,
            f.float_("score", 0.0, 1.0),
            f.opt_str("sensor"),
            f.opt_float("value"),
            f.str_("action"),
            f.bool_("action_ok"),
            f.str_("detail"),
        )


@dataclass(frozen=True, slots=True)
class Health:
    """A heartbeat: latency, resources, outbox depth and every drop counter.

    ``baseline``: the ``created`` time of the per-device baseline the agent
    maps its readings with (:mod:`shared.baseline`), or None when it uses the
    model's reference. Optional on the wire: a heartbeat without it (an older
    agent) decodes as None, and an older hub ignores it.
    """

    device: str
    epoch: int
    seq: int
    ts: float
    model: str
    """The name of the model the agent runs (``model_version`` is its version)."""
    model_version: str
    uptime_s: float
    readings: int
    latency_p50_us: float
    latency_p99_us: float
    cpu_pct: float
    rss_mb: float
    outbox_depth: int
    acked_seq: int
    dropped: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    baseline: str | None = None
    kind: ClassVar[Kind] = Kind.HEALTH

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_fields(cls, f: _Fields) -> Health:
        device, epoch, seq = _header(f)
        return cls(
            device,
            epoch,
            seq,
            f.float_("ts", 0.0),
            f.str_("model"),
            f.str_("model_version"),
            f.float_("uptime_s", 0.0),
            f.int_("readings"),
            f.float_("latency_p50_us", 0.0),
            f.float_("latency_p99_us", 0.0),
            f.float_("cpu_pct", 0.0),
            f.float_("rss_mb", 0.0),
            f.int_("outbox_depth"),
            f.int_("acked_seq", -1),
            f.counters("dropped"),
            f.counters("invalid"),
            f.opt_str("baseline"),
        )


@dataclass(frozen=True, slots=True)
class Ota:
    """One OTA state transition of an agent, with a reason code.

    The agent sends one for every transition of its update state machine, through
    its durable outbox (:mod:`edge_agent.ota.runner`).
    """

    device: str
    epoch: int
    seq: int
    ts: float
    state: str
    reason: str
    from_version: str | None
    to_version: str | None
    detail: str
    kind: ClassVar[Kind] = Kind.OTA

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_fields(cls, f: _Fields) -> Ota:
        device, epoch, seq = _header(f)
        return cls(
            device,
            epoch,
            seq,
            f.float_("ts", 0.0),
            f.str_("state"),
            f.str_("reason"),
            f.opt_str("from_version"),
            f.opt_str("to_version"),
            f.str_("detail"),
        )


@dataclass(frozen=True, slots=True)
class Dropped:
    """Edge to hub: stream seqs ``first``..``seq`` of ``epoch`` were dropped at the edge.

    A declaration, not a stream message: it takes no seq of its own. ``seq`` is
    the last seq of the range (so the header reads like every other edge
    message's); ``readings`` holds, per seq of the range, how many readings that
    message carried (0 for an event or an OTA transition). The agent sends it
    again until the hub's ack of ``epoch`` reaches ``seq``; the hub closes the
    range as *lost at the edge* and counts it by ``reason``.

    >>> d = Dropped("pi-07", 3, 12, 10, "outbox_full", (50, 0, 50))
    >>> decode(Kind.DROPPED, encode(d)) == d
    True
    """

    device: str
    epoch: int
    seq: int
    first: int
    reason: str
    readings: tuple[int, ...]
    kind: ClassVar[Kind] = Kind.DROPPED

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.seq:
            raise ValueError(
                f"dropped declaration for {self.device!r}: range {self.first}..{self.seq} "
                "must start at 1 or later and not end before it starts"
            )
        if len(self.readings) != self.seq - self.first + 1:
            raise ValueError(
                f"dropped declaration for {self.device!r}: {len(self.readings)} reading counts "
                f"for the {self.seq - self.first + 1} seqs {self.first}..{self.seq}"
            )

    @property
    def messages(self) -> int:
        return self.seq - self.first + 1

    def to_dict(self) -> dict[str, Any]:
        body = _fields_dict(self)
        body["readings"] = list(self.readings)
        return body

    @classmethod
    def from_fields(cls, f: _Fields) -> Dropped:
        device, epoch, seq = _header(f)
        first = f.int_("first", 1, max(seq, 1))
        if seq < 1:
            raise FieldError("dropped field 'seq' must be >= 1", field="seq", reason="out_of_range")
        n = seq - first + 1
        if n > f.limits.max_batch:
            raise FieldError(
                f"dropped range {first}..{seq} covers {n} seqs, over the limit of "
                f"{f.limits.max_batch} per declaration (split it)",
                field="seq",
                reason="batch_too_large",
            )
        counts = f.obj.get("readings")
        if (
            not isinstance(counts, list)
            or len(counts) != n
            or any(type(c) is not int or not 0 <= c <= f.limits.max_batch for c in counts)
        ):
            raise FieldError(
                f"dropped field 'readings' must list {n} counts in [0, {f.limits.max_batch}], "
                "one per seq of the range",
                field="readings",
                reason="wrong_type",
            )
        reason = f.str_("reason")
        if not reason:
            raise FieldError("dropped field 'reason' is empty", field="reason", reason="wrong_type")
        return cls(device, epoch, seq, first, reason, tuple(counts))


@dataclass(frozen=True, slots=True)
class Desired:
    """Hub to edge (retained): the model version this device should run.

    ``manifest_url`` is a path on the hub's API (``/v1/models/NAME/VERSION``;
    the agent joins it to its hub URL and fetches the signature and files
    beside it); ``manifest_sha256`` is the sha256 of the manifest's bytes;
    ``size`` the bytes of the manifest, its signature and every file it lists,
    the most the agent downloads; ``allow_downgrade`` marks a rollback to a lower
    version. The hub sends it (``cloud_hub/ota/``); the agent acts on it
    (:mod:`edge_agent.ota.runner`), or only logs it with ``--ota false``.
    """

    device: str
    ts: float
    model_name: str
    model_version: str
    manifest_url: str
    manifest_sha256: str
    rollout: str
    allow_downgrade: bool
    size: int
    kind: ClassVar[Kind] = Kind.DESIRED

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_fields(cls, f: _Fields) -> Desired:
        try:
            device = validate_device_id(f.str_("device"))
        except TopicError as exc:
            raise FieldError(str(exc), field="device", reason="bad_device_id") from None
        return cls(
            device,
            f.float_("ts", 0.0),
            f.str_("model_name"),
            f.str_("model_version"),
            f.str_("manifest_url"),
            f.str_("manifest_sha256"),
            f.str_("rollout"),
            f.bool_("allow_downgrade"),
            f.int_("size"),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """Hub to edge: the highest contiguous stream ``seq`` the hub has durably stored."""

    device: str
    epoch: int
    seq: int
    kind: ClassVar[Kind] = Kind.ACK

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_fields(cls, f: _Fields) -> Ack:
        device, epoch, seq = _header(f)
        return cls(device, epoch, seq)


Message = Status | Telemetry | Event | Health | Ota | Dropped | Desired | Ack
_M = TypeVar("_M", Status, Telemetry, Event, Health, Ota, Dropped, Desired, Ack)
_TYPES: Final[dict[Kind, Callable[[_Fields], Message]]] = {
    Kind.STATUS: Status.from_fields,
    Kind.TELEMETRY: Telemetry.from_fields,
    Kind.EVENTS: Event.from_fields,
    Kind.HEALTH: Health.from_fields,
    Kind.OTA: Ota.from_fields,
    Kind.DROPPED: Dropped.from_fields,
    Kind.DESIRED: Desired.from_fields,
    Kind.ACK: Ack.from_fields,
}


# --------------------------------------------------------------------------- codec


def encode(msg: Message) -> bytes:
    """The UTF-8 JSON payload of ``msg``, with ``v`` set to :data:`SCHEMA_VERSION`."""
    if isinstance(msg, Telemetry):
        return msg.to_json().encode()
    body = msg.to_dict()
    for key, value in body.items():
        # orjson would write NaN and inf as null; refuse them instead.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{msg.kind.value} message for {msg.device!r}: {key} is not finite")
    return orjson.dumps({"v": SCHEMA_VERSION, **body})


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"payload holds {name}, which is not valid JSON", reason="not_finite")


def _loads_slowly(kind: Kind, text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise DecodeError(f"{kind.value} payload is not valid JSON", reason="not_json") from None


def decode(kind: Kind, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode and validate a ``kind`` payload, or raise :class:`DecodeError`."""
    if len(payload) > limits.max_payload_bytes:
        raise DecodeError(
            f"{kind.value} payload of {len(payload)} bytes is over the limit of "
            f"{limits.max_payload_bytes}",
            reason="too_large",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{kind.value} payload is not UTF-8", reason="not_utf8") from None
    try:
        # orjson parses ~3x faster than json, which is most of the hub's ingest time.
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses some JSON that is valid but useless to us (integers beyond
        # 64 bits, numbers that overflow a double). Only on this error path, parse
        # with the standard library, so such input gets the same field-level
        # reason as everywhere else.
        obj = _loads_slowly(kind, text)
    if not isinstance(obj, dict):
        raise DecodeError(
            f"{kind.value} payload must be a JSON object, got {type(obj).__name__}",
            reason="not_object",
        )
    f = _Fields(obj, kind, limits)
    version = f.int_("v")
    if version != SCHEMA_VERSION:
        raise FieldError(_version_error(kind, version), field="v", reason="unknown_version")
    return _TYPES[kind](f)


def _version_error(kind: Kind, version: int) -> str:
    """Who speaks which version, and which side to upgrade.

    >>> _version_error(Kind.TELEMETRY, 1)
    'telemetry message has schema version v=1: this hub reads v=2; the agent speaks v=1: upgrade the agent'
    """
    sender, reader = ("agent", "hub") if kind in EDGE_TO_HUB else ("hub", "agent")
    older = sender if version < SCHEMA_VERSION else reader
    return (
        f"{kind.value} message has schema version v={version}: this {reader} reads "
        f"v={SCHEMA_VERSION}; the {sender} speaks v={version}: upgrade the {older}"
    )


def decode_as(cls: type[_M], payload: bytes, limits: Limits = DEFAULT_LIMITS) -> _M:
    """Decode a payload that must be of message type ``cls``."""
    return cast(_M, decode(cls.kind, payload, limits))


def upgrade_v1(kind: Kind, payload: bytes, model: tuple[str, str]) -> bytes:
    """A stream message written in schema v1 (kept in an agent's outbox across an
    upgrade), in the current schema's form; or :class:`DecodeError` when it cannot be.

    v1 events and ota messages differ from v2's by ``v`` only. v1 telemetry may
    lack the model's name: it is taken to be ``model``'s name (the model the
    agent runs now, ``(name, version)``) when the telemetry's version is that
    model's, and refused otherwise (no one can say which model scored it).

    >>> old = b'{"v":1,"device":"pi-07","epoch":3,"seq":1,"model_version":"1.4.0",' \\
    ...       b'"ts":[1.0],"features":[[0.5]],"scores":[[0.25,0.75]]}'
    >>> decode(Kind.TELEMETRY, upgrade_v1(Kind.TELEMETRY, old, ("rig-edge", "1.4.0"))).model
    'rig-edge'
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise DecodeError(f"{kind.value} payload is not valid JSON", reason="not_json") from None
    if (
        not isinstance(obj, dict)
        or obj.get("v") != 1
        or kind
        not in (
            Kind.TELEMETRY,
            Kind.EVENTS,
            Kind.OTA,
        )
    ):
        raise DecodeError(
            f"only a v1 stream message (telemetry, events, ota) can be upgraded; this is a "
            f"{kind.value} payload of v={obj.get('v') if isinstance(obj, dict) else None!r}",
            reason="unknown_version",
        )
    if kind is Kind.TELEMETRY and obj.get("model") is None:
        if obj.get("model_version") != model[1]:
            raise FieldError(
                f"v1 telemetry names model version {obj.get('model_version')!r} but no model; "
                f"the agent runs {model[0]} {model[1]}, so which model scored it is unknown",
                field="model",
                reason="missing_field",
            )
        obj["model"] = model[0]
    obj["v"] = SCHEMA_VERSION
    # Through the decoder, so what goes out is a valid message in its exact encoding.
    return encode(decode(kind, orjson.dumps(obj)))
