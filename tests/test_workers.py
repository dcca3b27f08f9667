"""`[manager] workers = 2` with real processes: a parent holding both ports and two
manager workers sharing them (SO_REUSEPORT) over one SQLite file, real daemons and
real agents, real gRPC and HTTP on 127.0.0.1."""
import http.client
import os
import signal
import sqlite3
import subprocess
import time

import grpc
import psutil
import pytest

from fleet import errors
from fleet.config import ManagerConfig
from fleet.manager.nodes import NodeFacts
from fleet.manager.parts import build_manager
from fleet.manager.store.db import open_database
from fleet.manager.store.migrations import migrate
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.helpers import wait_for
from tests.procs import FLEET_PY, alive
from tests.realfleet import API_TOKEN, AUTH, Api, agents_toml, running_state
from tests.test_prometheus import promtool_check, value

WORKERS = "workers = 2"


def start_manager(cluster):
    """(parent FleetProcess, http port, grpc port) once both workers listen."""
    parent = cluster.run("manager", cluster.manager_config(extra=WORKERS))
    http_port, grpc_port = parent.port("http"), parent.port("grpc")
    wait_for(lambda: parent.read().count("listening http=") == 2, timeout=30)
    return parent, http_port, grpc_port


def worker_pids(parent):
    """Pids of the parent's live worker processes (its children started with
    --worker-of: nothing else the parent or a library it uses may spawn)."""
    found = set()
    for child in psutil.Process(parent.pid).children():
        try:
            if "--worker-of" in child.cmdline() and alive(child.pid):
                found.add(child.pid)
        except psutil.Error:            # gone meanwhile
            pass
    return found


def answered_by(http_port):
    """The X-Fleet-Worker pid that answered GET /health over a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        return int(response.getheader("X-Fleet-Worker"))
    finally:
        connection.close()


def serving_pids(http_port, want):
    """New connections until every pid in `want` answered one; the pids seen."""
    seen = set()
    wait_for(lambda: seen.add(answered_by(http_port)) or seen >= want, timeout=20)
    return seen


class Channel:
    """One gRPC channel on its own TCP connection, and the worker that accepted it."""

    def __init__(self, grpc_port, workers):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                                             options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = pb_grpc.ManagerServiceStub(self.channel)
        before = self._mine(grpc_port)
        self.stub.Heartbeat(pb.HeartbeatRequest(node_id="probe", boot_id=1),
                            metadata=AUTH, timeout=10)
        self.worker = self._worker(grpc_port, workers, self._mine(grpc_port) - before)

    @staticmethod
    def _mine(grpc_port):
        """Local ports of this process's connections to grpc_port."""
        return {c.laddr.port for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == grpc_port and c.status == "ESTABLISHED"}

    @staticmethod
    def _worker(grpc_port, workers, mine):
        """The worker holding the other end of one of the connections `mine`."""
        for pid in workers:
            for c in psutil.Process(pid).net_connections("tcp"):
                if c.laddr.port == grpc_port and c.raddr and c.raddr.port in mine:
                    return pid
        raise AssertionError("no worker holds this connection")

    def close(self):
        self.channel.close()


def channel_to(grpc_port, workers, worker, other=False):
    """A Channel accepted by `worker` (or, with other=True, by any other worker)."""
    def attempt():
        channel = Channel(grpc_port, workers)
        if (channel.worker == worker) != other:
            return channel
        channel.close()
        return None
    return wait_for(attempt, timeout=30, interval=0)


@pytest.fixture
def two_workers(tmp_path):
    """The storage side of two workers (each its own registry and writer) on one file."""
    parts = []
    for _ in range(2):
        db = open_database(f"sqlite:///{tmp_path / 'fleet.db'}")
        migrate(db)
        parts.append(build_manager(db))
        parts[-1].writer.start()
    yield parts
    for p in parts:
        p.writer.stop()


def test_registry_miss_refills_and_deletion_elsewhere_is_noticed(two_workers):
    """A node registered through worker A is known to B (refilled on its miss, boot and seq
    included); deleted through A, B's next report gets NOT_FOUND and asks to re-register."""
    a, b = two_workers
    a.nodes.register(NodeFacts("n1", boot_id=3))
    a.reports.sync("n1", 3, 1, True, [running_state("x", 1)])
    assert b.registry.get("n1") == (3, 1)
    with pytest.raises(errors.Conflict):
        b.reports.sync("n1", 2, 9, True, [running_state("x", 1)])
    assert b.reports.sync("n1", 3, 2, False, [running_state("x", 2)]).report_full_state is False
    a.nodes.delete_node("n1", force=True)
    with pytest.raises(errors.NotFound):
        b.reports.sync("n1", 3, 3, False, [running_state("x", 3)])
    assert b.registry.get("n1") is None
    assert b.reports.heartbeat("n1", 3) is True


def test_both_workers_accept_http_connections(cluster):
    """Both workers listen on the one HTTP port: new connections are answered by each."""
    parent, http_port, _ = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))
    assert serving_pids(http_port, workers) == workers
    assert parent.pid not in workers


def test_node_registered_through_one_worker_reports_through_the_other(cluster):
    """A node registered through one worker reports through the other, which refills its
    registry from the database instead of answering NOT_FOUND."""
    parent, http_port, grpc_port = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))
    first = Channel(grpc_port, workers)
    first.stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=1, hostname="h"),
                            metadata=AUTH, timeout=10)
    second = channel_to(grpc_port, workers, first.worker, other=True)
    try:
        reply = second.stub.SyncAgentStates(pb.SyncAgentStatesRequest(
            node_id="n1", boot_id=1, seq=1, full=True, states=[running_state("a", 4242)]),
            metadata=AUTH, timeout=10)
        assert reply.accepted == 1
        assert second.stub.Heartbeat(pb.HeartbeatRequest(node_id="n1", boot_id=1),
                                     metadata=AUTH, timeout=10).reregister is False
        assert Api(http_port).stored("n1") == {"a": ("running", 4242)}
        # The parent wrote it (on SQLite the workers relay their reports to it): only
        # the parent ever took the writers' turn.
        turn = f"{cluster.db_path}-writer.lock"
        assert opened(parent.pid, turn)
        assert not any(opened(pid, turn) for pid in workers)
        assert "their state reports written here" in parent.read()
    finally:
        first.close()
        second.close()


def opened(pid, path):
    """Whether process `pid` has `path` open."""
    fds = f"/proc/{pid}/fd"
    return any(os.readlink(os.path.join(fds, fd)) == path for fd in os.listdir(fds))


def test_sigkill_of_a_worker_is_replaced_and_daemons_keep_reporting(cluster):
    """SIGKILL of a worker: the parent starts another, the daemons move over without a
    registration loop, and reports and operations are still served."""
    parent, http_port, grpc_port = start_manager(cluster)
    api = Api(http_port)
    daemons = [cluster.run("daemon", cluster.daemon_config(
        f"n{i}", grpc_port, agents_toml(["a"]))) for i in range(3)]
    running = lambda: all(api.stored(f"n{i}").get("a", ("",))[0] == "running"  # noqa: E731
                          for i in range(3))
    wait_for(running, timeout=30)
    workers = worker_pids(parent)
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = int(time.time() * 1000)
    replaced = wait_for(lambda: len(worker_pids(parent)) == 2 and victim not in worker_pids(parent)
                        and worker_pids(parent), timeout=30)
    wait_for(lambda: f"(pid {victim}) exited with status -9" in parent.read(), timeout=10)
    seen = lambda node: api.get(f"/api/v1/nodes/{node}")[1]["node"]["last_seen"]  # noqa: E731
    wait_for(lambda: all(seen(f"n{i}") > killed_at for i in range(3)), timeout=30)
    for i in range(3):                   # each on a new connection, to either worker
        status, body = api.post(f"/api/v1/nodes/n{i}/agents/a/operate", {"operation": "restart"})
        assert status == 200, body
    wait_for(lambda: parent.read().count("listening http=") == 3, timeout=30)
    assert serving_pids(http_port, replaced) == replaced
    for daemon in daemons:
        assert daemon.read().count("registered node") <= 3, daemon.read()
    assert "Traceback" not in parent.read()


def scrape_worker(http_port):
    """(the worker's pid, its /metrics text) over a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
        response = connection.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
        return int(response.getheader("X-Fleet-Worker")), text
    finally:
        connection.close()


def test_metrics_count_every_worker_whichever_answers(cluster):
    """Reports taken by either worker are counted once in /metrics, whichever worker
    answers the scrape, and the totals do not fall when a worker is killed and
    replaced: workers count in one shared directory (a per-process count would show
    3 or 4 of the 7 reports, and a reset after the kill)."""
    parent, http_port, grpc_port = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))
    first = Channel(grpc_port, workers)
    second = channel_to(grpc_port, workers, first.worker, other=True)
    try:
        first.stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=1, hostname="h"),
                                metadata=AUTH, timeout=10)
        for seq in range(1, 8):                     # 3 through one worker, 4 the other
            channel = first if seq <= 3 else second
            reply = channel.stub.SyncAgentStates(pb.SyncAgentStatesRequest(
                node_id="n1", boot_id=1, seq=seq, full=True,
                states=[running_state("a", 4242), running_state("b", 4243)]),
                metadata=AUTH, timeout=10)
            assert reply.accepted == 2
    finally:
        first.close()
        second.close()
    bound = 2 * ManagerConfig.ingest_queue          # each worker's queue, added up
    scrapes = 0

    def scraped_by_all(want):
        nonlocal scrapes
        seen = set()

        def one():
            nonlocal scrapes
            pid, text = scrape_worker(http_port)
            assert value(text, "fleet_reports_received_total") == 7, (pid, text)
            assert value(text, "fleet_states_received_total") == 14
            assert value(text, "fleet_report_duration_seconds_count") == 7
            assert value(text, "fleet_ingest_queue_bound_states") == bound
            assert value(text, "fleet_http_requests_total", route="/metrics", method="GET",
                         code="200") == scrapes     # every earlier scrape, on either worker
            assert "process_cpu_seconds_total" not in text
            scrapes += 1
            seen.add(pid)
            return text if seen >= want else None
        return wait_for(one, timeout=20, interval=0)

    text = scraped_by_all(workers)
    assert promtool_check(text) == (0, "")
    victim = first.worker
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: len(worker_pids(parent)) == 2 and victim not in worker_pids(parent)
                        and worker_pids(parent), timeout=30)
    wait_for(lambda: parent.read().count("listening http=") == 3, timeout=30)
    scraped_by_all(replaced)                        # nothing lost, the dead one's queue gone


def test_sigterm_stops_every_worker_and_exits_0(cluster):
    """SIGTERM to the parent stops both workers and it exits 0."""
    parent, _, _ = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))
    assert parent.terminate(timeout=30) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10)
    assert parent.read().count("fleet.roles: stopped") == 2


def test_the_purge_runs_in_one_worker(cluster):
    """The retention purge runs in exactly one worker: the holder of the 'purge' lease."""
    parent, _, _ = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))

    def holder():
        with sqlite3.connect(cluster.db_path) as db:
            row = db.execute("SELECT holder FROM lease WHERE name = 'purge'").fetchone()
        return row and row[0]
    pid = int(wait_for(holder, timeout=20).split(":")[1])
    assert pid in workers
    assert parent.read().count("took the 'purge' lease") == 1


def test_worker_is_stopped_when_its_parent_dies(cluster):
    """A worker whose parent was SIGKILLed stops by itself."""
    parent, _, _ = start_manager(cluster)
    workers = wait_for(lambda: len(worker_pids(parent)) == 2 and worker_pids(parent))
    parent.kill()
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30)


@pytest.mark.parametrize("args, message", [
    (["--role", "all", "--workers", "2"], "[manager] workers: 2 needs --role manager"),
    (["--role", "manager", "--workers", "0"], "[manager] workers: must be between 1 and 64"),
    (["--role", "manager", "--workers", "x"], "[manager] workers: not an integer"),
])
def test_bad_workers_is_a_config_error(tmp_path, args, message):
    """A bad `workers`, or workers with --role all, is one config error line, exit 2."""
    done = subprocess.run(FLEET_PY + args + ["--db", f"sqlite:///{tmp_path}/f.db"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert not os.path.exists(tmp_path / "f.db")


def test_port_in_use_fails_before_anything_is_written(tmp_path):
    """A port another program holds: `cannot listen`, exit 1, no database or token file."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(FLEET_PY + ["--role", "manager", "--workers", "2",
                                          "--grpc", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
                                          "--db", f"sqlite:///{tmp_path}/f.db"],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen grpc=127.0.0.1:{port}: address already in use" in done.stderr
    assert os.listdir(tmp_path) == []
