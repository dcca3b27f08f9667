// Building the page: elements with text only (textContent, never innerHTML, so
// nothing the API returns is ever parsed as markup), and the formats views share.

export const DASH = "—";

/** A new element: props sets class, text, on (listeners), data (dataset) and attributes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "on") {
      for (const [event, listener] of Object.entries(value)) node.addEventListener(event, listener);
    } else if (key === "data") {
      for (const [name, text] of Object.entries(value)) node.dataset[name] = String(text);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  return append(node, children);
}

/** Append children: nodes as they are, anything else as text; null and false skipped. */
export function append(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of node. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A link inside the app ("#/..." only: ids are encoded, never a scheme). */
export function link(hash, text, props = {}) {
  return el("a", { ...props, href: hash }, text);
}

export const enc = encodeURIComponent;
export const nodeHash = (node) => `#/nodes/${enc(node)}`;
export const agentHash = (node, agent) => `#/nodes/${enc(node)}/agents/${enc(agent)}`;

const KINDS = {
  running: "ok", healthy: "ok", online: "ok", started: "ok", adopted: "ok",
  starting: "busy", stopping: "busy", restart: "busy", reload: "busy",
  backoff: "bad", fatal: "bad", exited: "warn", unhealthy: "bad", offline: "bad",
  limit: "bad", stopped: "off",
};

/** A coloured label for a status, health or event kind. */
export function badge(text) {
  const shown = text === undefined || text === null || text === "" ? DASH : String(text);
  return el("span", { class: `badge ${KINDS[shown] || "unknown"}` }, shown);
}

/** A thin bar showing fraction (0..1), with its text beside it. */
export function bar(fraction, text) {
  if (fraction === null || !Number.isFinite(fraction)) return DASH;
  const fillBar = el("span", { class: "bar-fill" });
  const shown = Math.max(0, Math.min(1, fraction));
  fillBar.style.width = `${(shown * 100).toFixed(1)}%`;   // CSSOM: allowed by the CSP
  if (shown > 0.9) fillBar.classList.add("high");
  return el("span", { class: "meter" }, el("span", { class: "bar" }, fillBar), text);
}

const pad = (n) => String(n).padStart(2, "0");

/** Unix ms as local "YYYY-MM-DD HH:MM:SS"; a dash for null or 0. */
export function when(ms) {
  if (!ms) return DASH;
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Local "HH:MM" (or "HH:MM:SS") of Unix ms. */
export function clock(ms, seconds = false) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}` + (seconds ? `:${pad(d.getSeconds())}` : "");
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago" (a dash for null). */
export function ago(ms, now = Date.now()) {
  if (!ms) return DASH;
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** A time as "3 min ago", with the exact time as a tooltip. */
export function agoSpan(ms) {
  return el("span", { title: ms ? when(ms) : undefined }, ago(ms));
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 1536 -> "1.5 KiB". */
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return DASH;
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 || value >= 100 ? 0 : 1)} ${UNITS[unit]}`;
}

/** 12.345 -> "12.3 %". */
export function percent(x) {
  return x === null || x === undefined || !Number.isFinite(Number(x)) ? DASH : `${Number(x).toFixed(1)} %`;
}

const SIGNALS = { 1: "HUP", 2: "INT", 3: "QUIT", 6: "ABRT", 9: "KILL", 11: "SEGV", 13: "PIPE", 15: "TERM" };

/** How the agent's process last ended: "code 1", "signal 9 (KILL)" or a dash. */
export function lastExit(exitCode, exitSignal) {
  if (exitSignal > 0) return SIGNALS[exitSignal] ? `signal ${exitSignal} (${SIGNALS[exitSignal]})` : `signal ${exitSignal}`;
  if (exitCode === undefined || exitCode === null || exitCode < 0) return DASH;
  return `code ${exitCode}`;
}

/** A value, or a dash when it is missing or empty. */
export function orDash(value) {
  return value === undefined || value === null || value === "" ? DASH : String(value);
}

/** A definition list of [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.map(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

/** Chips for a labels object. */
export function labels(map) {
  const entries = Object.entries(map || {});
  if (!entries.length) return DASH;
  return el("span", { class: "labels" },
    entries.map(([key, value]) => el("span", { class: "chip" }, `${key}=${value}`)));
}

/** A table: headers, then rows of cells; rowProps(i) gives each row's props. */
export function table(headers, rows, rowProps = () => ({})) {
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells, i) => el("tr", rowProps(i),
      cells.map((cell) => (cell instanceof HTMLTableCellElement ? cell : el("td", {}, cell)))))));
}

/** A section with a heading and a body element, returned as [section, body]. */
export function panel(title, ...extra) {
  const body = el("div", { class: "panel-body" });
  const head = el("div", { class: "panel-head" }, el("h2", {}, title), extra);
  return [el("section", { class: "panel" }, head, body), body];
}

/** An inline error message (the API's error.message). */
export function errorLine(error) {
  return el("p", { class: "error" }, error && error.message ? error.message : String(error));
}

/** "1 node", "2 nodes". */
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
