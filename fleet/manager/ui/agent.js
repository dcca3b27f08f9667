// One agent (#/nodes/<id>/agents/<agent>): its state with start/stop/restart,
// cpu and memory charts, its logs (grep, follow) and its events.

import { agentPath, api, nodePath } from "./api.js";
import { operationButtons } from "./actions.js";
import { Chart } from "./chart.js";
import {
  DASH, agoSpan, badge, bytes, el, errorLine, facts, fill, lastExit, link, nodeHash, orDash,
  panel, percent, table, when,
} from "./dom.js";
import { LogPanel } from "./logs.js";

const DURATIONS = [["15 min", 900], ["1 h", 3600], ["6 h", 21600], ["24 h", 86400]];
const EVENTS = 50;

export class AgentView {
  constructor(node, agent) {
    this.node = node;
    this.agent = agent;
    this.title = `${agent} on ${node}`;
    this.route = "nodes";
    this.duration = 3600;
    this.charts = [
      new Chart("CPU (% of one core)", (p) => p.cpu, percent, 10),
      new Chart("Memory (RSS)", (p) => p.memory_rss, bytes, 1024 * 1024, true),
    ];
    this.logs = new LogPanel(node, agent);
  }

  mount(root, context) {
    this.context = context;
    this.head = el("div", { class: "title-row" });
    this.facts = el("div");
    this.result = el("p", { class: "result", role: "status", hidden: true });
    const select = el("select", { "aria-label": "chart duration", on: { change: (e) => this.setDuration(e) } },
      DURATIONS.map(([text, seconds]) => el("option", { value: seconds, selected: seconds === this.duration }, text)));
    const [charts, chartsBody] = panel("Resources", select);
    this.chartError = el("div");
    fill(chartsBody, el("div", { class: "charts" }, this.charts.map((c) => c.element)), this.chartError);
    const [events, eventsBody] = panel("Events");
    this.eventsBody = eventsBody;
    fill(root,
      el("p", { class: "crumbs" }, link("#/nodes", "Nodes"), " / ", link(nodeHash(this.node), this.node),
        " / ", this.agent),
      this.head, this.facts, this.result, this.logs.mount(context), charts, events);
  }

  async refresh(errors) {
    await Promise.all([this.loadAgent(errors), this.loadCharts(errors), this.loadEvents(errors),
      this.logs.refresh(errors)]);
  }

  async loadAgent(errors) {
    try {
      const agent = await findAgent(this.node, this.agent);
      const done = () => this.context.refreshNow();
      fill(this.head, el("h1", {}, this.agent), badge(agent.status), badge(agent.health),
        operationButtons(this.node, this.agent, this.result, done));
      fill(this.facts, agentFacts(agent));
    } catch (error) {
      errors.push(error);
      fill(this.head, el("h1", {}, this.agent));
      fill(this.facts, errorLine(error));
    }
  }

  async loadCharts(errors) {
    try {
      const { points } = await api(agentPath(this.node, this.agent, "/metrics"),
        { query: { duration: this.duration } });
      for (const chart of this.charts) chart.update(points);
      fill(this.chartError);
    } catch (error) {
      errors.push(error);
      for (const chart of this.charts) chart.update([]);
      fill(this.chartError, errorLine(error));
    }
  }

  async loadEvents(errors) {
    try {
      const { events } = await api(agentPath(this.node, this.agent, "/events"), { query: { limit: EVENTS } });
      fill(this.eventsBody, events.length ? table(["Time", "Kind", "Message", "PID", "Exit"],
        events.map((e) => [when(e.time), badge(e.kind), orDash(e.message), e.pid ? String(e.pid) : DASH,
          lastExit(e.exit_code, e.exit_signal)]))
        : el("p", { class: "muted" }, "No events recorded."));
    } catch (error) {
      errors.push(error);
      fill(this.eventsBody, errorLine(error));
    }
  }

  setDuration(event) {
    this.duration = Number(event.target.value);
    this.context.refreshNow();
  }

  unmount() {
    for (const chart of this.charts) chart.close();
    this.logs.close();
  }
}

/** The stored agent, from its node's list (there is no single-agent GET). */
async function findAgent(node, agentId) {
  let cursor = "";
  do {
    const reply = await api(nodePath(node, "/agents"), { query: { limit: 5000, cursor } });
    const found = (reply.agents || []).find((a) => a.agent_id === agentId);
    if (found) return found;
    cursor = reply.next_cursor || "";
  } while (cursor);
  throw new Error(`agent '${agentId}' not found on node '${node}'`);
}

function agentFacts(a) {
  return facts([
    ["Type", `${orDash(a.type)} ${a.version ? `(${a.version})` : ""}`],
    ["PID", a.pid ? String(a.pid) : DASH],
    ["Started", agoSpan(a.start_time)],
    ["Restarts", String(a.restart_count ?? DASH)],
    ["Last exit", lastExit(a.last_exit_code, a.last_exit_signal)],
    ["Health", a.health_message ? `${a.health}: ${a.health_message}` : orDash(a.health)],
    ["Last error", orDash(a.last_error)],
    ["Next retry", a.next_retry_time ? when(a.next_retry_time) : DASH],
    ["Config", a.config_changed ? "changed: applied at the next restart" : "as running"],
    ["Last report", agoSpan(a.last_sync_time)],
  ]);
}
