"""Time the manager's /metrics exposition over a database of many agents.

    python3 bench/bench_metrics.py [--agents 10000] [--nodes 100] [--runs 20]

Nodes and agents are inserted directly into a fresh SQLite file (one
transaction), then the exposition is generated `runs` times in this process, as
a scrape of GET /metrics does on an HTTP worker (without the HTTP round trip).
Prints the median and the spread, and the body size.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet.manager.api.metrics import ManagerMetrics  # noqa: E402
from fleet.manager.store.db import close_database, open_database  # noqa: E402
from fleet.manager.store.migrations import migrate  # noqa: E402
from fleet.states import State  # noqa: E402

STATES = [int(s) for s in State if s is not State.UNSPECIFIED]
HEALTHS = ("healthy", "unhealthy", "unknown")


def fill(db, nodes: int, agents: int) -> None:
    """`nodes` nodes, `agents` agents spread over them, statuses and healths mixed."""
    now = int(time.time() * 1000)
    with db.atomic():
        db.execute_sql("INSERT INTO node (node_id, registered_at, last_seen, labels) "
                       "VALUES " + ",".join("(?, ?, ?, '{}')" for _ in range(nodes)),
                       [v for n in range(nodes) for v in (f"node-{n:04d}", now, now)])
        rows = [(f"node-{i % nodes:04d}", f"agent-{i:06d}", "exporter",
                 STATES[i % len(STATES)], i % 5, HEALTHS[i % 3]) for i in range(agents)]
        for start in range(0, len(rows), 500):
            chunk = rows[start:start + 500]
            db.execute_sql("INSERT INTO agent (node_id, agent_id, type, status, restart_count, "
                           "health) VALUES " + ",".join("(?, ?, ?, ?, ?, ?)" for _ in chunk),
                           [v for row in chunk for v in row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/fleet.db")
        migrate(db)
        fill(db, args.nodes, args.agents)
        metrics = ManagerMetrics(db, offline_after=90)
        times = []
        for _ in range(args.runs):
            began = time.perf_counter()
            body, _ = metrics.exposition()
            times.append(time.perf_counter() - began)
        close_database(db)
    ms = sorted(t * 1000 for t in times)
    print(f"{args.agents} agents on {args.nodes} nodes: /metrics exposition "
          f"median {statistics.median(ms):.1f} ms (min {ms[0]:.1f}, max {ms[-1]:.1f}, "
          f"{args.runs} runs), {len(body) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
