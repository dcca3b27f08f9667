// The manager's JSON API, called with the token of this tab.
//
// The token lives in sessionStorage only: it ends with the tab, is never a
// cookie (so no other site can make the browser send it: no CSRF), and goes
// out only as "Authorization: Bearer" to this origin's API.

const TOKEN_KEY = "fleet.api-token";
// Relative to the page (…/ui/), so a proxy may mount the manager under a prefix.
const BASE = new URL("../api/v1/", document.baseURI);

/** A failed call: HTTP status (0: no answer), the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

let unauthenticated = () => {};

/** Call listener(error) whenever the API answers 401 (bad or missing token). */
export function onUnauthenticated(listener) {
  unauthenticated = listener;
}

/** The parsed JSON of a call to the API (path relative to /api/v1/); ApiError on failure. */
export async function api(path, { method = "GET", query = {}, body } = {}) {
  const url = new URL(path, BASE);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${token.get()}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "unreachable", `the manager did not answer (${err.message})`);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (response.ok && payload !== null) return payload;
  const error = (payload && payload.error) || {};
  const failure = new ApiError(response.status, error.code || `http_${response.status}`,
    error.message || `HTTP ${response.status} ${response.statusText}`.trim());
  if (response.status === 401) unauthenticated(failure);
  throw failure;
}

/** Path of a node's API resource. */
export function nodePath(node, rest = "") {
  return `nodes/${encodeURIComponent(node)}${rest}`;
}

/** Path of an agent's API resource. */
export function agentPath(node, agent, rest = "") {
  return nodePath(node, `/agents/${encodeURIComponent(agent)}${rest}`);
}
