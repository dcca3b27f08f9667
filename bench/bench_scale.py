"""The scale table: ingest on SQLite and PostgreSQL, 1 and 2 manager processes, by fleet size.

    python bench/bench_scale.py [--sizes 1000,5000,10000] [--agents 20]
        [--configs sqlite-1,sqlite-2,pg-1,pg-2,null-1,null-2,null-wait-1,null-aio-1]
        [--duration 10] [--period 10] [--repeat 1] [--procs 4] [--threads 8] [--raw-nodes 2000]

For every configuration × size, on a fresh database: real managers
(`fleet.py --role manager`, tokens configured, ports picked free), then the
simulated daemons of bench_ingest.py's kind (--procs processes; with `--generator
h2` one connection per node, as real daemons hold, with grpc one per thread)
register every node and load the managers twice:

- saturation: --threads closed-loop senders per process (procs × threads reports
  in flight) for --duration s: states/s at most, report p50/p99;
- steady: every node reports once every --period s at its own offset (open loop,
  the calls are futures), for --duration s: does report p99 stay <= 250 ms?
  Latency counts from the report's scheduled time, so a late send is no excuse.

Configurations: `sqlite-1`, `sqlite-2` (`[manager] workers = 1 | 2` on one SQLite
file), `pg-1`, `pg-2` (one or two separate manager processes on one PostgreSQL
database; the simulator processes split over them), and `null-1`, `null-2`
(bench/null_manager.py once or twice on one port: fleet's gRPC server storing
nothing, the floor of the stack on this machine), `null-wait-1` and `null-aio-1`
(one null manager whose reports wait for a simulated 2 ms group commit, on
grpcio's threads or on grpc.aio). PostgreSQL is a throwaway
server started as tests/pg.py does (initdb in a temporary directory, a free
loopback port, fsync, synchronous_commit and full_page_writes off) and removed at
the end; `--durable-pg` starts it on disk with PostgreSQL's own defaults for
those, every commit flushed, as an operator runs it. In the same run, the raw rate
of the writer's own agent upsert statement is measured on each engine
(--raw-nodes × --agents rows per pass, 20,000 per transaction, update passes).

The generator is cheap: each node's report is serialized once; each call appends
only the serialized seq/full fields (protobuf merges concatenated messages).
Each row of the table gives the managers' CPU (every manager process and worker,
from /proc, % of one core) and summed RSS at the end, the PostgreSQL server's
CPU, and the generator's own CPU beside them.
"""
from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import psutil  # noqa: E402

import loads  # noqa: E402
from bench_ingest import (DEADLINE, TOKEN_ENV, node_states, spawn, stop_all,  # noqa: E402
                          wait_for_listening, write_private)
from fleet.v1 import fleet_pb2 as pb  # noqa: E402

CONFIGS = {"sqlite-1": ("sqlite", 1, 1), "sqlite-2": ("sqlite", 2, 1),   # engine, workers,
           "pg-1": ("postgresql", 1, 1), "pg-2": ("postgresql", 1, 2),   # managers
           # bench/null_manager.py: the gRPC server alone, storing nothing (the floor)
           "null-1": ("null", 1, 1), "null-2": ("null", 2, 1),
           # ... each report waiting for a simulated 2 ms group commit, on grpcio's
           # threads as fleet does, or on grpc.aio (NULL_ARGS)
           "null-wait-1": ("null", 1, 1), "null-aio-1": ("null", 1, 1)}
NULL_ARGS = {"null-wait-1": ["--wait-ms", "2"], "null-aio-1": ["--wait-ms", "2", "--aio"]}
# The issue's targets (issue 10): two workers' saturation against one's, PostgreSQL's
# saturation with two managers, and 100,000 agents every 10 s held under this p99.
TARGET_P99_MS = 250.0
TARGET_WORKERS_RATIO = 1.6
TARGET_PG_STATES = 20000.0
TARGET_AGENTS = 100_000
SYNC = "/fleet.v1.ManagerService/SyncAgentStates"


@dataclasses.dataclass
class Managers:
    procs: list             # the manager processes started (each with its workers)
    grpc: list[str]         # one HOST:PORT per manager
    cluster_token: str


# ---- the simulated daemons (a child process) ------------------------------------

class Nodes:
    """One simulator process's nodes: serialized once; a call appends seq and full."""

    def __init__(self, first: int, count: int, agents: int, full_every: int):
        self.ids = [f"bench-{i:05d}" for i in range(first, first + count)]
        self.bodies = [pb.SyncAgentStatesRequest(node_id=n, boot_id=1,
                                                 states=node_states(agents)).SerializeToString()
                       for n in self.ids]
        self.seq = [0] * count
        self.full_every = full_every

    def next(self, i: int) -> bytes:
        """Node i's next report, serialized."""
        self.seq[i] += 1
        seq = self.seq[i]
        tail = pb.SyncAgentStatesRequest(seq=seq, full=seq % self.full_every == 0)
        return self.bodies[i] + tail.SerializeToString()


def closed_loop(call, nodes: Nodes, mine: range, until: float, out: dict) -> None:
    """One sender: node after node of `mine`, one call at a time, until `until`."""
    while time.monotonic() < until:
        for i in mine:
            began = time.perf_counter()
            try:
                call(nodes.next(i))
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                code = getattr(exc, "code", None)
                out["errors"].append(str(code() if callable(code) else exc))
                continue
            out["latencies"].append(time.perf_counter() - began)
            if time.monotonic() >= until:
                return


def open_loop(calls: list, nodes: Nodes, offsets: list[float], period: float,
              duration: float, out: dict) -> None:
    """Every node once per period at its offset, as futures; latency from the schedule."""
    lock, pending = threading.Lock(), []
    start = time.perf_counter() + 0.05
    schedule = sorted((k * period + offsets[i], i) for i in range(len(offsets))
                      for k in range(int(duration // period) + 1)
                      if k * period + offsets[i] < duration)

    def done(future, due):
        finished = time.perf_counter()
        with lock:
            if future.exception() is None:
                out["latencies"].append(finished - due)
            else:
                out["errors"].append(str(future.code()))

    for at, i in schedule:
        due = start + at
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        future = calls[i % len(calls)].future(nodes.next(i), timeout=DEADLINE)
        future.add_done_callback(lambda f, due=due: done(f, due))
        pending.append(future)
    for future in pending:
        future.exception()      # waits for it


def client(addresses: list[str], first: int, count: int, total: int, args) -> None:
    """A simulator process: register, then one run per stdin line
    (`saturation SECONDS` or `steady SECONDS PERIOD`), one JSON line per run."""
    import grpc

    from fleet.rpc import KEEPALIVE_OPTIONS

    metadata = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    options = list(KEEPALIVE_OPTIONS) + [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(addresses[t % len(addresses)], options=options)
                for t in range(args.threads)]
    calls = [c.unary_unary(SYNC, request_serializer=None,
                           response_deserializer=pb.SyncAgentStatesResponse.FromString)
             for c in channels]
    nodes = Nodes(first, count, args.agents, args.full_every)
    registers = [c.unary_unary("/fleet.v1.ManagerService/RegisterNode",
                               request_serializer=pb.RegisterNodeRequest.SerializeToString,
                               response_deserializer=pb.RegisterNodeResponse.FromString)
                 for c in channels]
    # One blocking call at a time per connection (thousands of futures at once get
    # CANCELLED), all connections at once.
    registrars = [threading.Thread(target=register, args=(
        registers[t], nodes.ids[t::args.threads], metadata)) for t in range(args.threads)]
    for r in registrars:
        r.start()
    for r in registrars:
        r.join()
    calls = [_with_metadata(c, metadata) for c in calls]

    def saturation(seconds: float, out: dict) -> None:
        until = time.monotonic() + seconds
        senders = [threading.Thread(target=closed_loop, args=(
            lambda body, c=calls[t]: c(body, timeout=DEADLINE), nodes,
            range(t, count, args.threads), until, out)) for t in range(args.threads)]
        for s in senders:
            s.start()
        for s in senders:
            s.join()

    def steady(duration: float, period: float, out: dict) -> None:
        offsets = [(first + i) / total * period for i in range(count)]
        open_loop(calls, nodes, offsets, period, duration, out)

    loads.serve(saturation, steady)
    for c in channels:
        c.close()


def register(call, node_ids: list[str], metadata) -> None:
    """RegisterNode for each node, a failed call tried again up to twice."""
    for node_id in node_ids:
        for attempt in range(3):
            try:
                call(pb.RegisterNodeRequest(node_id=node_id, boot_id=1), timeout=DEADLINE,
                     metadata=metadata)
                break
            except Exception:  # noqa: BLE001 - tried again; the last failure is raised
                if attempt == 2:
                    raise


class _with_metadata:
    """A unary-unary callable that always sends the cluster token."""

    def __init__(self, call, metadata):
        self.call, self.metadata = call, metadata

    def __call__(self, body, timeout):
        return self.call(body, timeout=timeout, metadata=self.metadata)

    def future(self, body, timeout):
        return self.call.future(body, timeout=timeout, metadata=self.metadata)


# ---- the real managers and PostgreSQL -------------------------------------------

def start_postgresql(durable: bool = False):
    """tests/pg.py's throwaway LocalServer (initdb, free loopback port); it has stop().
    `durable`: on disk, every commit flushed (the tests' server trades that for speed)."""
    from tests.pg import LocalServer, find_bindir
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries (initdb, postgres) not found: "
                         "install Debian's 'postgresql' package, or leave out pg-1,pg-2")
    return LocalServer(bindir, durable=durable)


def launch_managers(workdir: pathlib.Path, db_url: str, workers: int, count: int,
                    procs: list) -> Managers:
    """`count` manager processes on db_url (each with `workers`), the same tokens."""
    api_token, cluster_token = secrets.token_hex(16), secrets.token_hex(16)
    q = json.dumps
    managers = Managers([], [], cluster_token)
    for m in range(count):    # one after the other: the first applies the migrations
        config = workdir / f"manager{m}.toml"
        write_private(config, "[manager]\n"
                              'http = "127.0.0.1:0"\n'
                              'grpc = "127.0.0.1:0"\n'
                              f"db = {q(db_url)}\n"
                              f"api_token = {q(api_token)}\n"
                              f"cluster_token = {q(cluster_token)}\n"
                              f"workers = {workers}\n")
        log = workdir / f"manager{m}.log"
        proc = spawn("manager", config, log)
        procs.append(proc)
        managers.procs.append(proc)
        managers.grpc.append(wait_for_listening(proc, log, "grpc"))
        deadline = time.monotonic() + 30
        while log.read_text(errors="replace").count("listening grpc=") < workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{workers} workers did not all listen; see {log}")
            time.sleep(0.05)
    return managers


def launch_null_managers(workdir: pathlib.Path, workers: int, procs: list,
                         extra: list) -> Managers:
    """`workers` null managers (bench/null_manager.py `extra`) sharing one port, as
    workers do."""
    cluster_token = secrets.token_hex(16)
    env = dict(os.environ, **{TOKEN_ENV: cluster_token})
    managers = Managers([], [], cluster_token)
    port = 0
    for w in range(workers):
        log = workdir / f"null{w}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(BENCH / "null_manager.py"),
                                     "--port", str(port), "--token-env", TOKEN_ENV,
                                     "--reuse-port", *extra], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, env=env, cwd=ROOT, start_new_session=True)
        procs.append(proc)
        managers.procs.append(proc)
        address = wait_for_listening(proc, log, "grpc")
        port = int(address.rsplit(":", 1)[1])
        if not managers.grpc:
            managers.grpc.append(address)
    return managers


def launch_clients(managers: Managers, nodes: int, args, procs: list,
                   workdir: pathlib.Path) -> list:
    """The simulator processes; process p talks to manager p % count. Waits for 'ready'."""
    per = nodes // args.procs
    env = dict(os.environ, **{TOKEN_ENV: managers.cluster_token})
    clients = []
    for p in range(args.procs):
        address = managers.grpc[p % len(managers.grpc)]
        if args.generator == "h2":
            spec = h2_spec(workdir / f"daemons{p}.json", address, p * per, per,
                           per * args.procs, args)
            command = [sys.executable, str(BENCH / "h2_daemons.py"), str(spec)]
        else:
            command = [sys.executable, __file__, "--client", address, "--first", str(p * per),
                       "--count", str(per), "--total", str(per * args.procs),
                       "--agents", str(args.agents), "--threads", str(args.threads),
                       "--full-every", str(args.full_every)]
        clients.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=ROOT,
                                        start_new_session=True, close_fds=True))
        procs.append(clients[-1])
    for c in clients:
        if c.stdout.readline().strip() != "ready":
            raise RuntimeError("a simulated daemon failed to start (registration?)")
    return clients


def h2_spec(path: pathlib.Path, address: str, first: int, count: int, total: int,
            args) -> pathlib.Path:
    """bench/h2_daemons.py's input: its nodes' requests, serialized here once."""
    nodes = Nodes(first, count, args.agents, args.full_every)
    spec = {"address": address, "token_env": TOKEN_ENV, "threads": args.threads,
            "full_every": args.full_every, "deadline": DEADLINE, "first": first,
            "total": total,
            "register": [base64.b64encode(pb.RegisterNodeRequest(
                node_id=n, boot_id=1).SerializeToString()).decode() for n in nodes.ids],
            "sync": [base64.b64encode(body).decode() for body in nodes.bodies]}
    path.write_text(json.dumps(spec))
    return path


def tree(pids: list[int]) -> list[psutil.Process]:
    """The processes pids and all their descendants (workers, PostgreSQL backends)."""
    found = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            found += [parent] + parent.children(recursive=True)
        except psutil.Error:
            pass
    return found


def cpu_by_pid(roots: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process under roots (from /proc), by pid."""
    found = {}
    for p in tree(roots):
        try:
            found[p.pid] = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return found


def cpu_since(roots: list[int], before: dict[int, float]) -> float:
    """CPU seconds spent under roots since `before` (a process started since counts
    whole; one that exited since is lost: PostgreSQL backends live as long as their
    connection, manager workers as long as the run)."""
    now = cpu_by_pid(roots)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())


def one_load(clients: list, line: str, managers: Managers, server, agents: int) -> dict:
    """Send `line` to every simulator, gather their JSON; the row's figures."""
    ours, theirs = [p.pid for p in managers.procs], [server.proc.pid] if server else []
    before = cpu_by_pid(ours), cpu_by_pid(theirs)
    began = time.perf_counter()
    for c in clients:
        c.stdin.write(line + "\n")
        c.stdin.flush()
    results = [json.loads(c.stdout.readline()) for c in clients]
    elapsed = time.perf_counter() - began
    mgr_cpu, pg_cpu = cpu_since(ours, before[0]), cpu_since(theirs, before[1])
    rss = sum(p.memory_info().rss for p in tree(ours))
    kinds = collections.Counter(e for r in results for e in r["errors"])
    if kinds:
        print(f"  {line.split()[0]} failures: " + ", ".join(
            f"{kind} {n}" for kind, n in kinds.most_common(3)), flush=True)
    latencies = sorted(x for r in results for x in r["latencies"])
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"states/s": len(latencies) * agents / elapsed,
            "p50 ms": q[49] * 1000, "p99 ms": q[98] * 1000,
            "failed": sum(len(r["errors"]) for r in results),
            "mgr CPU %": mgr_cpu / elapsed * 100,
            "mgr RSS MiB": rss / 2 ** 20,
            "pg CPU %": pg_cpu / elapsed * 100 if server else float("nan"),
            "gen CPU %": sum(r["cpu"] for r in results) / elapsed * 100}


def one_cell(config: str, nodes: int, server, args) -> dict:
    """Both load shapes on a fresh database with fresh managers: {shape: figures}."""
    engine, workers, count = CONFIGS[config]
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    procs: list = []
    name = None
    try:
        if engine == "null":
            managers = launch_null_managers(workdir, workers, procs, NULL_ARGS.get(config, []))
        else:
            if engine == "sqlite":
                url = f"sqlite:///{workdir / 'fleet.db'}"
            else:
                name = server.create_database()
                url = server.url(name)
            managers = launch_managers(workdir, url, workers, count, procs)
        clients = launch_clients(managers, nodes, args, procs, workdir)
        pg = server if engine == "postgresql" else None
        figures = {"saturation": one_load(clients, f"saturation {args.duration}", managers,
                                          pg, args.agents),
                   "steady": one_load(clients, f"steady {args.duration} {args.period}",
                                      managers, pg, args.agents)}
        for c in clients:
            c.stdin.close()
    except BaseException:
        print(f"{config} × {nodes} failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        stop_all(procs, workdir / "state")
        if name:
            server.drop_database(name)
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


# ---- the raw upsert rate -----------------------------------------------------------

def raw_upsert_rate(url: str, nodes: int, agents: int) -> float:
    """Rows/s of the writer's agent upsert (fleet.manager.ingest.AgentUpsert), executed
    directly: one insert pass, then two update passes timed, 20,000 rows per
    transaction."""
    from fleet.manager.ingest import REPORT_COLUMNS, AgentUpsert
    from fleet.manager.store.db import backend_of, open_database
    from fleet.manager.store.migrations import migrate

    db = open_database(url)
    migrate(db)
    backend = backend_of(db)
    upsert = AgentUpsert(backend, REPORT_COLUMNS)
    rows = [(f"bench-{n:05d}", f"agent-{a:03d}", "t", "1", 3, 1000 + a, 1, 0, -1, 0, "healthy",
             1, 1, 1, 1, "", None, 1, False, "") for n in range(nodes) for a in range(agents)]
    done, began = 0, 0.0
    for seq in range(1, 4):
        if seq == 2:
            began = time.perf_counter()
        batch = [r[:13] + (seq,) + r[14:] for r in rows]
        for start in range(0, len(batch), 20000):
            with db.atomic():
                upsert.run(db.cursor(), batch[start:start + 20000])
            done += len(batch[start:start + 20000]) if seq > 1 else 0
    db.close()
    return done / (time.perf_counter() - began)


# ---- the table -----------------------------------------------------------------

COLUMNS = ("states/s", "p50 ms", "p99 ms", "failed", "mgr CPU %", "mgr RSS MiB",
           "pg CPU %", "gen CPU %")


def median_figures(runs: list[dict]) -> dict:
    """Each figure's median over the rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def print_table(cells: dict, args) -> None:
    """The markdown table: one row per configuration × size × shape."""
    print(f"\nagents/node={args.agents} procs={args.procs} threads/proc={args.threads} "
          f"(saturation in flight: {args.procs * args.threads}) duration={args.duration:g}s "
          f"period={args.period:g}s rounds={args.repeat} (medians)"
          + (" postgresql=durable (on disk, every commit flushed)" if args.durable_pg else ""))
    print("| config | nodes | agents | load | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for (config, nodes), shapes in cells.items():
        for shape, f in shapes.items():
            load = shape if shape == "saturation" else \
                f"steady {nodes * args.agents / args.period:,.0f}/s offered"
            values = ["–" if f[k] != f[k] else f"{f[k]:,.0f}" for k in COLUMNS]
            print(f"| {config} | {nodes:,} | {nodes * args.agents:,} | {load} | "
                  + " | ".join(values) + " |")


def knee_lines(cells: dict, args) -> None:
    """Per configuration: the largest size whose steady load held, the first that did not,
    and the saturation rate."""
    print()
    for config in args.configs:
        sizes = [n for (c, n) in cells if c == config]
        held, broke = [], []
        for n in sizes:
            f = cells[(config, n)]["steady"]
            offered = n * args.agents / args.period
            ok = f["p99 ms"] <= TARGET_P99_MS and f["failed"] == 0 \
                and f["states/s"] >= 0.95 * offered * min(1.0, args.duration / args.period)
            (held if ok else broke).append(n)
        top = max(cells[(config, n)]["saturation"]["states/s"] for n in sizes)
        first_broke = min(broke) if broke else None
        print(f"knee {config}: steady load held up to "
              f"{max(held) * args.agents:,} agents" if held else f"knee {config}: held at no size",
              end="")
        if first_broke:
            f = cells[(config, first_broke)]["steady"]
            print(f"; broke at {first_broke * args.agents:,} agents "
                  f"(p99 {f['p99 ms']:,.0f} ms, {f['failed']:.0f} failed)", end="")
        print(f"; saturation at most {top:,.0f} states/s")


def target_lines(cells: dict, args) -> list[str]:
    """The targets against the cells this run has (medians when --repeat > 1): per size,
    sqlite-2's saturation over sqlite-1's, pg-2's saturation, and each storing
    configuration's p99 at TARGET_AGENTS agents every 10 s."""
    lines = []

    def saturation(config: str, nodes: int) -> float:
        return cells[(config, nodes)]["saturation"]["states/s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for nodes in args.sizes:
        if ("sqlite-1", nodes) in cells and ("sqlite-2", nodes) in cells:
            ratio = saturation("sqlite-2", nodes) / saturation("sqlite-1", nodes)
            lines.append(f"target 2 workers >= {TARGET_WORKERS_RATIO}x one, {nodes:,} nodes: "
                         f"{ratio:.2f}x ({saturation('sqlite-2', nodes):,.0f} / "
                         f"{saturation('sqlite-1', nodes):,.0f} states/s): "
                         + verdict(ratio >= TARGET_WORKERS_RATIO))
        if ("pg-2", nodes) in cells:
            rate = saturation("pg-2", nodes)
            lines.append(f"target PostgreSQL >= {TARGET_PG_STATES:,.0f} states/s, {nodes:,} "
                         f"nodes: pg-2 {rate:,.0f}: " + verdict(rate >= TARGET_PG_STATES))
    for (config, nodes), shapes in cells.items():
        if nodes * args.agents == TARGET_AGENTS and args.period == 10 \
                and CONFIGS[config][0] != "null":         # the floor stores nothing
            f = shapes["steady"]
            ok = f["p99 ms"] <= TARGET_P99_MS and f["failed"] == 0
            lines.append(f"target {TARGET_AGENTS:,} agents every 10 s at p99 <= "
                         f"{TARGET_P99_MS:.0f} ms, {config}: p99 {f['p99 ms']:,.0f} ms, "
                         f"{f['failed']:.0f} failed: " + verdict(ok))
    return lines


def run_table(args) -> None:
    """Every configuration × size, --repeat rounds; the raw upsert rates; the table."""
    server = start_postgresql(args.durable_pg) \
        if any(c.startswith("pg") for c in args.configs) else None
    try:
        runs: dict = {}
        for round_ in range(args.repeat):
            for config in args.configs:
                for nodes in args.sizes:
                    began = time.monotonic()
                    cell = one_cell(config, nodes, server, args)
                    runs.setdefault((config, nodes), []).append(cell)
                    print(f"round {round_ + 1} {config} nodes={nodes}: " + "; ".join(
                        f"{shape} {f['states/s']:,.0f} states/s p99 {f['p99 ms']:,.0f} ms "
                        f"failed {f['failed']}" for shape, f in cell.items())
                        + f"  ({time.monotonic() - began:.0f} s)", flush=True)
        cells = {key: {shape: median_figures([r[shape] for r in rounds])
                       for shape in rounds[0]} for key, rounds in runs.items()}
        print_table(cells, args)
        knee_lines(cells, args)
        raw_rates(server, args)
        targets = target_lines(cells, args)
        if targets:
            print("\n" + "\n".join(targets))
    finally:
        if server:
            server.stop()


def raw_rates(server, args) -> None:
    """Print the raw upsert rate of each engine in the table."""
    engines = {CONFIGS[c][0] for c in args.configs} - {"null"}
    for engine in sorted(engines):
        with tempfile.TemporaryDirectory(prefix="fleet-raw-") as tmp:
            if engine == "sqlite":
                rate = raw_upsert_rate(f"sqlite:///{tmp}/raw.db", args.raw_nodes, args.agents)
            else:
                name = server.create_database()
                try:
                    rate = raw_upsert_rate(server.url(name), args.raw_nodes, args.agents)
                finally:
                    server.drop_database(name)
        print(f"raw {engine} agent upsert (the writer's statement, update passes, "
              f"{args.raw_nodes * args.agents:,} rows each): {rate:,.0f} rows/s")


def main() -> None:
    """Run the table, or the simulator child role (--client)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="node counts")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="any of " + ",".join(CONFIGS))
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=10.0)
    parser.add_argument("--full-every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--raw-nodes", type=int, default=2000)
    parser.add_argument("--generator", choices=("grpc", "h2"), default="grpc",
                        help="the simulated daemons: grpcio (this file), or raw HTTP/2 "
                             "frames from one thread (bench/h2_daemons.py, needs hpack)")
    parser.add_argument("--durable-pg", action="store_true",
                        help="PostgreSQL on disk, every commit flushed (default: the "
                             "tests' server, in memory, fsync off)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client([args.client], args.first, args.count, args.total, args)
        return
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.configs = args.configs.split(",")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")
    run_table(args)


if __name__ == "__main__":
    main()
