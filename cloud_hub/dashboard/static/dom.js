// Small DOM helpers: elements, tables with header cells, and formats in the viewer's locale.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === "" && k === "class") continue;
    node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c == null) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

const numberFormats = new Map();

export function fmtNum(value, digits = 0) {
  if (value == null || Number.isNaN(value)) return "—";
  if (!numberFormats.has(digits)) {
    numberFormats.set(digits, new Intl.NumberFormat(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits }));
  }
  return numberFormats.get(digits).format(value);
}

// One formatter for every timestamp: toLocaleString would build one per call.
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

// Unix seconds as a date and time in the viewer's time zone.
export function fmtTime(seconds) {
  if (seconds == null) return "—";
  const d = new Date(seconds * 1000);
  return el("time", { datetime: d.toISOString() }, dateTime.format(d));
}

export function fmtBytes(n) {
  if (n == null) return "—";
  if (n < 1024) return `${fmtNum(n)} B`;
  if (n < 1024 * 1024) return `${fmtNum(n / 1024, 1)} KiB`;
  return `${fmtNum(n / 1024 / 1024, 1)} MiB`;
}

// A state word, coloured by class, with the hub's reason (when it gives one) beside it.
export function stateBadge(state, reason) {
  const span = el("span", { class: `state state-${state}`, "data-value": state }, state);
  if (!reason) return span;
  return el("span", {}, span, el("span", { class: "muted" }, ` (${reason})`));
}

// A table with a caption, column headers (th scope=col) and the first cell of each row
// as its row header (th scope=row). ``numeric``: indices of right-aligned columns.
// A row array may carry ``attrs`` (set on its <tr>).
export function table({ caption, columns, rows, numeric = [] }) {
  const t = el("table");
  if (caption) t.append(el("caption", { class: "muted" }, caption));
  const head = el("tr");
  columns.forEach((c, i) => head.append(el("th", { scope: "col", class: numeric.includes(i) ? "num" : "" }, c)));
  t.append(el("thead", {}, head));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr", row.attrs || {});
    row.forEach((cell, i) => {
      const attrs = { class: numeric.includes(i) ? "num" : "" };
      if (i === 0) attrs.scope = "row";
      tr.append(el(i === 0 ? "th" : "td", attrs, cell));
    });
    body.append(tr);
  }
  t.append(body);
  return t;
}

// The same, as text (for use inside a sentence).
export function timeText(seconds) {
  return seconds == null ? "—" : dateTime.format(new Date(seconds * 1000));
}
