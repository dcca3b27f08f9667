"""Faults, with real `python fleet.py` processes, real agents, real sockets and real SQLite
files: the manager stopped or SIGKILLed, a daemon SIGKILLed, a daemon that never answers,
a locked or full database. Each test pins what fleet does about one fault."""
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid

import grpc
import psutil
import pytest

from fleet import config as configuration
from fleet.manager.app import Manager
from fleet.v1 import fleet_pb2 as pb
from tests.helpers import wait_for
from tests.procs import alive
from tests.realfleet import (API_TOKEN, AUTH, CLUSTER_TOKEN, SYNC_INTERVAL, Api,
                             DaemonStub, agents_toml, free_port, manager_stub, running_state)

# How long a restarted manager may take to match every node: two sync intervals and slack.
CONVERGE_SECONDS = 2 * SYNC_INTERVAL + 1.0
# The syncer's line for a failed report (logged at debug after the first one a minute).
FAILED_REPORT = re.compile(r"report to manager \S+ failed \(.*\); (\d+) pending; retrying")


def all_running(stub, count):
    """The daemon's {agent_id: (status, pid)} once all `count` agents are RUNNING, else None."""
    truth = stub.truth()
    ok = len(truth) == count and all(status == "running" and pid for status, pid in truth.values())
    return truth if ok else None


def converged(api, node, stub, count):
    """The daemon's truth once all agents run and the manager stores exactly that, else None."""
    truth = all_running(stub, count)
    return truth if truth and api.stored(node) == truth else None


def timed(call, *args, **kw):
    """(what call returns, how many seconds it took)."""
    began = time.monotonic()
    result = call(*args, **kw)
    return result, time.monotonic() - began


# ---- 1. the manager down while agents change state ---------------------------------------

AGENTS = ("a", "b", "c")
NODES = ("n1", "n2")


def churn(stub):
    """SIGKILL agent a twice (the daemon restarts it), restart b, stop and start c."""
    def a_restarted():
        truth = all_running(stub, len(AGENTS))
        return truth and truth["a"][1] != killed

    for _ in range(2):
        killed = wait_for(lambda: all_running(stub, len(AGENTS)))["a"][1]
        os.kill(killed, signal.SIGKILL)
        _, seconds = timed(stub.operate, "b", "restart")
        assert seconds < 1, seconds
        wait_for(a_restarted)
    assert stub.operate("c", "stop").pid == 0
    stub.operate("c", "start")


def test_manager_down_daemons_keep_agents_and_the_restarted_manager_converges(cluster):
    """With the manager stopped, daemons keep every agent running and answer at once while
    their reports fail, pending never exceeds one entry per agent, and the manager restarted
    on the same database and ports matches every node within two sync intervals."""
    grpc_port, http_port = free_port(), free_port()
    config = cluster.manager_config(grpc_port, http_port)
    manager = cluster.run("manager", config)
    api = Api(manager.port("http"))
    daemons = {node: cluster.run("daemon", cluster.daemon_config(node, grpc_port,
                                                                 agents_toml(AGENTS)))
               for node in NODES}
    stubs = {node: DaemonStub(proc.port("grpc")) for node, proc in daemons.items()}
    for node, stub in stubs.items():
        wait_for(lambda: converged(api, node, stub, len(AGENTS)), timeout=10)

    assert manager.terminate() == 0
    outage = {node: len(proc.read()) for node, proc in daemons.items()}   # log offsets
    for stub in stubs.values():
        churn(stub)
    for node, stub in stubs.items():
        log = lambda: daemons[node].read()[outage[node]:]   # noqa: E731 - read at call time
        wait_for(lambda: len(FAILED_REPORT.findall(log())) >= 3, timeout=10)
        wait_for(lambda: all_running(stub, len(AGENTS)))
        assert timed(stub.agents)[1] < 0.5             # still answering at once
        changes = len(re.findall(r": \w+ -> \w+ pid=", log()))
        pending = [int(n) for n in FAILED_REPORT.findall(log())]
        assert changes > 2 * len(AGENTS), changes       # many more changes than agents...
        assert max(pending) <= len(AGENTS), pending     # ...yet one pending entry per agent

    manager = cluster.run("manager", config)
    manager.port("http")                                # logged `listening`: serving now
    began = time.monotonic()
    truth = {node: stub.truth() for node, stub in stubs.items()}
    wait_for(lambda: all(api.stored(node) == truth[node] for node in NODES),
             timeout=CONVERGE_SECONDS)
    assert time.monotonic() - began < CONVERGE_SECONDS
    for stub in stubs.values():
        stub.close()


# ---- 2. the manager SIGKILLed while 50 reporters sync ------------------------------------

REPORTERS = 50
REPORT_AGENTS = 20
UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def seq_report(node_id, seq):
    """A full report of 20 agents that encodes its seq: pid = seq*100 + index,
    restart_count = seq, status RUNNING for an even seq and STARTING for an odd one."""
    status = pb.AGENT_STATUS_RUNNING if seq % 2 == 0 else pb.AGENT_STATUS_STARTING
    states = [pb.AgentState(agent_id=f"a{i:02d}", status=status, pid=seq * 100 + i,
                            restart_count=seq) for i in range(REPORT_AGENTS)]
    return pb.SyncAgentStatesRequest(node_id=node_id, boot_id=1, seq=seq, full=True,
                                     states=states)


class Reporter(threading.Thread):
    """A simulated daemon: registers, then reports with increasing seq as fast as it is
    acknowledged; a report left unanswered (UNAVAILABLE, or its deadline passed on a
    stalled machine) is retried with the same seq, as the syncer does. Once `killed` is
    set, a failure pauses it until `resume` is set; then it goes on against the new manager."""

    def __init__(self, node_id, port, killed, resume, finish):
        super().__init__(name=f"reporter-{node_id}", daemon=True)
        self.node_id = node_id
        self.port = port
        self.killed = killed          # set by the test once the manager is dead
        self.resume = resume          # set by the test once it checked the restarted manager
        self.finish = finish          # set by the test to end the thread
        self.paused = threading.Event()
        self.acked = 0                # the last acknowledged seq
        self.sent = 0                 # the highest seq sent (acked, or acked + 1 in flight)
        self.acked_after_resume = 0
        self.error = None             # anything but UNAVAILABLE, for the test to raise

    def run(self):
        channel, stub = manager_stub(self.port)
        try:
            stub.RegisterNode(pb.RegisterNodeRequest(node_id=self.node_id, boot_id=1,
                                                     advertise_address="127.0.0.1:1"),
                              metadata=AUTH, timeout=5)
            while not self.finish.is_set():
                channel, stub = self._report(channel, stub)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            channel.close()

    def _report(self, channel, stub):
        seq = self.acked + 1
        self.sent = seq
        try:
            stub.SyncAgentStates(seq_report(self.node_id, seq), metadata=AUTH, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() not in UNANSWERED:
                raise
            channel.close()
            if self.resume.is_set() or not self.killed.is_set():
                self.finish.wait(0.05)                  # back off a little, then retry
            else:
                self.paused.set()
                self.resume.wait(60)
            return manager_stub(self.port)
        self.acked = seq
        if self.resume.is_set():
            self.acked_after_resume += 1
        return channel, stub


def stored_seq(api, node_id):
    """The seq the node's stored rows encode, checking that all 20 carry the same one."""
    agents = api.agents(node_id)
    assert len(agents) == REPORT_AGENTS, (node_id, sorted(agents))
    seqs = {a["restart_count"] for a in agents.values()}
    assert len(seqs) == 1, f"{node_id}: half-applied report, seqs {sorted(seqs)}"
    seq = seqs.pop()
    for agent_id, agent in agents.items():
        assert agent["pid"] == seq * 100 + int(agent_id[1:]), (node_id, agent)
        assert agent["status"] == ("running" if seq % 2 == 0 else "starting"), (node_id, agent)
    return seq


def test_sigkilled_manager_keeps_every_acknowledged_report_and_none_half_applied(cluster):
    """SIGKILL the manager while 50 reporters sync: restarted on the same database, it holds
    every acknowledged report, no report half-applied, and the reporters go on against it."""
    grpc_port = free_port()
    config = cluster.manager_config(grpc_port)
    manager = cluster.run("manager", config)
    manager.port("grpc")
    killed, resume, finish = threading.Event(), threading.Event(), threading.Event()
    reporters = [Reporter(f"sim-{i:02d}", grpc_port, killed, resume, finish)
                 for i in range(REPORTERS)]
    for reporter in reporters:
        reporter.start()
    try:
        wait_for(lambda: all(r.acked >= 3 or r.error for r in reporters), timeout=30)
        manager.kill()                                  # SIGKILL, mid-stream; reaped
        killed.set()
        wait_for(lambda: all(r.paused.is_set() or r.error for r in reporters), timeout=10)
        assert not [r.error for r in reporters if r.error]

        api = Api(cluster.run("manager", config).port("http"))
        for r in reporters:
            assert r.acked <= stored_seq(api, r.node_id) <= r.sent, (r.node_id, r.acked, r.sent)

        resume.set()
        wait_for(lambda: all(r.acked_after_resume >= 3 or r.error for r in reporters),
                 timeout=30)
    finally:
        finish.set()
        resume.set()
        for reporter in reporters:
            reporter.join(10)
    assert not [r.error for r in reporters if r.error]
    for r in reporters:
        assert stored_seq(api, r.node_id) == r.acked, r.node_id


# ---- 3. a daemon SIGKILLed, with a manager -----------------------------------------------

def manager_view(api, node, count, when=lambda agents: True):
    """{agent_id: Agent} once the manager shows `count` running agents with pids and
    `when(agents)` holds, else None."""
    agents = api.agents(node)
    ok = len(agents) == count and all(a["status"] == "running" and a["pid"]
                                      for a in agents.values())
    return agents if ok and when(agents) else None


def marked(marker):
    """Live processes whose command line carries `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in (proc.info["cmdline"] or []) and alive(proc.pid):
            found.append(proc.pid)
    return set(found)


def test_sigkilled_daemon_successor_adopts_agents_and_the_manager_sees_the_same_pids(cluster):
    """After a daemon is SIGKILLed and restarted, the manager shows the same pids and restart
    counts (nothing started twice); a clean stop then leaves no agent process behind."""
    marker = f"fleet-fault-{uuid.uuid4().hex[:12]}"
    command = (sys.executable, "-c", "import time; time.sleep(3600)", marker)
    manager = cluster.run("manager", cluster.manager_config())
    grpc_port, api = manager.port("grpc"), Api(manager.port("http"))
    config = cluster.daemon_config("n1", grpc_port, agents_toml(("a", "b"), command))
    first = cluster.run("daemon", config)
    first.port("grpc")
    old = wait_for(lambda: manager_view(api, "n1", 2), timeout=10)
    os.kill(old["a"]["pid"], signal.SIGKILL)           # a restart_count worth keeping
    replaced = lambda v: v["a"]["pid"] != old["a"]["pid"]   # noqa: E731
    before = wait_for(lambda: manager_view(api, "n1", 2, replaced), timeout=10)
    assert before["a"]["restart_count"] == 1
    pids = {a["pid"] for a in before.values()}
    assert marked(marker) == pids

    first.kill()
    assert all(alive(pid) for pid in pids)
    restarted_at = int(time.time() * 1000)
    second = cluster.run("daemon", config)
    second.port("grpc")
    wait_for(lambda: all(f"adopted pid={pid}" in second.read() for pid in pids))
    reported = lambda v: all(a["last_sync_time"] > restarted_at for a in v.values())  # noqa: E731
    after = wait_for(lambda: manager_view(api, "n1", 2, reported), timeout=CONVERGE_SECONDS)
    for agent_id, agent in before.items():
        assert (after[agent_id]["pid"], after[agent_id]["restart_count"]) == \
            (agent["pid"], agent["restart_count"])
    assert marked(marker) == pids                       # no duplicate started

    assert second.terminate() == 0
    assert not marked(marker)                           # a clean stop leaves no orphan
    assert {a["status"] for a in api.agents("n1").values()} == {"stopped"}


# ---- 4. a daemon that accepts TCP but never answers --------------------------------------

class BlackHole:
    """A TCP server that accepts connections and never reads or writes; it closes them all
    at close() or after `lifetime` seconds, whichever comes first."""

    def __init__(self, lifetime=60.0):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.address = "127.0.0.1:%d" % self._sock.getsockname()[1]
        self.accepted = []                    # connections held open, never answered
        self._closing = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            while not self._closing.is_set() and time.monotonic() < self._deadline:
                try:
                    self.accepted.append(self._sock.accept()[0])
                except socket.timeout:
                    continue
        finally:
            for conn in self.accepted:
                conn.close()
            self._sock.close()

    def close(self):
        self._closing.set()
        self._thread.join(5)


def register_simulated(port, node_id, address, agent_id):
    """Register a node at `address` and report one RUNNING agent for it."""
    channel, stub = manager_stub(port)
    try:
        stub.RegisterNode(pb.RegisterNodeRequest(node_id=node_id, boot_id=1,
                                                 advertise_address=address),
                          metadata=AUTH, timeout=5)
        stub.SyncAgentStates(pb.SyncAgentStatesRequest(
            node_id=node_id, boot_id=1, seq=1, full=True, states=[running_state(agent_id, 4242)]),
            metadata=AUTH, timeout=5)
    finally:
        channel.close()


def test_a_daemon_that_never_answers_costs_its_deadline_and_slows_no_other_node(cluster):
    """Operate on a node that accepts TCP but never answers: 504 deadline_exceeded within the
    operate deadline (+1 s); calls to a healthy node meanwhile take under 2 s each."""
    daemon_timeout, operate_timeout = 2, 3
    manager = cluster.run("manager", cluster.manager_config(
        extra=f"daemon_timeout = {daemon_timeout}\noperate_timeout = {operate_timeout}"))
    grpc_port, api = manager.port("grpc"), Api(manager.port("http"))
    cluster.run("daemon", cluster.daemon_config("good", grpc_port, agents_toml(("a",)))).port()
    wait_for(lambda: api.stored("good").get("a", ("",))[0] == "running", timeout=10)
    hole = BlackHole()
    try:
        register_simulated(grpc_port, "hole", hole.address, "stuck")
        answer = {}
        stuck = threading.Thread(target=lambda: answer.update(reply=timed(
            api.post, "/api/v1/nodes/hole/agents/stuck/operate", {"operation": "restart"})))
        stuck.start()
        wait_for(lambda: hole.accepted)               # the manager dialled it and waits
        healthy = []
        while stuck.is_alive():
            for method, path, body in (
                    ("POST", "/api/v1/nodes/good/agents/a/operate", {"operation": "restart"}),
                    ("GET", "/api/v1/nodes/good/agents/a/logs?lines=5", None),
                    ("GET", "/api/v1/nodes", None)):
                (status, reply), seconds = timed(api.call, method, path, body)
                assert status == 200, reply
                healthy.append((path, seconds))
            stuck.join(0.2)
        (status, reply), seconds = answer["reply"]
        assert status == 504 and reply["error"]["code"] == "deadline_exceeded", reply
        assert seconds < operate_timeout + 1
        assert len(healthy) >= 6 and max(s for _, s in healthy) < 2, healthy
        (status, reply), seconds = timed(api.get, "/api/v1/nodes/hole/agents/stuck/logs")
        assert status == 504 and seconds < daemon_timeout + 1, (reply, seconds)
    finally:
        hole.close()


# ---- 5. the database locked, or the disk full --------------------------------------------

def test_locked_database_fails_reports_unavailable_serves_reads_and_catches_up(cluster):
    """While another process holds the database's write lock, reports fail UNAVAILABLE and
    are retried, HTTP reads are still served, and the daemon's state lands once it is free."""
    manager = cluster.run("manager", cluster.manager_config())
    grpc_port, api = manager.port("grpc"), Api(manager.port("http"))
    daemon = cluster.run("daemon", cluster.daemon_config("n1", grpc_port, agents_toml(("a",))))
    stub = DaemonStub(daemon.port("grpc"))
    old = wait_for(lambda: converged(api, "n1", stub, 1), timeout=10)
    lock = sqlite3.connect(cluster.db_path, timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        new_pid = stub.operate("a", "restart").pid
        wait_for(lambda: "reports failed: database is locked" in manager.read(), timeout=10)
        wait_for(lambda: re.search(r"report to manager \S+ failed .*database is locked",
                                   daemon.read()))     # told UNAVAILABLE: it retries
        for path in ("/api/v1/nodes", "/api/v1/nodes/n1", "/api/v1/nodes/n1/agents"):
            (status, reply), seconds = timed(api.get, path)
            assert status == 200 and seconds < 1, (path, status, reply, seconds)
        assert api.stored("n1") == old                # nothing written meanwhile
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: api.stored("n1") == {"a": ("running", new_pid)}, timeout=CONVERGE_SECONDS)
    assert "Traceback" not in manager.read() and "internal error" not in manager.read()
    stub.close()


def in_process_manager(tmp_path):
    problems = []
    config = configuration.parse("manager", {"manager": {
        "http": "127.0.0.1:0", "grpc": "127.0.0.1:0", "db": f"sqlite:///{tmp_path}/full.db",
        "api_token": API_TOKEN, "cluster_token": CLUSTER_TOKEN}}, problems)
    assert not problems, problems
    return Manager(config.manager)


def big_report(seq):
    """100 new agents with long versions: more rows than the database's free pages hold."""
    states = [running_state(f"agent{i:03d}", 1000 + i, version="v" * 200) for i in range(100)]
    return pb.SyncAgentStatesRequest(node_id="n1", boot_id=1, seq=seq, full=True, states=states)


def test_full_disk_fails_writes_unavailable_serves_reads_and_recovers(tmp_path, caplog):
    """A full disk (SQLITE_FULL): reports and registrations are answered UNAVAILABLE and
    logged, reads are still served, and the same writes succeed once there is room."""
    caplog.set_level(logging.WARNING)
    manager = in_process_manager(tmp_path)
    manager.start()
    channel, stub = manager_stub(manager.grpc_port)
    api = Api(manager.http_port)
    try:
        stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=1), metadata=AUTH,
                          timeout=5)
        db = manager.parts.db
        # SQLite fails a write that needs a page past max_page_count with SQLITE_FULL, the
        # error a full disk gives. The pragma is per connection; `permanent` puts it on
        # every connection the manager opens from now on (the ingest writer's first one too).
        unlimited = db.pragma("max_page_count")
        db.pragma("max_page_count", db.pragma("page_count"), permanent=True)
        db.close()
        labels = {f"label{i:03d}": "x" * 100 for i in range(200)}   # overflow pages
        big_node = pb.RegisterNodeRequest(node_id="n2", boot_id=1, labels=labels)
        for call, request in ((stub.SyncAgentStates, big_report(1)),
                              (stub.RegisterNode, big_node)):
            with pytest.raises(grpc.RpcError) as failed:
                call(request, metadata=AUTH, timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
            assert "full" in failed.value.details()
        assert "reports failed: database or disk is full" in caplog.text
        status, reply = api.get("/api/v1/nodes")
        assert status == 200 and [n["node_id"] for n in reply["nodes"]] == ["n1"], reply
        assert api.agents("n1") == {}

        db.pragma("max_page_count", unlimited, permanent=True)   # room again
        db.close()
        assert stub.SyncAgentStates(big_report(1), metadata=AUTH, timeout=5).accepted == 100
        stub.RegisterNode(big_node, metadata=AUTH, timeout=5)
        assert len(api.agents("n1")) == 100
        assert api.get("/api/v1/nodes/n2")[1]["node"]["labels"] == labels
        assert "internal error" not in caplog.text and "Traceback" not in caplog.text
    finally:
        channel.close()
        manager.close()
