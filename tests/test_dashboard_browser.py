"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, on a real hub
(embedded broker) with three real agents.

Playwright cannot download its own browser here, so it launches ``/usr/bin/chromium``
(``apt-get install chromium``; .ci/run installs it). Without it the module is skipped,
and under CI=true it fails instead: CI must run these tests.

Screenshots of every page go to the test's tmp directory; with
``EDGELOOP_SCREENSHOTS=DIR`` (``docs/screenshots`` for the README's) they are written
there too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.keys import load_signing_key
from shared.endpoint import BrokerEndpoint
from shared.manifest import load_package
from simulators.harness import AgentProcess, HubProcess
from simulators.packages import variant, zip_package
from tests.brokers import require_tool
from tests.conftest import ModelPaths
from tests.test_desired_state import hub_with_keys

pytestmark = [pytest.mark.timeout(150), pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 30_000
NEW = "1.2.0"
SLOW = "1.3.0"
"""A version whose rollout soaks for ten minutes: it stays running while the buttons act."""
CALM = ("press-a", "press-b")
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
