"""Daemon benchmark: 50 agents (/bin/sleep) under one daemon.

Prints: daemon RSS, idle CPU over 30 s, SIGKILL -> new pid (median, p95,
observed from /proc, no RPC), OperateAgent restart round trip (median), and
start-to-serving of fleet.pyz cold and warm (if a pyz is given or built).
With --http-probes N every agent has an http probe every N seconds, answered
by a small server the benchmark runs.

    python bench/bench_daemon.py [--pyz fleet.pyz] [--agents 50] [--idle 30] [--http-probes 10]
"""
from __future__ import annotations

import argparse
import http.server
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import grpc  # noqa: E402
import psutil  # noqa: E402

from fleet.v1 import fleet_pb2 as pb  # noqa: E402
from fleet.v1 import fleet_pb2_grpc as pb_grpc  # noqa: E402


def write_config(folder: str, agents: int, probe_url: str = "", interval: float = 10) -> str:
    sleep = shutil.which("sleep") or "/bin/sleep"
    parts = ['[daemon]\nlisten = "127.0.0.1:0"\nmanager = "127.0.0.1:1"\n'
             f'state_dir = "{folder}/state"\n']
    for i in range(agents):
        parts.append(f'[[agents]]\nid = "sleep-{i}"\ncommand = ["{sleep}", "100000"]\n'
                     'start_seconds = 0.1\nbackoff_initial = 0\nstop_timeout = 2\n')
        if probe_url:
            parts.append(f'[agents.health]\nhttp = "{probe_url}"\ninterval = {interval}\n'
                         'grace = 0\non_unhealthy = "none"\n')
    path = os.path.join(folder, "fleet.toml")
    with open(path, "w") as handle:
        handle.write("\n".join(parts))
    return path


def start(command: list[str], folder: str, env: dict | None = None):
    """Start fleet; return (popen, port, seconds until it logged `listening`)."""
    log_path = os.path.join(folder, f"daemon-{time.monotonic_ns()}.log")
    began = time.monotonic()
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(command, stderr=log, cwd=folder, env={**os.environ, **(env or {})})
    deadline = began + 60
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            found = re.search(r"listening grpc=\S+:(\d+)", log.read())
        if found:
            return popen, int(found.group(1)), time.monotonic() - began
        if popen.poll() is not None:
            raise SystemExit(f"fleet exited: {open(log_path).read()}")
        time.sleep(0.002)
    raise SystemExit("fleet did not start")


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def probe_server() -> str:
    """A URL answering 200, served by a thread of this process."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def children(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children()}


def wait_children(pid: int, count: int) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = children(pid)
        if len(found) >= count:
            return found
        time.sleep(0.01)
    raise SystemExit("agents did not start")


def idle_cpu(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def kill_to_new_pid(daemon_pid: int, rounds: int) -> list[float]:
    """SIGKILL one agent, poll /proc for its replacement; seconds per round."""
    took = []
    for i in range(rounds):
        current = children(daemon_pid)
        victim = sorted(current)[i % len(current)]
        began = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while True:
            now = children(daemon_pid)
            if len(now - current) >= 1:
                took.append(time.monotonic() - began)
                break
            if time.monotonic() - began > 5:
                raise SystemExit("no replacement within 5 s")
        time.sleep(0.05)
    return took


def restart_round_trips(port: int, rounds: int) -> list[float]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.DaemonServiceStub(channel)
    stub.ListAgents(pb.ListAgentsRequest(), timeout=10)
    took = []
    for i in range(rounds):
        began = time.monotonic()
        stub.OperateAgent(pb.OperateAgentRequest(agent_id=f"sleep-{i % 50}",
                                                 operation="restart"), timeout=30)
        took.append(time.monotonic() - began)
    channel.close()
    return took


def pyz_start(pyz: str, folder: str, runs: int) -> tuple[list[float], list[float]]:
    """Start-to-serving of the pyz (no agents): cold (fresh cache) and warm."""
    config = os.path.join(folder, "empty.toml")
    with open(config, "w") as handle:
        handle.write(f'[daemon]\nlisten = "127.0.0.1:0"\nmanager = "127.0.0.1:1"\n'
                     f'state_dir = "{folder}/pyz-state"\n')
    cold, warm = [], []
    for i in range(runs):
        cache = tempfile.mkdtemp(prefix="fleet-cache-", dir=folder)
        for bucket in (cold, warm):
            popen, _, seconds = start([sys.executable, pyz, "--role", "daemon", "--config", config],
                                      folder, env={"FLEET_CACHE_DIR": cache})
            bucket.append(seconds)
            popen.send_signal(signal.SIGTERM)
            popen.wait(30)
    return cold, warm


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pyz", help="fleet.pyz to run (default: python fleet.py)")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--restarts", type=int, default=40)
    parser.add_argument("--http-probes", type=float, default=0,
                        help="give every agent an http probe every this many seconds")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="fleet-bench-")
    entry = [sys.executable, args.pyz] if args.pyz else [sys.executable, os.path.join(REPO, "fleet.py")]
    url = probe_server() if args.http_probes else ""
    config = write_config(folder, args.agents, url, args.http_probes)
    popen, port, _ = start(entry + ["--role", "daemon", "--config", config], folder)
    try:
        wait_children(popen.pid, args.agents)
        time.sleep(2)  # let the agents pass start_seconds and the first samples land
        rss = psutil.Process(popen.pid).memory_info().rss / 2**20
        cpu = idle_cpu(popen.pid, args.idle)
        kills = kill_to_new_pid(popen.pid, args.kills)
        restarts = restart_round_trips(port, args.restarts)
        print(f"agents                      {args.agents}"
              + (f" (http probe every {args.http_probes:g} s)" if url else ""))
        print(f"daemon RSS                  {rss:.1f} MiB")
        print(f"idle CPU over {args.idle:.0f} s          {cpu:.2f} % of a core")
        print(f"SIGKILL -> new pid          median {1000 * statistics.median(kills):.1f} ms, "
              f"p95 {1000 * p95(kills):.1f} ms ({len(kills)} kills)")
        print(f"OperateAgent restart        median {1000 * statistics.median(restarts):.1f} ms "
              f"({len(restarts)} round trips)")
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(60)
    if args.pyz:
        cold, warm = pyz_start(args.pyz, folder, 5)
        print(f"pyz start-to-serving        cold median {statistics.median(cold):.2f} s, "
              f"warm median {statistics.median(warm):.2f} s (5 runs each)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
