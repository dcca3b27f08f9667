"""Fleet-wide views benchmark: what a page of GET /api/v1/agents and GET /api/v1/overview
cost over 100,000 agents in SQLite.

Builds a migrated SQLite database holding --nodes nodes with --agents agents in all
(inserted directly: 94% running, the rest backoff, fatal, stopped, exited) and each
agent's history (started and running two hours ago; --loops agents crash-looping
20 times in the last hour), then serves the real HTTP API (FleetService,
FleetViews, the HTTP server) on 127.0.0.1 port 0 and prints the median of --runs
requests, over one keep-alive connection, of: the first page (no limit: 500), a
middle page through its cursor, the same with a status and a label filter, the
overview, and one walk through every agent 5,000 at a time.

    python bench/bench_views.py [--agents 100000] [--nodes 1000] [--loops 50] [--runs 7]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fleet.manager.api.routes import make_app  # noqa: E402
from fleet.manager.api.server import serve_http  # noqa: E402
from fleet.manager.nodes import NodeStore  # noqa: E402
from fleet.manager.pool import DaemonClientPool  # noqa: E402
from fleet.manager.service import FleetService  # noqa: E402
from fleet.manager.store.db import close_database, open_database  # noqa: E402
from fleet.manager.store.migrations import migrate  # noqa: E402
from fleet.manager.store.registry import Registry  # noqa: E402
from fleet.manager.tokens import ApiAuth  # noqa: E402
from fleet.manager.views import FleetViews  # noqa: E402
from fleet.states import State  # noqa: E402

TOKEN = "bench-views-token-0123456789abcdef"
OTHERS = (State.BACKOFF, State.FATAL, State.STOPPED, State.EXITED)


def fill(db, nodes: int, agents: int, loops: int, now: int) -> None:
    """Nodes n0000.., their agents a00000.., and the agents' events, in one transaction."""
    per_node = agents // nodes
    node_rows, agent_rows, events = [], [], []
    for n in range(nodes):
        labels = json.dumps({"zone": "abcd"[n % 4], "role": "edge"}, sort_keys=True)
        node_rows.append((f"n{n:04d}", labels, now, now))
        for a in range(per_node):
            i = n * per_node + a
            state = OTHERS[i % 4] if i % 50 in (1, 2, 3) else State.RUNNING
            health = "healthy" if state is State.RUNNING else "unhealthy"
            agent_rows.append((f"n{n:04d}", f"a{a:05d}", f"t{a % 5}", int(state), health))
            events += [(f"n{n:04d}", f"a{a:05d}", 1, now - 7_200_000, "started", now),
                       (f"n{n:04d}", f"a{a:05d}", 2, now - 7_199_000, "running", now)]
    for i in range(loops):
        node_id, agent_id = agent_rows[i * (len(agent_rows) // max(loops, 1))][:2]
        for r in range(20):
            t = now - 3_000_000 + r * 60_000
            events += [(node_id, agent_id, 10 + 2 * r, t, "exited", now),
                       (node_id, agent_id, 11 + 2 * r, t + 100, "started", now)]
    with db.connection_context():
        for sql, rows in (
                ("INSERT INTO node (node_id, labels, registered_at, last_seen) "
                 "VALUES (?, ?, ?, ?)", node_rows),
                ("INSERT INTO agent (node_id, agent_id, type, status, health) "
                 "VALUES (?, ?, ?, ?, ?)", agent_rows),
                ("INSERT INTO event (node_id, agent_id, seq, time, kind, received) "
                 "VALUES (?, ?, ?, ?, ?, ?)", events)):
            with db.atomic():
                db.cursor().executemany(sql, rows)


class Client:
    """GETs over one keep-alive connection; returns the parsed body."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str, **query) -> dict:
        pairs = [(k, v) for k, v in query.items() if v is not None]
        self.conn.request("GET", path + ("?" + urllib.parse.urlencode(pairs) if pairs else ""),
                          headers={"Authorization": f"Bearer {TOKEN}"})
        response = self.conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return body


def median_ms(action, runs: int) -> float:
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        took.append(time.perf_counter() - began)
    return statistics.median(took) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--loops", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-views-")
    db = open_database(f"sqlite:///{folder}/fleet.db")
    migrate(db)
    now = int(time.time() * 1000)
    began = time.perf_counter()
    fill(db, args.nodes, args.agents, args.loops, now)
    print(f"database: {args.nodes:,} nodes, {args.agents:,} agents, events; "
          f"filled in {time.perf_counter() - began:.1f} s")
    service = FleetService(NodeStore(db, Registry.load(db)), DaemonClientPool(TOKEN),
                           views=FleetViews(db))
    server = serve_http(make_app(service, ApiAuth([("bench", TOKEN)])), "127.0.0.1:0")
    server.start_background()
    client = Client(server.port)
    try:
        report(client, args)
    finally:
        server.stop()
        close_database(db)


def cursor_after(client: Client, count: int, **query) -> str:
    """The cursor after the first `count` agents matching `query`."""
    cursor = None
    while count > 0:
        body = client.get("/api/v1/agents", limit=min(count, 5000), cursor=cursor, **query)
        count -= len(body["agents"])
        cursor = body["next_cursor"]
    return cursor


def report(client: Client, args) -> None:
    """Print each figure: median ms of --runs requests."""
    fatal = client.get("/api/v1/overview")["agents"]["status"]["fatal"]
    middle = cursor_after(client, args.agents // 2)
    fatal_middle = cursor_after(client, max(1, fatal // 2), status="fatal")
    label_middle = cursor_after(client, args.agents // 8, label="zone=b")
    cases = [
        ("first page", dict()),
        (f"middle page, after {middle}", dict(cursor=middle)),
        (f"status=fatal ({fatal:,} of them), after {fatal_middle}",
         dict(status="fatal", cursor=fatal_middle)),
        (f"label=zone=b, after {label_middle}", dict(label="zone=b", cursor=label_middle)),
    ]
    for name, query in cases:
        count = len(client.get("/api/v1/agents", **query)["agents"])
        took = median_ms(lambda: client.get("/api/v1/agents", **query), args.runs)
        print(f"GET /api/v1/agents {name}: {count} agents in {took:.1f} ms")
    top = client.get("/api/v1/overview")["top_restarts"]
    took = median_ms(lambda: client.get("/api/v1/overview"), args.runs)
    print(f"GET /api/v1/overview ({len(top)} top restarts, most {top[0]['restarts']}): "
          f"{took:.1f} ms")
    began, cursor, seen = time.perf_counter(), None, 0
    while True:
        body = client.get("/api/v1/agents", limit=5000, cursor=cursor)
        seen += len(body["agents"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    print(f"every agent, 5,000 a page: {seen:,} agents in "
          f"{(time.perf_counter() - began) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
