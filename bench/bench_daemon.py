"""Daemon benchmark: fleet's daemon beside Supervisor, 50 `sleep` programs each.

One run starts a real manager (tokens on), a fleet daemon reporting to it at
the default intervals with N agents running /bin/sleep, and supervisord with
the same N programs, then measures both side by side (DESIGN.md "Measuring"):

- restart round trip, one operation at a time with an idle gap between them,
  on the same agent and on a different agent each time: fleet's gRPC
  OperateAgent restart with the cluster token (a channel built as the manager
  builds it), Supervisor's XML-RPC stopProcess + startProcess (what
  `supervisorctl restart` does), and fleet through the manager's HTTP operate;
  median, p10 and p90;
- idle CPU of each over the same window (CPU time summed over the process's
  threads from /proc/PID/task/*/schedstat, so other load on the machine does
  not count), and what else ran on the machine meanwhile;
- RSS of each; SIGKILL -> new pid (fleet, from /proc); pyz start-to-serving;
- the floors, in the same run: an empty OperateAgent on a bare gRPC server built
  as the daemon's (token check on), spawning /bin/sleep from Python as the daemon
  does, and the idle CPU of that bare server.

Supervisor is a bench-only dependency, not in requirements:
`pip install supervisor==4.3.0`. Without it the Supervisor column is skipped.
Supervisor's programs use startsecs = 0, so startProcess returns once the
process is spawned, as fleet's restart does (it answers STARTING).

    python bench/bench_daemon.py [--pyz fleet.pyz] [--agents 50] [--idle 60]
                                 [--restarts 40] [--gap 0.25] [--http-probes 10]

With --http-probes N every fleet agent has an http probe every N seconds,
answered by a small server the benchmark runs (Supervisor has no probes).
"""
from __future__ import annotations

import argparse
import glob
import http.server
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import psutil  # noqa: E402

from fleet.rpc import open_channel  # noqa: E402
from fleet.v1 import fleet_pb2 as pb  # noqa: E402
from fleet.v1 import fleet_pb2_grpc as pb_grpc  # noqa: E402

NODE = "bench-node"
SLEEP = shutil.which("sleep") or "/bin/sleep"


# ---- starting the processes ----------------------------------------------------

def write_private(path: str, text: str) -> str:
    """Write a file holding tokens, readable by its owner only; returns path."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(text)
    return path


def start(command: list[str], folder: str, keys: tuple[str, ...] = ("grpc",),
          env: dict | None = None):
    """Start a fleet role; return (popen, {KEY: HOST:PORT of `listening KEY=`}, seconds
    until it logged the last of them)."""
    log_path = os.path.join(folder, f"fleet-{time.monotonic_ns()}.log")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    began = time.monotonic()
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(command, stderr=log, stdout=log, cwd=folder,
                                 env={**clean, **(env or {})})
    while time.monotonic() < began + 60:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            text = log.read()
        found = {key: re.search(rf"listening {key}=(\S+)", text) for key in keys}
        if all(found.values()):
            return popen, {k: m.group(1) for k, m in found.items()}, time.monotonic() - began
        if popen.poll() is not None:
            raise SystemExit(f"fleet exited: {text}")
        time.sleep(0.002)
    raise SystemExit(f"fleet did not log 'listening' for {keys}")


def start_manager(entry: list[str], folder: str) -> tuple[subprocess.Popen, dict]:
    """A real manager on a fresh SQLite file; (popen, addresses and tokens)."""
    facts = {"api_token": secrets.token_hex(16), "cluster_token": secrets.token_hex(16)}
    q = json.dumps   # a JSON string is a TOML basic string
    config = write_private(os.path.join(folder, "manager.toml"), (
        '[manager]\nhttp = "127.0.0.1:0"\ngrpc = "127.0.0.1:0"\n'
        f"db = {q('sqlite:///' + os.path.join(folder, 'fleet.db'))}\n"
        f"api_token = {q(facts['api_token'])}\ncluster_token = {q(facts['cluster_token'])}\n"))
    popen, found, _ = start(entry + ["--role", "manager", "--config", config], folder,
                            ("grpc", "http"))
    facts.update(found)
    return popen, facts


def write_daemon_config(folder: str, agents: int, manager: dict, probe_url: str = "",
                        probe_interval: float = 10) -> str:
    q = json.dumps
    parts = ['[daemon]\nlisten = "127.0.0.1:0"\n'
             f"manager = {q(manager['grpc'])}\ncluster_token = {q(manager['cluster_token'])}\n"
             f"node_id = {q(NODE)}\nstate_dir = {q(os.path.join(folder, 'state'))}\n"]
    for i in range(agents):
        parts.append(f'[[agents]]\nid = "sleep-{i}"\ncommand = [{q(SLEEP)}, "100000"]\n'
                     'start_seconds = 0.1\nbackoff_initial = 0\nstop_timeout = 2\n')
        if probe_url:
            parts.append(f'[agents.health]\nhttp = {q(probe_url)}\ninterval = {probe_interval}\n'
                         'grace = 0\non_unhealthy = "none"\n')
    return write_private(os.path.join(folder, "fleet.toml"), "\n".join(parts))


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def probe_server() -> str:
    """A URL answering 200, served by a thread of this process (for --http-probes)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_supervisord(folder: str, agents: int):
    """supervisord with the same programs, XML-RPC on 127.0.0.1 with a password;
    (popen, ServerProxy), or (None, None) when supervisor is not installed."""
    try:
        from supervisor.xmlrpc import SupervisorTransport
    except ImportError:
        return None, None
    here = os.path.join(folder, "supervisor")
    os.makedirs(here)
    port, password = free_port(), secrets.token_hex(16)
    parts = [f"[inet_http_server]\nport = 127.0.0.1:{port}\nusername = bench\npassword = {password}\n",
             f"[supervisord]\nnodaemon = true\nlogfile = {here}/supervisord.log\n"
             f"pidfile = {here}/supervisord.pid\nchildlogdir = {here}\n",
             "[rpcinterface:supervisor]\n"
             "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"]
    for i in range(agents):
        parts.append(f"[program:sleep-{i}]\ncommand = {SLEEP} 100000\nstartsecs = 0\n"
                     f"stopwaitsecs = 2\nredirect_stderr = true\n"
                     f"stdout_logfile = {here}/sleep-{i}.log\n")
    config = write_private(os.path.join(here, "supervisord.conf"), "\n".join(parts))
    popen = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", config],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=here)
    url = f"http://127.0.0.1:{port}"
    proxy = xmlrpc.client.ServerProxy(url, transport=SupervisorTransport("bench", password, url))
    return popen, proxy


# The floor: a process that serves only gRPC, built as the daemon builds its server
# (fleet.rpc.create_server, the token check), whose OperateAgent does nothing.
FLOOR_SERVER = """
import os, sys, time
sys.path.insert(0, {repo!r})
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
from fleet.rpc import create_server
from fleet.v1 import fleet_pb2 as pb, fleet_pb2_grpc as pb_grpc

class Empty(pb_grpc.DaemonServiceServicer):
    def ListAgents(self, request, context):
        return pb.ListAgentsResponse()

    def OperateAgent(self, request, context):
        return pb.OperateAgentResponse(agent=pb.AgentInfo(agent_id=request.agent_id, pid=1))

server, port = create_server("127.0.0.1:0", [lambda s: pb_grpc.add_DaemonServiceServicer_to_server(Empty(), s)],
                             token=os.environ["BENCH_TOKEN"])
server.start()
print(port, flush=True)
while True:
    time.sleep(3600)
"""


def start_floor(token: str) -> tuple[subprocess.Popen, str]:
    """The bare gRPC server (see FLOOR_SERVER); (popen, HOST:PORT)."""
    popen = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER.format(repo=REPO)],
                             stdout=subprocess.PIPE, env={**os.environ, "BENCH_TOKEN": token})
    return popen, f"127.0.0.1:{int(popen.stdout.readline())}"


def spawn_floor(rounds: int, gap: float) -> list[float]:
    """Seconds to start /bin/sleep as the daemon does (own session, close_fds, output
    to a file), from this process, one at a time with gaps."""
    took = []
    with open(os.devnull, "wb") as sink:
        for _ in range(rounds):
            time.sleep(gap)
            began = time.perf_counter()
            popen = subprocess.Popen([SLEEP, "100000"], stdin=subprocess.DEVNULL, stdout=sink,
                                     stderr=sink, start_new_session=True, close_fds=True)
            took.append(time.perf_counter() - began)
            popen.kill()
            popen.wait()
    return took


# ---- waiting and measuring -----------------------------------------------------

def wait_children(pid: int, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(psutil.Process(pid).children()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"pid {pid}: agents did not start")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid, in ns precision (schedstat), as seconds."""
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(stat) as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def machine_busy() -> float:
    """Seconds of CPU (all cores) the machine has spent busy so far."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def idle_cpu(pids: dict[str, int], seconds: float) -> tuple[dict[str, float], float, list]:
    """Each pid's CPU as % of one core over the same window; the machine's busy
    cores over it (all of them: the others' load too); the top other processes."""
    others = {p.pid: p for p in psutil.process_iter() if p.pid not in pids.values()}
    for proc in others.values():
        _cpu_or_none(proc)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy = machine_busy()
    time.sleep(seconds)
    used = {name: 100.0 * (cpu_seconds(pid) - before[name]) / seconds for name, pid in pids.items()}
    busy = (machine_busy() - busy) / seconds
    top = sorted(((_cpu_or_none(p) or 0.0, _name(p)) for p in others.values()), reverse=True)
    return used, busy, top[:4]


def _cpu_or_none(proc: psutil.Process) -> float | None:
    try:
        return proc.cpu_percent(None)
    except psutil.Error:
        return None


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:3])[:60] or proc.name()
    except psutil.Error:
        return "?"


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def gapped(operation, rounds: int, gap: float, agents: int, same: bool) -> list[float]:
    """Seconds per operation(agent id), one at a time, `gap` idle seconds between."""
    took = []
    for i in range(rounds):
        time.sleep(gap)
        agent = "sleep-0" if same else f"sleep-{1 + i % (agents - 1)}"
        began = time.perf_counter()
        operation(agent)
        took.append(time.perf_counter() - began)
    return took


def fleet_restart(address: str, token: str):
    """OperateAgent restart as the manager calls it: token interceptor, keepalive."""
    channel = open_channel(address, token)
    stub = pb_grpc.DaemonServiceStub(channel)
    stub.ListAgents(pb.ListAgentsRequest(), timeout=10)

    def restart(agent: str) -> None:
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id=agent, operation="restart"),
                                   timeout=30)
        if not answer.agent.pid:
            raise SystemExit(f"fleet restart of {agent}: no pid in {answer}")
    return restart, channel


def supervisor_restart(proxy):
    def restart(agent: str) -> None:
        proxy.supervisor.stopProcess(agent, True)
        proxy.supervisor.startProcess(agent, True)
    return restart


def http_restart(manager: dict):
    """POST .../operate through the manager's HTTP API (keep-alive)."""
    host, port = manager["http"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"Bearer {manager['api_token']}",
               "Content-Type": "application/json"}
    body = json.dumps({"operation": "restart"})
    deadline = time.monotonic() + 30
    while True:
        conn.request("GET", f"/api/v1/nodes/{NODE}/agents", headers=headers)
        answer = conn.getresponse()
        if answer.status == 200 and json.loads(answer.read())["agents"]:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the manager never listed the bench node's agents")
        time.sleep(0.1)

    def restart(agent: str) -> None:
        conn.request("POST", f"/api/v1/nodes/{NODE}/agents/{agent}/operate", body, headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"HTTP operate {agent}: {answer.status}")
    return restart, conn


def children(pid: int) -> set[int]:
    """pid's children from /proc/PID/task/*/children (cheap to poll, unlike a scan of
    every process, which Supervisor's 50 sleeps would slow); psutil where it is missing."""
    found, files = set(), glob.glob(f"/proc/{pid}/task/*/children")
    if not files:
        return {p.pid for p in psutil.Process(pid).children()}
    for path in files:
        try:
            with open(path) as handle:
                found.update(int(word) for word in handle.read().split())
        except OSError:
            pass  # a thread that ended meanwhile
    return found


def kill_to_new_pid(daemon_pid: int, rounds: int) -> list[float]:
    """SIGKILL one agent, poll /proc for its replacement; seconds per round."""
    took = []
    for i in range(rounds):
        current = children(daemon_pid)
        victim = sorted(current)[i % len(current)]
        began = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while not children(daemon_pid) - current:
            if time.monotonic() - began > 5:
                raise SystemExit("no replacement within 5 s")
            time.sleep(0.0005)  # a spinning poller would take a core from the daemon
        took.append(time.monotonic() - began)
        time.sleep(0.05)
    return took


def pyz_start(pyz: str, folder: str, runs: int) -> tuple[list[float], list[float]]:
    """Start-to-serving of the pyz (no agents): cold (fresh cache) and warm."""
    config = os.path.join(folder, "empty.toml")
    with open(config, "w") as handle:
        handle.write(f'[daemon]\nlisten = "127.0.0.1:0"\nmanager = "127.0.0.1:1"\n'
                     f'state_dir = "{folder}/pyz-state"\n')
    cold, warm = [], []
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="fleet-cache-", dir=folder)
        for bucket in (cold, warm):
            popen, _, seconds = start([sys.executable, pyz, "--role", "daemon", "--config", config],
                                      folder, env={"FLEET_CACHE_DIR": cache})
            bucket.append(seconds)
            popen.send_signal(signal.SIGTERM)
            popen.wait(30)
    return cold, warm


# ---- reporting -----------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spread(values: list[float]) -> str:
    """median (p10-p90) in ms."""
    return (f"{1000 * statistics.median(values):6.2f} ms "
            f"({1000 * quantile(values, 0.1):.2f}-{1000 * quantile(values, 0.9):.2f})")


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:5.2f}x" if ours is not None and theirs else "   -"


def row(label: str, ours: str, theirs: str, ratio_text: str) -> None:
    print(f"{label:<34} {ours:<28} {theirs:<28} {ratio_text}")


def report(args, fig: dict) -> None:
    print(f"{args.agents} agents / programs running {SLEEP}; restarts one at a time, "
          f"{args.gap:.2f} s idle between, {args.restarts} per row; median (p10-p90)")
    row("figure", "fleet", "supervisor 4.3", "fleet/supervisor")
    sup = fig.get("sup", {})
    for key, label in (("same", "restart, same agent"), ("other", "restart, other agent")):
        ours, theirs = fig["fleet"][key], sup.get(key)
        row(label, spread(ours), spread(theirs) if theirs else "-",
            ratio(statistics.median(ours), theirs and statistics.median(theirs)))
    row("restart via manager HTTP, other", spread(fig["http"]), "", "")
    row(f"idle CPU over {args.idle:.0f} s (% of a core)", f"{fig['fleet']['cpu']:.3f} %",
        f"{sup['cpu']:.3f} %" if sup else "-", ratio(fig["fleet"]["cpu"], sup.get("cpu")))
    row("RSS", f"{fig['fleet']['rss']:.1f} MiB", f"{sup['rss']:.1f} MiB" if sup else "-",
        ratio(fig["fleet"]["rss"], sup.get("rss")))
    kills = fig["kills"]
    row("SIGKILL -> new pid (fleet)", f"{1000 * statistics.median(kills):.1f} ms, "
        f"p95 {1000 * quantile(kills, 0.95):.1f} ms", "", "")
    floor = fig["floor"]
    print("floors (what fleet's figures cannot go below, measured in the same run):")
    row("  empty OperateAgent, bare gRPC", spread(floor["other"]), "", "")
    row("  spawn /bin/sleep from Python", spread(fig["spawn"]), "", "")
    row("  idle CPU of a bare gRPC server", f"{floor['cpu']:.3f} %", "", "")
    print(f"beside: the manager used {fig['manager_cpu']:.3f} % of a core while idle; the "
          f"machine was busy {fig['busy']:.2f} of {psutil.cpu_count()} cores over the idle "
          f"window; load average {fig['load']}; top others: "
          + "; ".join(f"{cpu:.0f} % {name}" for cpu, name in fig["top"]))


# ---- the run -------------------------------------------------------------------

def measure(args, daemon, manager_popen, manager, sup_popen, proxy) -> dict:
    fig = {"fleet": {}, "sup": {}, "floor": {}}
    floor_popen, floor_address = start_floor(manager["cluster_token"])
    try:
        pids = {"fleet": daemon[0].pid, "manager": manager_popen.pid, "floor": floor_popen.pid}
        if sup_popen is not None:
            pids["sup"] = sup_popen.pid
        time.sleep(args.settle)  # past start_seconds, first samples, first reports
        used, fig["busy"], fig["top"] = idle_cpu(pids, args.idle)
        fig["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        fig["manager_cpu"] = used.pop("manager")
        for name, cpu in used.items():
            fig[name]["cpu"], fig[name]["rss"] = cpu, rss_mib(pids[name])
        measure_restarts(args, fig, daemon[1]["grpc"], floor_address, manager, proxy)
    finally:
        floor_popen.kill()
        floor_popen.wait()
    fig["spawn"] = spawn_floor(args.restarts, args.gap)
    restart, conn = http_restart(manager)
    fig["http"] = gapped(restart, args.restarts, args.gap, args.agents, False)
    conn.close()
    fig["kills"] = kill_to_new_pid(daemon[0].pid, args.kills)
    return fig


def measure_restarts(args, fig: dict, address: str, floor_address: str, manager: dict,
                     proxy) -> None:
    """Gapped restarts of fleet, Supervisor and the empty floor call, interleaved row
    by row so that all meet the same load."""
    operations, channels = {}, []
    for name, where in (("fleet", address), ("floor", floor_address)):
        operations[name], channel = fleet_restart(where, manager["cluster_token"])
        channels.append(channel)
    if proxy is not None:
        operations["sup"] = supervisor_restart(proxy)
    for same in (True, False):
        for name, operation in operations.items():
            fig[name]["same" if same else "other"] = gapped(operation, args.restarts, args.gap,
                                                            args.agents, same)
    for channel in channels:
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pyz", help="fleet.pyz to run (default: python fleet.py)")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60.0, help="idle CPU window, seconds")
    parser.add_argument("--settle", type=float, default=15.0, help="wait before measuring")
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--restarts", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.25, help="idle seconds between restarts")
    parser.add_argument("--http-probes", type=float, default=0,
                        help="give every fleet agent an http probe every this many seconds")
    args = parser.parse_args()
    if args.pyz:        # the processes run in a temporary folder: a relative path would miss
        args.pyz = os.path.abspath(args.pyz)
    folder = tempfile.mkdtemp(prefix="fleet-bench-")
    entry = [sys.executable, args.pyz] if args.pyz else [sys.executable, os.path.join(REPO, "fleet.py")]
    probe_url = probe_server() if args.http_probes else ""
    if probe_url:
        print(f"every fleet agent has an http probe every {args.http_probes:g} s")
    manager_popen, manager = start_manager(entry, folder)
    started = [manager_popen]
    try:
        sup_popen, proxy = start_supervisord(folder, args.agents)
        if sup_popen is None:
            print("supervisor is not installed (pip install supervisor==4.3.0): fleet only")
        else:
            started.append(sup_popen)
        daemon = start(entry + ["--role", "daemon", "--config",
                                write_daemon_config(folder, args.agents, manager, probe_url,
                                                    args.http_probes)], folder)
        started.append(daemon[0])
        for popen in started[1:]:
            wait_children(popen.pid, args.agents)
        report(args, measure(args, daemon, manager_popen, manager, sup_popen, proxy))
    finally:
        for popen in reversed(started):
            popen.send_signal(signal.SIGTERM)
            popen.wait(60)
    if args.pyz:
        cold, warm = pyz_start(args.pyz, folder, 5)
        print(f"pyz start-to-serving: cold median {statistics.median(cold):.2f} s, "
              f"warm median {statistics.median(warm):.2f} s (5 runs each)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
