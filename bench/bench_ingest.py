"""Ingest benchmark: simulated daemons reporting agent states to a real manager.

    python bench/bench_ingest.py [--nodes 1000] [--agents 20] [--procs 4] [--threads 8]
                                 [--duration 10] [--full-every 10]

A manager gRPC server (servicer + group-commit writer on a temporary SQLite
file) runs in its own process; `--procs` daemon-simulator processes each own
nodes/procs nodes and report over real gRPC, closed loop, `--threads` calls in
flight per process. Prints agent states stored per second, report latency
p50/p99, and, measured in the same run, the raw rate of the SQLite
executemany upsert alone. Target: >= 20,000 states/s, p99 <= 250 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.v1 import fleet_pb2 as pb  # noqa: E402

DEADLINE = 5.0


# ---- the manager process ---------------------------------------------------

def launch_manager(db_path: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Start a manager on db_path with gRPC on a free port; (process, HOST:PORT).

    The one place to swap for `python fleet.py --role manager --db sqlite:///...
    --grpc 127.0.0.1:0` once the CLI exists: it logs the same `listening grpc=` line.
    """
    command = [sys.executable, __file__, "--serve", str(db_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, close_fds=True, cwd=ROOT)
    for line in proc.stderr:
        if "listening grpc=" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
            return proc, line.strip().split("listening grpc=")[1].split()[0]
    raise RuntimeError(f"manager exited before listening (status {proc.wait()})")


def serve(db_path: str) -> None:
    """The manager side: servicer + writer until SIGTERM; prints writer stats as JSON."""
    from fleet.manager.db import migrate, open_database
    from fleet.manager.servicer import build_manager
    from fleet.rpc import create_server

    db = open_database(f"sqlite:///{db_path}")
    migrate(db)
    parts = build_manager(db)
    parts.start()
    server, port = create_server("127.0.0.1:0", [parts.servicer.add_to], max_workers=64)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"listening grpc=127.0.0.1:{port}", file=sys.stderr, flush=True)
    started = time.process_time()
    stop.wait()
    server.stop(grace=2).wait()
    parts.stop()
    print(json.dumps({"batches": parts.writer.batches, "reports": parts.writer.reports,
                      "cpu_seconds": time.process_time() - started}), flush=True)


# ---- the simulated daemons ---------------------------------------------------

def node_states(agents: int) -> list:
    """The states one simulated node reports (its agents all running)."""
    return [pb.AgentState(agent_id=f"agent-{a:03d}", type="node_exporter", version="1.8.2",
                          status=pb.AGENT_STATUS_RUNNING, pid=1000 + a, start_time=1,
                          restart_count=0, last_exit_code=-1, health="healthy",
                          last_heartbeat=1) for a in range(agents)]


def reporter(stub, nodes: list[str], agents: int, full_every: int, go: threading.Event,
             until: list[float], latencies: list[float], errors: list[str]) -> None:
    """One closed-loop sender cycling over its nodes until the deadline."""
    requests = [pb.SyncAgentStatesRequest(node_id=n, boot_id=1, states=node_states(agents))
                for n in nodes]
    go.wait()
    seq = 0
    while time.monotonic() < until[0]:
        seq += 1
        for request in requests:
            request.seq = seq
            request.full = seq % full_every == 0
            request.states[seq % agents].pid = seq   # something changes each time
            began = time.perf_counter()
            try:
                stub.SyncAgentStates(request, timeout=DEADLINE)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                errors.append(str(getattr(exc, "code", lambda: exc)()))
                continue
            latencies.append(time.perf_counter() - began)
            if time.monotonic() >= until[0]:
                return


def client(address: str, first: int, count: int, agents: int, threads: int,
           full_every: int) -> None:
    """A daemon-simulator process: register its nodes, wait for `go` on stdin, report."""
    from fleet.rpc import open_channel
    from fleet.v1 import fleet_pb2_grpc

    channel = open_channel(address)
    stub = fleet_pb2_grpc.ManagerServiceStub(channel)
    nodes = [f"bench-{i:05d}" for i in range(first, first + count)]
    for n in nodes:
        stub.RegisterNode(pb.RegisterNodeRequest(node_id=n, boot_id=1), timeout=DEADLINE)
    go, until, latencies, errors = threading.Event(), [0.0], [], []
    workers = [threading.Thread(target=reporter, args=(stub, nodes[t::threads], agents,
                                                       full_every, go, until, latencies, errors))
               for t in range(threads)]
    for w in workers:
        w.start()
    print("ready", flush=True)
    duration = float(sys.stdin.readline())
    until[0] = time.monotonic() + duration
    go.set()
    for w in workers:
        w.join()
    channel.close()
    print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)


def launch_clients(address: str, args) -> list[subprocess.Popen]:
    """Start the daemon-simulator processes, each owning nodes/procs nodes."""
    per = args.nodes // args.procs
    procs = []
    for p in range(args.procs):
        command = [sys.executable, __file__, "--client", address, "--first", str(p * per),
                   "--count", str(per), "--agents", str(args.agents),
                   "--threads", str(args.threads), "--full-every", str(args.full_every)]
        procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, start_new_session=True, close_fds=True, cwd=ROOT))
    return procs


# ---- measurements -------------------------------------------------------------

def raw_upsert_rate(workdir: pathlib.Path, nodes: int, agents: int) -> float:
    """Rows/s of the prepared agent upsert via executemany, 20,000 rows per transaction."""
    from fleet.manager.db import backend_of, migrate, open_database
    from fleet.manager.ingest import REPORT_COLUMNS, agent_upsert

    db = open_database(f"sqlite:///{workdir / 'raw.db'}")
    migrate(db)
    backend = backend_of(db)
    sql = agent_upsert(backend, REPORT_COLUMNS)
    rows = [(f"bench-{n:05d}", f"agent-{a:03d}", "t", "1", 3, 1000 + a, 1, 0, -1, 0, "healthy",
             1, 1, 1, 1) for n in range(nodes) for a in range(agents)]
    done, began = 0, time.perf_counter()
    for seq in range(1, 4):
        batch = [r[:13] + (seq, r[14]) for r in rows]
        for start in range(0, len(batch), 20000):
            with db.atomic():
                backend.upsert_many(db.cursor(), sql, batch[start:start + 20000])
            done += len(batch[start:start + 20000])
    db.close()
    return done / (time.perf_counter() - began)


def stored_rows(db_path: pathlib.Path) -> int:
    """How many agent rows the manager's database holds after the run."""
    import sqlite3
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM agent").fetchone()[0]


def run(args) -> None:
    """Run one benchmark and print its figures."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    manager, address = launch_manager(workdir / "manager.db")
    clients = launch_clients(address, args)
    try:
        for c in clients:
            if c.stdout.readline().strip() != "ready":
                raise RuntimeError("a simulated daemon failed to start")
        began = time.perf_counter()
        for c in clients:
            c.stdin.write(f"{args.duration}\n")
            c.stdin.flush()
        results = [json.loads(c.stdout.readline()) for c in clients]
        elapsed = time.perf_counter() - began
    finally:
        for c in clients:
            c.wait(30)
        manager.send_signal(signal.SIGTERM)
        stats = json.loads(manager.stdout.readline() or "{}")
        manager.wait(30)
    report(args, results, elapsed, stats, stored_rows(workdir / "manager.db"),
           raw_upsert_rate(workdir, args.nodes, args.agents))


def report(args, results, elapsed, stats, rows, raw_rate) -> None:
    """Print the figures of one run."""
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = [e for r in results for e in r["errors"]]
    if not latencies:
        print(f"no report succeeded; errors: {errors[:5]}")
        return
    quantiles = statistics.quantiles(latencies, n=100)
    states = len(latencies) * args.agents
    print(f"nodes={args.nodes} agents/node={args.agents} procs={args.procs} "
          f"in-flight={args.procs * args.threads} duration={elapsed:.1f}s")
    print(f"reports ok={len(latencies)} failed={len(errors)} {sorted(set(errors))[:3]}")
    print(f"agent states stored/s: {states / elapsed:,.0f}  "
          f"(reports/s {len(latencies) / elapsed:,.0f})")
    print(f"report latency ms: p50={quantiles[49] * 1000:.1f} p99={quantiles[98] * 1000:.1f} "
          f"max={latencies[-1] * 1000:.1f}")
    if stats:
        print(f"group commit: {stats['reports']} reports in {stats['batches']} transactions "
              f"({stats['reports'] / max(stats['batches'], 1):.1f}/txn); manager CPU "
              f"{stats['cpu_seconds'] / elapsed * 100:.0f}% of one core")
    expected = args.nodes // args.procs * args.procs * args.agents
    print(f"agent rows stored: {rows} (expected {expected})")
    print(f"raw SQLite executemany upsert: {raw_rate:,.0f} rows/s")


def main() -> None:
    """Run the benchmark, or one of its child roles (--serve, --client)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--full-every", type=int, default=10)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    elif args.client:
        client(args.client, args.first, args.count, args.agents, args.threads, args.full_every)
    else:
        run(args)


if __name__ == "__main__":
    main()
