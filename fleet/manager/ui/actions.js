// Start, stop and restart: each asks for confirmation in a modal <dialog>, then
// calls the API and shows what happened. While the dialog is open the page
// does not refresh itself (see paused()).

import { api, agentPath } from "./api.js";
import { el, fill } from "./dom.js";

const OPERATIONS = ["start", "stop", "restart"];
const dialog = () => document.getElementById("confirm");

/** True while a confirmation is open: the refresh waits. */
export function paused() {
  return Boolean(dialog() && dialog().open);
}

/** Ask question in the dialog; resolves true when the operator confirms. */
export function confirmAction(question, verb) {
  const box = dialog();
  fill(document.getElementById("confirm-text"), question);
  document.getElementById("confirm-ok").textContent = verb;
  box.returnValue = "cancel";
  return new Promise((resolve) => {
    box.addEventListener("close", () => resolve(box.returnValue === "ok"), { once: true });
    box.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

/** Wire the dialog's buttons once (no inline handlers: the CSP forbids them). */
export function setUpDialog() {
  const box = dialog();
  document.getElementById("confirm-ok").addEventListener("click", () => box.close("ok"));
  document.getElementById("confirm-cancel").addEventListener("click", () => box.close("cancel"));
}

/** Buttons start, stop, restart for one agent; results go to the `result` element,
 * then `done()` runs (the view refreshes). */
export function operationButtons(node, agent, result, done) {
  return el("span", { class: "actions" }, OPERATIONS.map((operation) => el("button", {
    type: "button",
    class: operation === "start" ? "op" : "op danger",
    data: { op: operation, agent },
    title: `${operation} ${agent}`,
    on: { click: (event) => operate(node, agent, operation, result, done, event.currentTarget) },
  }, operation)));
}

async function operate(node, agent, operation, result, done, button) {
  const verb = operation[0].toUpperCase() + operation.slice(1);
  const asked = await confirmAction(`${verb} agent “${agent}” on node “${node}”?`, verb);
  if (!asked) return;
  button.disabled = true;
  show(result, "pending", `${operation} ${agent}…`);
  const started = performance.now();
  try {
    const reply = await api(agentPath(node, agent, "/operate"),
      { method: "POST", body: { operation } });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const pid = reply.agent.pid ? `, pid ${reply.agent.pid}` : "";
    show(result, "ok", `${operation} ${agent}: ${reply.agent.status}${pid} (${seconds} s)`);
  } catch (error) {
    show(result, "error", `${operation} ${agent} failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
  await done();
}

function show(result, kind, text) {
  result.className = `result ${kind}`;
  result.hidden = false;
  fill(result, text);
}
