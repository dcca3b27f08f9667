// The dashboard: token form, hash routes, and a refresh every few seconds.
//
// Routes: #/ overview, #/nodes, #/nodes/<id>, #/nodes/<id>/agents/<agent>.
// Each view has mount(root, context), refresh(errors) and unmount(); the
// refresh collects the API's errors, which the banner shows until a refresh
// succeeds. A 401 anywhere returns to the token form with the API's message.

import { api, onUnauthenticated, token } from "./api.js";
import { paused, setUpDialog } from "./actions.js";
import { AgentView } from "./agent.js";
import { clock, el, fill } from "./dom.js";
import { NodeView, NodesView } from "./nodes.js";
import { OverviewView } from "./overview.js";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

let view = null;          // the view on screen; null while the token form shows
let timer = 0;            // the next scheduled refresh
let running = null;       // the refresh in progress (a promise), so two never overlap
let again = false;        // a refresh was asked for while one ran

/** The view for the current location.hash. */
function route() {
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?", 2);
  const query = new URLSearchParams(search || "");
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return new MissingView(path);
  }
  if (parts.length === 0) return new OverviewView();
  if (parts[0] !== "nodes") return new MissingView(path);
  if (parts.length === 1) return new NodesView(query);
  if (parts.length === 2) return new NodeView(parts[1], query);
  if (parts.length === 4 && parts[2] === "agents") return new AgentView(parts[1], parts[3]);
  return new MissingView(path);
}

class MissingView {
  constructor(path) {
    this.title = "Not found";
    this.route = "";
    this.path = path;
  }

  mount(root) {
    fill(root, el("h1", {}, "Not found"),
      el("p", {}, `Nothing here: #/${this.path}. `, el("a", { href: "#/" }, "Back to the overview")));
  }

  async refresh() {}

  unmount() {}
}

const context = { refreshNow };

/** Show the view of the current hash (or the token form without a token). */
function navigate() {
  if (view) view.unmount();
  view = null;
  clearTimeout(timer);
  if (!token.get()) {
    showLogin("");
    return;
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  view = route();
  document.title = `${view.title} · fleet`;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.route === view.route) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  view.mount($("view"), context);
  banner([]);
  running = null;           // a refresh of the page left may still wait on a slow daemon:
  again = false;            // its answers are dropped (cycle checks the view), not waited for
  refreshNow();
}

/** Refresh the view now (after one in progress for the same view, if any). */
async function refreshNow() {
  if (running) {
    again = true;
    return running;
  }
  clearTimeout(timer);
  const mine = cycle();
  running = mine;
  try {
    await mine;
  } finally {
    if (running === mine) running = null;
  }
  if (again && running === null) {
    again = false;
    await refreshNow();
  }
}

async function cycle() {
  const current = view;
  if (!current) return;
  if (paused() || document.hidden) {          // a confirmation is open, or nobody looks
    $("refreshed").textContent = paused() ? "refresh paused" : "";
    timer = setTimeout(refreshNow, REFRESH_MS);
    return;
  }
  const errors = [];
  try {
    await current.refresh(errors);
  } catch (error) {
    errors.push(error);
  }
  if (current !== view) return;               // left during the refresh
  banner(errors.filter((e) => e.status !== 401));
  $("refreshed").textContent = `updated ${clock(Date.now(), true)}`;
  timer = setTimeout(refreshNow, REFRESH_MS);
}

/** Show the API's error messages (each once), or hide the banner. */
function banner(errors) {
  const messages = [...new Set(errors.map((e) => e.message || String(e)))];
  const box = $("banner");
  box.hidden = messages.length === 0;
  fill(box, messages.map((m) => el("div", {}, m)));
}

function showLogin(message) {
  if (view) view.unmount();
  view = null;
  clearTimeout(timer);
  fill($("view"));
  banner([]);
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("refreshed").textContent = "";
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message ? `The manager refused the token: ${message}` : "";
  document.title = "Sign in · fleet";
  $("token").focus();
}

/** Keep the typed token for this tab once the API accepts it (a 401 shows why not). */
async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  token.set(value);
  $("token-submit").disabled = true;
  try {
    await api("nodes", { query: { limit: 1 } });
  } catch (error) {
    if (error.status === 401) return;         // onUnauthenticated showed the form again
  } finally {
    $("token-submit").disabled = false;
  }
  $("token").value = "";
  navigate();
}

function signOut() {
  token.clear();
  showLogin("");
}

function start() {
  setUpDialog();
  $("token-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", navigate);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && view) refreshNow();
  });
  onUnauthenticated((error) => {
    token.clear();
    showLogin(error.message);
  });
  navigate();
}

start();
