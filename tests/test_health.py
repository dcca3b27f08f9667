"""Probes and resource limits with real agents, real probes and a real daemon."""
import contextlib
import socket
import subprocess
import sys
import time

import grpc
import pytest

from fleet.daemon.app import Daemon
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.daemon_harness import SLEEPER, agent, daemon_config
from tests.helpers import wait_for
from tests.procs import FLEET_PY, alive

PY = sys.executable

# An HTTP agent: GET answers 200, or 500 while the file argv[2] exists.
HTTP_AGENT = r"""
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if os.path.exists(sys.argv[2]) else 200
        self.send_response(code); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

# A TCP agent: accepts connections until the file argv[2] appears, then closes its
# listening socket and lives on.
TCP_AGENT = r"""
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16); s.settimeout(0.05)
while not os.path.exists(sys.argv[2]):
    try:
        s.accept()[0].close()
    except socket.timeout:
        pass
s.close()
time.sleep(3600)
"""


class Events:
    """The daemon's real event log, seen as (wall seconds, agent, kind, message)."""

    def __init__(self, node):
        self.node = node

    def of(self, kind):
        log = self.node.events
        return sorted((e.time / 1000, e.agent_id, e.kind, e.message)
                      for agent_id in self.node.supervisor.runners
                      for e in log.events(agent_id) if e.kind == kind)


@contextlib.contextmanager
def daemon(tmp_path, agents, **settings):
    """(daemon, stub, events, snapshots seen by a listener) for the block."""
    node = Daemon(daemon_config(tmp_path, agents, **settings))
    seen = []
    node.start()
    node.supervisor.listeners.append(seen.append)
    channel = grpc.insecure_channel(f"127.0.0.1:{node.port}")
    try:
        yield node, pb_grpc.DaemonServiceStub(channel), Events(node), seen
    finally:
        channel.close()
        node.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def info(stub, agent_id):
    agents = stub.ListAgents(pb.ListAgentsRequest(), timeout=5).agents
    return next(a for a in agents if a.agent_id == agent_id)


def probe_restart_case(tmp_path, command, probe, fail_file, expected_message):
    """Shared course: healthy, then `fail_file` appears, unhealthy with the message,
    restarted after failures x interval, with a restart event naming cause health."""
    interval, failures = 0.3, 3
    health = {**probe, "interval": interval, "timeout": 1, "grace": 0.2,
              "failures": failures, "on_unhealthy": "restart"}
    with daemon(tmp_path, [agent("probed", command, health=health)]) as (node, stub, events, seen):
        wait_for(lambda: info(stub, "probed").health == "healthy", timeout=10)
        assert info(stub, "probed").health_message == ""
        first_pid = info(stub, "probed").pid
        fail_file.write_text("x")
        failing_since = time.time()
        wait_for(lambda: events.of("restart"), timeout=10)
        restarted_at = events.of("restart")[0][0]
        assert restarted_at - failing_since >= (failures - 1) * interval
        unhealthy = [s for s in seen if s.health == "unhealthy"]
        assert unhealthy and unhealthy[0].health_message == expected_message
        assert events.of("unhealthy")[0][3] == expected_message
        assert events.of("restart")[0][3] == f"cause=health: {expected_message}"
        fail_file.unlink()
        now = wait_for(lambda: (lambda a: a.pid != first_pid and a.health == "healthy" and a)(
            info(stub, "probed")), timeout=10)
        assert now.restart_count == 1 and now.health_message == ""
        assert not alive(first_pid)


def test_http_probe_500_marks_unhealthy_and_restarts(tmp_path):
    """An http agent answering 500 is unhealthy with `GET url -> 500` and restarted
    after failures x interval, with a restart event of cause health."""
    port, flag = free_port(), tmp_path / "fail"
    url = f"http://127.0.0.1:{port}/metrics"
    probe_restart_case(tmp_path, [PY, "-c", HTTP_AGENT, str(port), str(flag)],
                       {"http": url}, flag, f"GET {url} -> 500")


def test_tcp_probe_refused_marks_unhealthy_and_restarts(tmp_path):
    """An agent that stops listening is unhealthy with `connect ...: connection refused`
    and restarted."""
    port, flag = free_port(), tmp_path / "fail"
    probe_restart_case(tmp_path, [PY, "-c", TCP_AGENT, str(port), str(flag)],
                       {"tcp": f"127.0.0.1:{port}"}, flag,
                       f"connect 127.0.0.1:{port}: connection refused")


def test_exec_probe_exit_marks_unhealthy_with_its_output_and_restarts(tmp_path):
    """An exec probe exiting 2 makes the agent unhealthy with `exec exited 2: <first
    line of its output>` and restarts it."""
    flag = tmp_path / "fail"
    check = [PY, "-c", f"import os, sys\nif os.path.exists({str(flag)!r}):\n"
             "    print('disk full\\nsecond line'); sys.exit(2)"]
    probe_restart_case(tmp_path, SLEEPER, {"exec": check}, flag, "exec exited 2: disk full")


def test_hung_exec_probe_is_killed_at_its_timeout_and_others_keep_their_schedule(tmp_path):
    """An exec probe that hangs is killed (its group) at its timeout and reaped; the
    agent is unhealthy saying so; another agent's probe keeps its interval meanwhile."""
    pids, ticks = tmp_path / "hung-pids", tmp_path / "ticks"
    hang = ["sh", "-c", f"echo $$ >> {pids}; sleep 60 & sleep 60"]
    tick = ["sh", "-c", f"date +%s.%N >> {ticks}"]
    agents = [agent(f"hung{i}", health={"exec": hang, "interval": 0.5, "timeout": 1.5,
                                        "grace": 0, "failures": 1, "on_unhealthy": "none"})
              for i in range(3)]
    agents.append(agent("steady", health={"exec": tick, "interval": 0.25, "timeout": 1,
                                          "grace": 0, "failures": 1}))
    with daemon(tmp_path, agents) as (node, stub, events, seen):
        wait_for(lambda: info(stub, "hung0").health == "unhealthy", timeout=10)
        assert info(stub, "hung0").health_message == "exec timed out after 1.5 s; killed"
        assert info(stub, "steady").health == "healthy"
        first = int(pids.read_text().split()[0])
        wait_for(lambda: not alive(first), timeout=5)
        # sleep 60 of the killed group: gone too (the whole group was killed)
        assert not any(p.info["cmdline"] == ["sleep", "60"] and p.info["ppid"] == first
                       for p in __import__("psutil").process_iter(["cmdline", "ppid"]))
        # over 3 s, two rounds of hung probes held 3 of the 4 workers for 1.5 s each
        times = wait_for(lambda: (lambda t: len(t) >= 13 and t)(
            [float(t) for t in ticks.read_text().split()]), timeout=10)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) < 0.25 + 0.6, gaps


def test_child_over_the_memory_limit_restarts_the_agent_after_for(tmp_path):
    """An agent whose CHILD grows past `memory` (the tree counts) is unhealthy with
    `rss N MiB > 40 MiB for 2 s` and restarted once it has held for `for`."""
    grow = f"{PY} -c 'x = bytearray(120 * 2**20); import time; time.sleep(3600)'"
    command = ["sh", "-c", f"{grow} & wait"]
    limits = {"memory": "40MiB", "for": 2, "action": "restart"}
    with daemon(tmp_path, [agent("leaky", command, limits=limits)]) as (node, stub, events, seen):
        started = time.time()
        first_pid = wait_for(lambda: info(stub, "leaky").pid, timeout=15)
        wait_for(lambda: events.of("restart"), timeout=15)
        limit = events.of("limit")[0]
        assert limit[3].startswith("rss ") and limit[3].endswith(" MiB > 40 MiB for 2 s")
        assert int(limit[3].split()[1]) >= 100
        assert events.of("restart")[0][0] - started >= 2
        assert events.of("restart")[0][3] == f"cause=limit: {limit[3]}"
        assert [s.health_message for s in seen if s.health == "unhealthy"][0] == limit[3]
        after = wait_for(lambda: (lambda a: a.pid not in (0, first_pid) and a)(
            info(stub, "leaky")), timeout=10)
        assert after.restart_count >= 1
        points = stub.GetAgentMetrics(pb.GetAgentMetricsRequest(agent_id="leaky"), timeout=5)
        assert max(p.memory_rss for p in points.data_points) >= 100 * 2**20


def test_without_a_probe_health_follows_the_state(tmp_path):
    """No [agents.health]: healthy when RUNNING with no message; FATAL unhealthy with why."""
    agents = [agent("plain"), agent("broken", [PY, "-c", "raise SystemExit(3)"],
                                    start_retries=0)]
    with daemon(tmp_path, agents) as (node, stub, events, seen):
        wait_for(lambda: info(stub, "plain").health == "healthy", timeout=15)
        assert info(stub, "plain").health_message == ""
        wait_for(lambda: info(stub, "broken").status == pb.AGENT_STATUS_FATAL, timeout=15)
        broken = info(stub, "broken")
        assert broken.health == "unhealthy" and broken.health_message.startswith("fatal: ")


def test_a_probe_is_unknown_until_its_first_result_after_grace(tmp_path):
    """Within grace an agent with a probe is `unknown`, saying it waits for a result."""
    health = {"tcp": "127.0.0.1:1", "grace": 30, "interval": 1}
    with daemon(tmp_path, [agent("patient", health=health)]) as (node, stub, events, seen):
        wait_for(lambda: info(stub, "patient").status == pb.AGENT_STATUS_RUNNING, timeout=15)
        patient = info(stub, "patient")
        assert (patient.health, patient.health_message) == ("unknown", "no probe result yet")


BAD_HEALTH = [
    ('[agents.health]\nhttp = "ftp://x"', "[agents.a.health] http: not an http://"),
    ('[agents.health]\ntcp = "127.0.0.1:1"\nexec = ["true"]',
     "[agents.a.health] exec: set exactly one of http, tcp, exec"),
    ('[agents.health]\ninterval = 5', "[agents.a.health]: set exactly one of http, tcp, exec"),
    ('[agents.health]\ntcp = "127.0.0.1:1"\nfailures = 0',
     "[agents.a.health] failures: must be between 1 and 1000"),
    ('[agents.health]\ntcp = "127.0.0.1:1"\non_unhealthy = "panic"',
     "[agents.a.health] on_unhealthy: must be one of restart, none"),
    ('[agents.limits]\nmemory = "lots"', "[agents.a.limits] memory: not a size"),
    ('[agents.limits]\ncpu = -5', "[agents.a.limits] cpu: must be a percent of one core"),
    ('[agents.limits]\nmemory = 100\nfor = "a while"', "[agents.a.limits] for: not a number"),
    ('[agents.limits]\nmemory = 100\naction = "kill"', "[agents.a.limits] action: must be one of"),
    ('[agents.limits]\naction = "none"', "[agents.a.limits] memory: set memory or cpu"),
]


@pytest.mark.parametrize("table, expected", BAD_HEALTH)
def test_bad_health_and_limits_config_exits_2_naming_the_key(tmp_path, table, expected):
    """A bad [agents.health] or [agents.limits] value exits 2 naming the key."""
    (tmp_path / "fleet.toml").write_text(f'[[agents]]\nid = "a"\ncommand = ["true"]\n{table}\n')
    result = subprocess.run(FLEET_PY + ["--role", "daemon", "--config",
                                        str(tmp_path / "fleet.toml"),
                                        "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"config error: {expected}" or \
        result.stderr.strip().startswith(f"config error: {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
