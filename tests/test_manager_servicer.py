"""ManagerService over real gRPC on 127.0.0.1, backed by a SQLite file."""
import threading
from concurrent import futures

import grpc
import pytest

from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.store.models import Agent
from fleet.manager.parts import build_manager
from fleet.rpc import create_server, open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc
from tests.pg import WriteLock

RUNNING, BACKOFF = pb.AGENT_STATUS_RUNNING, pb.AGENT_STATUS_BACKOFF
DEADLINE = 5.0


@pytest.fixture
def manager(db_url):
    """(parts, address) of a serving manager; stopped in the daemons' shutdown order."""
    db = dbmod.open_database(db_url)
    migrations.migrate(db)
    parts = build_manager(db, sync_interval=7.0, heartbeat_interval=11.0)
    parts.start()
    server, port = create_server("127.0.0.1:0", [parts.servicer.add_to], max_workers=64)
    server.start()
    yield parts, f"127.0.0.1:{port}"
    server.stop(grace=None).wait()
    parts.stop()


@pytest.fixture
def stub(manager):
    channel = open_channel(manager[1])
    yield fleet_pb2_grpc.ManagerServiceStub(channel)
    channel.close()


def register(stub, node_id="n1", boot_id=1, **facts):
    return stub.RegisterNode(pb.RegisterNodeRequest(node_id=node_id, boot_id=boot_id, **facts),
                             timeout=DEADLINE)


def sync(stub, seq, states, node_id="n1", boot_id=1, full=False):
    request = pb.SyncAgentStatesRequest(node_id=node_id, boot_id=boot_id, seq=seq, full=full,
                                        states=states)
    return stub.SyncAgentStates(request, timeout=DEADLINE)


def state(agent_id, status=RUNNING, pid=100, **kw):
    return pb.AgentState(agent_id=agent_id, status=status, pid=pid, **kw)


def stored(parts, node_id="n1"):
    """{agent_id: (type, status, pid, restart_count)} as committed."""
    query = Agent.select().where(Agent.node_id == node_id)
    with parts.db.connection_context():
        return {a.agent_id: (a.type, a.status, a.pid, a.restart_count)
                for a in query.execute(parts.db)}


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_register_node_stores_facts_and_answers_intervals(manager, stub):
    """RegisterNode upserts the node's facts and tells the configured intervals."""
    reply = register(stub, hostname="h1", ip="10.0.0.1", advertise_address="10.0.0.1:9091",
                     os="linux", arch="x86_64", labels={"role": "edge"}, daemon_version="0.1.0")
    assert (reply.sync_interval_seconds, reply.heartbeat_interval_seconds) == (7.0, 11.0)
    node = manager[0].nodes.get_node("n1")
    assert (node["hostname"], node["advertise_address"], node["labels"], node["status"]) == \
        ("h1", "10.0.0.1:9091", {"role": "edge"}, "online")


def test_register_facts_with_nul_are_stored_cleaned(manager, stub):
    """A NUL in a node's facts (PostgreSQL text cannot hold one) is stored as U+FFFD, not
    refused or failed; labels, stored as JSON, keep theirs."""
    register(stub, hostname="h\x001", os="li\x00nux", labels={"k\x00": "v\x00"})
    node = manager[0].nodes.get_node("n1")
    assert (node["hostname"], node["os"], node["labels"]) == \
        ("h\ufffd1", "li\ufffdnux", {"k\x00": "v\x00"})


def test_register_bad_node_id_invalid_argument(manager, stub):
    """RegisterNode with a malformed node_id is INVALID_ARGUMENT and stores nothing."""
    assert code_of(lambda: register(stub, node_id="../etc")) == grpc.StatusCode.INVALID_ARGUMENT
    assert manager[0].nodes.list_nodes() == []


def test_heartbeat_reregister(manager, stub):
    """Heartbeat of an unknown node, or of a newer boot, asks the node to register."""
    beat = lambda node_id, boot: stub.Heartbeat(  # noqa: E731
        pb.HeartbeatRequest(node_id=node_id, boot_id=boot), timeout=DEADLINE)
    assert beat("n1", 1).reregister
    register(stub)
    assert not beat("n1", 1).reregister
    assert beat("n1", 2).reregister


def test_invalid_states_named_valid_stored(manager, stub):
    """A batch with invalid states stores the valid ones and names the rest."""
    register(stub)
    reply = sync(stub, 1, [state("good"), state("bad/id"), state("zero", status=0),
                           state("neg", pid=-5)])
    assert (reply.success, reply.accepted, reply.rejected) == (False, 1, 3)
    assert {e.agent_id for e in reply.errors} == {"bad/id", "zero", "neg"}
    assert all(e.reason for e in reply.errors) and "3" in reply.message
    assert set(stored(manager[0])) == {"good"}


def test_empty_report_succeeds(manager, stub):
    """A report with no states is a success."""
    register(stub)
    reply = sync(stub, 1, [])
    assert reply.success and reply.accepted == 0


def test_type_preserved_over_the_wire(manager, stub):
    """The type an agent was first reported with is kept."""
    register(stub)
    sync(stub, 1, [state("a", type="filebeat")])
    sync(stub, 2, [state("a", type="other", pid=3)])
    assert stored(manager[0])["a"][:3] == ("filebeat", RUNNING, 3)


def test_whole_request_failures(manager, stub):
    """Unregistered -> NOT_FOUND, > 5000 states or bad node_id -> INVALID_ARGUMENT, old boot
    -> FAILED_PRECONDITION; none writes anything."""
    assert code_of(lambda: sync(stub, 1, [state("a")])) == grpc.StatusCode.NOT_FOUND
    register(stub, boot_id=2)
    many = [state(f"a{i}") for i in range(5001)]
    assert code_of(lambda: sync(stub, 1, many, boot_id=2)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: sync(stub, 1, [state("a")], node_id="")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: sync(stub, 1, [state("a")], boot_id=1)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert stored(manager[0]) == {}


def test_gap_new_boot_and_full_report(manager, stub):
    """A seq gap asks for a full report; the full report deletes unmentioned agents."""
    register(stub)
    assert not sync(stub, 1, [state("a"), state("b")]).report_full_state
    assert sync(stub, 3, [state("b", status=BACKOFF)]).report_full_state
    assert not sync(stub, 4, [state("a")], full=True).report_full_state
    assert set(stored(manager[0])) == {"a"}
    assert sync(stub, 1, [state("a")], boot_id=2).report_full_state


def test_stale_report_does_not_overwrite(manager, stub):
    """A report older than the stored row's (boot_id, seq) does not overwrite it."""
    register(stub)
    sync(stub, 2, [state("a", pid=2)])
    sync(stub, 1, [state("a", pid=1)])
    assert stored(manager[0])["a"][2] == 2


def test_concurrent_reporters_lose_nothing(manager):
    """50 reporters (own node and channel) x 200 reports: the database holds each one's last."""
    reporters, reports, agents = 50, 200, 5
    failures = []

    def report(n):
        channel = open_channel(manager[1])
        stub = fleet_pb2_grpc.ManagerServiceStub(channel)
        try:
            register(stub, node_id=f"node-{n}")
            for seq in range(1, reports + 1):
                states = [state(f"agent-{a}", pid=seq * 10 + a, restart_count=seq,
                                status=RUNNING if (seq + a) % 2 else BACKOFF)
                          for a in range(agents)]
                if not sync(stub, seq, states, node_id=f"node-{n}").success:
                    failures.append((n, seq))
        except grpc.RpcError as exc:  # a lost report is what this test looks for
            failures.append((n, exc.code()))
        finally:
            channel.close()

    threads = [threading.Thread(target=report, args=(n,)) for n in range(reporters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    last = reports
    for n in range(reporters):
        assert stored(manager[0], f"node-{n}") == {
            f"agent-{a}": ("", RUNNING if (last + a) % 2 else BACKOFF, last * 10 + a, last)
            for a in range(agents)}


def test_locked_database_unavailable_then_succeeds(manager, stub, db_url):
    """With the database locked a report fails UNAVAILABLE, writes nothing, and succeeds later."""
    register(stub)
    sync(stub, 1, [state("a", pid=1)])
    other = WriteLock(db_url)
    other.take()
    try:
        code = code_of(lambda: sync(stub, 2, [state("a", pid=2), state("b", pid=2)], full=True))
    finally:
        other.close()
    assert code == grpc.StatusCode.UNAVAILABLE
    assert stored(manager[0]) == {"a": ("", RUNNING, 1, 0)}
    assert sync(stub, 2, [state("a", pid=2), state("b", pid=2)], full=True).success
    assert {k: v[2] for k, v in stored(manager[0]).items()} == {"a": 2, "b": 2}


def test_a_bug_in_the_ingest_writer_answers_internal_without_its_text(manager, stub,
                                                                      monkeypatch, caplog):
    """An unexpected exception while writing a report is INTERNAL with "internal error" on
    the wire and its traceback in the manager's log; a storage fault stays UNAVAILABLE."""
    register(stub)

    def broken(*args):
        raise KeyError("secret detail of a bug")

    monkeypatch.setattr(manager[0].writer, "_apply", broken)
    with pytest.raises(grpc.RpcError) as caught:
        sync(stub, 1, [state("a")])
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "secret detail of a bug" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    assert sync(stub, 1, [state("a")]).success


def test_refused_calls_are_logged_with_the_peer_at_most_once_a_window(tmp_path, caplog):
    """A call with a wrong or missing cluster token is logged with the caller's address,
    one line per peer host per window; the next line counts the ones left out."""
    from fleet.rpc import RefusalLog, TokenCheck

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = Clock()
    check = TokenCheck("the-cluster-token", RefusalLog(every=60, clock=clock))
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[check])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = fleet_pb2_grpc.ManagerServiceStub(channel)
    try:
        def refused(metadata):
            return code_of(lambda: stub.Heartbeat(pb.HeartbeatRequest(node_id="n1"),
                                                  metadata=metadata, timeout=DEADLINE))

        with caplog.at_level("WARNING", logger="fleet.rpc"):
            assert refused((("authorization", "Bearer not-the-token-xyz"),)) == \
                grpc.StatusCode.UNAUTHENTICATED
            for _ in range(3):
                refused(())
            clock.now = 61
            refused(())
        lines = [r.getMessage() for r in caplog.records if r.name == "fleet.rpc"]
        assert len(lines) == 2, lines
        assert lines[0].startswith("refused call '/fleet.v1.ManagerService/Heartbeat' from "
                                   "127.0.0.1:") and lines[0].endswith("wrong cluster token")
        assert lines[1].endswith("missing cluster token (3 more from 127.0.0.1 not logged)")
        assert "not-the-token-xyz" not in caplog.text
    finally:
        channel.close()
        server.stop(None)
