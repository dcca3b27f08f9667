"""The group-commit writer's transaction alone: CPU a state in the writer and the server.

    python3 bench/bench_writer.py [--engine postgresql|sqlite] [--nodes 5000]
        [--agents 20] [--reports 13] [--batches 400] [--rounds 5]

Replays what fleet's IngestWriter does for a batch of `--reports` reports of
`--agents` states each (distinct nodes, each report one newer seq of its node,
every tenth a full report): the node updates, the lookup of deleted nodes, the
agent upsert, the full reports' deletes and the commit, one batch after another
on one thread, with no gRPC and no checks before. PostgreSQL is tests/pg.py's
throwaway LocalServer (fsync off, as in bench_scale.py). Prints, median of the
rounds: the batches' wall time, this process's CPU and the server's CPU (every
backend), each in µs a state, and on PostgreSQL the WAL the server wrote, in
bytes a state (from pg_current_wal_insert_lsn; that server has full_page_writes
off, so no page images); bench_scale.py's `pg-*` cells add gRPC, the checks and
the simulated daemons around this.
"""
from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_ingest import node_states  # noqa: E402
from bench_scale import cpu_by_pid, cpu_since, start_postgresql  # noqa: E402
from fleet.manager.ingest import build_rows  # noqa: E402
from fleet.manager.store.db import close_database, open_database  # noqa: E402
from fleet.manager.store.migrations import migrate  # noqa: E402
from fleet.manager.store.writer import IngestWriter, Pending, Report  # noqa: E402


class Done(Pending):
    """A report nobody waits for: the writer's outcome is only checked."""

    __slots__ = ("error",)

    def finish(self, error) -> None:
        self.error = error


def register_nodes(db, count: int) -> list[str]:
    """`count` node rows at boot 1, seq 0, written directly (registration is not measured)."""
    node_ids = [f"bench-{n:05d}" for n in range(count)]
    with db.connection_context(), db.atomic():
        for start in range(0, count, 500):
            chunk = node_ids[start:start + 500]
            marks = ", ".join(["(%s, 'h', '', '', '', '', '{}', '', 1, 0, 0, 0)"] * len(chunk))
            if db.param != "%s":
                marks = marks.replace("%s", "?")
            db.execute_sql("INSERT INTO node (node_id, hostname, ip, advertise_address, os, "
                           "arch, labels, daemon_version, boot_id, seq, registered_at, "
                           f"last_seen) VALUES {marks}", chunk)
    return node_ids


class Daemons:
    """The simulated nodes' reports: each node's seq goes on from batch to batch."""

    def __init__(self, node_ids: list[str], agents: int, reports: int):
        self.states = node_states(agents)
        self.seqs = dict.fromkeys(node_ids, 0)
        self.reports = reports
        self.pick = random.Random(7)

    def batches(self, count: int) -> list[list[Report]]:
        """`count` lists of reports on distinct random nodes, every tenth full."""
        out = []
        for _ in range(count):
            reports = []
            for node_id in self.pick.sample(sorted(self.seqs), self.reports):
                self.seqs[node_id] += 1
                seq = self.seqs[node_id]
                received = int(time.time() * 1000)
                rows, _ = build_rows(node_id, 1, seq, received, self.states)
                reports.append(Report(node_id, 1, seq, seq % 10 == 1, rows, (), received))
            out.append(reports)
        return out


def wal_position(db) -> int:
    """The server's WAL insert position in bytes (0 on SQLite)."""
    if db.param != "%s":
        return 0
    return db.execute_sql("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0]


def one_round(writer: IngestWriter, work: list[list[Report]], server_pid, db) -> dict:
    before = cpu_by_pid([server_pid]) if server_pid else {}
    wal = wal_position(db)
    wall, cpu = time.perf_counter(), time.process_time()
    for reports in work:
        pending = [Done(r) for r in reports]
        writer._write(pending)      # the thread's own step: connect, turn, transaction, finish
        failed = [p.error for p in pending if p.error is not None]
        if failed:
            raise SystemExit(f"a batch failed: {failed[0]}")
    states = sum(len(r.rows) for reports in work for r in reports)
    return {"wall": (time.perf_counter() - wall) / states * 1e6,
            "writer": (time.process_time() - cpu) / states * 1e6,
            "server": (cpu_since([server_pid], before) / states * 1e6) if server_pid else 0.0,
            "wal": float(wal_position(db) - wal) / states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--reports", type=int, default=13, help="reports a batch")
    parser.add_argument("--batches", type=int, default=400, help="batches a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE the new tables before the rounds (bench_scale.py's "
                             "managers run on tables the server has no statistics for yet)")
    args = parser.parse_args()
    server = start_postgresql() if args.engine == "postgresql" else None
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-writer-") as tmp:
            url = server.url(server.create_database()) if server \
                else f"sqlite:///{tmp}/fleet.db"
            run(url, server.proc.pid if server else None, args)
    finally:
        if server is not None:
            server.stop()


def run(url: str, server_pid, args) -> None:
    db = open_database(url)
    migrate(db)
    node_ids = register_nodes(db, args.nodes)
    # The writer runs on this thread: it must open the connection itself, as in its
    # own thread, so that its session (Backend.writer_session: lock timeout, index
    # lookups only) is set up; a connection left open here would skip that.
    close_database(db)
    writer = IngestWriter(db)
    writer._connect()
    daemons = Daemons(node_ids, args.agents, args.reports)
    # A first pass creates most agent rows: the rounds measure updates, as in steady state.
    one_round(writer, daemons.batches(3 * args.nodes // args.reports), None, db)
    if args.analyze and args.engine == "postgresql":    # as autovacuum does in a minute
        db.execute_sql("ANALYZE")       # on the writer's connection, left open
    rounds = [one_round(writer, daemons.batches(args.batches), server_pid, db)
              for _ in range(args.rounds)]
    writer._close()
    close_database(db)
    print(f"{args.engine}: {args.batches} batches of {args.reports} reports x {args.agents} "
          f"states a round, {args.nodes} nodes, {args.rounds} rounds")
    for key in ("wall", "writer", "server") + (("wal",) if args.engine == "postgresql" else ()):
        values = [r[key] for r in rounds]
        unit = "bytes" if key == "wal" else "µs"
        print(f"  {key:7s} {unit:5s} a state: median {statistics.median(values):6.1f}   "
              + " ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    main()
