"""The rollout engine's rules, stepped with an explicit `now` over a real SQLite file and
fake daemons: waves, max_failures, cancel, resume without a second operate, the lease."""
import contextlib

import pytest

from fleet import errors
from fleet.manager.changes.rollout_engine import RolloutEngine
from fleet.manager.changes.rollouts import RolloutSpec, RolloutStore, parse_spec
from fleet.manager.store.db import open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.store.lease import Lease

T0 = 1_700_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


class Info:
    def __init__(self, agent_id, pid):
        self.agent_id, self.pid = agent_id, pid


class FakeFleet:
    """Stands for NodeStore and the daemon pool: each node has agent "web"; an operate
    gives it a new pid, and the agent becomes healthy when a test says so."""

    def __init__(self, node_ids):
        self.agents = {n: {"status": "running", "health": "healthy", "pid": 100 + i,
                           "health_message": "", "last_error": ""}
                       for i, n in enumerate(node_ids)}
        self.operated = []          # (node_id, operation) in call order
        self.broken = set()         # nodes whose agent never comes up after an operate
        self.unreachable = set()
        self.next_pid = 1000

    # NodeStore's side
    def get_agent(self, node_id, agent_id):
        return dict(self.agents[node_id])

    def get_node(self, node_id):
        return {"node_id": node_id, "advertise_address": f"{node_id}:1"}

    def update_agent(self, node_id, info):
        return self.get_agent(node_id, info.agent_id)

    # the pool's side
    @contextlib.contextmanager
    def client(self, node_id, address):
        yield _Daemon(self, node_id)

    def come_up(self, *node_ids):
        for node_id in node_ids:
            if node_id not in self.broken:
                self.agents[node_id].update(status="running", health="healthy")


class _Daemon:
    def __init__(self, fleet, node_id):
        self.fleet, self.node_id = fleet, node_id

    def operate(self, agent_id, operation, cause="", detail=""):
        assert (cause, detail[:8]) == ("rollout", "rollout ")
        if self.node_id in self.fleet.unreachable:
            raise errors.Unavailable(f"daemon {self.node_id}: connection refused")
        self.fleet.operated.append((self.node_id, operation))
        self.fleet.next_pid += 1
        broken = self.node_id in self.fleet.broken
        self.fleet.agents[self.node_id].update(
            status="backoff" if broken else "starting", health="unknown",
            pid=0 if broken else self.fleet.next_pid,
            last_error="exited at once (code 1)" if broken else "")
        return Info(agent_id, self.fleet.agents[self.node_id]["pid"])


@pytest.fixture
def world(tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    migrate(open_database(url))
    clock = Clock()
    nodes = [f"n{i}" for i in range(1, 6)]
    fleet = FakeFleet(nodes)
    store = RolloutStore(open_database(url), clock)

    def engine(holder="m1"):
        lease = Lease(open_database(url), "rollouts", holder, 30.0, clock)
        return RolloutEngine(store, fleet, fleet, lease, clock=clock)
    return store, fleet, clock, engine, nodes


def statuses(store, rollout_id):
    rollout = store.get(rollout_id)
    return rollout["status"], [n["status"] for n in rollout["nodes"]]


def test_waves_of_max_parallel_wait_for_health_before_the_next(world):
    """Two nodes at a time, sorted by node_id; the next wave starts only once the last
    one is healthy with new pids; then the rollout succeeds."""
    store, fleet, clock, engine, nodes = world
    rollout = store.create(RolloutSpec("restart", "web", {}, max_parallel=2), nodes[:4])
    drive = engine()
    assert drive.tick()
    assert fleet.operated == [("n1", "restart"), ("n2", "restart")]
    assert statuses(store, rollout["id"]) == ("running", ["running"] * 2 + ["pending"] * 2)
    clock.now += 1
    drive.tick()
    assert len(fleet.operated) == 2, "starting, not healthy yet: the wave goes on"
    fleet.come_up("n1")
    clock.now += 1
    drive.tick()
    assert len(fleet.operated) == 2, "n2 still in flight"
    fleet.come_up("n2")
    clock.now += 1
    drive.tick()
    assert [n for n, _ in fleet.operated] == ["n1", "n2", "n3", "n4"]
    fleet.come_up("n3", "n4")
    clock.now += 1
    drive.tick()
    assert statuses(store, rollout["id"]) == ("succeeded", ["succeeded"] * 4)
    assert store.get(rollout["id"])["finished_at"] == int(clock.now * 1000)


@pytest.mark.parametrize("max_failures, tried", [(0, 1), (1, 2), (2, 3)])
def test_it_stops_once_more_than_max_failures_nodes_failed(world, max_failures, tried):
    """max_failures is the number of failed nodes tolerated: one more stops the rollout,
    the nodes not started are skipped and never operated."""
    store, fleet, clock, engine, nodes = world
    fleet.broken = set(nodes)
    rollout = store.create(RolloutSpec("restart", "web", {}, max_parallel=1,
                                       max_failures=max_failures, wait_seconds=10), nodes)
    drive = engine()
    for _ in range(10):
        drive.tick()
        clock.now += 11           # past each node's deadline
    status, node_statuses = statuses(store, rollout["id"])
    assert status == "failed"
    assert node_statuses == ["failed"] * tried + ["skipped"] * (5 - tried)
    assert len(fleet.operated) == tried
    failed = store.get(rollout["id"])["nodes"][0]
    assert "not running and healthy after 10s" in failed["message"]
    assert "exited at once" in failed["message"]


def test_failures_within_max_failures_let_it_succeed(world):
    """A failed node within the tolerance does not stop the rollout; it ends succeeded
    with that node listed failed."""
    store, fleet, clock, engine, nodes = world
    fleet.unreachable = {"n2"}
    rollout = store.create(RolloutSpec("restart", "web", {}, max_parallel=5, max_failures=1),
                           nodes[:3])
    drive = engine()
    drive.tick()
    fleet.come_up("n1", "n3")
    clock.now += 1
    drive.tick()
    body = store.get(rollout["id"])
    assert body["status"] == "succeeded"
    assert [n["status"] for n in body["nodes"]] == ["succeeded", "failed", "succeeded"]
    assert "connection refused" in body["nodes"][1]["message"]


def test_cancel_skips_pending_nodes_and_lets_the_node_in_flight_finish(world):
    """Cancel: pending nodes are skipped at once; the node in flight is still followed to
    its result; cancelling again is a Conflict."""
    store, fleet, clock, engine, nodes = world
    rollout = store.create(RolloutSpec("restart", "web", {}, max_parallel=1), nodes[:3])
    drive = engine()
    drive.tick()
    assert statuses(store, rollout["id"]) == ("running", ["running", "pending", "pending"])
    assert statuses(store, store.cancel(rollout["id"])["id"]) == \
        ("cancelled", ["running", "skipped", "skipped"])
    fleet.come_up("n1")
    clock.now += 1
    drive.tick()
    assert statuses(store, rollout["id"]) == ("cancelled", ["succeeded", "skipped", "skipped"])
    assert fleet.operated == [("n1", "restart")]
    with pytest.raises(errors.Conflict):
        store.cancel(rollout["id"])


def test_a_new_holder_resumes_without_operating_a_node_twice(world):
    """The driver dies with a node in flight: the next lease holder waits for that node
    anew (a fresh wait_seconds) without operating it again, then goes on."""
    store, fleet, clock, engine, nodes = world
    rollout = store.create(RolloutSpec("restart", "web", {}, max_parallel=1, wait_seconds=20),
                           nodes[:2])
    first = engine("m1")
    first.tick()
    assert fleet.operated == [("n1", "restart")]
    second = engine("m2")
    clock.now += 10
    assert not second.tick(), "m1's lease is fresh"
    clock.now += 25               # m1 died: its lease expired, and n1's deadline passed
    assert second.tick()
    assert statuses(store, rollout["id"]) == ("running", ["running", "pending"])
    fleet.come_up("n1")
    clock.now += 1
    second.tick()
    fleet.come_up("n2")
    clock.now += 1
    second.tick()
    assert statuses(store, rollout["id"]) == ("succeeded", ["succeeded", "succeeded"])
    assert fleet.operated == [("n1", "restart"), ("n2", "restart")]


def test_a_restart_that_never_happened_fails_as_pid_unchanged(world):
    """A node marked operated whose pid never changed (the call never reached the
    daemon) fails at its deadline saying so, rather than passing for restarted."""
    store, fleet, clock, engine, nodes = world
    rollout = store.create(RolloutSpec("restart", "web", {}, wait_seconds=5), nodes[:1])
    store.set_status(rollout["id"], ("pending",), "running", int(clock.now * 1000))
    store.begin_node(rollout["id"], "n1", int(clock.now * 1000), int(clock.now * 1000) + 5000,
                     fleet.agents["n1"]["pid"])
    drive = engine()
    clock.now += 1
    drive.tick()
    assert statuses(store, rollout["id"]) == ("running", ["running"])
    clock.now += 6
    drive.tick()
    body = store.get(rollout["id"])
    assert body["status"] == "failed" and "pid unchanged" in body["nodes"][0]["message"]
    assert fleet.operated == []


def test_only_the_lease_holder_drives(world):
    """Two engines on one database: the one without the lease operates nothing."""
    store, fleet, clock, engine, nodes = world
    store.create(RolloutSpec("restart", "web", {}, max_parallel=5), nodes)
    holder, other = engine("m1"), engine("m2")
    assert holder.tick() and not other.tick()
    assert len(fleet.operated) == 5
    fleet.come_up(*nodes)
    clock.now += 1
    assert not other.tick() and holder.tick()
    assert len(fleet.operated) == 5


@pytest.mark.parametrize("body, key", [
    ([], "body"), ({"operation": "reboot", "agent_id": "web"}, "operation"),
    ({"operation": "restart"}, "agent_id"),
    ({"operation": "restart", "agent_id": "a b"}, "agent_id"),
    ({"operation": "restart", "agent_id": "web", "max_parallel": 0}, "max_parallel"),
    ({"operation": "restart", "agent_id": "web", "max_parallel": 1001}, "max_parallel"),
    ({"operation": "restart", "agent_id": "web", "max_failures": -1}, "max_failures"),
    ({"operation": "restart", "agent_id": "web", "max_failures": 100001}, "max_failures"),
    ({"operation": "restart", "agent_id": "web", "wait_seconds": 0}, "wait_seconds"),
    ({"operation": "restart", "agent_id": "web", "wait_seconds": True}, "wait_seconds"),
    ({"operation": "restart", "agent_id": "web", "selector": {"labels": {"a": 1}}}, "selector"),
    ({"operation": "restart", "agent_id": "web", "selector": ["a"]}, "selector"),
    ({"operation": "restart", "agent_id": "web", "colour": 1}, "colour"),
    ({"policy": "a b"}, "policy"),
    ({"policy": "edge", "operation": "restart"}, "operation"),
    ({"policy": "edge", "selector": {"labels": {}}}, "selector"),
    ({"policy": "edge", "max_parallel": 0}, "max_parallel"),
])
def test_bad_bodies_name_the_key(body, key):
    """Each bad body is InvalidArgument naming its key."""
    with pytest.raises(errors.InvalidArgument) as raised:
        parse_spec(body)
    assert key in raised.value.message


def test_the_daemon_checks_an_operate_cause():
    """OperateAgentRequest.cause: "" is the operator, rollout and policy pass with their
    detail; another cause or an overlong detail is InvalidArgument."""
    from fleet.daemon.service import operate_cause
    from fleet.v1 import fleet_pb2 as pb
    assert operate_cause(pb.OperateAgentRequest()) == ("operator", "")
    assert operate_cause(pb.OperateAgentRequest(cause="rollout", detail="rollout 7")) == \
        ("rollout", "rollout 7")
    for bad in (pb.OperateAgentRequest(cause="health"),
                pb.OperateAgentRequest(cause="rollout", detail="x" * 201)):
        with pytest.raises(errors.InvalidArgument):
            operate_cause(bad)
