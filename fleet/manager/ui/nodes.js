// The nodes list (#/nodes) and one node with its agents (#/nodes/<id>).

import { api, nodePath } from "./api.js";
import { operationButtons } from "./actions.js";
import { Chart } from "./chart.js";
import {
  DASH, agentHash, agoSpan, badge, bar, bytes, el, errorLine, facts, fill, labels, lastExit,
  link, nodeHash, orDash, panel, percent, plural, table,
} from "./dom.js";

const PAGE = 100;   // rows per page; the API pages with limit and next_cursor

/** "Next page" / "First page" links for a list paged by cursor. */
function pager(hash, cursor, next) {
  if (!cursor && !next) return null;
  return el("p", { class: "pager" },
    cursor ? link(hash, "← first page") : null,
    next ? link(`${hash}?cursor=${encodeURIComponent(next)}`, "next page →") : null);
}

/** CPU and memory cells of a node's latest resources sample. */
function resourceCells(resources) {
  if (!resources) return [DASH, DASH];
  const used = resources.memory_used;
  const total = resources.memory_total;
  return [
    bar(Number(resources.cpu) / 100, percent(resources.cpu)),
    total ? bar(used / total, `${bytes(used)} / ${bytes(total)}`) : DASH,
  ];
}

export class NodesView {
  constructor(query) {
    this.title = "Nodes";
    this.route = "nodes";
    this.cursor = query.get("cursor") || "";
  }

  mount(root) {
    const [section, body] = panel("Nodes");
    this.body = body;
    fill(root, el("h1", {}, "Nodes"), section);
  }

  async refresh(errors) {
    let reply;
    try {
      reply = await api("nodes", { query: { limit: PAGE, cursor: this.cursor } });
    } catch (error) {
      errors.push(error);
      fill(this.body, errorLine(error));
      return;
    }
    const nodes = reply.nodes || [];
    const rows = nodes.map((n) => [
      link(nodeHash(n.node_id), n.node_id, { class: "id" }), badge(n.status), orDash(n.hostname),
      orDash(n.ip), agoSpan(n.last_seen), labels(n.labels), ...resourceCells(n.resources),
      orDash(n.daemon_version),
    ]);
    fill(this.body,
      nodes.length ? table(["Node", "Status", "Host", "IP", "Last seen", "Labels", "CPU", "Memory",
        "Daemon"], rows, (i) => ({ data: { node: nodes[i].node_id } }))
        : el("p", { class: "muted" }, "No node has registered yet."),
      pager("#/nodes", this.cursor, reply.next_cursor));
  }

  unmount() {}
}

export class NodeView {
  constructor(node, query) {
    this.node = node;
    this.title = `Node ${node}`;
    this.route = "nodes";
    this.cursor = query.get("cursor") || "";
    this.charts = [
      new Chart("CPU (whole machine)", (p) => p.cpu, percent, 10),
      new Chart("Memory used", (p) => p.memory_used, bytes, 1024 * 1024, true),
    ];
  }

  mount(root, context) {
    this.context = context;
    this.head = el("div", { class: "title-row" });
    this.facts = el("div");
    this.result = el("p", { class: "result", role: "status", hidden: true });
    const [agents, agentsBody] = panel("Agents", el("button", {
      type: "button", class: "op", title: "Pull the agents from the daemon now",
      on: { click: () => this.sync() },
    }, "sync"));
    const [resources, resourcesBody] = panel("Resources, last hour");
    this.agentsBody = agentsBody;
    this.chartsBody = resourcesBody;
    fill(resourcesBody, el("div", { class: "charts" }, this.charts.map((c) => c.element)));
    this.chartError = el("div");
    resourcesBody.append(this.chartError);
    fill(root, el("p", { class: "crumbs" }, link("#/nodes", "Nodes"), " / ", this.node),
      this.head, this.facts, this.result, agents, resources);
  }

  async refresh(errors) {
    await Promise.all([this.loadNode(errors), this.loadAgents(errors), this.loadCharts(errors)]);
  }

  async loadNode(errors) {
    try {
      const { node } = await api(nodePath(this.node));
      fill(this.head, el("h1", {}, node.node_id), badge(node.status));
      fill(this.facts, nodeFacts(node));
    } catch (error) {
      errors.push(error);
      fill(this.head, el("h1", {}, this.node));
      fill(this.facts, errorLine(error));
    }
  }

  async loadAgents(errors) {
    let reply;
    try {
      reply = await api(nodePath(this.node, "/agents"), { query: { limit: 500, cursor: this.cursor } });
    } catch (error) {
      errors.push(error);
      fill(this.agentsBody, errorLine(error));
      return;
    }
    const agents = reply.agents || [];
    const done = () => this.context.refreshNow();
    const rows = agents.map((a) => [
      link(agentHash(this.node, a.agent_id), a.agent_id, { class: "id" }),
      orDash(a.type), badge(a.status),
      el("td", { class: "health" }, badge(a.health),
        a.health_message ? el("span", {
          class: a.health === "unhealthy" ? "health-message bad" : "health-message",
        }, a.health_message) : null),
      el("td", { class: "pid num" }, a.pid ? String(a.pid) : DASH),
      el("td", { class: "num" }, String(a.restart_count ?? DASH)),
      lastExit(a.last_exit_code, a.last_exit_signal),
      agoSpan(a.changed_at || a.start_time),
      operationButtons(this.node, a.agent_id, this.result, done),
    ]);
    fill(this.agentsBody,
      agents.length ? table(["Agent", "Type", "Status", "Health", "PID", "Restarts", "Last exit",
        "Changed", ""], rows, (i) => ({ data: { agent: agents[i].agent_id } }))
        : el("p", { class: "muted" }, "This node reports no agents."),
      pager(nodeHash(this.node), this.cursor, reply.next_cursor));
  }

  async loadCharts(errors) {
    try {
      const { points } = await api(nodePath(this.node, "/metrics"), { query: { duration: 3600 } });
      for (const chart of this.charts) chart.update(points);
      fill(this.chartError);
    } catch (error) {
      // Node metrics are optional (an older manager has none): say why, keep the page.
      for (const chart of this.charts) chart.update([]);
      fill(this.chartError, errorLine(error));
      if (error.status !== 404) errors.push(error);
    }
  }

  async sync() {
    try {
      const { agents } = await api(nodePath(this.node, "/agents/sync"), { method: "POST" });
      this.showResult("ok", `synced ${plural(agents.length, "agent")} from the daemon`);
    } catch (error) {
      this.showResult("error", `sync failed: ${error.message}`);
    }
    await this.context.refreshNow();
  }

  showResult(kind, text) {
    this.result.className = `result ${kind}`;
    this.result.hidden = false;
    fill(this.result, text);
  }

  unmount() {
    for (const chart of this.charts) chart.close();
  }
}

function nodeFacts(node) {
  const r = node.resources;
  const pairs = [
    ["Host", `${orDash(node.hostname)} (${orDash(node.ip)})`],
    ["Address", orDash(node.advertise_address)],
    ["System", `${orDash(node.os)} ${orDash(node.arch)}`],
    ["Daemon", orDash(node.daemon_version)],
    ["Labels", labels(node.labels)],
    ["Registered", agoSpan(node.registered_at)],
    ["Last seen", agoSpan(node.last_seen)],
  ];
  if (r) {
    pairs.push(
      ["CPU", bar(r.cpu / 100, `${percent(r.cpu)} · load ${[r.load1, r.load5, r.load15].map((x) => Number(x).toFixed(2)).join(" ")}`)],
      ["Memory", r.memory_total ? bar(r.memory_used / r.memory_total, `${bytes(r.memory_used)} / ${bytes(r.memory_total)}`) : DASH],
      ["Swap", r.swap_total ? `${bytes(r.swap_used)} / ${bytes(r.swap_total)}` : DASH],
      ["Disk", r.disk_total ? bar(r.disk_used / r.disk_total, `${bytes(r.disk_used)} / ${bytes(r.disk_total)}`) : DASH],
      ["Disk I/O", `read ${bytes(r.disk_read_rate)}/s · write ${bytes(r.disk_write_rate)}/s`],
      ["Network", `rx ${bytes(r.net_rx_rate)}/s · tx ${bytes(r.net_tx_rate)}/s`]);
  } else {
    pairs.push(["Resources", DASH]);
  }
  return facts(pairs);
}
