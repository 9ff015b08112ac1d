"""``edgeloop-sim bench dashboard``: how long the dashboard's fleet page takes to show a
fleet of ``--devices`` (1,000) in headless Chromium.

A real hub (``edgeloop-hub serve``, embedded broker) on a store seeded through the
Store interface with ``--devices`` devices (a birth each, online, on the default edge
model; no agents run: the fleet page reads the store, not the devices). Headless
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) opens the fleet page
signed in with the read token, ``--runs`` times, each in a fresh browser context;
a run's time is from the start of the navigation (``performance.now()``'s origin) to
the first animation frame where the fleet table holds every device.

In the same run, the baseline: the time the two API calls the page makes
(``GET /v1/devices`` and ``GET /v1/fleet``) take from Python, one after the other:
what rendering adds is the difference. Target: under 1 s (``render_ms_p50``). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from simulators.bench.arguments import add_dir_options, positive_int
from simulators.bench.workdir import in_work_dir

HELP = "time until the dashboard's fleet page shows 1,000 devices in headless Chromium"

TARGET_MS = 1000.0
CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 30_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=positive_int, default=1000)
    parser.add_argument("--runs", type=positive_int, default=5)
    parser.add_argument(
        "--chromium", type=Path, default=Path(CHROMIUM), help=f"the browser (default: {CHROMIUM})"
    )
    add_dir_options(parser, "the hub's data and log")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not args.chromium.is_file():
        raise ValueError(
            f"--chromium {args.chromium}: no such file; install Debian's chromium "
            "(apt-get install -y chromium) or name the browser's binary"
        )
    return in_work_dir(args.work_dir, "edgeloop-bench-dashboard-", lambda work: _run(args, work))


def _seed(db: Path, devices: int) -> None:
    from cloud_hub.pipeline.build import DEFAULT_VERSION  # noqa: PLC0415
    from cloud_hub.store import open_store  # noqa: PLC0415
    from shared.messages import Status  # noqa: PLC0415

    store = open_store(f"sqlite:///{db}")
    try:
        now = time.time()
        for i in range(devices):
            name = f"bench-{i:04d}"
            status = Status(name, 1, 0, "online", "0.1.0", DEFAULT_VERSION, now, "machine-edge")
            store.record_status(status, now)
    finally:
        store.close()


_PHASES = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const data = performance.getEntriesByType("resource")
    .filter((e) => /\\/v1\\/(devices|fleet)$/.test(e.name));
  return {
    dom_ready_ms: nav.domContentLoadedEventEnd,
    data_ms: data.length ? Math.max(...data.map((e) => e.responseEnd)) : NaN,
  };
}"""
"""In the page: when its document was ready, and when the first answers of the two API
calls it makes for the fleet table had arrived (ms from the start of the navigation)."""


def _api_ms(hub: Any) -> float:
    started = time.perf_counter()
    for path in ("/v1/devices", "/v1/fleet"):
        reply = hub.api.get(path)
        if reply.status != 200:
            raise RuntimeError(f"GET {path} answered {reply.status}: {reply.body[:200]!r}")
    return (time.perf_counter() - started) * 1000


def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
    from simulators.harness import HubProcess  # noqa: PLC0415

    build_default_models(args.models_dir)
    hub = HubProcess(work / "hub", args.models_dir, log_path=work / "hub.log")
    hub.data_dir.mkdir(parents=True, exist_ok=True)
    _seed(hub.db_path, args.devices)
    n = args.devices
    render: list[float] = []
    api: list[float] = []
    phases: list[dict[str, float]] = []
    with hub, sync_playwright() as pw:
        shown = hub.api.get_json("/v1/devices")["count"]
        if shown != n:
            raise RuntimeError(f"the hub lists {shown} devices, not the {n} seeded")
        browser = pw.chromium.launch(executable_path=str(args.chromium), args=["--no-sandbox"])
        try:
            for _ in range(args.runs):
                api.append(_api_ms(hub))
                # The wait below evaluates JavaScript, which the page's policy forbids.
                context = browser.new_context(
                    viewport={"width": 1280, "height": 900}, bypass_csp=True
                )
                # Signed in as the page's own sign-in leaves the tab: the token and the flag.
                context.add_init_script(
                    f"sessionStorage.setItem('edgeloop.token', {hub.read_token!r});"
                    " sessionStorage.setItem('edgeloop.signed-in', '1')"
                )
                page = context.new_page()
                page.goto(f"{hub.base_url}/#/fleet", wait_until="commit")
                handle = page.wait_for_function(
                    f"document.querySelectorAll('#fleet-table tbody tr').length >= {n}"
                    " && performance.now()",
                    polling="raf",
                    timeout=WAIT_MS,
                )
                render.append(float(handle.json_value()))
                phases.append(page.evaluate(_PHASES))
                context.close()
        finally:
            browser.close()
    p50 = statistics.median(render)
    return {
        "bench": "dashboard",
        "devices": n,
        "runs": args.runs,
        "render_ms_p50": round(p50, 1),
        "render_ms_max": round(max(render), 1),
        "render_ms": [round(x, 1) for x in render],
        "dom_ready_ms_p50": round(statistics.median(p["dom_ready_ms"] for p in phases), 1),
        "data_in_page_ms_p50": round(statistics.median(p["data_ms"] for p in phases), 1),
        "baseline_api_ms_p50": round(statistics.median(api), 1),
        "target_ms": TARGET_MS,
        "meets_target": p50 < TARGET_MS,
    }
