// An agent's log: the last lines (with an optional grep), and "follow", which
// asks only for what was written since: each answer's next_offset is the next
// call's offset. A manager without offsets (no next_offset) is followed by
// rereading the tail instead.

import { agentPath, api } from "./api.js";
import { el, errorLine, fill, panel } from "./dom.js";

const FOLLOW_MS = 2000;
const KEEP = 5000;                  // lines kept on screen while following
const COUNTS = [100, 500, 1000];    // the API allows 1..1000
const PAGE = 1000;                  // lines asked for per follow call

export class LogPanel {
  constructor(node, agent) {
    this.path = agentPath(node, agent, "/logs");
    this.lines = [];
    this.offset = null;      // next_offset of the last answer; null: not known
    this.loaded = false;
    this.following = false;
    this.timer = 0;
    this.generation = 0;     // bumped by each fresh load; older answers are dropped
  }

  /** The panel's element (built once per page). */
  mount(context) {
    this.context = context;
    this.grep = el("input", { type: "search", placeholder: "grep", "aria-label": "grep", class: "grep",
      spellcheck: "false" });
    this.count = el("select", { "aria-label": "lines" },
      COUNTS.map((n) => el("option", { value: n, selected: n === 100 }, `${n} lines`)));
    this.follow = el("input", { type: "checkbox", class: "follow", on: { change: () => this.toggle() } });
    const form = el("form", { class: "log-controls", on: { submit: (e) => this.submit(e) } },
      this.grep, this.count, el("button", { type: "submit", class: "op" }, "show"),
      el("label", { class: "follow-label" }, this.follow, "follow"));
    const [section, body] = panel("Logs", form);
    this.status = el("p", { class: "log-status muted" });
    this.pre = el("pre", { class: "log", tabindex: 0 });
    fill(body, this.status, this.pre);
    return section;
  }

  /** Called by the page's refresh: the first load only (follow has its own pace). */
  async refresh(errors) {
    if (!this.loaded) await this.load(errors);
  }

  async submit(event) {
    event.preventDefault();
    await this.load([]);
  }

  /** The last N lines matching grep, replacing what is shown. */
  async load(errors) {
    const generation = ++this.generation;
    try {
      const reply = await api(this.path, { query: { lines: this.count.value, grep: this.grep.value } });
      if (generation !== this.generation) return;
      this.loaded = true;
      this.lines = reply.lines || [];
      this.offset = Number.isInteger(reply.next_offset) ? reply.next_offset : null;
      this.show(reply.truncated, true);
    } catch (error) {
      if (generation !== this.generation) return;
      errors.push(error);
      this.loaded = true;
      fill(this.status, errorLine(error));
    }
  }

  /** Lines written since the last answer, appended. */
  async poll() {
    if (this.offset === null) {
      await this.load([]);          // no offsets on this manager: reread the tail
      return;
    }
    const generation = this.generation;
    try {
      const reply = await api(this.path,
        { query: { lines: PAGE, grep: this.grep.value, offset: this.offset } });
      if (generation !== this.generation) return;
      const fresh = reply.lines || [];
      this.offset = Number.isInteger(reply.next_offset) ? reply.next_offset : null;
      if (fresh.length) {
        this.lines = this.lines.concat(fresh).slice(-KEEP);
        this.show(reply.truncated, false);
      } else {
        this.describe(false);
      }
    } catch (error) {
      if (generation === this.generation) fill(this.status, errorLine(error));
    }
  }

  toggle() {
    this.following = this.follow.checked;
    clearTimeout(this.timer);
    if (this.following) this.tick();
    else this.describe(false);
  }

  async tick() {
    if (!this.following) return;
    if (!document.hidden) await this.poll();
    if (this.following) this.timer = setTimeout(() => this.tick(), FOLLOW_MS);
  }

  show(truncated, fresh) {
    const pre = this.pre;
    const atEnd = fresh || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.textContent = this.lines.join("\n");
    if (atEnd) pre.scrollTop = pre.scrollHeight;
    this.describe(truncated);
  }

  describe(truncated) {
    const parts = [`${this.lines.length} line${this.lines.length === 1 ? "" : "s"}`];
    if (this.grep.value) parts.push(`matching “${this.grep.value}”`);
    if (truncated) parts.push("cut at 1 MiB");
    if (this.following) parts.push(this.offset === null ? "following (rereading the tail)" : "following");
    this.status.className = "log-status muted";
    fill(this.status, parts.join(" · "));
  }

  /** Stop following (the page is left). */
  close() {
    this.following = false;
    this.generation += 1;
    clearTimeout(this.timer);
  }
}
