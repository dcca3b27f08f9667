"""Two managers on one PostgreSQL, four daemons listing both: one manager is SIGKILLed
while agents crash-loop and operators restart agents through both managers' HTTP APIs.
Every report a daemon got acknowledged is stored, the daemons of the dead manager move to
the live one, the live one operates every node, and the purge lease moves to it."""
import json
import re
import threading
import time

import psycopg2
import pytest

from fleet.states import State
from tests.helpers import wait_for
from tests.pg import postgresql_only
from tests.procs import FleetProcess, kill_recorded_agents
from tests.realfleet import API_TOKEN, CLUSTER_TOKEN, Api, DaemonStub, agents_toml

NODES = ("n1", "n2", "n3", "n4")
PURGE_INTERVAL = 2.0        # FLEET_PURGE_INTERVAL: the purge lease lives 3 s
SETTLE = 60.0               # generous: a loaded 2-core machine
CRASHER = ["sh", "-c", "sleep 0.3; exit 3"]    # runs past start_seconds, then fails: a loop

MANAGER = """
[manager]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
db = "{db}"
offline_after = 5
api_token = "{api}"
cluster_token = "{cluster}"
"""

DAEMON = """
log_level = "debug"

[daemon]
listen = "127.0.0.1:0"
manager = {managers}
state_dir = "{state}"
node_id = "{node}"
cluster_token = "{cluster}"
sync_interval = 0.5
heartbeat_interval = 0.5
metrics_interval = 1
{agents}
"""


class Fleet:
    """Real manager and daemon processes on one database; close() stops them all."""

    def __init__(self, tmp, db_url):
        self.tmp, self.db_url = tmp, db_url
        self.procs, self.states, self.stubs = [], [], {}

    def manager(self, name):
        path = self.tmp / f"{name}.toml"
        path.write_text(MANAGER.format(db=self.db_url, api=API_TOKEN, cluster=CLUSTER_TOKEN))
        proc = FleetProcess("--role", "manager", "--config", str(path), log_dir=self.tmp,
                            env={"FLEET_PURGE_INTERVAL": str(PURGE_INTERVAL)})
        self.procs.append(proc)
        return proc, proc.port("grpc", timeout=60), Api(proc.port("http", timeout=60))

    def daemon(self, node, grpc_ports):
        state = self.tmp / node
        self.states.append(state)
        managers = json.dumps([f"127.0.0.1:{p}" for p in grpc_ports])
        agents = agents_toml(["sleeper"]) + agents_toml(["crasher"], CRASHER)
        path = self.tmp / f"{node}.toml"
        path.write_text(DAEMON.format(managers=managers, state=state, node=node,
                                      cluster=CLUSTER_TOKEN, agents=agents))
        proc = FleetProcess("--role", "daemon", "--config", str(path), log_dir=self.tmp)
        self.procs.append(proc)
        self.stubs[node] = DaemonStub(proc.port("grpc", timeout=60))
        return proc

    def close(self):
        for stub in self.stubs.values():
            stub.close()
        for proc in reversed(self.procs):       # daemons first: they were started last
            try:
                proc.terminate(timeout=15)
            except Exception:  # noqa: BLE001 - a stuck process is killed, not left behind
                proc.kill()
        for state in self.states:
            kill_recorded_agents(state)


@pytest.fixture
def fleet(tmp_path, db_url):
    cluster = Fleet(tmp_path, db_url)
    yield cluster
    cluster.close()


def query(db_url, sql, args=()):
    """Rows of one statement on the shared database (its own connection)."""
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        conn.close()


def lease_holder_pid(db_url):
    """The pid of the purge lease's holder (host:pid:random), 0 when none."""
    rows = query(db_url, "SELECT holder FROM lease WHERE name = 'purge'")
    return int(rows[0][0].split(":")[1]) if rows and rows[0][0] else 0


def last_seen(db_url):
    """{node_id: last_seen ms} as stored."""
    return dict(query(db_url, "SELECT node_id, last_seen FROM node"))


def stored(db_url, node):
    """{agent_id: (status, pid, restart_count)} as stored."""
    rows = query(db_url, "SELECT agent_id, status, pid, restart_count FROM agent "
                         "WHERE node_id = %s", (node,))
    return {agent: (State(status).api_name, pid, restarts) for agent, status, pid, restarts in rows}


def truth(stub):
    """{agent_id: (status, pid, restart_count)} from the daemon's ListAgents."""
    return {i: (State(a.status).api_name, a.pid, a.restart_count) for i, a in stub.agents().items()}


def operate(api, node, agent, operation):
    status, body = api.post(f"/api/v1/nodes/{node}/agents/{agent}/operate",
                            {"operation": operation})
    assert status == 200, (node, agent, operation, status, body)
    return body


class Operators(threading.Thread):
    """Restarts sleepers through each manager's HTTP API in turn until stopped; counts
    the answers (a call to the dead manager fails: that is the point)."""

    def __init__(self, apis):
        super().__init__(name="test-operators", daemon=True)
        self.apis, self.stop, self.ok, self.failed = apis, threading.Event(), 0, 0

    def run(self):
        turn = 0
        while not self.stop.is_set():
            api, node = self.apis[turn % len(self.apis)], NODES[turn % len(NODES)]
            turn += 1
            try:
                status, _ = api.post(f"/api/v1/nodes/{node}/agents/sleeper/operate",
                                     {"operation": "restart"}, timeout=10)
                self.ok += status == 200
                self.failed += status != 200
            except OSError:
                self.failed += 1
            self.stop.wait(0.2)


def events_stored(db_url, node, agent):
    """The event seqs stored for one agent, in order."""
    return [seq for (seq,) in query(db_url, "SELECT seq FROM event WHERE node_id = %s AND "
                                            "agent_id = %s ORDER BY seq", (node, agent))]


def events_logged(state, agent):
    """The event seqs in the daemon's own log of one agent."""
    with open(state / "events" / f"{agent}.jsonl", encoding="utf-8") as log:
        return [json.loads(line)["seq"] for line in log if line.strip()]


@postgresql_only
def test_a_manager_killed_under_load_loses_no_report_and_its_daemons_move(fleet, db_url):
    """SIGKILL one of two managers under load: acknowledged reports all stored, its daemons
    report to the other, which operates every node and takes the purge lease."""
    dead, dead_grpc, dead_api = fleet.manager("m1")
    wait_for(lambda: lease_holder_pid(db_url) == dead.pid, timeout=SETTLE)
    live, live_grpc, live_api = fleet.manager("m2")
    # n1, n2 report to m1 first; n3, n4 to m2 first; each lists both.
    daemons = {node: fleet.daemon(node, (dead_grpc, live_grpc) if node in ("n1", "n2") else
                                  (live_grpc, dead_grpc)) for node in NODES}
    wait_for(lambda: all(live_api.agents(n).get("crasher", {}).get("restart_count", 0) >= 2
                         for n in NODES), timeout=SETTLE, interval=0.2)
    operators = Operators([dead_api, live_api])
    operators.start()
    try:
        wait_for(lambda: operators.ok >= 4, timeout=SETTLE, interval=0.1)
        killed_at = time.time()
        dead.kill()                                          # SIGKILL, mid-load
        moved = _daemons_moved(db_url, killed_at, ("n1", "n2"))
        for node in ("n1", "n2"):     # they talked to m1, and say that m1 was unreachable
            log = daemons[node].read()
            assert f"registered node {node} with manager 127.0.0.1:{dead_grpc} " in log, log
            assert re.search(rf"manager 127\.0\.0\.1:{dead_grpc} \w+: unreachable", log), log
        lease_moved = wait_for(lambda: lease_holder_pid(db_url) == live.pid and time.time(),
                               timeout=SETTLE, interval=0.1) - killed_at
        _operations_served(live_api)
        ok_before = operators.ok
        wait_for(lambda: operators.ok >= ok_before + 4, timeout=SETTLE, interval=0.1)
    finally:
        operators.stop.set()
        operators.join(30)
    states, events = _everything_stored(fleet, db_url, live_api)
    reports = sum(seq for (seq,) in query(db_url, "SELECT seq FROM node"))
    print(f"\nfailover: daemons moved in {moved:.1f} s; purge lease moved in {lease_moved:.1f} s;"
          f" {reports} reports stored; {states} agent states and {events} events compared with"
          f" the daemons', all stored; {operators.ok} operations served,"
          f" {operators.failed} failed (the dead manager)")


def _daemons_moved(db_url, killed_at, nodes):
    """Seconds from the kill to the first message of each of `nodes` stored by the live
    manager (a last_seen after the kill: the dead one writes nothing more), the slowest."""
    mark, first = int(killed_at * 1000), {}

    def all_moved():
        for node, seen in last_seen(db_url).items():
            if node in nodes and seen and seen > mark:
                first.setdefault(node, seen)
        return len(first) == len(nodes)
    wait_for(all_moved, timeout=SETTLE, interval=0.05)
    return max(first.values()) / 1000 - killed_at


def _operations_served(api):
    """The live manager restarts a sleeper on every node (dialled by its advertised address),
    the nodes of the dead manager too, and lists them all online."""
    for node in NODES:
        before = api.agents(node)["sleeper"]["pid"]
        after = operate(api, node, "sleeper", "restart")["agent"]
        assert after["pid"] and after["pid"] != before, (node, before, after)
    status, body = api.get("/api/v1/nodes?status=online")
    assert status == 200, body
    assert sorted(n["node_id"] for n in body["nodes"]) == list(NODES), body


def _everything_stored(fleet, db_url, api):
    """Stop the crash loops (through the live manager), then every daemon's own view equals
    the stored rows and every event it logged is stored once, seqs without gaps; (states,
    events) compared."""
    for node in NODES:
        operate(api, node, "crasher", "stop")
    states = events = 0
    for node, state in zip(NODES, fleet.states):
        stub = fleet.stubs[node]
        wait_for(lambda: truth(stub) == stored(db_url, node), timeout=SETTLE, interval=0.2)
        states += len(truth(stub))
        for agent in ("sleeper", "crasher"):
            logged = events_logged(state, agent)
            seqs = wait_for(lambda: (lambda s: s if s[-1:] == logged[-1:] else None)(
                events_stored(db_url, node, agent)), timeout=SETTLE, interval=0.2)
            assert len(seqs) == len(set(seqs)), (node, agent, "duplicate events", seqs)
            assert seqs == list(range(seqs[0], seqs[-1] + 1)), (node, agent, "a gap", seqs)
            assert set(logged) <= set(seqs), (node, agent, sorted(set(logged) - set(seqs)))
            events += len(logged)
    return states, events
