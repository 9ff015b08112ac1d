"""The MQTT topic grammar: build, parse, device ids, roots and filter matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ContractError, TopicError
from shared.topics import (
    DEFAULT_ROOT,
    EDGE_TO_HUB,
    HUB_TO_EDGE,
    Kind,
    TopicAddress,
    Topics,
    topic_matches,
    validate_device_id,
)

pytestmark = pytest.mark.timeout(30)

ROOTS = [DEFAULT_ROOT, "edgeloop", "plant-3/line_2/edgeloop.v1"]
VALID_IDS = ["pi-07", "a", "0", "A.b_c-d", "x" * 64, "9" + "-" * 63, "dev.1"]
BAD_IDS = [
    "",
    "+",
    "#",
    "a/b",
    "/a",
    "a+",
    "a#",
    "x" * 65,
    "-leading",
    "_leading",
    ".leading",
    "caf\u00e9",
    "\u0661",  # an Arabic-Indic digit: \w and \d would take it
    "pi 07",
    "pi\n",
    "pi\x00",
    "$SYS",
]


# --------------------------------------------------------------------------- build / parse


def test_kinds_are_split_by_direction() -> None:
    assert set(Kind) == EDGE_TO_HUB | HUB_TO_EDGE
    assert not EDGE_TO_HUB & HUB_TO_EDGE


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("device", VALID_IDS)
def test_build_parse_round_trip(root: str, kind: Kind, device: str) -> None:
    topics = Topics(root)
    topic = topics.topic(device, kind)
    assert topic == f"{root}/dev/{device}/{kind.value}"
    assert topics.parse(topic) == TopicAddress(device, kind)


@pytest.mark.parametrize("kind", list(Kind))
def test_device_filter_matches_every_device_of_that_kind_only(kind: Kind) -> None:
    topics = Topics()
    flt = topics.device_filter(kind)
    assert flt == f"{DEFAULT_ROOT}/dev/+/{kind.value}"
    for device in VALID_IDS:
        assert topic_matches(flt, topics.topic(device, kind))
        for other in Kind:
            if other is not kind:
                assert not topic_matches(flt, topics.topic(device, other))


@given(
    device=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    kind=st.sampled_from(Kind),
)
@settings(max_examples=100, deadline=None, database=None)
def test_round_trip_any_valid_device(device: str, kind: Kind) -> None:
    topics = Topics()
    assert validate_device_id(device) == device
    assert topics.parse(topics.topic(device, kind)) == TopicAddress(device, kind)


# --------------------------------------------------------------------------- device ids


@pytest.mark.parametrize("device", BAD_IDS)
def test_bad_device_id_is_refused_when_building(device: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics().topic(device, Kind.STATUS)
    assert info.value.reason == "bad_device_id"
    assert isinstance(info.value, ContractError)
    assert repr(device) in str(info.value)


@pytest.mark.parametrize("device", [d for d in BAD_IDS if "/" not in d])
def test_bad_device_id_is_refused_when_parsing(device: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics().parse(f"{DEFAULT_ROOT}/dev/{device}/telemetry")
    assert info.value.reason == "bad_device_id"


@pytest.mark.parametrize("device", [None, 7, b"pi-07"])
def test_non_string_device_id_is_refused(device: object) -> None:
    with pytest.raises(TopicError) as info:
        validate_device_id(device)  # type: ignore[arg-type]
    assert info.value.reason == "bad_device_id"


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None, database=None)
def test_validate_device_id_accepts_exactly_the_grammar(device: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    ok = 1 <= len(device) <= 64 and set(device) <= allowed and device[0] not in "_.-"
    if ok:
        assert validate_device_id(device) == device
    else:
        with pytest.raises(TopicError):
            validate_device_id(device)


# --------------------------------------------------------------------------- roots


@pytest.mark.parametrize(
    "root",
    ["", "/", "a/", "/a", "a//b", "a/+", "a/#", "+", "#", "a b", "caf\u00e9", "$SYS", "a/+/b"],
)
def test_bad_root_is_refused(root: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics(root)
    assert info.value.reason == "bad_root"
    assert info.value.topic == root
    assert DEFAULT_ROOT in str(info.value)  # the message shows the default


# --------------------------------------------------------------------------- foreign / malformed


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "edgeloop/v2/dev/pi-07/status",
        "edgeloop/v1/devs/pi-07/status",
        "edgeloop/v1/pi-07/status",
        "other/edgeloop/v1/dev/pi-07/status",
        "edgeloop/v1/dev",
        "Edgeloop/v1/dev/pi-07/status",
        "$SYS/broker/uptime",
    ],
)
def test_foreign_topic(topic: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics().parse(topic)
    assert info.value.reason == "foreign_topic"
    assert info.value.topic == topic


@pytest.mark.parametrize(
    "topic",
    [
        "edgeloop/v1/dev/pi-07",
        "edgeloop/v1/dev/pi-07/status/extra",
        "edgeloop/v1/dev/pi-07/status/",
        "edgeloop/v1/dev/a/b/status",
    ],
)
def test_wrong_number_of_levels(topic: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics().parse(topic)
    assert info.value.reason == "bad_topic"


@pytest.mark.parametrize("kind", ["", "Status", "STATUS", "telemetry2", "event", "+", "#", "acks"])
def test_unknown_kind(kind: str) -> None:
    with pytest.raises(TopicError) as info:
        Topics().parse(f"{DEFAULT_ROOT}/dev/pi-07/{kind}")
    assert info.value.reason == "unknown_kind"
    for known in Kind:
        assert known.value in str(info.value)  # the message lists the known kinds


def test_other_root_does_not_parse_default_topics() -> None:
    assert Topics("plant-3").parse("plant-3/dev/pi-07/ack") == TopicAddress("pi-07", Kind.ACK)
    with pytest.raises(TopicError) as info:
        Topics("plant-3").parse(Topics().topic("pi-07", Kind.ACK))
    assert info.value.reason == "foreign_topic"


# --------------------------------------------------------------------------- topic_matches


def reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7, written as directly as possible (for valid filters)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False

    def rec(f: list[str], t: list[str]) -> bool:
        if not f:
            return not t
        if f[0] == "#":
            return True  # matches the parent level and any number of children
        if not t:
            return False
        return (f[0] == "+" or f[0] == t[0]) and rec(f[1:], t[1:])

    return rec(topic_filter.split("/"), topic.split("/"))


_levels = st.sampled_from(["a", "b", "", "$s"])
_topics = st.lists(_levels, min_size=1, max_size=5).map("/".join)
_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])),
    st.lists(st.sampled_from(["a", "b", "", "+", "$s"]), min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@given(topic_filter=_filters, topic=_topics)
@settings(max_examples=500, deadline=None, database=None)
def test_topic_matches_agrees_with_reference(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) == reference_match(topic_filter, topic)


@given(topic=_topics)
@settings(max_examples=100, deadline=None, database=None)
def test_a_topic_matches_itself_and_hash(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) == (not topic.startswith("$"))


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # MQTT 3.1.1 section 4.7.1.2 (multi-level wildcard)
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis/player1", True),
        ("#", "/", True),
        ("sport/tennis/#", "sport/tennis", True),
        ("sport/tennis/#", "sport/tennisx", False),
        # section 4.7.1.3 (single-level wildcard)
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player2", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+", "sport", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/tennis/#", "sport/tennis/player1", True),
        ("sport/+/player1", "sport/tennis/player1", True),
        # section 4.7.2 (topics beginning with $)
        ("#", "$SYS/broker/uptime", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        # topic names are case sensitive and levels are exact
        ("ACCOUNTS", "Accounts", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("a/#/c", "a/b/c", False),  # '#' must be last: never matches
        # the project's own subscriptions
        ("edgeloop/v1/dev/+/telemetry", "edgeloop/v1/dev/pi-07/telemetry", True),
        ("edgeloop/v1/dev/+/telemetry", "edgeloop/v1/dev/pi-07/status", False),
        ("edgeloop/v1/dev/pi-07/#", "edgeloop/v1/dev/pi-07/desired", True),
        ("edgeloop/v1/dev/pi-07/#", "edgeloop/v1/dev/pi-08/desired", False),
    ],
)
def test_topic_matches_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
