// The dashboard: hash routes, one page at a time, each refreshed by polling the API.
// Everything shown comes from /v1/...; the page formats, it does not compute.
import { api, ApiError, exchangeCode, setToken, signedInHere, signOut } from "./api.js";
import { clear, el, fmtBytes, fmtNum, fmtTime, stateBadge, table, timeText } from "./dom.js";

const POLL_MS = 3000;
const GAPS_LISTED = 100; // GET /v1/devices/{d} lists at most this many gaps
const page = document.getElementById("page");
const signIn = document.getElementById("sign-in");
const statusLine = document.getElementById("status"); // routine: not announced
const statusError = document.getElementById("status-error"); // errors: announced
let current = null; // { refresh(), stop() }
let timer = null;
let access = null; // "read" | "admin" | null (unknown until an admin call answers)

// ------------------------------------------------------------------ sign-in

function showSignIn(message) {
  stopPage();
  clear(page);
  setAccess(null);
  statusLine.textContent = "";
  setStatusError("");
  document.getElementById("nav").hidden = true;
  document.getElementById("session").hidden = true;
  signIn.hidden = false;
  document.getElementById("sign-in-message").textContent = message || "";
  document.getElementById("token-input").focus();
}

function signedIn() {
  signIn.hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("session").hidden = false;
  setAccess(access);
  route();
}

document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token-input");
  setToken(input.value.trim());
  input.value = "";
  try {
    await api("/v1/devices");
    signedIn();
  } catch (err) {
    signOut();
    showSignIn(err instanceof ApiError ? `Sign-in refused: ${err.detail}` : String(err));
  }
});

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  showSignIn("Signed out.");
});

// A 401 anywhere ends the session: back to the sign-in form, saying why.
function handleError(err, where) {
  if (err instanceof ApiError && err.status === 401) {
    signOut();
    showSignIn(`Your session ended: ${err.detail}`);
    return true;
  }
  if (where) where.textContent = describe(err);
  return false;
}

function describe(err) {
  if (err instanceof ApiError && err.status === 403) {
    return `Refused: this needs the admin token. Sign out and sign in with the admin token. (${err.detail})`;
  }
  if (err instanceof ApiError) return `The hub answered ${err.status}: ${err.detail}`;
  return `Could not reach the hub: ${err.message || err}`;
}

// ------------------------------------------------------------------ routing and polling

function stopPage() {
  if (timer) clearInterval(timer);
  timer = null;
  if (current && current.stop) current.stop();
  current = null;
}

let inFlight = null;

// One refresh at a time, and none while the tab is hidden (the hub is not polled for
// nobody); an action's own refresh waits for the one in flight.
async function tick({ force = false } = {}) {
  if (!current || (document.hidden && !force)) return;
  if (inFlight) {
    if (!force) return;
    await inFlight;
  }
  const mine = current;
  const run = (async () => {
    // A refresh redraws: the focused control is found again and keeps the focus.
    const before = document.activeElement;
    const key = focusKey(before);
    try {
      await mine.refresh();
      if (mine !== current) return;
      restoreFocus(key, before);
      statusLine.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      setStatusError("");
      page.dataset.loaded = page.dataset.page;
      // Refreshes drawn so far: a test waits for the next one to compare it with its answers.
      page.dataset.tick = String(Number(page.dataset.tick || 0) + 1);
    } catch (err) {
      if (!handleError(err) && mine === current) setStatusError(describe(err));
    }
  })();
  inFlight = run;
  try {
    await run;
  } finally {
    if (inFlight === run) inFlight = null;
  }
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });

const PAGES = {
  fleet: fleetPage,
  device: devicePage,
  drift: driftPage,
  models: modelsPage,
  rollouts: rolloutsPage,
  pipeline: pipelinePage,
  ingest: ingestPage,
};

function route() {
  if (!signedInHere()) {
    showSignIn("");
    return;
  }
  stopPage();
  // The previous page's status must not pass for this one's.
  statusLine.textContent = "";
  setStatusError("");
  delete page.dataset.loaded;
  const [name, ...raw] = (location.hash.replace(/^#\/?/, "") || "fleet").split("/");
  let rest;
  try {
    rest = raw.map(decodeURIComponent);
  } catch {
    rest = null; // a malformed % escape: not a page
  }
  const make = rest && PAGES[name] ? PAGES[name] : unknownPage;
  clear(page);
  for (const a of document.querySelectorAll("nav a")) {
    const on = a.getAttribute("href") === `#/${name}` || (name === "device" && a.getAttribute("href") === "#/fleet");
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current = make(page, rest || []);
  page.dataset.page = name;
  tick({ force: true });
  timer = setInterval(tick, POLL_MS);
}

window.addEventListener("hashchange", () => {
  const code = codeFromHash();
  if (code) startWithCode(code);
  else route();
});

function codeFromHash() {
  const m = location.hash.match(/^#code=([A-Za-z0-9_-]+)$/);
  return m ? m[1] : null;
}

async function startWithCode(code) {
  history.replaceState(null, "", location.pathname + "#/fleet");
  try {
    const answer = await exchangeCode(code);
    setToken(answer.token); // null from a hub without tokens: signed in all the same
    access = answer.access;
    signedIn();
  } catch (err) {
    showSignIn(err instanceof ApiError ? `The sign-in link did not work: ${err.detail}` : describe(err));
  }
}

function start() {
  const code = codeFromHash();
  if (code) startWithCode(code);
  else if (signedInHere()) signedIn();
  else showSignIn("");
}

// What the session shows of the token; null: not known (or signed out).
function setAccess(a) {
  access = a;
  document.getElementById("access").textContent = a ? `Signed in (${a} token)` : signedInHere() ? "Signed in" : "";
}

function setStatusError(text) {
  // Only a change is written: an unchanged alert is not announced again.
  if (statusError.textContent !== text) statusError.textContent = text;
}

// The element focused inside the page, as a selector that finds its successor after a
// refresh redraws it (by id, link target, or a rollout's action button); null: none.
function focusKey(node) {
  if (!node || node === document.body || !page.contains(node)) return null;
  if (node.id) return `#${CSS.escape(node.id)}`;
  const href = node.getAttribute("href");
  if (href) return `a[href="${CSS.escape(href)}"]`;
  const action = node.dataset.action;
  const rollout = node.closest("[data-rollout]");
  if (action && rollout) {
    const sec = `[data-rollout="${CSS.escape(rollout.dataset.rollout)}"]`;
    return [`${sec} button[data-action="${CSS.escape(action)}"]`, `${sec} button[data-action]`];
  }
  return null;
}

function restoreFocus(key, before) {
  if (!key || (before.isConnected && document.activeElement === before)) return;
  for (const selector of [].concat(key)) {
    const again = page.querySelector(selector);
    if (again) {
      again.focus({ preventScroll: true });
      return;
    }
  }
}

// ------------------------------------------------------------------ unknown

function unknownPage(root) {
  root.append(el("h1", {}, "Unknown page"),
    el("p", {}, "This address is not a page of the dashboard. ", el("a", { href: "#/fleet" }, "Go to the fleet")));
  return { async refresh() {} };
}

// ------------------------------------------------------------------ fleet

function fleetPage(root) {
  const h = el("h1", {}, "Fleet");
  const counts = el("ul", { class: "counts", id: "state-counts", "aria-label": "Devices by state" });
  const filterText = el("input", { id: "filter-text", type: "search", placeholder: "device or model" });
  const filterState = el("select", { id: "filter-state" }, el("option", { value: "" }, "every state"));
  const filters = el("div", { class: "filters" },
    el("div", {}, el("label", { for: "filter-text" }, "Filter by device or model"), filterText),
    el("div", {}, el("label", { for: "filter-state" }, "State"), filterState));
  const error = el("p", { class: "alert", role: "alert" });
  const holder = el("div", { id: "fleet-table" });
  root.append(h, counts, filters, error, holder);
  let last = null;

  function draw() {
    if (!last) return;
    const [list, fleet] = last;
    const text = filterText.value.trim().toLowerCase();
    const st = filterState.value;
    const rows = list.devices.filter((d) =>
      (!st || d.state === st) &&
      (!text || d.device.toLowerCase().includes(text) || `${d.model || ""} ${d.model_version || ""}`.toLowerCase().includes(text)));
    clear(holder);
    holder.append(table({
      caption: `${rows.length} of ${list.count} devices`,
      columns: ["Device", "State", "Last seen", "Model version", "Readings/s", "Open gaps", "Lost readings", "Drift"],
      numeric: [4, 5, 6],
      rows: rows.map((d) => {
        const f = fleet.devices[d.device] || {};
        const tr = [
          el("a", { href: `#/device/${encodeURIComponent(d.device)}` }, d.device),
          stateBadge(d.state, d.state_reason),
          d.last_seen == null ? "never" : fmtTime(d.last_seen),
          d.model_version ? `${d.model || ""} ${d.model_version}`.trim() : "—",
          f.readings_per_s == null ? "—" : `${fmtNum(f.readings_per_s, 1)} /s`,
          f.open_gaps == null ? "—" : fmtNum(f.open_gaps),
          f.lost_readings == null ? "—" : fmtNum(f.lost_readings),
          f.drift_state ? stateBadge(f.drift_state, (f.drift_streams || []).join(", ")) : "—",
        ];
        tr.attrs = { "data-device": d.device, "data-state": d.state };
        return tr;
      }),
    }));
  }

  filterText.addEventListener("input", draw);
  filterState.addEventListener("change", draw);

  return {
    async refresh() {
      const [list, fleet] = await Promise.all([api("/v1/devices"), api("/v1/fleet")]);
      last = [list, fleet];
      error.textContent = "";
      clear(counts);
      for (const [state, n] of Object.entries(list.states)) {
        counts.append(el("li", { "data-state-count": state }, el("strong", {}, fmtNum(n)), stateBadge(state)));
      }
      counts.append(el("li", { "data-total": "" }, el("strong", {}, fmtNum(list.count)), "devices"));
      // Rebuilt only when the states change: an open or focused <select> stays as it is.
      const states = Object.keys(list.states);
      const shown = [...filterState.options].slice(1).map((o) => o.value);
      if (states.join("|") !== shown.join("|")) {
        const chosen = filterState.value;
        clear(filterState);
        filterState.append(el("option", { value: "" }, "every state"));
        for (const state of states) filterState.append(el("option", { value: state }, state));
        filterState.value = chosen;
      }
      draw();
      root.dataset.rows = String(holder.querySelectorAll("tbody tr").length);
    },
  };
}

// ------------------------------------------------------------------ device

// The plots' colours are the stylesheet's (light or dark scheme): a canvas cannot use
// CSS variables, so they are read here, and each plot is drawn anew when the scheme changes.
const darkScheme = matchMedia("(prefers-color-scheme: dark)");

function plotColors() {
  const css = getComputedStyle(document.documentElement);
  const read = (name) => css.getPropertyValue(name).trim();
  return { axis: read("--plot-axis"), grid: read("--plot-grid"), mark: read("--mark"), read };
}

// series: [{ label, color: a CSS variable's name such as "--edge", width, dash }]
function plot(holder, title, series, { height = 220, yRange = null } = {}) {
  const fig = el("figure", { "data-points": "0" });
  const cap = el("figcaption", {}, title);
  const box = el("div");
  fig.append(cap, box);
  holder.append(fig);
  let chart = null;
  let marks = [];
  let last = null;
  function options(colors) {
    const axis = { stroke: colors.axis, grid: { stroke: colors.grid }, ticks: { stroke: colors.grid } };
    return {
      width: Math.max(320, Math.min(box.clientWidth || 560, 900)),
      height,
      scales: yRange ? { x: { time: true }, y: { range: yRange } } : { x: { time: true } },
      series: [{}, ...series.map((s) => ({
        label: s.label, stroke: colors.read(s.color), width: s.width || 1.5, dash: s.dash, spanGaps: false }))],
      axes: [axis, axis],
      hooks: {
        draw: [(u) => {
          // Urgent events: a line at each event's time.
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = colors.mark;
          ctx.lineWidth = 2 * devicePixelRatio;
          for (const t of marks) {
            const x = u.valToPos(t, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
  }
  function draw(data) {
    const colors = plotColors();
    if (chart) chart.destroy();
    chart = new uPlot(options(colors), data, box);
    fig.dataset.axisColor = colors.axis;
    fig.dataset.gridColor = colors.grid;
  }
  const onScheme = () => { if (last) draw(last); };
  darkScheme.addEventListener("change", onScheme);
  return {
    fig,
    update(data, eventTimes) {
      marks = eventTimes || [];
      last = data;
      if (!chart) draw(data);
      else chart.setData(data);
      fig.dataset.points = String(data[0].length);
      fig.dataset.events = String(marks.length);
    },
    stop() {
      darkScheme.removeEventListener("change", onScheme);
      if (chart) chart.destroy();
    },
  };
}

function kv(pairs) {
  const dl = el("dl", { class: "kv" });
  for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v));
  return dl;
}

function devicePage(root, [device]) {
  const h = el("h1", {}, `Device ${device}`);
  const error = el("p", { class: "alert", role: "alert" });
  const summary = el("section", { "aria-labelledby": "summary-title" }, el("h2", { id: "summary-title" }, "State and health"));
  const summaryBody = el("div", { class: "grid2" });
  summary.append(summaryBody);
  const plots = el("div", { class: "plots", id: "plots" });
  const noReadings = el("p", { class: "muted", hidden: "" }, "No readings in the last hour.");
  const plotSection = el("section", { "aria-labelledby": "plots-title" },
    el("h2", { id: "plots-title" }, "The last hour (red lines: urgent events)"), noReadings, plots);
  const events = el("section", { "aria-labelledby": "events-title" }, el("h2", { id: "events-title" }, "Urgent events (last hour)"));
  const eventsBody = el("div", { id: "events" });
  events.append(eventsBody);
  const drift = el("section", { "aria-labelledby": "drift-title" }, el("h2", { id: "drift-title" }, "Drift per feature"));
  const driftBody = el("div", { id: "device-drift" });
  drift.append(driftBody);
  const ota = el("section", { "aria-labelledby": "ota-title" }, el("h2", { id: "ota-title" }, "OTA history"));
  const otaBody = el("div", { id: "ota" });
  ota.append(otaBody);
  root.append(el("p", {}, el("a", { href: "#/fleet" }, "← Fleet")), h, error, summary, plotSection, events, drift, ota);
  let charts = null;

  return {
    stop() { if (charts) for (const c of charts) c.stop(); },
    async refresh() {
      const since = Date.now() / 1000 - 3600;
      const enc = encodeURIComponent(device);
      const [d, s, ev, dr, ot] = await Promise.all([
        api(`/v1/devices/${enc}`),
        api(`/v1/devices/${enc}/series?window_s=3600&points=600`),
        api(`/v1/events?device=${enc}&since=${since}&order=desc`),
        api(`/v1/devices/${enc}/drift`),
        api(`/v1/devices/${enc}/ota?limit=50`),
      ]);
      error.textContent = "";
      const hl = d.last_health || {};
      clear(summaryBody);
      summaryBody.append(
        kv([
          ["State", stateBadge(d.state, d.state_reason)],
          ["Last seen", d.last_seen == null ? "never" : fmtTime(d.last_seen)],
          ["Model", d.model_version ? `${d.model || ""} ${d.model_version}` : "—"],
          ["Agent", d.agent_version || "—"],
          // The hub lists a device's first 100 gaps only: 100 shown as "100+", not as the count.
          ["Open gaps", `${fmtNum((d.gaps || []).length)}${(d.gaps || []).length >= GAPS_LISTED ? "+" : ""}`],
        ]),
        kv([
          ["Latency p99", hl.latency_p99_us == null ? "—" : `${fmtNum(hl.latency_p99_us / 1000, 2)} ms`],
          ["CPU", hl.cpu_pct == null ? "—" : `${fmtNum(hl.cpu_pct, 1)} %`],
          ["Memory (RSS)", hl.rss_mb == null ? "—" : `${fmtNum(hl.rss_mb, 1)} MB`],
          ["Outbox depth", hl.outbox_depth == null ? "—" : `${fmtNum(hl.outbox_depth)} messages`],
          ["Heartbeat", hl.ts == null ? "none yet" : fmtTime(hl.ts)],
        ]),
      );
      const names = Object.keys(s.features);
      const layout = [s.urgent_class, ...names].join("|");
      if (!charts || charts.layout !== layout) {
        // The first readings (or a new model) bring the feature names: plots are made anew.
        if (charts) for (const c of charts) c.stop();
        clear(plots);
        charts = [
          plot(plots, `Score of “${s.urgent_class || "urgent"}”: edge vs heavy`, [
            { label: "edge", color: "--edge", width: 3 }, { label: "heavy", color: "--heavy", dash: [6, 4] }],
            { yRange: [0, 1] }),
          ...names.map((n) => plot(plots, n, [{ label: n, color: "--feature" }])),
        ];
        charts.layout = layout;
        charts[0].fig.id = "plot-score";
      }
      noReadings.hidden = s.readings > 0;
      const marks = ev.events.map((e) => e.ts);
      charts[0].update([s.ts, s.edge_score, s.heavy_score], marks);
      names.forEach((n, i) => { if (charts[i + 1]) charts[i + 1].update([s.ts, s.features[n]], marks); });
      plots.dataset.readings = String(s.readings);

      clear(eventsBody);
      if (!ev.events.length) eventsBody.append(el("p", { class: "muted" }, "None in the last hour."));
      else eventsBody.append(table({
        caption: `${ev.events.length}${ev.next_cursor ? "+" : ""} urgent events, newest first`,
        columns: ["Time", "Rule", "Score", "Sensor", "Action", "Detail"],
        numeric: [2],
        rows: ev.events.slice(0, 50).map((e) => {
          const row = [fmtTime(e.ts), e.rule, fmtNum(e.score, 3),
            e.sensor ? `${e.sensor}${e.value == null ? "" : ` = ${fmtNum(e.value, 2)}`}` : "—",
            `${e.action}${e.action_ok ? "" : " (failed)"}`, e.detail];
          row.attrs = { "data-event": `${e.epoch}:${e.seq}` };  // the event's identity on its device
          return row;
        }),
      }));

      clear(driftBody);
      for (const v of dr.versions) {
        driftBody.append(el("p", {}, `${v.model} ${v.version}: `, stateBadge(v.state),
          v.since ? ` since ${timeText(v.since)}` : "",
          Object.keys(v.streams).length ? ` on ${Object.keys(v.streams).join(", ")}` : ""));
      }
      const w = dr.windows[0];
      if (w) {
        const ranked = Object.entries(w.psi).sort((a, b) => b[1] - a[1]);
        driftBody.append(table({
          caption: `PSI per feature, window ending ${timeText(w.end_at)} (${fmtNum(w.readings)} readings)`,
          columns: ["Feature", "PSI"],
          numeric: [1],
          rows: ranked.map(([k, p]) => [k, fmtNum(p, 3)]),
        }));
        const stats = Object.entries(w.statistic).sort((a, b) => b[1] - a[1]);
        if (stats.length) driftBody.append(table({
          caption: "Detector statistic per channel, same window",
          columns: ["Channel", "Statistic"],
          numeric: [1],
          rows: stats.map(([k, v]) => [k, fmtNum(v, 2)]),
        }));
        if (w.disagreement != null) {
          driftBody.append(el("p", {}, `Edge/heavy disagreement in that window: ${fmtNum(w.disagreement * 100, 2)} %`));
        }
      } else if (!dr.versions.length) {
        driftBody.append(el("p", { class: "muted" }, "No drift window closed yet."));
      }

      clear(otaBody);
      if (!ot.reports.length) otaBody.append(el("p", { class: "muted" }, "No updates reported."));
      else otaBody.append(table({
        caption: "Newest first",
        columns: ["Time", "State", "From", "To", "Reason", "Detail"],
        rows: ot.reports.map((r) => [fmtTime(r.ts), stateBadge(r.state), r.from_version || "—", r.to_version || "—", r.reason, r.detail]),
      }));
    },
  };
}

// ------------------------------------------------------------------ drift

function driftPage(root) {
  const body = el("div", { id: "drift" });
  root.append(el("h1", {}, "Drift"), body);
  return {
    async refresh() {
      const d = await api("/v1/drift");
      clear(body);
      if (!d.versions.length) body.append(el("p", { class: "muted" }, "No model version is counted yet."));
      for (const v of d.versions) {
        const sec = el("section", {}, el("h2", {}, `${v.model} ${v.version}: ${fmtNum(v.devices)} devices`));
        sec.append(el("ul", { class: "counts" }, ...Object.entries(v.states).map(([s, n]) =>
          el("li", {}, el("strong", {}, fmtNum(n)), stateBadge(s)))));
        if (v.fleet_alarm) {
          sec.append(el("p", { class: "alert" }, `Fleet alarm since ${timeText(v.fleet_alarm.since)} on ${v.fleet_alarm.streams.join(", ")}: ${v.fleet_alarm.devices.length} of ${v.fleet_alarm.active_devices} devices (${fmtNum(v.fleet_alarm.share * 100, 0)} %)`));
        }
        sec.append(table({
          caption: "Features ranked by mean PSI",
          columns: ["Feature", "Mean PSI", "Max PSI", "Devices drifting"],
          numeric: [1, 2, 3],
          rows: v.streams.map((s) => [s.stream, fmtNum(s.mean_psi, 3), fmtNum(s.max_psi, 3), fmtNum(s.drifting_devices)]),
        }));
        body.append(sec);
      }
    },
  };
}

// ------------------------------------------------------------------ models

function modelsPage(root) {
  const body = el("div", { id: "models" });
  root.append(el("h1", {}, "Models"), body);
  return {
    async refresh() {
      const m = await api("/v1/models");
      clear(body);
      body.append(table({
        caption: `${m.count} registered versions`,
        columns: ["Model", "Version", "Variant", "Stage", "Parent", "Data window", "Data hash", "Pipeline run",
          "Registered", "By", "Size", "Signed by"],
        numeric: [10],
        rows: m.models.map((x) => {
          // The lineage as the manifest gives it; the hash shortened, whole in its title.
          const l = x.lineage;
          const row = [x.name, x.version, x.variant, stateBadge(x.stage), l.parent || "—",
            l.data_window ? el("span", { class: "fine" }, l.data_window) : "—",
            l.data_hash ? el("code", { title: l.data_hash }, l.data_hash.slice(0, 12)) : "—", l.pipeline_run || "—",
            fmtTime(x.registered_at), x.registered_by || "—", fmtBytes(x.size), x.signed_by || "unsigned"];
          row.attrs = { "data-model": `${x.name} ${x.version}` };
          return row;
        }),
      }));
    },
  };
}

// ------------------------------------------------------------------ rollouts

function rolloutsPage(root) {
  const message = el("p", { class: "alert", role: "alert", id: "rollout-message" });
  const notice = el("p", { class: "notice", role: "status", id: "rollout-notice" });
  const model = el("input", { id: "ro-model", required: "" });
  const version = el("input", { id: "ro-version", required: "" });
  const cohorts = el("input", { id: "ro-cohorts", value: "10, 50, 100" });
  const soak = el("input", { id: "ro-soak", type: "number", min: "0", step: "1", value: "0" });
  const minReadings = el("input", { id: "ro-min-readings", type: "number", min: "1", step: "1", value: "100" });
  const devices = el("input", { id: "ro-devices", placeholder: "every device on the model" });
  const form = el("form", { class: "inline", id: "rollout-form", "aria-labelledby": "start-title" },
    el("div", {}, el("label", { for: "ro-model" }, "Model"), model),
    el("div", {}, el("label", { for: "ro-version" }, "Version"), version),
    el("div", {}, el("label", { for: "ro-cohorts" }, "Cohorts (cumulative %)"), cohorts),
    el("div", {}, el("label", { for: "ro-soak" }, "Soak per cohort (s)"), soak),
    el("div", {}, el("label", { for: "ro-min-readings" }, "Min readings per device"), minReadings),
    el("div", {}, el("label", { for: "ro-devices" }, "Only these devices (comma-separated)"), devices),
    el("button", { type: "submit" }, "Start rollout"));
  const list = el("div", { id: "rollouts" });
  root.append(el("h1", {}, "Rollouts"), message, notice,
    el("section", {}, el("h2", { id: "start-title" }, "Start a rollout (admin token)"), form), list);

  async function act(path, body, done) {
    message.textContent = "";
    notice.textContent = "";
    try {
      const r = await api(path, { method: "POST", body });
      notice.textContent = done(r);
      setAccess("admin");
      await tick({ force: true });
    } catch (err) {
      if (!handleError(err, message) && err.status === 403) setAccess("read");
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = {
      model: model.value.trim(),
      version: version.value.trim(),
      cohorts: cohorts.value.split(",").map((x) => Number(x.trim())).filter((x) => !Number.isNaN(x)),
      gates: { soak_s: Number(soak.value), min_readings: Number(minReadings.value) },
    };
    const only = devices.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (only.length) body.devices = only;
    act("/v1/rollouts", body, (r) => `Started rollout ${r.id}.`);
  });

  return {
    async refresh() {
      const rs = await api("/v1/rollouts");
      clear(list);
      if (!rs.rollouts.length) list.append(el("p", { class: "muted" }, "No rollouts yet."));
      for (const r of rs.rollouts) {
        const sec = el("section", { "data-rollout": r.id, "data-state": r.state, "data-cohort": String(r.cohort) });
        sec.append(el("h2", {}, `${r.model} ${r.version} `, stateBadge(r.state),
          ` cohort ${Math.min(r.cohort, r.cohorts.length)} of ${r.cohorts.length}${r.cohort > r.cohorts.length ? " (all passed)" : ""}`));
        sec.append(el("p", { class: "muted" }, `${r.id}, started `, fmtTime(r.created_at)));
        const buttons = el("p", {});
        const offered = r.state === "paused" ? ["resume", "abort"] : ["pause", "abort"];
        for (const what of offered) {
          const b = el("button", { type: "button", class: what === "abort" ? "danger" : "", "data-action": what }, what[0].toUpperCase() + what.slice(1));
          b.addEventListener("click", () => act(`/v1/rollouts/${encodeURIComponent(r.id)}/${what}`, { reason: `from the dashboard` }, () => `${what}: done for ${r.id}.`));
          buttons.append(b, " ");
        }
        if (r.state === "running" || r.state === "paused") sec.append(buttons);
        sec.append(table({
          caption: "Cohorts",
          columns: ["Cohort", "Devices", "Devices per state"],
          rows: r.cohorts.map((c) => [String(c.index), fmtNum(c.devices.length),
            Object.entries(c.states).map(([s, n]) => `${s}: ${n}`).join(", ")]),
        }));
        sec.append(table({
          caption: "Gates: thresholds set",
          columns: ["Gate", "Threshold"],
          rows: Object.entries(r.gates).map(([k, v]) => [k, v == null ? "off" : String(v)]),
        }));
        // The hub's last judgement: each gate's value against its threshold.
        const judged = [...r.decisions].reverse().find((d) => d.gates && Object.keys(d.gates).length);
        if (judged) {
          sec.append(table({
            caption: `Gates as judged at ${timeText(judged.at)} (${judged.what})`,
            columns: ["Gate", "Value", "Threshold"],
            rows: Object.entries(judged.gates).map(([k, v]) => {
              if (v == null || typeof v !== "object") return [k, v == null ? "—" : String(v), "—"];
              const limit = v.min != null ? `≥ ${v.min}` : v.max != null ? `≤ ${v.max}` : "—";
              return [k, v.value == null ? "—" : String(v.value), limit];
            }),
          }));
        }
        sec.append(table({
          caption: "Decisions",
          columns: ["Time", "What", "Why"],
          rows: r.decisions.slice().reverse().map((d) => [fmtTime(d.at), d.what, d.why]),
        }));
        list.append(sec);
      }
    },
  };
}

// ------------------------------------------------------------------ pipeline runs

function pipelinePage(root) {
  const body = el("div", { id: "pipeline" });
  root.append(el("h1", {}, "Pipeline runs"), body);
  return {
    async refresh() {
      const r = await api("/v1/pipeline/runs");
      clear(body);
      if (!r.runs.length) body.append(el("p", { class: "muted" }, "No retraining run yet."));
      else body.append(table({
        caption: `${r.count} runs, newest first`,
        columns: ["Run", "Model", "Trigger", "State", "Steps", "Gates (measured vs threshold)", "Decision", "Why", "Candidate", "Started"],
        rows: r.runs.map((x) => [x.id, x.model, x.trigger, stateBadge(x.state),
          (x.steps || []).map((s) => `${s.name}: ${s.status}`).join(", ") || "—",
          (x.gates || []).map((g) => `${g.name}: ${fmtNum(g.measured, 3)} vs ${fmtNum(g.threshold, 3)} (${g.passed ? "passed" : "failed"})`).join("; ") || "—",
          x.decision || "—", x.why || "—", x.candidate || "—", fmtTime(x.created_at)]),
      }));
    },
  };
}

// ------------------------------------------------------------------ ingest

function ingestPage(root) {
  const figures = el("div", { id: "ingest" });
  const letters = el("section", { "aria-labelledby": "dl-title" }, el("h2", { id: "dl-title" }, "Dead letters (admin token)"));
  const lettersBody = el("div", { id: "dead-letters" });
  letters.append(lettersBody);
  root.append(el("h1", {}, "Ingest"), figures, letters);
  return {
    async refresh() {
      const [s, fleet] = await Promise.all([api("/v1/stats/ingest"), api("/v1/fleet")]);
      const live = s.live || {};
      clear(figures);
      figures.append(el("div", { class: "grid2" },
        kv([
          ["Readings/s (last minute)", `${fmtNum(fleet.readings_per_s, 1)} /s`],
          ["Messages received", fmtNum(s.received)],
          ["Readings stored", fmtNum(s.stored_readings)],
          ["Duplicates", fmtNum(s.duplicates)],
          ["Invalid", fmtNum(s.invalid_total)],
          ["Open gaps", `${fmtNum(s.gaps.count)}${s.gaps.count_is_lower_bound ? "+" : ""} (${fmtNum(s.gaps.missing_seqs)} seqs)`],
          ["Lost, never declared", `${fmtNum(s.lost_unexplained_messages)} messages`],
        ]),
        kv([
          ["Queue depth", live.queue_depth == null ? "—"
            : `${fmtNum(live.queue_depth)}${live.queue_max == null ? "" : ` of ${fmtNum(live.queue_max)}`} messages`],
          ["Batch latency p50", live.latency_p50_ms == null ? "—" : `${fmtNum(live.latency_p50_ms, 1)} ms`],
          ["Batch latency p99", live.latency_p99_ms == null ? "—" : `${fmtNum(live.latency_p99_ms, 1)} ms`],
          ["Batches", live.batches == null ? "—" : fmtNum(live.batches)],
          ["Ingest errors", fmtNum(s.ingest_errors)],
        ])));
      const reasons = (title, obj, unit) => table({
        caption: title, columns: ["Reason", unit], numeric: [1],
        rows: Object.entries(obj).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, fmtNum(v)]),
      });
      figures.append(
        el("h2", {}, "Invalid by reason"),
        Object.keys(s.invalid).length ? reasons("Messages refused", s.invalid, "Messages") : el("p", { class: "muted" }, "None."),
        el("h2", {}, "Lost at the edge (declared)"),
        Object.keys(s.lost_at_edge_readings).length ? reasons("Readings", s.lost_at_edge_readings, "Readings") : el("p", { class: "muted" }, "None."),
        el("h2", {}, "Dropped at the hub"),
        Object.keys(s.dropped).length ? reasons("Messages", s.dropped, "Messages") : el("p", { class: "muted" }, "None."));
      clear(lettersBody);
      try {
        const dl = await api("/v1/dead-letters?limit=50");
        if (!dl.dead_letters.length) lettersBody.append(el("p", { class: "muted" }, "None."));
        else lettersBody.append(table({
          caption: `${dl.count} newest`,
          columns: ["Received", "Device", "Topic", "Reason", "Error", "Size"],
          numeric: [5],
          rows: dl.dead_letters.map((x) => [fmtTime(x.received_at), x.device || "—", x.topic, x.reason, x.error, fmtBytes(x.payload_size)]),
        }));
      } catch (err) {
        if (err instanceof ApiError && err.status === 403) {
          lettersBody.append(el("p", { class: "alert", role: "alert" }, describe(err)));
        } else throw err;
      }
    },
  };
}

start();
