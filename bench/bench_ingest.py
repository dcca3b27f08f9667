"""Ingest and operate benchmark against the real product (`python fleet.py`).

    python bench/bench_ingest.py [--nodes 1000] [--agents 20] [--procs 4] [--threads 8]
                                 [--duration 10] [--full-every 10] [--operations 50]
    python bench/bench_ingest.py --workers 1,2 [--repeat 3] [--nodes 4000] ...

A real manager (`fleet.py --role manager`, SQLite in a temporary directory, both
ports picked free, random API and cluster tokens) takes reports from `--procs`
daemon-simulator processes, each owning nodes/procs nodes and reporting over real
gRPC with the cluster token, closed loop, `--threads` calls in flight per process.
Then, in the same run, one real daemon (`fleet.py --role daemon`) with one `sleep`
agent joins, and `--operations` restarts of that agent are timed over the HTTP API
on one keep-alive connection. Last, the raw rate of the SQLite upsert (the
writer's upsert_many) alone is measured. Prints agent states stored per second,
report latency p50/p99, HTTP operate restart median/p95 and the raw upsert rate.
Targets: >= 20,000 states/s, p99 <= 250 ms, operate restart over HTTP <= 25 ms median.

`--workers 1,2` compares `[manager] workers` counts instead: for each of
`--repeat` rounds, one ingest run per count (fresh database each), then a table
of the median states/s, p50 and p99 and CPU per count. Each simulator thread has
its own connection, so reports spread over the workers as real daemons' do.

The scale table (SQLite 1 and 2 workers, PostgreSQL 1 and 2 managers, by fleet
size, saturation and steady loads) is bench/bench_scale.py, built on this file.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import http.client
import json
import os
import pathlib
import re
import secrets
import shutil
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

import psutil  # noqa: E402

from fleet.v1 import fleet_pb2 as pb  # noqa: E402

DEADLINE = 5.0          # per gRPC report
START_TIMEOUT = 30.0    # for a process to listen, for the agent to be listed
STOP_TIMEOUT = 15.0     # after SIGTERM, before SIGKILL
TOKEN_ENV = "BENCH_CLUSTER_TOKEN"   # how the simulators get the cluster token
NODE, AGENT = "bench-node", "sleeper"


@dataclasses.dataclass
class Manager:
    proc: subprocess.Popen
    grpc: str           # HOST:PORT as logged
    http: str
    api_token: str
    cluster_token: str


@dataclasses.dataclass
class Ingest:
    results: list[dict]     # one {"latencies", "errors"} per simulator process
    elapsed: float
    cpu_seconds: float      # the manager's, during the run


# ---- the real processes ------------------------------------------------------

def write_private(path: pathlib.Path, text: str) -> None:
    """Write a config file holding tokens, readable by its owner only."""
    path.touch(mode=0o600)
    path.write_text(text)


def spawn(role: str, config: pathlib.Path, log_path: pathlib.Path) -> subprocess.Popen:
    """Start `python fleet.py --role ROLE --config CONFIG`, its output going to log_path.

    FLEET_* variables are dropped: they would beat the config file.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    command = [sys.executable, str(ROOT / "fleet.py"), "--role", role, "--config", str(config)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, cwd=ROOT, start_new_session=True, close_fds=True)


def wait_for_listening(proc: subprocess.Popen, log_path: pathlib.Path, key: str) -> str:
    """HOST:PORT from the `listening KEY=` line proc logs; raises if it exits or is late."""
    pattern = re.compile(rf"listening {key}=(\S+)")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        match = pattern.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"no 'listening {key}=' from {log_path.name} "
                       f"(exit status {proc.poll()}):\n{tail}")


def launch_manager(workdir: pathlib.Path, procs: list, workers: int = 1) -> Manager:
    """Start the real manager on a fresh SQLite file, both ports free, random tokens."""
    api_token, cluster_token = secrets.token_hex(16), secrets.token_hex(16)
    config = workdir / "manager.toml"
    q = json.dumps   # a JSON string is a TOML basic string
    write_private(config, "[manager]\n"
                          'http = "127.0.0.1:0"\n'
                          'grpc = "127.0.0.1:0"\n'
                          f"db = {q('sqlite:///' + str(workdir / 'fleet.db'))}\n"
                          f"api_token = {q(api_token)}\n"
                          f"cluster_token = {q(cluster_token)}\n"
                          f"workers = {workers}\n")
    log = workdir / "manager.log"
    proc = spawn("manager", config, log)
    procs.append(proc)
    grpc_address = wait_for_listening(proc, log, "grpc")
    http_address = wait_for_listening(proc, log, "http")
    deadline = time.monotonic() + START_TIMEOUT
    while log.read_text(errors="replace").count("listening http=") < workers:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{workers} workers did not all listen; see {log}")
        time.sleep(0.05)
    return Manager(proc, grpc_address, http_address, api_token, cluster_token)


def launch_daemon(workdir: pathlib.Path, manager: Manager, procs: list) -> None:
    """Start one real daemon, node NODE, with one `sleep` agent, reporting to manager."""
    config = workdir / "daemon.toml"
    q = json.dumps
    write_private(config, "[daemon]\n"
                          'listen = "127.0.0.1:0"\n'
                          f"manager = {q(manager.grpc)}\n"
                          f"cluster_token = {q(manager.cluster_token)}\n"
                          f"node_id = {q(NODE)}\n"
                          f"state_dir = {q(str(workdir / 'state'))}\n"
                          "sync_interval = 5\n\n"
                          "[[agents]]\n"
                          f"id = {q(AGENT)}\n"
                          'command = ["sleep", "100000"]\n'
                          "start_seconds = 0.1\n"
                          "stop_timeout = 2\n")
    log = workdir / "daemon.log"
    proc = spawn("daemon", config, log)
    procs.append(proc)
    wait_for_listening(proc, log, "grpc")


def stop_all(procs: list[subprocess.Popen], state_dir: pathlib.Path) -> None:
    """SIGTERM every process started, newest first (the daemon before the manager it
    reports to); SIGKILL the group of any that outstays STOP_TIMEOUT."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # start_new_session: pgid == pid
            except ProcessLookupError:
                pass
            proc.wait()
    kill_leftover_agents(state_dir)


def kill_leftover_agents(state_dir: pathlib.Path) -> None:
    """SIGKILL the group of any agent a daemon left running (it keeps a record of each)."""
    for record in (state_dir / "agents").glob("*.json"):
        try:
            data = json.loads(record.read_text())
            if abs(psutil.Process(data["pid"]).create_time() - data["create_time"]) < 1:
                os.killpg(data["pgid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError, psutil.Error):
            pass


# ---- the simulated daemons ---------------------------------------------------

def node_states(agents: int) -> list:
    """The states one simulated node reports (its agents all running)."""
    return [pb.AgentState(agent_id=f"agent-{a:03d}", type="node_exporter", version="1.8.2",
                          status=pb.AGENT_STATUS_RUNNING, pid=1000 + a, start_time=1,
                          restart_count=0, last_exit_code=-1, health="healthy",
                          last_heartbeat=1) for a in range(agents)]


def reporter(sync, nodes: list[str], agents: int, full_every: int, go: threading.Event,
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
                sync(request)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                code = getattr(exc, "code", None)
                errors.append(str(code() if callable(code) else exc))
                continue
            latencies.append(time.perf_counter() - began)
            if time.monotonic() >= until[0]:
                return


def client(address: str, first: int, count: int, agents: int, threads: int,
           full_every: int) -> None:
    """A daemon-simulator process: register its nodes, wait for `go` on stdin, report.

    Every call carries the cluster token (from $BENCH_CLUSTER_TOKEN) as metadata.
    """
    import grpc

    from fleet.rpc import KEEPALIVE_OPTIONS
    from fleet.v1 import fleet_pb2_grpc

    metadata = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    # One connection per thread (a pool of its own each), as each real daemon has its own.
    options = list(KEEPALIVE_OPTIONS) + [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(address, options=options) for _ in range(threads)]
    stubs = [fleet_pb2_grpc.ManagerServiceStub(channel) for channel in channels]
    nodes = [f"bench-{i:05d}" for i in range(first, first + count)]
    for i, n in enumerate(nodes):
        stubs[i % threads].RegisterNode(pb.RegisterNodeRequest(node_id=n, boot_id=1),
                                        timeout=DEADLINE, metadata=metadata)
    go, until, latencies, errors = threading.Event(), [0.0], [], []
    workers = [threading.Thread(target=reporter, args=(
        functools.partial(stubs[t].SyncAgentStates, timeout=DEADLINE, metadata=metadata),
        nodes[t::threads], agents, full_every, go, until, latencies, errors))
        for t in range(threads)]
    for w in workers:
        w.start()
    print("ready", flush=True)
    until[0] = time.monotonic() + float(sys.stdin.readline())
    go.set()
    for w in workers:
        w.join()
    for channel in channels:
        channel.close()
    print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)


def launch_clients(manager: Manager, args, procs: list) -> list[subprocess.Popen]:
    """Start the daemon-simulator processes, each owning nodes/procs nodes."""
    per = args.nodes // args.procs
    env = dict(os.environ, **{TOKEN_ENV: manager.cluster_token})
    clients = []
    for p in range(args.procs):
        command = [sys.executable, __file__, "--client", manager.grpc, "--first", str(p * per),
                   "--count", str(per), "--agents", str(args.agents),
                   "--threads", str(args.threads), "--full-every", str(args.full_every)]
        clients.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=ROOT,
                                        start_new_session=True, close_fds=True))
        procs.append(clients[-1])
    return clients


# ---- measurements -------------------------------------------------------------

def measure_ingest(manager: Manager, args, procs: list) -> Ingest:
    """Closed-loop reports from the simulators for args.duration seconds."""
    clients = launch_clients(manager, args, procs)
    for c in clients:
        if c.stdout.readline().strip() != "ready":
            raise RuntimeError("a simulated daemon failed to start")
    parent = psutil.Process(manager.proc.pid)
    servers = [parent] + parent.children()      # with workers: the parent and each worker
    cpu_before = sum(sum(p.cpu_times()[:2]) for p in servers)
    began = time.perf_counter()
    for c in clients:
        c.stdin.write(f"{args.duration}\n")
        c.stdin.flush()
    results = [json.loads(c.stdout.readline()) for c in clients]
    elapsed = time.perf_counter() - began
    cpu_seconds = sum(sum(p.cpu_times()[:2]) for p in servers) - cpu_before
    for c in clients:
        c.wait(30)
    return Ingest(results, elapsed, cpu_seconds)


def http_json(conn: http.client.HTTPConnection, method: str, path: str, token: str,
              body: dict | None = None) -> tuple[int, dict]:
    """One request on conn with the API token; (status, decoded JSON body)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def wait_for_agent(conn: http.client.HTTPConnection, token: str) -> None:
    """Poll the manager until it lists AGENT on NODE."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        status, body = http_json(conn, "GET", f"/api/v1/nodes/{NODE}/agents", token)
        if status == 200 and any(a["agent_id"] == AGENT for a in body["agents"]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the manager never listed {NODE}/{AGENT}: {status} {body}")
        time.sleep(0.1)


def measure_operate(manager: Manager, count: int) -> tuple[list[float], list[str]]:
    """Seconds per HTTP restart of AGENT, `count` round trips on one keep-alive
    connection; (latencies of the successful ones, failures)."""
    host, port = manager.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=60)
    path = f"/api/v1/nodes/{NODE}/agents/{AGENT}/operate"
    latencies, failures = [], []
    try:
        wait_for_agent(conn, manager.api_token)
        for _ in range(count):
            began = time.perf_counter()
            status, body = http_json(conn, "POST", path, manager.api_token,
                                     {"operation": "restart"})
            if status == 200:
                latencies.append(time.perf_counter() - began)
            else:
                failures.append(f"{status} {body.get('error', {}).get('code')}")
    finally:
        conn.close()
    return latencies, failures


def raw_upsert_rate(workdir: pathlib.Path, nodes: int, agents: int) -> float:
    """Rows/s of the writer's agent upsert (fleet.manager.ingest.AgentUpsert), 20,000
    rows per transaction."""
    from fleet.manager.store.db import backend_of, open_database
    from fleet.manager.store.migrations import migrate
    from fleet.manager.ingest import REPORT_COLUMNS, AgentUpsert

    db = open_database(f"sqlite:///{workdir / 'raw.db'}")
    migrate(db)
    backend = backend_of(db)
    upsert = AgentUpsert(backend, REPORT_COLUMNS)
    rows = [(f"bench-{n:05d}", f"agent-{a:03d}", "t", "1", 3, 1000 + a, 1, 0, -1, 0, "healthy",
             1, 1, 1, 1, "", None, 1, False, "") for n in range(nodes) for a in range(agents)]
    done, began = 0, time.perf_counter()
    for seq in range(1, 4):
        batch = [r[:13] + (seq,) + r[14:] for r in rows]
        for start in range(0, len(batch), 20000):
            with db.atomic():
                upsert.run(db.cursor(), batch[start:start + 20000])
            done += len(batch[start:start + 20000])
    db.close()
    return done / (time.perf_counter() - began)


def stored_rows(db_path: pathlib.Path) -> int:
    """How many simulated agent rows the manager's database holds after the run."""
    import sqlite3
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM agent WHERE node_id != ?",
                            (NODE,)).fetchone()[0]


def run(args) -> None:
    """Run one benchmark and print its figures; no process outlives it."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        manager = launch_manager(workdir, procs)
        ingest = measure_ingest(manager, args, procs)
        launch_daemon(workdir, manager, procs)    # after the ingest run: not to disturb it
        operate = measure_operate(manager, args.operations)
    except BaseException:
        print(f"benchmark failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        stop_all(procs, workdir / "state")
    report_ingest(args, ingest, stored_rows(workdir / "fleet.db"))
    report_operate(*operate)
    print(f"raw SQLite upsert (upsert_many): "
          f"{raw_upsert_rate(workdir, args.nodes, args.agents):,.0f} rows/s")
    shutil.rmtree(workdir, ignore_errors=True)


def ingest_figures(args, ingest: Ingest) -> dict:
    """states/s, p50 and p99 ms, failed reports and CPU % of one ingest run."""
    latencies = sorted(x for r in ingest.results for x in r["latencies"])
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"states/s": len(latencies) * args.agents / ingest.elapsed,
            "p50 ms": quantiles[49] * 1000, "p99 ms": quantiles[98] * 1000,
            "failed": sum(len(r["errors"]) for r in ingest.results),
            "CPU %": ingest.cpu_seconds / ingest.elapsed * 100}


def compare_workers(args) -> None:
    """Ingest runs for each `--workers` count, `--repeat` rounds; a table of medians."""
    counts = [int(c) for c in args.workers.split(",")]
    runs: dict[int, list[dict]] = {c: [] for c in counts}
    for round_ in range(args.repeat):
        for count in counts:
            workdir = pathlib.Path(tempfile.mkdtemp(prefix="fleet-bench-"))
            procs: list[subprocess.Popen] = []
            try:
                ingest = measure_ingest(launch_manager(workdir, procs, count), args, procs)
            except BaseException:
                print(f"benchmark failed; logs kept in {workdir}", file=sys.stderr)
                raise
            finally:
                stop_all(procs, workdir / "state")
            runs[count].append(ingest_figures(args, ingest))
            print(f"round {round_ + 1} workers={count}: " + "  ".join(
                f"{k} {v:,.0f}" for k, v in runs[count][-1].items()), flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nnodes={args.nodes} agents/node={args.agents} procs={args.procs} "
          f"in-flight={args.procs * args.threads} duration={args.duration:.0f}s "
          f"rounds={args.repeat} (medians)")
    keys = list(runs[counts[0]][0])
    print("| workers | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for count in counts:
        print(f"| {count} | " + " | ".join(
            f"{statistics.median(r[k] for r in runs[count]):,.0f}" for k in keys) + " |")


def report_ingest(args, ingest: Ingest, rows: int) -> None:
    """Print the figures of the ingest run."""
    latencies = sorted(x for r in ingest.results for x in r["latencies"])
    errors = [e for r in ingest.results for e in r["errors"]]
    if not latencies:
        print(f"no report succeeded; errors: {errors[:5]}")
        return
    quantiles = statistics.quantiles(latencies, n=100)
    elapsed = ingest.elapsed
    print(f"nodes={args.nodes} agents/node={args.agents} procs={args.procs} "
          f"in-flight={args.procs * args.threads} duration={elapsed:.1f}s")
    print(f"reports ok={len(latencies)} failed={len(errors)} {sorted(set(errors))[:3]}")
    print(f"agent states stored/s: {len(latencies) * args.agents / elapsed:,.0f}  "
          f"(reports/s {len(latencies) / elapsed:,.0f})")
    print(f"report latency ms: p50={quantiles[49] * 1000:.1f} p99={quantiles[98] * 1000:.1f} "
          f"max={latencies[-1] * 1000:.1f}")
    print(f"manager CPU during the run: {ingest.cpu_seconds / elapsed * 100:.0f}% of one core")
    expected = args.nodes // args.procs * args.procs * args.agents
    print(f"agent rows stored: {rows} (expected {expected})")


def report_operate(latencies: list[float], failures: list[str]) -> None:
    """Print the HTTP operate figure."""
    if failures:
        print(f"HTTP operate restart failures: {len(failures)} {sorted(set(failures))[:3]}")
    if len(latencies) < 2:
        print("HTTP operate restart: too few successful round trips to measure")
        return
    p95 = statistics.quantiles(latencies, n=20)[18]
    print(f"HTTP operate restart: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms ({len(latencies)} round trips)")


def main() -> None:
    """Run the benchmark, or its daemon-simulator child role (--client)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--full-every", type=int, default=10)
    parser.add_argument("--operations", type=int, default=50)
    parser.add_argument("--workers", help="compare these [manager] workers counts, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of --workers runs")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.first, args.count, args.agents, args.threads, args.full_every)
    elif args.workers:
        compare_workers(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
