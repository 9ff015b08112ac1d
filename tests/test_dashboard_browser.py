"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, on a real hub
(embedded broker) with three real agents.

Playwright cannot download its own browser here, so it launches ``/usr/bin/chromium``
(``apt-get install chromium``; .ci/run installs it). Without it the module is skipped,
and under CI=true it fails instead: CI must run these tests.

The numbers the fleet, device, ingest and rollouts pages show are compared with the
API's answers of the same refresh (see "the page agrees with the API" below), and the
text contrast of every page is measured in both colour schemes.

Screenshots of every page go to the test's tmp directory; with
``EDGELOOP_SCREENSHOTS=DIR`` (``docs/screenshots`` for the README's) they are written
there too.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cloud_hub.keys import load_signing_key
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from shared.topics import Kind, Topics
from simulators.harness import AgentProcess, HubProcess
from simulators.packages import variant, zip_package
from tests.brokers import require_tool
from tests.cloud_hub.test_broker import device_of
from tests.conftest import ModelPaths
from tests.contrast import (
    contrast_ratio,
    effective_background,
    parse_css_color,
    required_ratio,
    text_color,
)
from tests.test_desired_state import hub_with_keys

pytestmark = [pytest.mark.timeout(150), pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 30_000
NEW = "1.2.0"
SLOW = "1.3.0"
"""A version whose rollout soaks for ten minutes: it stays running while the buttons act."""
CALM = ("press-a", "press-b")
JUNK = "press-junk"
"""Sends one payload that is not JSON (the ingest page's comparison)."""
URGENT = "press-urgent"
"""Its simulated machine hits urgent conditions often, and its action only logs (the
machine runs on): urgent events keep arriving while the tests run."""


def _chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    return require_tool(found, "chromium", "the browser tests")


@dataclass
class Rig:
    hub: HubProcess
    edge: str
    page: Any
    shots: Path
    browser: Any


def _agent(
    hub: HubProcess, model: Path, tmp: Path, secrets: dict[str, str], device: str, *args: str
) -> AgentProcess:
    assert hub.broker_port is not None
    return AgentProcess(
        model,
        tmp / "agents" / device,
        broker=BrokerEndpoint("127.0.0.1", hub.broker_port, device, secrets[device]),
        device=device,
        args=[
            "--hub-url",
            hub.api.base_url,
            "--heartbeat-s",
            "1",
            "--rate-hz",
            "20",
            "--ota-trial-readings",
            "10",
            "--ota-trial-s",
            "1",
            "--trust",
            str(hub.data_dir / "keys" / "signing.pub"),
            *args,
        ],
        log_level="INFO",
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, model_packages: ModelPaths) -> Iterator[Rig]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("dashboard")
    hub, secrets = hub_with_keys(tmp, model_packages, (*CALM, URGENT))
    edge = load_package(model_packages.edge).manifest
    key = load_signing_key(hub.data_dir / "keys" / "signing.key")
    newer = variant(model_packages.edge, tmp / "newer", key, NEW)
    slow = variant(model_packages.edge, tmp / "slow", key, SLOW)
    agents: list[AgentProcess] = []
    with hub, sync_playwright() as pw:
        for package in (newer, slow):
            assert hub.admin_api.post("/v1/models", body=zip_package(package)).status == 201
        for device in CALM:
            agents.append(
                _agent(hub, model_packages.edge, tmp, secrets, device, "--sim-urgent-rate", "0")
            )
        agents.append(
            _agent(hub, model_packages.edge, tmp, secrets, URGENT, "--sim-urgent-rate", "0.02")
        )
        for a in agents:
            a.start()
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            # The tests' waits evaluate JavaScript strings, which the page's Content
            # Security Policy forbids; test_the_page_works_under_its_own_policy runs
            # without this.
            context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield Rig(hub, edge.name, page, tmp / "screenshots", browser)
        finally:
            browser.close()
            for a in agents:
                a.stop()


def _shot(rig: Rig, name: str) -> None:
    rig.shots.mkdir(exist_ok=True)
    rig.page.screenshot(path=str(rig.shots / f"{name}.png"), full_page=True)
    wanted = os.environ.get("EDGELOOP_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(rig.shots / f"{name}.png", Path(wanted) / f"{name}.png")


def _sign_in(rig: Rig, token: str) -> None:
    page = rig.page
    page.goto(rig.hub.base_url + "/")
    if page.is_visible("#sign-out"):
        page.click("#sign-out")
    page.fill("#token-input", token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def test_a_wrong_token_is_refused_with_the_hubs_reason(rig: Rig) -> None:
    _sign_in_attempt = rig.page
    _sign_in_attempt.goto(rig.hub.base_url + "/")
    _sign_in_attempt.fill("#token-input", "not-the-token")
    _sign_in_attempt.click("#sign-in-form button[type=submit]")
    message = _sign_in_attempt.locator("#sign-in-message")
    message.wait_for()
    assert "not one of this hub's tokens" in message.inner_text()
    # Not signed in: no "Sign out" (its flex display used to beat the hidden attribute).
    assert not _sign_in_attempt.is_visible("#sign-out")
    _shot(rig, "sign-in")


def test_the_fleet_page_fills_with_the_devices_and_agrees_with_the_api(rig: Rig) -> None:
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    rig.hub.wait_until(
        "every agent is online",
        lambda: rig.hub.api.get_json("/v1/devices")["states"].get("online") == 3,
        timeout=60,
    )
    page.wait_for_function("document.querySelectorAll('#fleet-table tbody tr').length === 3")
    page.wait_for_function(
        "document.querySelector('[data-state-count=online] strong')?.textContent === '3'"
    )
    # Devices and model versions are stable; states may flip between the API's answer
    # and the page's next refresh, so those are compared until they agree (bounded).
    api = rig.hub.api.get_json("/v1/devices")
    versions = {
        row.get_attribute("data-device"): row.locator("td").nth(2).inner_text()
        for row in page.locator("#fleet-table tbody tr").all()
    }
    assert versions == {d["device"]: f"{d['model']} {d['model_version']}" for d in api["devices"]}
    deadline = time.monotonic() + 15
    while True:
        api = rig.hub.api.get_json("/v1/devices")
        shown_states = {
            row.get_attribute("data-device"): row.get_attribute("data-state")
            for row in page.locator("#fleet-table tbody tr").all()
        }
        counts = {
            state: page.locator(f"[data-state-count={state}] strong").inner_text()
            for state in api["states"]
        }
        agree = shown_states == {d["device"]: d["state"] for d in api["devices"]} and counts == {
            s: str(n) for s, n in api["states"].items()
        }
        if agree or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert agree, (shown_states, counts, api["states"])
    # The filter narrows the table.
    page.fill("#filter-text", URGENT)
    page.wait_for_function("document.querySelectorAll('#fleet-table tbody tr').length === 1")
    page.fill("#filter-text", "")
    page.wait_for_function("document.querySelectorAll('#fleet-table tbody tr').length === 3")
    _shot(rig, "fleet")
    # From the keyboard (a fresh load, still signed in): the first Tab reaches the skip
    # link, then the pages' links.
    page.reload()
    page.wait_for_function("document.querySelectorAll('#fleet-table tbody tr').length === 3")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('href')") == "#/fleet"
    # Focus on a device link and on the state filter survives the page's refreshes
    # (every 3 s), and routine updates are not announced (no live region).
    link = f"#fleet-table a[href='#/device/{URGENT}']"
    for selector in (link, "#filter-state"):
        page.focus(selector)
        stamp = page.locator("#status").inner_text()
        page.wait_for_function(f"document.querySelector('#status').textContent !== {stamp!r}")
        page.wait_for_function(
            f"document.querySelector('#status').textContent !== {page.locator('#status').inner_text()!r}"
        )
        assert page.evaluate(f"document.activeElement.matches({selector!r})"), selector
    assert page.get_attribute("#status", "aria-live") is None
    assert page.get_attribute("#status", "role") is None
    page.keyboard.press("Escape")
    page.emulate_media(color_scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="light")
    assert background == "rgb(18, 20, 23)"  # the dark scheme's --bg


def test_a_device_page_plots_its_readings_and_marks_urgent_events(rig: Rig) -> None:
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    page.click(f"a[href='#/device/{URGENT}']")
    page.wait_for_function(
        "Number(document.querySelector('#plot-score')?.dataset.points || 0) > 20"
    )
    # An urgent event appears: in the list and as a mark on the plot.
    page.wait_for_function(
        "Number(document.querySelector('#plot-score')?.dataset.events || 0) > 0", timeout=60_000
    )
    assert page.locator("#events tbody tr").count() > 0
    assert page.locator("#plots canvas").count() >= 2
    health = page.locator("dl.kv").nth(1).inner_text()
    assert " ms" in health and " %" in health and " MB" in health
    # The plots follow the dark scheme: drawn anew with the stylesheet's dark colours.
    plot = page.locator("#plot-score")
    light = (plot.get_attribute("data-axis-color"), plot.get_attribute("data-grid-color"))
    assert all(light), light
    page.emulate_media(color_scheme="dark")
    try:
        page.wait_for_function(
            f"document.querySelector('#plot-score').dataset.axisColor !== {light[0]!r}"
        )
        dark = (plot.get_attribute("data-axis-color"), plot.get_attribute("data-grid-color"))
        assert dark[0] != light[0] and dark[1] != light[1], (light, dark)
        assert dark[0] == page.evaluate(
            "getComputedStyle(document.documentElement).getPropertyValue('--plot-axis').trim()"
        )
    finally:
        page.emulate_media(color_scheme="light")
    page.wait_for_function(
        f"document.querySelector('#plot-score').dataset.axisColor === {light[0]!r}"
    )
    _shot(rig, "device")


def test_a_new_urgent_event_appears_on_the_device_page_without_a_reload(rig: Rig) -> None:
    """Live: the events shown at load are noted, and a newer one the agent raises
    appears on the same page (no reload), in the table and as a mark, and is the
    API's."""
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    page.click(f"a[href='#/device/{URGENT}']")
    page.wait_for_selector("#page[data-loaded=device]")
    page.evaluate("window.edgeloopNotReloaded = true")
    rows = page.locator("#events tr[data-event]")
    seen = [r.get_attribute("data-event") for r in rows.all()]
    marks = int(page.get_attribute("#plot-score", "data-events") or 0)
    page.wait_for_function(
        "seen => [...document.querySelectorAll('#events tr[data-event]')]"
        ".some(r => !seen.includes(r.dataset.event))",
        arg=seen,
        timeout=20_000,
    )
    assert page.evaluate("window.edgeloopNotReloaded") is True
    new = [e for e in (r.get_attribute("data-event") for r in rows.all()) if e not in seen]
    assert new and int(page.get_attribute("#plot-score", "data-events") or 0) > marks
    events = rig.hub.api.get_json(f"/v1/events?device={URGENT}&kind=urgent&order=desc")
    assert new[0] in {f"{e['epoch']}:{e['seq']}" for e in events["events"]}


def _start_rollout(rig: Rig, version: str, devices: tuple[str, ...] = (), **fields: str) -> None:
    """Fill the rollouts page's form (``fields``: more inputs by selector) and submit it."""
    page = rig.page
    page.goto(rig.hub.base_url + "/#/rollouts")
    page.fill("#ro-model", rig.edge)
    page.fill("#ro-version", version)
    for selector, value in fields.items():
        page.fill(selector, value)
    page.fill("#ro-devices", ", ".join(devices))
    page.click("#rollout-form button[type=submit]")


def test_the_read_token_is_refused_a_rollout_with_a_clear_message(rig: Rig) -> None:
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    _start_rollout(rig, NEW)
    message = page.locator("#rollout-message")
    page.wait_for_function("document.querySelector('#rollout-message').textContent.length > 0")
    assert "needs the admin token" in message.inner_text()
    assert rig.hub.api.get_json("/v1/rollouts")["count"] == 0


def test_the_admin_token_starts_a_rollout_and_its_cohort_advances(rig: Rig) -> None:
    code = rig.hub.admin_api.request(
        "POST", "/v1/session/codes", json_body={"access": "admin"}
    ).json()["code"]
    page = rig.page
    page.goto("about:blank")
    # The one-time link signs the browser in; the code leaves the address bar.
    page.goto(f"{rig.hub.base_url}/#code={code}")
    page.wait_for_selector("#nav:not([hidden])")
    assert "code=" not in page.url
    assert page.evaluate("sessionStorage.getItem('edgeloop.token')") == rig.hub.admin_token
    _start_rollout(rig, NEW, **{"#ro-cohorts": "50, 100", "#ro-min-readings": "5"}, devices=CALM)
    page.wait_for_function(
        "document.querySelector('#rollout-notice').textContent.startsWith('Started')"
    )
    page.wait_for_selector("[data-rollout]")
    try:
        page.wait_for_function(
            "Number(document.querySelector('[data-rollout]').dataset.cohort) >= 2", timeout=60_000
        )
    except Exception:
        raise AssertionError(
            f"the rollout did not advance: {rig.hub.api.get_json('/v1/rollouts')}"
        ) from None
    rollout = rig.hub.api.get_json("/v1/rollouts")["rollouts"][0]
    assert rollout["cohort"] >= 2
    _shot(rig, "rollouts")


def test_the_buttons_pause_resume_and_abort_a_rollout(rig: Rig) -> None:
    _sign_in(rig, rig.hub.admin_token)
    page = rig.page
    _start_rollout(rig, SLOW, **{"#ro-cohorts": "100", "#ro-soak": "600"}, devices=(URGENT,))
    section = page.locator(f"[data-rollout*='{SLOW}']")
    section.wait_for()
    for button, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        section.locator(f"button[data-action={button}]").click()
        page.wait_for_function(
            f"document.querySelector(\"[data-rollout*='{SLOW}']\").dataset.state === '{state}'"
        )
    found = [r for r in rig.hub.api.get_json("/v1/rollouts")["rollouts"] if r["version"] == SLOW]
    assert [d["what"] for d in found[0]["decisions"]][-3:] == ["paused", "resumed", "aborted"]


def test_the_page_works_under_its_own_policy(rig: Rig) -> None:
    """No bypass here: the Content Security Policy of / (only the hub's own files and
    API) is enforced, and nothing the page does breaks it."""
    context = rig.browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        complaints: list[str] = []
        page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
        page.goto(rig.hub.base_url + "/")
        page.fill("#token-input", rig.hub.read_token)
        page.click("#sign-in-form button[type=submit]")
        page.locator("#fleet-table tbody tr").nth(2).wait_for()
        page.click(f"a[href='#/device/{CALM[0]}']")
        page.locator("#plot-score canvas").wait_for()
        plot = page.locator("#plot-score")
        deadline = time.monotonic() + WAIT_MS / 1000
        while int(plot.get_attribute("data-points") or 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert int(plot.get_attribute("data-points") or 0) > 0
        assert not [c for c in complaints if "Content Security Policy" in c], complaints
    finally:
        context.close()


@pytest.mark.parametrize("name", ["drift", "models", "pipeline", "ingest"])
def test_every_other_page_renders_without_an_error(rig: Rig, name: str) -> None:
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    page.goto(f"{rig.hub.base_url}/#/{name}")
    # The page's own refresh, not the previous page's status: route() clears both.
    page.wait_for_selector(f"#page[data-loaded={name}]")
    assert page.locator(f"#{name}").evaluate("e => e.childElementCount") > 0
    assert page.locator("#status").inner_text().startswith("Updated")
    assert page.locator("#status-error").inner_text() == ""
    if name == "models":
        assert page.locator("#models tbody tr").count() >= 3
        # Each version's whole lineage, from the list's own answer (no request per row).
        for m in rig.hub.api.get_json("/v1/models")["models"]:
            cells = page.locator(f"#models tr[data-model='{m['name']} {m['version']}'] > *")
            lineage = m["lineage"]
            assert cells.all_inner_texts()[4:8] == [
                lineage["parent"] or "—",
                lineage["data_window"] or "—",
                lineage["data_hash"][:12] or "—",
                lineage["pipeline_run"] or "—",
            ]
    if name == "drift":
        # Device counts move while rollouts run: compared until they agree (bounded).
        deadline = time.monotonic() + 10
        while True:
            versions = rig.hub.api.get_json("/v1/drift")["versions"]
            want = [f"{v['model']} {v['version']}: {v['devices']} devices" for v in versions]
            shown = page.locator("#drift h2").all_inner_texts()
            if shown == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert shown == want
    if name == "pipeline":
        runs = rig.hub.api.get_json("/v1/pipeline/runs")
        text = page.locator("#pipeline").inner_text()
        if runs["runs"]:
            assert f"{runs['count']} runs, newest first" in text
        else:
            assert "No retraining run yet." in text
    if name == "ingest":
        # Dead letters need the admin token: the read token sees why not.
        page.wait_for_function(
            "document.querySelector('#dead-letters').textContent.includes('needs the admin token')"
        )
    _shot(rig, name)


def test_a_malformed_address_shows_unknown_page(rig: Rig) -> None:
    _sign_in(rig, rig.hub.read_token)
    page = rig.page
    page.goto(f"{rig.hub.base_url}/#/device/%E0%A4%A")
    page.wait_for_selector("#page h1:text('Unknown page')")
    assert page.is_visible("#nav")  # still signed in, the page not blanked


def test_a_hub_without_tokens_signs_in_from_a_link(rig: Rig) -> None:
    """``--insecure-dev`` without tokens: the exchange gives token null, and the page is
    signed in all the same. Simulated on this hub: the exchange answers as that hub
    would, and the hub's read token is added to the page's requests on the way out."""
    context = rig.browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.route(
            "**/v1/session/exchange",
            lambda route: route.fulfill(
                status=200,
                content_type="application/json",
                body='{"access": "admin", "token": null}',
            ),
        )

        sent: list[str | None] = []

        def add_token(route: Any) -> None:
            sent.append(route.request.headers.get("authorization"))
            headers = {**route.request.headers, "authorization": f"Bearer {rig.hub.read_token}"}
            route.continue_(headers=headers)

        page.route("**/v1/devices*", add_token)
        page.route("**/v1/fleet", add_token)
        page.goto(f"{rig.hub.base_url}/#code=any-code")
        page.wait_for_selector("#nav:not([hidden])")
        page.locator("#fleet-table tbody tr").nth(2).wait_for()
        assert page.is_hidden("#sign-in")
        assert page.locator("#access").inner_text() == "Signed in (admin token)"
        assert sent and set(sent) == {None}  # the page had no token to send
        # Signing out forgets the access: signed in again with a token, the label does
        # not keep saying "admin".
        page.click("#sign-out")
        page.wait_for_selector("#sign-in:not([hidden])")
        assert page.locator("#access").inner_text() == ""
        page.fill("#token-input", rig.hub.read_token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#nav:not([hidden])")
        assert page.locator("#access").inner_text() == "Signed in"
    finally:
        context.close()


# ------------------------------------------------------------------ the page agrees with the API
#
# The numbers move while the hub runs (the agents publish 20 readings/s each), so the
# page's figures are compared with the API's answers *of the refresh the page drew*: the
# page runs on a paused clock (Playwright's), so it refreshes only when the test advances
# that clock by one poll interval, and the test keeps the answers the page's own requests
# got in that refresh. Nothing can move between the two: the comparison is exact (to the
# digits shown), with no tolerance to tune and nothing to flake. What the test's own
# requests to the API must agree on with those answers is what does not move by itself
# (devices, model versions, OTA reports, rollouts' cohorts and gates, dead letters).

POLL_MS = 3000
"""The page's poll interval (app.js POLL_MS)."""

_TABLES_JS = """(root) => [...root.querySelectorAll('table')].map((table) => {
  const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim());
  const rows = [...table.querySelectorAll('tbody tr')].map((tr) => {
    const cells = {};
    [...tr.children].forEach((c, i) => {
      const value = c.querySelector('[data-value]');
      const time = c.querySelector('time');
      cells[heads[i]] = { text: c.textContent.trim(), value: value ? value.dataset.value : null,
        time: time ? time.getAttribute('datetime') : null };
    });
    return { attrs: { ...tr.dataset }, cells };
  });
  return { caption: table.caption ? table.caption.textContent.trim() : '', rows };
})"""

_KV_JS = """(dl) => Object.fromEntries([...dl.querySelectorAll('dt')].map((dt) => {
  const dd = dt.nextElementSibling;
  const value = dd.querySelector('[data-value]');
  const time = dd.querySelector('time');
  return [dt.textContent.trim(), { text: dd.textContent.trim(), value: value ? value.dataset.value : null,
    time: time ? time.getAttribute('datetime') : null }];
}))"""

Cell = dict[str, Any]
Row = dict[str, Any]


@dataclass
class Held:
    """A page of its own (same hub, same browser) whose refreshes the test drives."""

    page: Any
    answers: list[Any]

    def show(self, where: str | None = None) -> dict[str, Any]:
        """Draw one refresh (of the page at ``where``, a ``#/...`` address, or of the page
        shown) and return the API's answers it drew, by path."""
        before = int(self.page.get_attribute("#page", "data-tick") or 0)
        self.answers.clear()
        if where is None:
            self.page.clock.run_for(POLL_MS)
        else:
            self.page.evaluate(f"location.hash = {where!r}")
        self.page.wait_for_function(
            f"Number(document.querySelector('#page').dataset.tick || 0) > {before}"
        )
        out: dict[str, Any] = {}
        for r in self.answers:
            path = urlsplit(r.url).path
            if path.startswith("/v1/") and r.request.method == "GET" and r.ok:
                out[path] = r.json()
        return out

    def tables(self, root: str) -> list[dict[str, Any]]:
        """The tables under ``root``: caption and rows (each cell's text, its state value
        and its <time>'s datetime), cells by column header."""
        tables: list[dict[str, Any]] = self.page.locator(root).evaluate(_TABLES_JS)
        return tables

    def table(self, root: str, caption: str) -> list[Row]:
        """The rows of the table under ``root`` whose caption starts with ``caption``."""
        found = [t for t in self.tables(root) if t["caption"].startswith(caption)]
        assert len(found) == 1, (caption, [t["caption"] for t in self.tables(root)])
        rows: list[Row] = found[0]["rows"]
        return rows

    def kv(self, selector: str) -> dict[str, Cell]:
        pairs: dict[str, Cell] = self.page.locator(selector).evaluate(_KV_JS)
        return pairs


@contextmanager
def _held_page(rig: Rig, token: str) -> Iterator[Held]:
    context = rig.browser.new_context(
        viewport={"width": 1280, "height": 900}, bypass_csp=True, locale="en-US"
    )
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        # Paused from the start: the page's timers (its poll) fire only when run_for says.
        page.clock.install()
        page.clock.pause_at(time.time() + 1)
        answers: list[Any] = []
        # A Python function: Playwright cannot wrap a builtin such as answers.append.
        page.on("response", lambda r: answers.append(r))  # noqa: PLW0108
        page.goto(rig.hub.base_url + "/")
        page.fill("#token-input", token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#page[data-tick]")
        yield Held(page, answers)
    finally:
        context.close()


def _number(text: str) -> float:
    """The first number in a shown text (en-US: ``1,234.5``)."""
    found = re.search(r"-?[\d,]*\d(?:\.\d+)?", text)
    assert found, f"no number in {text!r}"
    return float(found.group().replace(",", ""))


def _same(cell: Cell | str, value: float, digits: int = 0, unit: str = "") -> None:
    """The shown number is ``value`` to the ``digits`` shown (the browser rounds half away
    from zero, Python's format half to even: compared as numbers, not strings)."""
    text = cell if isinstance(cell, str) else cell["text"]
    assert abs(_number(text) - value) <= 0.5 * 10**-digits + 1e-9, (text, value)
    if digits:
        assert re.search(rf"\.\d{{{digits}}}\b", text), (text, digits)
    assert text.endswith(unit), (text, unit)


def _same_time(cell: Cell, ts: float | None) -> None:
    assert ts is not None and cell["time"], (cell, ts)
    shown = datetime.fromisoformat(cell["time"].replace("Z", "+00:00")).timestamp()
    assert abs(shown - ts) < 0.001, (cell, ts)


def _same_js(shown: str, value: Any) -> None:
    """``shown`` is JavaScript's ``String(value)`` ("—" for null): numbers compared as
    numbers (it writes 600.0 as "600", and the shortest text that reads back the same)."""
    if value is None:
        assert shown == "—"
    elif isinstance(value, bool):
        assert shown == str(value).lower()
    elif isinstance(value, int | float):
        assert float(shown) == value, (shown, value)
    else:
        assert shown == str(value)


def _by(rows: list[Row], column: str) -> dict[str, Cell]:
    return {r["cells"][column]["text"]: r["cells"] for r in rows}


def _wait_for_traffic(rig: Rig) -> None:
    """Every agent online and sending, so the figures compared are not all zero."""

    def flowing() -> bool:
        fleet = rig.hub.api.get_json("/v1/fleet")["devices"]
        states = rig.hub.api.get_json("/v1/devices")["states"]
        return states.get("online") == 3 and all(f["readings_per_s"] > 0 for f in fleet.values())

    rig.hub.wait_until("every agent online and sending", flowing, timeout=60)


def test_the_fleet_page_shows_the_apis_numbers_of_the_same_refresh(rig: Rig) -> None:
    _wait_for_traffic(rig)
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show()
        listed, fleet = answers["/v1/devices"], answers["/v1/fleet"]
        rows = held.table("#fleet-table", "")
        shown = {r["attrs"]["device"]: r for r in rows}
        assert set(shown) == {d["device"] for d in listed["devices"]} == set(fleet["devices"])
        for d in listed["devices"]:
            row, f = shown[d["device"]], fleet["devices"][d["device"]]
            cells = row["cells"]
            assert row["attrs"]["state"] == cells["State"]["value"] == d["state"]
            assert cells["Model version"]["text"] == f"{d['model']} {d['model_version']}"
            _same_time(cells["Last seen"], d["last_seen"])
            _same(cells["Readings/s"], f["readings_per_s"], 1, " /s")
            _same(cells["Open gaps"], f["open_gaps"])
            _same(cells["Lost readings"], f["lost_readings"])
            drift = cells["Drift"]
            assert drift["value"] == f["drift_state"] or (
                f["drift_state"] is None and drift["text"] == "—"
            )
        counts = {
            li.get_attribute("data-state-count"): li.locator("strong").inner_text()
            for li in held.page.locator("[data-state-count]").all()
        }
        assert counts == {s: str(n) for s, n in listed["states"].items()}
        assert held.page.locator("[data-total] strong").inner_text() == str(listed["count"])
        assert sum(listed["states"].values()) == listed["count"] == 3
        # The test's own request: the same devices on the same model versions.
        again = rig.hub.api.get_json("/v1/devices")["devices"]
        assert {d["device"]: d["model_version"] for d in again} == {
            d["device"]: d["model_version"] for d in listed["devices"]
        }


def _ota_reports(rig: Rig, device: str) -> int:
    return int(rig.hub.api.get_json(f"/v1/devices/{device}/ota")["count"])


def test_the_device_page_shows_the_apis_health_ota_and_drift(rig: Rig) -> None:
    _wait_for_traffic(rig)
    # The device with the most OTA history (the rollout tests update some), so its rows
    # are compared when there are any.
    device = max((*CALM, URGENT), key=lambda d: (_ota_reports(rig, d), d == URGENT))
    rig.hub.wait_until(
        f"a closed drift window of {device}",
        lambda: bool(rig.hub.api.get_json(f"/v1/devices/{device}/drift")["windows"]),
        timeout=60,
    )
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show(f"#/device/{device}")
        d = answers[f"/v1/devices/{device}"]
        drift = answers[f"/v1/devices/{device}/drift"]
        ota = answers[f"/v1/devices/{device}/ota"]
        summary, health = held.kv("#page dl.kv >> nth=0"), held.kv("#page dl.kv >> nth=1")
        assert summary["State"]["value"] == d["state"]
        assert summary["Model"]["text"] == f"{d['model']} {d['model_version']}"
        _same(summary["Open gaps"], len(d["gaps"]), 0, "+" if len(d["gaps"]) >= 100 else "")
        _same_time(summary["Last seen"], d["last_seen"])
        hl = d["last_health"]
        _same(health["Latency p99"], hl["latency_p99_us"] / 1000, 2, " ms")
        _same(health["CPU"], hl["cpu_pct"], 1, " %")
        _same(health["Memory (RSS)"], hl["rss_mb"], 1, " MB")
        _same(health["Outbox depth"], hl["outbox_depth"], 0, " messages")
        _same_time(health["Heartbeat"], hl["ts"])

        # OTA history: one row per report, newest first, as the API gives them.
        reports = ota["reports"]
        if reports:
            rows = held.table("#ota", "Newest first")
            assert len(rows) == len(reports)
            for row, r in zip(rows, reports, strict=True):
                c = row["cells"]
                _same_time(c["Time"], r["ts"])
                assert c["State"]["value"] == r["state"]
                assert (c["From"]["text"], c["To"]["text"]) == (
                    r["from_version"] or "—",
                    r["to_version"] or "—",
                )
                assert (c["Reason"]["text"], c["Detail"]["text"]) == (r["reason"], r["detail"])
        else:
            assert "No updates reported." in held.page.locator("#ota").inner_text()
        # Reports do not change once made: the test's own request has them (and maybe newer).
        again = rig.hub.api.get_json(f"/v1/devices/{device}/ota?limit=1000")["reports"]
        assert all(r in again for r in reports)

        # Drift: the state per model version, and per feature the newest window's PSI
        # and detector statistic.
        states = held.page.locator("#device-drift > p .state").evaluate_all(
            "spans => spans.map((s) => s.dataset.value)"
        )
        assert states == [v["state"] for v in drift["versions"]]
        window = drift["windows"][0]
        psi = _by(held.table("#device-drift", "PSI per feature"), "Feature")
        assert set(psi) == set(window["psi"])
        for feature, value in window["psi"].items():
            _same(psi[feature]["PSI"], value, 3)
        caption = held.tables("#device-drift")[0]["caption"]
        assert f"({window['readings']:,} readings)" in caption
        if window["statistic"]:
            stats = _by(held.table("#device-drift", "Detector statistic"), "Channel")
            assert set(stats) == set(window["statistic"])
            for channel, value in window["statistic"].items():
                _same(stats[channel]["Statistic"], value, 2)


def test_the_ingest_page_shows_the_apis_rates_invalid_reasons_and_dead_letters(rig: Rig) -> None:
    # A payload that is not JSON from a device provisioned for it: an invalid reason and
    # a dead letter to compare. A device that sends nothing valid is not in the fleet
    # (its counters do not make it a device), so the other tests still see three.
    with device_of(rig.hub, JUNK, Topics()) as junk:
        junk.publish(Topics().topic(JUNK, Kind.TELEMETRY), b"this is not json")
    rig.hub.wait_until(
        "the bad payload counted",
        lambda: rig.hub.api.get_json("/v1/stats/ingest")["invalid"].get("not_json", 0) > 0,
        timeout=30,
    )
    assert JUNK not in {d["device"] for d in rig.hub.api.get_json("/v1/devices")["devices"]}
    with _held_page(rig, rig.hub.admin_token) as held:
        answers = held.show("#/ingest")
        s, fleet = answers["/v1/stats/ingest"], answers["/v1/fleet"]
        letters = answers["/v1/dead-letters"]
        totals, live_kv = held.kv("#ingest dl.kv >> nth=0"), held.kv("#ingest dl.kv >> nth=1")
        _same(totals["Readings/s (last minute)"], fleet["readings_per_s"], 1, " /s")
        _same(totals["Messages received"], s["received"])
        _same(totals["Readings stored"], s["stored_readings"])
        _same(totals["Duplicates"], s["duplicates"])
        _same(totals["Invalid"], s["invalid_total"])
        gaps = s["gaps"]
        assert totals["Open gaps"]["text"] == (
            f"{gaps['count']:,}{'+' if gaps['count_is_lower_bound'] else ''}"
            f" ({gaps['missing_seqs']:,} seqs)"
        )
        _same(totals["Lost, never declared"], s["lost_unexplained_messages"], 0, " messages")
        live = s["live"]
        assert live_kv["Queue depth"]["text"] == (
            f"{live['queue_depth']:,} of {live['queue_max']:,} messages"
        )
        _same(live_kv["Batch latency p50"], live["latency_p50_ms"], 1, " ms")
        _same(live_kv["Batch latency p99"], live["latency_p99_ms"], 1, " ms")
        _same(live_kv["Batches"], live["batches"])
        _same(live_kv["Ingest errors"], s["ingest_errors"])
        # Per reason (caption, count column): invalid, lost at the edge, dropped at the hub.
        for caption, column, counted in (
            ("Messages refused", "Messages", s["invalid"]),
            ("Readings", "Readings", s["lost_at_edge_readings"]),
            ("Messages", "Messages", s["dropped"]),
        ):
            found = [t for t in held.tables("#ingest") if t["caption"] == caption]
            assert len(found) == (1 if counted else 0), caption
            if counted:
                shown = _by(found[0]["rows"], "Reason")
                assert set(shown) == set(counted), caption
                for reason, n in counted.items():
                    _same(shown[reason][column], n)
        assert "not_json" in s["invalid"]
        rows = held.table("#dead-letters", f"{letters['count']} newest")
        assert len(rows) == len(letters["dead_letters"]) > 0
        for row, x in zip(rows, letters["dead_letters"], strict=True):
            c = row["cells"]
            _same_time(c["Received"], x["received_at"])
            assert [c[k]["text"] for k in ("Device", "Topic", "Reason", "Error")] == [
                x["device"] or "—",
                x["topic"],
                x["reason"],
                x["error"],
            ]
            assert c["Size"]["text"] == f"{x['payload_size']} B"  # the test's letters are small
        # Dead letters do not change once kept: the test's own request has them.
        again = rig.hub.admin_api.get_json("/v1/dead-letters?limit=1000")["dead_letters"]
        assert all(x in again for x in letters["dead_letters"])


def test_the_rollouts_page_shows_each_cohorts_devices_per_state_and_the_gates(rig: Rig) -> None:
    if not rig.hub.api.get_json("/v1/rollouts")["rollouts"]:
        # The rollout tests ran on another worker's rig: one rollout of this rig's own.
        body: dict[str, Any] = {"model": rig.edge, "version": NEW, "cohorts": [50, 100]}
        body |= {"devices": list(CALM), "gates": {"min_readings": 5}}
        started = rig.hub.admin_api.request("POST", "/v1/rollouts", json_body=body)
        assert started.status == 201, started.body[:300]
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show("#/rollouts")
        rollouts = answers["/v1/rollouts"]["rollouts"]
        assert rollouts
        for r in rollouts:
            root = f"[data-rollout='{r['id']}']"
            section = held.page.locator(root)
            assert section.get_attribute("data-state") == r["state"]
            assert section.get_attribute("data-cohort") == str(r["cohort"])
            cohorts = held.table(root, "Cohorts")
            assert len(cohorts) == len(r["cohorts"])
            for row, c in zip(cohorts, r["cohorts"], strict=True):
                cells = row["cells"]
                assert cells["Cohort"]["text"] == str(c["index"])
                _same(cells["Devices"], len(c["devices"]))
                per_state = dict(
                    part.split(": ")
                    for part in cells["Devices per state"]["text"].split(", ")
                    if part
                )
                assert {k: int(v) for k, v in per_state.items()} == c["states"]
            gates = _by(held.table(root, "Gates: thresholds set"), "Gate")
            assert set(gates) == set(r["gates"])
            for gate, threshold in r["gates"].items():
                shown = gates[gate]["Threshold"]["text"]
                if threshold is None:
                    assert shown == "off"
                else:
                    _same_js(shown, threshold)
            # The hub's last judgement: each gate's value against its threshold.
            judged = [d for d in r["decisions"] if d.get("gates")]
            if judged:
                shown_gates = _by(held.table(root, "Gates as judged"), "Gate")
                assert set(shown_gates) == set(judged[-1]["gates"])
                for gate, v in judged[-1]["gates"].items():
                    value, limit = (
                        shown_gates[gate]["Value"]["text"],
                        shown_gates[gate]["Threshold"],
                    )
                    if not isinstance(v, dict):
                        _same_js(value, v)
                        assert limit["text"] == "—"
                        continue
                    _same_js(value, v.get("value"))
                    if v.get("min") is not None:
                        assert limit["text"].startswith("≥ ")
                        _same_js(limit["text"][2:], v["min"])
                    elif v.get("max") is not None:
                        assert limit["text"].startswith("≤ ")
                        _same_js(limit["text"][2:], v["max"])
                    else:
                        assert limit["text"] == "—"
            decisions = held.table(root, "Decisions")
            assert [d["cells"]["What"]["text"] for d in decisions] == [
                d["what"] for d in reversed(r["decisions"])
            ]
        # Cohorts and gates of a rollout are set when it starts: the test's own request
        # has the same.
        again = {x["id"]: x for x in rig.hub.api.get_json("/v1/rollouts")["rollouts"]}
        for r in rollouts:
            assert [c["devices"] for c in again[r["id"]]["cohorts"]] == [
                c["devices"] for c in r["cohorts"]
            ]
            assert again[r["id"]]["gates"] == r["gates"]


# ------------------------------------------------------------------ text contrast

_TEXTS_JS = """() => {
  const backgrounds = (node) => {
    const out = [];
    for (let n = node; n; n = n.parentElement) out.push(getComputedStyle(n).backgroundColor);
    return out;
  };
  const shown = (node) => {
    const r = node.getBoundingClientRect();
    const cs = getComputedStyle(node);
    return r.width > 0 && r.height > 0 && r.right > 0 && r.bottom > 0
      && cs.visibility === 'visible' && Number(cs.opacity) > 0;
  };
  const describe = (node, text) =>
    `${node.tagName.toLowerCase()}${node.id ? '#' + node.id : ''}`
    + `${node.className && typeof node.className === 'string' ? '.' + node.className.trim().split(/\\s+/).join('.') : ''}`
    + ` "${text.trim().slice(0, 40)}"`;
  const items = [];
  for (const node of document.querySelectorAll('body *')) {
    if (node.closest('canvas, script, style, option, [hidden]') || !shown(node)) continue;
    const cs = getComputedStyle(node);
    const own = [...node.childNodes].filter((c) => c.nodeType === 3).map((c) => c.textContent).join('');
    const field = node.matches('input, select, textarea');
    if (own.trim() || (field && node.value)) {
      items.push({ what: describe(node, own || node.value), color: cs.color, size: parseFloat(cs.fontSize),
        weight: Number(cs.fontWeight), backgrounds: backgrounds(node) });
    }
    if (node.matches('input[placeholder]') && !node.value) {
      const ph = getComputedStyle(node, '::placeholder');
      items.push({ what: describe(node, node.placeholder) + ' (placeholder)', color: ph.color,
        size: parseFloat(ph.fontSize), weight: Number(ph.fontWeight), backgrounds: backgrounds(node) });
    }
  }
  return items;
}"""

_PALETTE_JS = """(names) => Object.fromEntries(names.map((name) => {
  const probe = document.createElement('span');
  probe.style.color = `var(${name})`;
  document.body.append(probe);
  const rgb = getComputedStyle(probe).color;
  probe.remove();
  return [name, rgb];
}))"""

_TEXT_COLOURS = ("--fg", "--muted", "--link", "--ok", "--warn", "--bad")
"""Every colour the stylesheet gives text (states, alerts, notices, links)."""
_CANVAS = {"light": (255.0, 255.0, 255.0), "dark": (18.0, 18.0, 18.0)}
"""Chromium's canvas behind a page with no background of its own, per scheme."""


def _contrast_failures(items: list[dict[str, Any]], scheme: str) -> list[str]:
    failures = []
    for item in items:
        background = effective_background(
            [parse_css_color(b) for b in item["backgrounds"]], _CANVAS[scheme]
        )
        fg = text_color(parse_css_color(item["color"]), background)
        ratio, need = contrast_ratio(fg, background), required_ratio(item["size"], item["weight"])
        if ratio < need:
            failures.append(
                f"{item['what']}: {ratio:.2f}:1 < {need}:1 ({item['color']} on {background})"
            )
    return failures


def test_every_pages_text_has_enough_contrast_in_both_schemes(rig: Rig) -> None:
    """WCAG 2.x 1.4.3: 4.5:1 for text, 3:1 for large text, every visible text (and each
    input's value and placeholder) against the background behind it, on every page and
    on the sign-in form, light and dark. Every text colour of the stylesheet is also
    checked against both backgrounds it can sit on, shown in this hub or not (a state
    such as ``failed`` may not occur here). Plots are canvases, not text: skipped."""
    context = rig.browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    failures: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(rig.hub.base_url + "/")
        page.wait_for_selector("#sign-in:not([hidden])")

        def check(where: str) -> None:
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                items = page.evaluate(_TEXTS_JS)
                assert items, where
                failures.extend(
                    f"{where}, {scheme}: {f}" for f in _contrast_failures(items, scheme)
                )
                palette = page.evaluate(_PALETTE_JS, [*_TEXT_COLOURS, "--bg", "--panel"])
                for name in _TEXT_COLOURS:
                    for behind in ("--bg", "--panel"):
                        pair = {
                            "what": f"{name} on {behind}",
                            "color": palette[name],
                            "size": 15.0,
                            "weight": 400,
                            "backgrounds": [palette[behind]],
                        }
                        failures.extend(
                            f"{scheme}: {f}" for f in _contrast_failures([pair], scheme)
                        )

        check("sign-in")
        page.fill("#token-input", rig.hub.admin_token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#nav:not([hidden])")
        pages = ["fleet", f"device/{URGENT}", "drift", "models", "rollouts", "pipeline", "ingest"]
        for name in pages:
            page.goto(f"{rig.hub.base_url}/#/{name}")
            page.wait_for_selector(f"#page[data-loaded={name.split('/')[0]}]")
            check(name)
    finally:
        context.close()
    assert not failures, "\n".join(dict.fromkeys(failures))


_SECTIONS_JS = """(root) => [...root.querySelectorAll(':scope > section')].map((sec) => ({
  title: sec.querySelector('h2').textContent.trim(),
  counts: Object.fromEntries([...sec.querySelectorAll('ul.counts li')].map((li) =>
    [li.querySelector('[data-value]').dataset.value, li.querySelector('strong').textContent.trim()])),
  alarm: sec.querySelector('p.alert') ? sec.querySelector('p.alert').textContent.trim() : null,
}))"""


def test_the_drift_page_shows_the_apis_versions_states_and_ranked_features(rig: Rig) -> None:
    def ranked() -> bool:
        versions = rig.hub.api.get_json("/v1/drift")["versions"]
        return bool(versions) and all(v["streams"] for v in versions)

    rig.hub.wait_until("a model version with its features ranked", ranked, timeout=60)
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show("#/drift")
        versions = answers["/v1/drift"]["versions"]
        assert versions, "the rig's agents are counted on their model version"
        sections = held.page.locator("#drift").evaluate(_SECTIONS_JS)
        tables = held.tables("#drift")
        assert len(sections) == len(tables) == len(versions)
        for sec, shown, v in zip(sections, tables, versions, strict=True):
            assert sec["title"].startswith(f"{v['model']} {v['version']}: ")
            _same(sec["title"].split(": ", 1)[1], v["devices"], unit=" devices")
            assert sec["counts"] == {s: str(n) for s, n in v["states"].items()}
            assert (sec["alarm"] is None) == (v["fleet_alarm"] is None)
            assert shown["caption"] == "Features ranked by mean PSI"
            rows = [r["cells"] for r in shown["rows"]]
            assert [r["Feature"]["text"] for r in rows] == [s["stream"] for s in v["streams"]]
            for cells, s in zip(rows, v["streams"], strict=True):
                _same(cells["Mean PSI"], s["mean_psi"], 3)
                _same(cells["Max PSI"], s["max_psi"], 3)
                _same(cells["Devices drifting"], s["drifting_devices"])


def test_the_pipeline_page_shows_the_apis_runs(rig: Rig) -> None:
    # A run over a window with no data: recorded as failed, in seconds, nothing trained.
    body = {"model": rig.edge, "window": {"from": 1.0, "to": 2.0}}
    started = rig.hub.admin_api.request("POST", "/v1/pipeline/runs", json_body=body)
    assert started.status == 202, started.body[:300]
    run_id = started.json()["id"]

    def finished() -> bool:
        run = rig.hub.api.get_json(f"/v1/pipeline/runs/{run_id}")
        return run["state"] not in ("queued", "running")

    rig.hub.wait_until("the empty run recorded as finished", finished, timeout=60)
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show("#/pipeline")
        listed = answers["/v1/pipeline/runs"]
        rows = held.table("#pipeline", f"{listed['count']} runs")
        assert [r["cells"]["Run"]["text"] for r in rows] == [x["id"] for x in listed["runs"]]
        for row, x in zip(rows, listed["runs"], strict=True):
            cells = row["cells"]
            assert cells["Model"]["text"] == x["model"]
            assert cells["Trigger"]["text"] == x["trigger"]
            assert cells["State"]["value"] == x["state"]
            steps = ", ".join(f"{s['name']}: {s['status']}" for s in x["steps"]) or "—"
            assert cells["Steps"]["text"] == steps
            _same_js(cells["Decision"]["text"], x["decision"] or None)
            _same_js(cells["Why"]["text"], x["why"] or None)
            _same_js(cells["Candidate"]["text"], x["candidate"] or None)
            _same_time(cells["Started"], x["created_at"])
        mine = next(x for x in listed["runs"] if x["id"] == run_id)
        assert mine["state"] == "failed" and mine["why"]


def test_the_models_page_shows_the_apis_registry_with_stages_and_lineage(rig: Rig) -> None:
    with _held_page(rig, rig.hub.read_token) as held:
        answers = held.show("#/models")
        listed = answers["/v1/models"]
        rows = held.table("#models", f"{listed['count']} registered versions")
        assert len(rows) == len(listed["models"]) >= 2  # the rig's edge and heavy models
        for row, x in zip(rows, listed["models"], strict=True):
            cells, lineage = row["cells"], x["lineage"]
            assert row["attrs"]["model"] == f"{x['name']} {x['version']}"
            assert [cells[c]["text"] for c in ("Model", "Version", "Variant")] == [
                x["name"],
                x["version"],
                x["variant"],
            ]
            assert cells["Stage"]["value"] == x["stage"]
            _same_js(cells["Parent"]["text"], lineage["parent"] or None)
            _same_js(cells["Data window"]["text"], lineage["data_window"] or None)
            hash_shown = cells["Data hash"]["text"]
            assert hash_shown == ((lineage["data_hash"] or "")[:12] or "—")
            _same_js(cells["Pipeline run"]["text"], lineage["pipeline_run"] or None)
            _same_time(cells["Registered"], x["registered_at"])
            _same_js(cells["By"]["text"], x["registered_by"] or None)
            assert cells["Signed by"]["text"] == (x["signed_by"] or "unsigned")
