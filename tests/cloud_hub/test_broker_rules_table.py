"""The broker's rules table, without a broker: roles, topics, client ids, ACL lines."""

from __future__ import annotations

import pytest

from cloud_hub.broker.rules import HUB_CLIENT_ID, HUB_USER, BrokerRules, Role
from cloud_hub.ingest.transport import HubLink
from cloud_hub.service import HUB_USER as SERVICE_HUB_USER
from shared.topics import EDGE_TO_HUB, HUB_TO_EDGE, Kind, Topics

pytestmark = pytest.mark.timeout(10)

RULES = BrokerRules(fleet=frozenset({"sim"}))
T = Topics()


def test_identities_agree_with_the_hub() -> None:
    assert HUB_USER == SERVICE_HUB_USER
    defaults = HubLink.__init__.__kwdefaults__ or {}
    assert defaults["client_id"] == HUB_CLIENT_ID


def test_roles() -> None:
    assert RULES.role("hub") is Role.HUB
    assert RULES.role("sim") is Role.FLEET
    assert RULES.role("pi-07") is Role.DEVICE
    assert RULES.role("never-heard-of") is Role.DEVICE


@pytest.mark.parametrize("kind", sorted(EDGE_TO_HUB))
def test_a_device_publishes_its_own_edge_topics_only(kind: Kind) -> None:
    assert RULES.may_publish("a", T.topic("a", kind))
    refused = RULES.may_publish("a", T.topic("b", kind))
    assert not refused and "'b'" in refused.reason
    assert not RULES.may_subscribe("a", T.topic("a", kind))


@pytest.mark.parametrize("kind", sorted(HUB_TO_EDGE))
def test_a_device_reads_its_own_hub_topics_only(kind: Kind) -> None:
    assert RULES.may_subscribe("a", T.topic("a", kind))
    assert RULES.may_receive("a", T.topic("a", kind))
    assert not RULES.may_subscribe("a", T.topic("b", kind))
    assert not RULES.may_receive("a", T.topic("b", kind))
    assert not RULES.may_publish("a", T.topic("a", kind))  # retained desired/ack included


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "edgeloop/v1/#",
        "edgeloop/v1/dev/#",
        "edgeloop/v1/dev/+/desired",
        "edgeloop/v1/dev/+/telemetry",
        "edgeloop/v1/dev/a/#",
        "edgeloop/v1/dev/a/+",
        "+/v1/dev/a/desired",
        "edgeloop/+/dev/a/desired",
        "edgeloop/v1/dev/a/desired/extra",
        "other/root/dev/a/desired",
        "$SYS/#",
        "",
    ],
)
def test_wide_or_foreign_filters_are_refused_for_a_device(topic_filter: str) -> None:
    assert not RULES.may_subscribe("a", topic_filter)


def test_the_hub() -> None:
    for kind in EDGE_TO_HUB:
        assert RULES.may_subscribe("hub", T.device_filter(kind))
        assert not RULES.may_publish("hub", T.topic("a", kind))
    for kind in HUB_TO_EDGE:
        assert RULES.may_publish("hub", T.topic("a", kind))
        assert not RULES.may_subscribe("hub", T.device_filter(kind))
    assert not RULES.may_subscribe("hub", "edgeloop/v1/#")
    assert not RULES.may_subscribe("hub", "edgeloop/v1/dev/+/+")


def test_a_fleet_account_acts_as_any_device_but_never_as_the_hub() -> None:
    for kind in EDGE_TO_HUB:
        assert RULES.may_publish("sim", T.topic("a", kind))
        assert not RULES.may_subscribe("sim", T.device_filter(kind))
    for kind in HUB_TO_EDGE:
        assert RULES.may_subscribe("sim", T.topic("a", kind))
        assert RULES.may_subscribe("sim", T.device_filter(kind))
        assert not RULES.may_publish("sim", T.topic("a", kind))
    assert not RULES.may_publish("sim", "edgeloop-link-test/data")


def test_root_patterns_take_one_concrete_level() -> None:
    rules = BrokerRules(roots=("edgeloop/v1", "edgeloop-test/+"))
    assert rules.may_publish("a", "edgeloop-test/abc/dev/a/telemetry")
    assert not rules.may_publish("a", "edgeloop-test/abc/def/dev/a/telemetry")
    assert not rules.may_subscribe("a", "edgeloop-test/+/dev/a/desired")
    assert rules.may_subscribe("a", "edgeloop-test/x1/dev/a/desired")


def test_client_ids() -> None:
    assert RULES.may_connect("hub", HUB_CLIENT_ID)
    assert RULES.may_connect("hub", "hub-drain")
    assert not RULES.may_connect("a", HUB_CLIENT_ID)
    assert not RULES.may_connect("sim", HUB_CLIENT_ID)
    assert RULES.may_connect("a", "a")
    refused = RULES.may_connect("a", "b")
    assert not refused and "client id 'a'" in refused.reason
    assert RULES.may_connect("sim", "a")


def test_reserved_names() -> None:
    for name in ("hub", "edgeloop-hub", "sim"):
        assert RULES.reserved_reason(name)
    assert RULES.reserved_reason("pi-07") is None


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="hub's account"):
        BrokerRules(fleet=frozenset({"hub"}))
    with pytest.raises(ValueError, match="root"):
        BrokerRules(roots=())


def test_mosquitto_acl_lines_follow_the_table() -> None:
    acl = RULES.mosquitto_acl_file(["a", "sim"])
    blocks = acl.strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "user hub"
    hub = blocks[0].splitlines()
    assert "topic read edgeloop/v1/dev/+/telemetry" in hub
    assert "topic write edgeloop/v1/dev/+/desired" in hub
    assert not any(line.endswith("#") for line in acl.splitlines())
    device = RULES.mosquitto_acl("a").splitlines()
    assert device[0] == "user a"
    assert sorted(device[1:]) == sorted(
        [f"topic write {T.topic('a', k)}" for k in EDGE_TO_HUB]
        + [f"topic read {T.topic('a', k)}" for k in HUB_TO_EDGE]
    )
    assert "topic write edgeloop/v1/dev/+/telemetry" in RULES.mosquitto_acl("sim")
