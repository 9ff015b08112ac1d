"""``GET /v1/devices/{device}``'s epoch: a live agent's, or null with the reason,
and the recordings replayed as the device listed by their own epochs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.store import open_store
from cloud_hub.store.base import Store
from shared.epochs import REPLAY_EPOCH_MIN
from simulators.harness import HubApi
from tests.cloud_hub.api.server import live_server
from tests.cloud_hub.store.samples import status, tele

pytestmark = pytest.mark.timeout(30)

TOKEN = "read-token-for-epoch-tests-0123456789"
REPLAY = REPLAY_EPOCH_MIN + 123_456_789
LIVE = 1_764_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    yield store
    store.close()


@pytest.fixture
def api(store: Store) -> Iterator[HubApi]:
    config = ApiConfig(read_token=TOKEN, admin_token=TOKEN + "-admin")
    with live_server(create_app(store, config)) as anon:
        yield anon.with_token(TOKEN)


def test_a_device_that_only_replayed_shows_no_epoch_and_its_replays(
    store: Store, api: HubApi
) -> None:
    # What an agent replaying a recording (--source csv) sends: birth, three messages.
    store.record_status(status("rec-1", REPLAY), 100.0)
    store.write_stream([tele("rec-1", REPLAY, s) for s in (1, 2, 3)])
    detail = api.get_json("/v1/devices/rec-1")
    assert detail["epoch"] is None and "replays" in detail["epoch_note"]
    assert detail["replays"] == [{"epoch": REPLAY, "acked_seq": 3}]
    assert detail["acked_seq"] == 0
    listed = {d["device"]: d for d in api.get_json("/v1/devices")["devices"]}
    assert listed["rec-1"]["epoch"] is None and listed["rec-1"]["epoch_note"]

    # Its live agent starts: its epoch is the device's; the replay stays listed.
    store.record_status(status("rec-1", LIVE), 200.0)
    store.write_stream([tele("rec-1", LIVE, s) for s in (1, 2)])
    detail = api.get_json("/v1/devices/rec-1")
    assert (detail["epoch"], detail["epoch_note"], detail["acked_seq"]) == (LIVE, None, 2)
    assert detail["replays"] == [{"epoch": REPLAY, "acked_seq": 3}]


def test_a_device_never_seen_has_no_epoch(store: Store, api: HubApi) -> None:
    store.add_device("pi-new")
    detail = api.get_json("/v1/devices/pi-new")
    assert detail["epoch"] is None and detail["epoch_note"]
    assert (detail["replays"], detail["acked_seq"]) == ([], 0)
