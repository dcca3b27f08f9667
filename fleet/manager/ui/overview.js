// The overview (#/): nodes by status, agents by status and health, and the
// agents that restarted most in the last hour, from GET /api/v1/overview.

import { api } from "./api.js";
import { DASH, agentHash, badge, el, errorLine, fill, link, nodeHash, panel, table } from "./dom.js";

const STATUSES = ["running", "starting", "backoff", "stopping", "stopped", "exited", "fatal", "unknown"];
const HEALTHS = ["healthy", "unhealthy", "unknown"];

export class OverviewView {
  constructor() {
    this.title = "Overview";
    this.route = "overview";
  }

  mount(root) {
    const [nodes, nodesBody] = panel("Nodes", link("#/nodes", "all nodes →", { class: "more" }));
    const [agents, agentsBody] = panel("Agents by status");
    const [health, healthBody] = panel("Agents by health");
    const [top, topBody] = panel("Most restarts in the last hour");
    this.bodies = { nodesBody, agentsBody, healthBody, topBody };
    fill(root, el("h1", {}, "Overview"),
      el("div", { class: "cards" }, nodes, agents, health), top);
  }

  async refresh(errors) {
    let overview;
    try {
      overview = await api("overview");
    } catch (error) {
      errors.push(error);
      for (const body of Object.values(this.bodies)) fill(body, errorLine(error));
      return;
    }
    const { nodesBody, agentsBody, healthBody, topBody } = this.bodies;
    const nodes = overview.nodes || {};
    fill(nodesBody, counts([["total", nodes.total], ["online", nodes.online], ["offline", nodes.offline]]));
    const agents = overview.agents || {};
    const status = agents.status || {};
    fill(agentsBody, el("p", { class: "big" }, `${count(agents.total)} agents`),
      counts(STATUSES.map((name) => [name, status[name]]), true));
    const health = agents.health || {};
    fill(healthBody, counts(HEALTHS.map((name) => [name, health[name]]), true));
    fill(topBody, restarts(overview.top_restarts));
  }

  unmount() {}
}

function count(n) {
  return Number.isFinite(n) ? String(n) : DASH;
}

/** Name/number pairs as a row of tiles; zero tiles dimmed, names as badges if asked. */
function counts(pairs, badges = false) {
  return el("div", { class: "counts" }, pairs.map(([name, n]) => el("div", {
    class: n ? "count" : "count zero", data: { count: name },
  }, el("span", { class: "count-n" }, count(n)), badges ? badge(name) : el("span", { class: "count-name" }, name))));
}

function restarts(top) {
  if (!Array.isArray(top)) return el("p", { class: "muted" }, DASH);
  if (!top.length) return el("p", { class: "muted" }, "No agent restarted in the last hour.");
  return table(["Node", "Agent", "Restarts"], top.map((row) => [
    link(nodeHash(row.node_id), row.node_id),
    link(agentHash(row.node_id, row.agent_id), row.agent_id),
    count(row.restarts),
  ]));
}
