"""The dashboard's own routes: its files at ``/``, ``/v1/fleet``, a device's series and OTA
history, and the one-time sign-in codes; on the seeded store of the API tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.api.routes.session import CodeBook, CodeRefusedError
from cloud_hub.store import open_store
from cloud_hub.store.base import Store, TelemetryRows
from shared.messages import Ota, Status
from simulators.harness import HubApi
from tests.cloud_hub.api.conftest import ADMIN_TOKEN, READ_TOKEN, T0, Hub

pytestmark = pytest.mark.timeout(30)


def test_the_dashboard_is_served_at_the_root_without_a_token(hub: Hub) -> None:
    page = hub.anon.get("/")
    assert page.status == 200
    assert b'<script type="module" src="/ui/app.js">' in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/ui/app.js", "/ui/api.js", "/ui/dom.js", "/ui/app.css"):
        assert hub.anon.get(asset).status == 200, asset
    js = hub.anon.get("/ui/vendor/uplot/uPlot.iife.min.js")
    assert js.status == 200 and b"uPlot" in js.body
    # Nothing the page loads comes from elsewhere: it works offline.
    for asset in ("/", "/ui/app.js", "/ui/app.css", "/ui/vendor/uplot/uPlot.min.css"):
        assert b"https://" not in hub.anon.get(asset).body, asset


def test_the_page_is_only_served_with_its_headers_and_never_puts_the_token_in_a_url(
    hub: Hub,
) -> None:
    # /ui/index.html sends the browser to / (with the policy), not the page without it.
    moved = hub.anon.get("/ui/index.html")
    assert (moved.status, moved.headers["location"], moved.body) == (308, "/", b"")
    page = hub.anon.get("/")
    assert "form-action 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # A submit before app.js loads must not send the token as ?token=...
    body = page.body.decode()
    assert '<form id="sign-in-form" method="post">' in body
    assert 'name="token"' not in body


def test_fleet_gives_each_device_its_gaps_losses_and_drift(hub: Hub) -> None:
    assert hub.anon.get("/v1/fleet").status == 401
    body = hub.read.get("/v1/fleet").json()
    listed = {d["device"] for d in hub.read.get("/v1/devices").json()["devices"]}
    assert set(body["devices"]) == listed
    online = body["devices"]["pi-online"]
    assert online["open_gaps"] == 1  # seq 13 never arrived
    assert online["drift_state"] == "drifting"
    assert online["drift_streams"] == ["temperature:level"]
    assert body["devices"]["pi-off"]["drift_state"] == "ok"
    assert body["devices"]["pi-new"]["drift_state"] is None
    assert body["window_s"] == 60.0
    assert body["readings_per_s"] == pytest.approx(
        sum(d["readings_per_s"] for d in body["devices"].values()), abs=0.01
    )


def test_readings_received_since_counts_by_arrival(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        f = np.zeros((3, 2), dtype=np.float32)
        s = np.full((3, 3), 1 / 3, dtype=np.float32)
        for seq, at in ((1, 100.0), (2, 200.0)):
            ts = np.arange(3, dtype=np.float64) + seq
            store.write_stream([TelemetryRows("d", 1, seq, "1", "1", ts, f, s, s, at)])
        assert store.readings_received_since(150.0) == {"d": 3}
        assert store.readings_received_since(0.0) == {"d": 6}
        assert store.readings_received_since(300.0) == {}
    finally:
        store.close()


def test_series_thins_the_readings_and_keeps_edge_and_heavy_side_by_side(hub: Hub) -> None:
    path = f"/v1/devices/pi-online/series?until={T0 + 3000}&window_s=3600"
    full = hub.read.get(path + "&points=5000").json()
    readings: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(100):
        page = hub.read.get(f"/v1/devices/pi-online/telemetry?until={T0 + 3000}{cursor}").json()
        readings += page["readings"]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert full["readings"] == len(readings) == len(full["ts"])
    urgent = hub.seeded.edge.manifest.output.urgent_index
    assert full["ts"] == [r["ts"] for r in readings]
    assert full["edge_score"] == pytest.approx([r["edge_scores"][urgent] for r in readings])
    assert full["heavy_score"] == pytest.approx([r["heavy_scores"][urgent] for r in readings])
    names = list(full["features"])
    assert names == list(hub.seeded.edge.manifest.input.features)[:3]
    assert full["features"][names[0]] == pytest.approx([r["features"][0] for r in readings])
    thin = hub.read.get(path + "&points=10").json()
    assert len(thin["ts"]) == 10 and thin["ts"][0] == full["ts"][0]
    assert thin["ts"][-1] == full["ts"][-1]
    assert thin["truncated"] and not full["truncated"]  # thinned: not every reading shown
    assert thin["readings"] == full["readings"] and full["other_model_readings"] == 0
    empty = hub.read.get("/v1/devices/pi-online/series").json()  # the last hour: none
    assert empty["readings"] == 0 and empty["ts"] == []
    assert hub.read.get("/v1/devices/nope/series").status == 404
    bad = hub.read.get("/v1/devices/pi-online/series?points=1")
    assert bad.status == 422 and "points" in bad.body.decode()


def test_ota_history_is_per_device_and_needs_a_known_device(hub: Hub) -> None:
    body = hub.read.get("/v1/devices/pi-online/ota").json()
    assert body == {"device": "pi-online", "count": 0, "reports": []}
    assert hub.read.get("/v1/devices/nope/ota").status == 404


def _ota(device: str, seq: int, state: str) -> Ota:
    return Ota(device, 1, seq, 1000.0 + seq, state, "desired_changed", "1.0.0", "1.1.0", "")


@contextmanager
def _served(store: Store) -> Iterator[HubApi]:
    """The API on ``store`` (filled by the test), with the read token."""
    from cloud_hub.api import ApiConfig, create_app  # noqa: PLC0415
    from tests.cloud_hub.api.server import live_server  # noqa: PLC0415

    app = create_app(store, ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN))
    with live_server(app) as anon:
        yield anon.with_token(READ_TOKEN)


def test_ota_history_gives_one_devices_newest_reports(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        states = ["downloading", "verifying", "trial", "committed"]
        store.write_stream(
            [_ota("a", q + 1, st) for q, st in enumerate(states)]
            + [_ota("b", q + 1, "downloading") for q in range(3)]
        )
        with _served(store) as api:
            body = api.get("/v1/devices/a/ota").json()
            two = api.get("/v1/devices/a/ota?limit=2").json()
            other = api.get("/v1/devices/b/ota").json()
        assert body["device"] == "a" and body["count"] == 4
        assert [r["state"] for r in body["reports"]] == states[::-1]
        assert [r["state"] for r in two["reports"]] == ["committed", "trial"]
        assert other["count"] == 3 and {r["state"] for r in other["reports"]} == {"downloading"}
    finally:
        store.close()


def test_a_sign_in_code_is_exchanged_once_for_the_token(hub: Hub) -> None:
    refused = hub.read.post("/v1/session/codes", json_body={"access": "read"})
    assert refused.status == 403 and "admin token" in refused.json()["detail"]
    made = hub.admin.post("/v1/session/codes", json_body={"access": "read"})
    assert made.status == 201
    code = made.json()["code"]
    assert made.json()["fragment"] == f"#code={code}"
    assert READ_TOKEN not in made.body.decode() and ADMIN_TOKEN not in made.body.decode()
    # No token needed: the code is the credential.
    got = hub.anon.post("/v1/session/exchange", json_body={"code": code})
    assert got.status == 200, got.body
    assert got.json() == {"access": "read", "token": READ_TOKEN}
    assert got.headers["cache-control"] == "no-store"
    again = hub.anon.post("/v1/session/exchange", json_body={"code": code})
    assert again.status == 400 and "already used" in again.json()["detail"]
    admin = hub.admin.post("/v1/session/codes", json_body={}).json()
    assert admin["access"] == "admin"
    assert hub.anon.post("/v1/session/exchange", json_body={"code": admin["code"]}).json()[
        "token"
    ] == (ADMIN_TOKEN)
    bad = hub.anon.post("/v1/session/exchange", json_body={"code": "not-a-code"})
    assert bad.status == 400 and "not one the hub issued" in bad.json()["detail"]
    empty = hub.anon.post("/v1/session/exchange", json_body={"code": ""})
    assert empty.status == 422


def test_a_code_expires() -> None:
    now = [1000.0]
    book = CodeBook(clock=lambda: now[0])
    code, expires = book.issue("admin", 120.0)
    assert expires == 1120.0
    now[0] = 1120.0
    with pytest.raises(CodeRefusedError, match="expired 0 s ago"):
        book.redeem(code)
    fresh, _ = book.issue("read", 120.0)
    now[0] += 119.0
    assert book.redeem(fresh) == "read"  # 119 s on the book's clock: still valid


def test_refused_codes_are_counted_by_reason_and_logged_without_the_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cloud_hub.api import ApiConfig, create_app  # noqa: PLC0415
    from cloud_hub.api.routes.session import CODEBOOK_KEY  # noqa: PLC0415
    from tests.cloud_hub.api.server import live_server  # noqa: PLC0415

    now = [1000.0]
    book = CodeBook(clock=lambda: now[0])
    used, _ = book.issue("read", 120.0)
    stale, _ = book.issue("read", 120.0)
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        app = create_app(store, ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN))
        setattr(app.state, CODEBOOK_KEY, book)
        with caplog.at_level("WARNING"), live_server(app) as anon:
            assert anon.post("/v1/session/exchange", json_body={"code": used}).status == 200
            for code in (used, "not-a-code", used):
                assert anon.post("/v1/session/exchange", json_body={"code": code}).status == 400
            now[0] += 121.0
            assert anon.post("/v1/session/exchange", json_body={"code": stale}).status == 400
        counters = store.counters()
        assert {k: v for k, v in counters.items() if k.startswith("session_codes")} == {
            "session_codes_refused:used": 2,
            "session_codes_refused:unknown": 1,
            "session_codes_refused:expired": 1,
        }
        warned = [r.getMessage() for r in caplog.records if "sign-in code" in r.getMessage()]
        assert len(warned) == 4 and "(expired)" in warned[-1]
        assert not [m for m in warned if used in m or stale in m]
    finally:
        store.close()


def test_the_dashboards_files_are_package_data() -> None:
    """A wheel (a non-editable install) carries every file the dashboard serves."""
    import fnmatch  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    import cloud_hub.dashboard  # noqa: PLC0415

    root = Path(__file__).resolve().parents[3]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cloud_hub.dashboard"]
    package_dir = Path(cloud_hub.dashboard.__file__).parent
    files = [
        p.relative_to(package_dir).as_posix()
        for p in (package_dir / "static").rglob("*")
        if p.is_file()
    ]
    assert "static/vendor/uplot/uPlot.iife.min.js" in files and "static/index.html" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_a_long_window_shows_its_newest_readings_and_says_it_was_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_hub.api.routes import fleet  # noqa: PLC0415

    kept = 500
    monkeypatch.setattr(fleet, "READINGS_KEPT", kept)
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        now = time.time()
        store.record_status(Status("d", 1, 0, "online", "0.1.0", "1", now, "m"), now)
        per, messages = 100, 40
        start = now - 1800
        store.write_stream(
            [_rows("d", q + 1, start + q + np.arange(per) / per) for q in range(messages)]
        )
        with _served(store) as api:
            body = api.get("/v1/devices/d/series?points=50").json()
        assert body["readings"] == per * messages and body["truncated"]
        assert len(body["ts"]) == 50
        assert body["ts"][-1] == pytest.approx(start + messages - 1 + (per - 1) / per)
        # The newest `kept` readings (whole messages): the oldest 35 messages are left out.
        assert body["ts"][0] == pytest.approx(start + messages - kept // per)
    finally:
        store.close()


def _rows(device: str, seq: int, ts: np.ndarray, n_features: int = 2) -> TelemetryRows:
    f = np.zeros((len(ts), n_features), dtype=np.float32)
    s = np.full((len(ts), 3), 1 / 3, dtype=np.float32)
    return TelemetryRows(device, 1, seq, "1", "1", ts, f, s, s, float(ts[-1]))


def test_a_window_across_an_update_to_other_inputs_plots_the_current_width(
    tmp_path: Path,
) -> None:
    """Readings of a model with 4 features, then (after an update) of one with 2: the
    plot shows the newest width's, and says how many of the other it left out."""
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        now = time.time()
        store.record_status(Status("d", 1, 0, "online", "0.1.0", "1", now, "m"), now)
        old = [_rows("d", q + 1, now - 600 + q + np.arange(10) / 10, 4) for q in range(3)]
        new = [_rows("d", q + 4, now - 300 + q + np.arange(10) / 10, 2) for q in range(2)]
        store.write_stream([*old, *new])
        with _served(store) as api:
            got = api.get("/v1/devices/d/series")
        assert got.status == 200, got.body
        body = got.json()
        assert body["readings"] == 50 and body["other_model_readings"] == 30
        assert len(body["ts"]) == 20 and body["ts"][0] == pytest.approx(now - 300)
        assert body["truncated"]
    finally:
        store.close()
