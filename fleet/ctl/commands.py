"""The ctl commands: each calls the HTTP API, prints a table (or, with --json,
the API's JSON) and returns the exit status.

Lists follow `next_cursor` page by page and print each page as it comes, so a
fleet of 100,000 agents is never one body nor one list in memory.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Iterator, TextIO

from fleet.ctl import columns
from fleet.ctl.client import Client, CtlError, path
from fleet.ctl.output import Column, Table, table

API = "/api/v1"
AGENT_STATUSES = ("stopped", "starting", "running", "backoff", "stopping", "exited", "fatal",
                  "unknown")
HEALTHS = ("healthy", "unhealthy", "unknown")
ROLLOUT_ENDED = ("succeeded", "failed", "cancelled", "interrupted")
FOLLOW_LINES = 1000        # lines asked for per poll while following (the API's maximum)
POLL_SECONDS = 1.0         # between polls of logs -f and of a rollout
RETRIED = (0, 502, 503, 504)   # while following: unreachable manager or daemon, try again
# A tail the daemon cut short (its answer stops at 1 MiB, or it read its scan limit):
# the lines shown are the newest, but fewer than asked for.
TRUNCATED_NOTE = ("older lines were left out: the answer reached the daemon's size limit; "
                  "ask for fewer with -n, or narrow with --grep")


class Ctl:
    """What every command shares: the client, --json, where output goes, the clock."""

    def __init__(self, client: Client, as_json: bool = False, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.json = as_json        # print the API's JSON instead of tables
        self.out = out
        self.err = err             # notes that are not the output (a follower's retries)
        self.sleep = sleep         # between polls (logs -f, rollout)

    def dump(self, body, compact: bool = False) -> None:
        """Print one API answer as JSON: indented, or one line (a follower's polls)."""
        text = json.dumps(body, separators=(",", ":")) if compact else json.dumps(body, indent=2)
        print(text, file=self.out, flush=True)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def listing(self, pages: Iterator[dict], key: str, cols: list[Column], empty: str) -> int:
        """Print every page of a list as one table (or each page's JSON); exit 0."""
        printed = Table(cols, self.out)
        for page in pages:
            if self.json:
                self.dump(page)
            elif page.get(key):
                printed.add(page[key])
        if not self.json and printed.rows == 0:
            self.say(empty)
        return 0


def _agent_path(args, *rest: str) -> str:
    return path("api", "v1", "nodes", args.node, "agents", args.agent, *rest)


# ---- commands ----

def status(ctl: Ctl, args) -> int:
    """The fleet at a glance: nodes by status, agents by status and health, top restarts."""
    body = ctl.client.get(API + "/overview")
    if ctl.json:
        ctl.dump(body)
        return 0
    nodes, agents = body["nodes"], body["agents"]
    ctl.say(f"nodes   {nodes['total']} total: {nodes['online']} online, "
            f"{nodes['offline']} offline")
    ctl.say(f"agents  {agents['total']} total: " + _counts(agents["status"], AGENT_STATUSES))
    ctl.say("health  " + _counts(agents["health"], HEALTHS))
    top = body.get("top_restarts") or []
    if top:
        ctl.say("\nmost restarts in the last hour:")
        table([Column("NODE", lambda r: r["node_id"]), Column("AGENT", lambda r: r["agent_id"]),
               Column("RESTARTS", lambda r: str(r["restarts"]), right=True)], top, ctl.out)
    return 0


def _counts(counts: dict, order: tuple) -> str:
    shown = [f"{counts[name]} {name}" for name in order if counts.get(name)]
    shown += [f"{n} {name}" for name, n in counts.items() if name not in order and n]
    return ", ".join(shown) or "none"


def nodes(ctl: Ctl, args) -> int:
    """Every node (or those of --status / --label)."""
    pages = ctl.client.pages(API + "/nodes", "nodes",
                             {"status": args.status, "label": args.label or None})
    return ctl.listing(pages, "nodes", columns.NODE_COLUMNS, "no nodes")


def agents(ctl: Ctl, args) -> int:
    """A node's agents, or with no NODE the agents of the whole fleet."""
    query = {"status": args.status, "health": args.health, "type": args.type}
    if args.node:
        pages = ctl.client.pages(path("api", "v1", "nodes", args.node, "agents"), "agents", query)
    else:
        pages = ctl.client.pages(API + "/agents", "agents", {**query, "label": args.label or None})
    return ctl.listing(pages, "agents", columns.agent_columns(not args.node), "no agents")


def operate(ctl: Ctl, args) -> int:
    """start, stop or restart one agent; show it afterwards."""
    body = ctl.client.post(_agent_path(args, "operate"), {"operation": args.command})
    if ctl.json:
        ctl.dump(body)
        return 0
    agent = body["agent"]
    pid = f" pid {agent['pid']}" if agent.get("pid") else ""
    ctl.say(f"{args.node} {args.agent}: {args.command} done, {agent['status']}{pid}")
    return 0


def logs(ctl: Ctl, args) -> int:
    """The agent's last lines; with -f, then every new line until Ctrl-C."""
    query = {"lines": args.lines, "grep": args.grep or None}
    body = ctl.client.get(_agent_path(args, "logs"), query)
    _print_logs(ctl, body, compact=args.follow)
    if body.get("truncated") and not ctl.json:   # --json shows the flag itself
        print(f"fleet ctl: {TRUNCATED_NOTE}", file=ctl.err, flush=True)
    if not args.follow:
        return 0
    offset = body.get("next_offset")
    if offset is None:
        raise CtlError("this manager cannot follow logs (its answer has no next_offset)")
    return _follow(ctl, args, offset)


def _print_logs(ctl: Ctl, body: dict, compact: bool = False) -> None:
    if ctl.json:
        ctl.dump(body, compact)
        return
    for line in body.get("lines") or []:
        print(line, file=ctl.out)
    ctl.out.flush()


def _follow(ctl: Ctl, args, offset: int) -> int:
    """Poll about every second from `offset`; Ctrl-C (KeyboardInterrupt) ends it with 0."""
    waiting = ""                   # the last error noted on stderr while retrying
    try:
        while True:
            try:
                body = ctl.client.get(_agent_path(args, "logs"), {
                    "lines": FOLLOW_LINES, "grep": args.grep or None, "offset": offset})
            except CtlError as exc:
                if exc.status not in RETRIED:
                    raise
                if exc.message != waiting:
                    print(f"fleet ctl: {exc.message} (retrying)", file=ctl.err, flush=True)
                    waiting = exc.message
                ctl.sleep(POLL_SECONDS)
                continue
            waiting = ""
            if body.get("lines"):
                _print_logs(ctl, body, compact=True)
            offset = body.get("next_offset", offset)
            full = body.get("truncated") or len(body.get("lines") or []) >= FOLLOW_LINES
            if not full:
                ctl.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return 0


def metrics(ctl: Ctl, args) -> int:
    """The agent's resource samples of the last --duration seconds, oldest first."""
    body = ctl.client.get(_agent_path(args, "metrics"), {"duration": args.duration})
    if ctl.json:
        ctl.dump(body)
        return 0
    points = sorted(body.get("points") or [], key=lambda p: p["timestamp"])
    if not points:
        ctl.say("no samples yet")
        return 0
    table(columns.METRIC_COLUMNS, points, ctl.out)
    return 0


def events(ctl: Ctl, args) -> int:
    """Events newest first: the fleet's, a node's, or one agent's (at most --limit)."""
    query = {"kind": args.kind}
    if args.agent:
        pages = ctl.client.pages(_agent_path(args, "events"), "events", query, args.limit)
    else:
        query["node"] = args.node
        pages = ctl.client.pages(API + "/events", "events", query, args.limit)
    return ctl.listing(pages, "events", columns.EVENT_COLUMNS, "no events")


def audit(ctl: Ctl, args) -> int:
    """Operations done through the API, newest first (at most --limit)."""
    pages = ctl.client.pages(API + "/audit", "entries", {"node": args.node}, args.limit)
    return ctl.listing(pages, "entries", columns.AUDIT_COLUMNS, "no audit entries")


def reload(ctl: Ctl, args) -> int:
    """Make the node's daemon reread its config; show what changed and its agents."""
    body = ctl.client.post(path("api", "v1", "nodes", args.node, "reload"))
    if ctl.json:
        ctl.dump(body)
        return 0
    ctl.say(f"{args.node}: config reloaded")
    for change in body.get("changes") or []:   # none: nothing changed
        ctl.say(f"  {change.get('change', ''):<8} {change.get('agent_id', '')}")
    table(columns.agent_columns(False), body.get("agents") or [], ctl.out)
    return 0


def policies(ctl: Ctl, args) -> int:
    """Every policy with how many nodes run its current version."""
    pages = ctl.client.pages(API + "/policies", "policies")
    return ctl.listing(pages, "policies", columns.POLICY_COLUMNS, "no policies")
