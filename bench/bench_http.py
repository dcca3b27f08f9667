"""HTTP server benchmark: keep-alive requests/s and p99, with and without stalled clients.

    python bench/bench_http.py [--candidates] [--rounds 3] [--duration 2] [--stalled 300]
                               [--clients 2] [--connections 4]

Each server runs in its own process (`--serve NAME`) around fleet's real bottle
app (fleet.manager.api.routes.make_app over a SQLite file with three nodes). For each
round and server: `--clients` load processes with `--connections` keep-alive
connections each send GET /health, then GET /api/v1/nodes with the bearer token,
for `--duration` seconds each; then `--stalled` connections are opened and left
stalled (a quarter each: nothing sent, half a request line, unfinished headers,
a body shorter than its Content-Length) and the same is measured again. A request
that takes over 5 s counts as an error. RSS is the server's after the round.
Prints the median over rounds of requests/s and p99 ms per path and phase.

By default only fleet's server (fleet.manager.api.server) runs. `--candidates` adds, in
the same run, cheroot (what fleet used before), waitress, uvicorn with a2wsgi,
and hypercorn; those are bench-only dependencies:
    pip install cheroot==11.1.2 waitress==3.0.2 a2wsgi==1.10.10 hypercorn==0.18.0
The stalled clients stay the whole phase: fleet's server is given
http_request_timeout = 60 here, so that it does not cut them off mid-measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http.client
import os
import pathlib
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-api-token-0123456789abcdef"
CLUSTER = "bench-cluster-token-9876543210fedcba"
THREADS = 16             # worker threads of every threaded server
REQUEST_TIMEOUT = 5.0    # client side: a slower answer is an error
PATHS = (("/health", False), ("/api/v1/nodes", True))
CANDIDATES = ("fleet", "cheroot", "waitress", "uvicorn+a2wsgi", "hypercorn")


# ---- the server process ----

def build_app(directory: str):
    """fleet's bottle app over a fresh SQLite file with three registered nodes."""
    from fleet.manager.service import FleetService
    from fleet.manager.audit import AuditLog
    from fleet.manager.store.db import open_database
    from fleet.manager.store.migrations import migrate
    from fleet.manager.api.routes import make_app
    from fleet.manager.nodes import NodeFacts
    from fleet.manager.pool import DaemonClientPool
    from fleet.manager.parts import build_manager
    from fleet.manager.tokens import ApiAuth
    db = open_database(f"sqlite:///{directory}/bench.db")
    migrate(db)
    parts = build_manager(db, offline_after=90)
    for n in range(3):
        parts.nodes.register(NodeFacts(f"n{n}", hostname=f"n{n}.local", ip="127.0.0.1",
                                       advertise_address="127.0.0.1:1", labels={"role": "edge"}))
    service = FleetService(parts.nodes, DaemonClientPool(CLUSTER), AuditLog(db))
    return make_app(service, ApiAuth([("default", TOKEN)], CLUSTER))


def serve(name: str, directory: str) -> None:
    """Serve the app with server `name` on a free port; print the port; exit when stdin closes."""
    app = build_app(directory)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (as
    # uvicorn's and hypercorn's own binding gets through getaddrinfo).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    if name == "fleet":
        from fleet.manager.api.server import serve_http
        sock.close()
        server = serve_http(app, "127.0.0.1:0", threads=THREADS, request_timeout=60.0)
        port = server.port
        server.start_background()
    else:
        prepare = {"cheroot": _cheroot, "waitress": _waitress, "uvicorn+a2wsgi": _uvicorn,
                   "hypercorn": _hypercorn}[name]
        threading.Thread(target=prepare(app, sock), daemon=True).start()
    print(port, flush=True)
    sys.stdin.read()


# Each binds (or takes the bound socket) now and returns the blocking serve loop.

def _cheroot(app, sock):
    from cheroot import wsgi
    server = wsgi.Server(sock.getsockname(), app, numthreads=THREADS, request_queue_size=128)
    sock.close()                         # cheroot binds itself, right away
    server.prepare()
    return server.serve


def _waitress(app, sock):
    from waitress.server import create_server
    # connection_limit raised from 100, which otherwise refuses new clients
    server = create_server(app, sockets=[sock], threads=THREADS, connection_limit=1000)
    return server.run


def _uvicorn(app, sock):
    import a2wsgi
    import uvicorn
    config = uvicorn.Config(a2wsgi.WSGIMiddleware(app, workers=THREADS), lifespan="off",
                            log_level="error", access_log=False)
    return lambda: asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def _hypercorn(app, sock):
    import hypercorn.asyncio
    import hypercorn.config
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "ERROR"

    def run():
        loop = asyncio.new_event_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(THREADS))
        never = asyncio.Event()          # no signal handlers: this is not the main thread
        loop.run_until_complete(hypercorn.asyncio.serve(app, config, mode="wsgi",
                                                        shutdown_trigger=never.wait))
    return run


# ---- load ----

def load(port: int, path: str, auth: bool, connections: int, duration: float):
    """One load process: `connections` keep-alive threads for `duration`; (count, errors, ms)."""
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    results = [[0, 0, []] for _ in range(connections)]
    end = time.monotonic() + duration

    def run(result):
        conn = None
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port,
                                                          timeout=REQUEST_TIMEOUT)
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise OSError(f"status {response.status}")
            except (OSError, http.client.HTTPException):
                result[1] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            result[0] += 1
            result[2].append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=run, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (sum(r[0] for r in results), sum(r[1] for r in results),
            [ms for r in results for ms in r[2]])


def measure(pool, port: int, args) -> dict:
    """{path: (requests/s, p99 ms, errors)} for each path in turn."""
    figures = {}
    for path, auth in PATHS:
        jobs = [pool.submit(load, port, path, auth, args.connections, args.duration)
                for _ in range(args.clients)]
        done = [job.result() for job in jobs]
        count, errors = sum(d[0] for d in done), sum(d[1] for d in done)
        latencies = sorted(ms for d in done for ms in d[2])
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
        figures[path] = (count / args.duration, p99, errors)
    return figures


def open_stalled(port: int, count: int) -> list[socket.socket]:
    """`count` connections stalled four ways (a quarter each)."""
    starts = (b"", b"GET /hea", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a",
              b"POST /api/v1/nodes/n1/agents/sync HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: 1000\r\n\r\n{")
    stalled = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if starts[n % 4]:
            sock.sendall(starts[n % 4])
        stalled.append(sock)
    return stalled


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_round(name: str, pool, args, directory: str) -> dict:
    """Start server `name`, measure without and with stalled clients, stop it."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", name, "--dir", directory],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        row = {"idle": measure(pool, port, args)}
        stalled = open_stalled(port, args.stalled)
        try:
            row["stalled"] = measure(pool, port, args)
        finally:
            for sock in stalled:
                sock.close()
        row["rss"] = rss_mib(proc.pid)
        return row
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait(10)


def report(name: str, rows: list[dict]) -> None:
    cells = []
    for phase in ("idle", "stalled"):
        for path, _ in PATHS:
            rate = statistics.median(r[phase][path][0] for r in rows)
            p99 = statistics.median(r[phase][path][1] for r in rows)
            errors = sum(r[phase][path][2] for r in rows)
            cells.append(f"{rate:7.0f} {p99:7.1f}" + (f" ({errors} err)" if errors else ""))
    rss = statistics.median(r["rss"] for r in rows)
    print(f"{name:16s} " + " | ".join(cells) + f" | {rss:5.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", action="store_true",
                        help="also cheroot, waitress, uvicorn+a2wsgi, hypercorn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per path")
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=4, help="per load process")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.dir)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(4096, hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    names = CANDIDATES if args.candidates else CANDIDATES[:1]
    rows: dict[str, list] = {name: [] for name in names}
    print(f"{args.rounds} rounds, {args.clients}x{args.connections} keep-alive connections, "
          f"{args.duration:g} s per path, {args.stalled} stalled; medians over rounds")
    print(f"{'server':16s} {'req/s   p99 ms':>15s} per column: /health, /api/v1/nodes "
          f"without stalled clients | the same with them | RSS MiB")
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ProcessPoolExecutor(args.clients) as pool:
        for round_number in range(args.rounds):
            for name in names:           # interleaved, so drift in load hits all alike
                directory = os.path.join(tmp, f"{name}-{round_number}")
                os.makedirs(directory)
                rows[name].append(one_round(name, pool, args, directory))
        for name in names:
            report(name, rows[name])


if __name__ == "__main__":
    main()
