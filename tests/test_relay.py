"""Workers' reports written by their parent (fleet.manager.store.relay): a real
IngestWriter on a SQLite file at one end of a real socket pair, a worker's
ReportService at the other."""
import socket
import threading

import pytest

from fleet import errors
from fleet.manager.ingest import ReportService
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.store import relay
from fleet.manager.store.backends import FileTurn
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.store.models import Agent
from fleet.manager.store.registry import Registry
from fleet.manager.store.writer import IngestWriter, Report
from fleet.v1 import fleet_pb2 as pb
from helpers import wait_for

RUNNING = pb.AGENT_STATUS_RUNNING


class Pair:
    """A parent's writer and one worker's storage side, linked by a socket pair."""

    def __init__(self, path):
        self.db = open_database(f"sqlite:///{path}")
        migrate(self.db)
        self.writer = IngestWriter(self.db)
        self.writer.start()
        self.host = relay.RelayHost(self.writer, self.db)
        parent_end, worker_end = socket.socketpair()
        self.host.attach(parent_end)
        self.relayed = relay.RelayedWriter(worker_end)
        self.relayed.start()
        self.worker_db = open_database(f"sqlite:///{path}")
        self.registry = Registry.load(self.worker_db)
        self.nodes = NodeStore(self.worker_db, self.registry)
        self.reports = ReportService(self.registry, self.relayed)

    def stored(self, node_id="n1"):
        with self.worker_db.connection_context():
            return {a.agent_id: (a.status, a.pid, a.seq) for a in
                    Agent.select().where(Agent.node_id == node_id).execute(self.worker_db)}

    def close(self):
        self.relayed.stop()
        self.host.stop()
        close_database(self.worker_db)


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path / "fleet.db")
    p.nodes.register(NodeFacts("n1", boot_id=1))
    yield p
    p.close()


def state(agent_id, pid=100):
    return pb.AgentState(agent_id=agent_id, status=RUNNING, pid=pid)


def test_a_workers_reports_are_committed_by_the_parent_before_the_answer(pair):
    """sync() in the worker returns once the parent's writer committed the report."""
    result = pair.reports.sync("n1", 1, 1, True, [state("a"), state("b", 200)])
    assert (result.accepted, result.errors) == (2, [])
    assert pair.stored() == {"a": (RUNNING, 100, 1), "b": (RUNNING, 200, 1)}
    pair.reports.sync("n1", 1, 2, True, [state("a", 101)])    # full: b is gone
    assert pair.stored() == {"a": (RUNNING, 101, 2)}
    assert pair.writer.reports == 2
    assert pair.reports.heartbeat("n1", 1) is False
    assert pair.relayed.backlog.stats()["rows"] == 0


def test_many_threads_share_one_link_and_each_gets_its_own_answer(pair):
    """Reports of many gRPC threads at once go over one link; each caller is answered
    for its own report, and the parent writes them in few batches."""
    for i in range(2, 41):
        pair.nodes.register(NodeFacts(f"n{i}", boot_id=1))
    failures = []

    def report(node_id):
        try:
            for seq in range(1, 6):
                pair.reports.sync(node_id, 1, seq, False, [state("a", seq)])
        except errors.FleetError as exc:     # pragma: no cover - the failure is asserted
            failures.append(exc)
    threads = [threading.Thread(target=report, args=(f"n{i}",)) for i in range(1, 41)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert all(pair.stored(f"n{i}") == {"a": (RUNNING, 5, 5)} for i in range(1, 41))
    assert pair.writer.reports == 200 and pair.writer.batches < 200


def test_a_node_deleted_meanwhile_is_not_found_and_forgotten_by_the_worker(pair):
    """The parent finds the node gone (deleted through another worker): the worker's
    caller gets NotFound, and the worker's registry forgets the node."""
    with pair.db.connection_context():
        pair.db.execute_sql("DELETE FROM node WHERE node_id = 'n1'")
    with pytest.raises(errors.NotFound, match="not registered"):
        pair.reports.sync("n1", 1, 1, False, [state("a")])
    assert pair.registry.get("n1") is None
    assert pair.stored() == {}


def test_a_failed_write_is_unavailable_in_the_worker_with_nothing_stored(pair, monkeypatch):
    """The parent's transaction fails: the worker's caller gets Unavailable (daemons
    retry) for a storage fault, an internal error otherwise."""
    import peewee

    def locked(cursor, reports):
        raise peewee.OperationalError("database is locked")
    monkeypatch.setattr(pair.writer, "_apply", locked)
    with pytest.raises(errors.Unavailable, match="database is locked"):
        pair.reports.sync("n1", 1, 1, False, [state("a")])

    def bug(cursor, reports):
        raise KeyError("a bug")
    monkeypatch.setattr(pair.writer, "_apply", bug)
    with pytest.raises(errors.FleetError, match="internal error") as raised:
        pair.reports.sync("n1", 1, 1, False, [state("a")])
    assert type(raised.value) is errors.FleetError
    assert pair.stored() == {}
    assert pair.relayed.backlog.stats()["rows"] == 0


def test_a_slow_parent_times_the_report_out_and_its_late_answer_is_dropped(pair):
    """Past the timeout the caller gets Unavailable and the report's room in the
    worker's queue is released once; the answer that comes later changes nothing."""
    turn = FileTurn(pair.writer._turn.path)    # another open file: the writer waits
    with turn:                          # the parent's writer cannot write meanwhile
        with pytest.raises(errors.Unavailable, match="timed out"):
            pair.relayed.submit(Report("n1", 1, 1, False, [], (), 1), timeout=0.3,
                                cost=pair.relayed.admit(1))
        assert pair.relayed.backlog.stats()["rows"] == 0
    wait_for(lambda: pair.writer.reports == 1)
    pair.reports.sync("n1", 1, 2, False, [state("a")])       # the link still works
    assert pair.stored() == {"a": (RUNNING, 100, 2)}
    assert pair.relayed.backlog.stats()["rows"] == 0


def test_reports_fail_at_once_when_the_parent_is_gone(pair):
    """The parent's end closes (it died): reports waiting and later ones fail Unavailable
    at once, not after their timeout."""
    turn = FileTurn(pair.writer._turn.path)    # another open file: the writer waits
    failed = []
    with turn:
        waiting = threading.Thread(target=lambda: failed.append(pytest.raises(
            errors.Unavailable, pair.relayed.submit,
            Report("n1", 1, 1, False, [], (), 1), 30)))
        waiting.start()
        wait_for(lambda: pair.relayed._waiting)
        pair.host.close()
        waiting.join(5)
        assert not waiting.is_alive() and "gone" in str(failed[0].value)
    with pytest.raises(errors.Unavailable):
        pair.reports.sync("n1", 1, 2, False, [state("a")])


def test_only_a_sqlite_file_gets_a_host(db_url):
    """The parent writes for its workers on a SQLite file; on PostgreSQL, which takes
    many writers, each worker writes its own (and an in-memory database has no
    workers to share it)."""
    db = open_database(db_url)
    migrate(db)
    close_database(db)
    host = relay.host_for(db_url)
    assert (host is not None) == db_url.startswith("sqlite:")
    if host is not None:
        host.stop()
    assert relay.host_for("sqlite:///:memory:") is None


def test_a_frame_past_the_bound_is_refused():
    """A length past MAX_FRAME is an error, not an allocation of that size."""
    import io
    stream = io.BytesIO(relay.HEADER.pack(relay.MAX_FRAME + 1) + b"x")
    with pytest.raises(ValueError, match="at most"):
        relay.read_frame(stream)
    assert relay.read_frame(io.BytesIO(relay.frame([(1, "", "")]))) == [(1, "", "")]
    assert relay.read_frame(io.BytesIO(b"\x00\x00")) is None


def test_an_idle_link_stays_up(pair, monkeypatch):
    """A worker may send nothing for long (a quiet fleet, a long registration burst):
    the parent's send timeout never ends a link that is only idle."""
    monkeypatch.setattr(relay, "SEND_TIMEOUT", 0.2)
    parent_end, worker_end = socket.socketpair()
    pair.host.attach(parent_end)            # with the short send timeout
    quiet = relay.RelayedWriter(worker_end)
    quiet.start()
    try:
        threading.Event().wait(0.6)         # idle three times the send timeout
        quiet.submit(Report("n1", 1, 1, False, [], (), 1))
    finally:
        quiet.stop()


def test_a_worker_that_stops_reading_loses_its_link_not_the_writer(pair, monkeypatch):
    """The parent's writer answers a worker that reads nothing until its socket is
    full, gives up after the send timeout and drops that link; other workers' reports
    go on being written."""
    monkeypatch.setattr(relay, "SEND_TIMEOUT", 0.3)
    parent_end, stuck = socket.socketpair()
    parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pair.host.attach(parent_end)
    for ident in range(1, 3001):            # heartbeats; their answers are never read
        try:
            stuck.sendall(relay.frame((ident, "n1", 1, None, False, [], [], 1, False, [])))
        except (BrokenPipeError, ConnectionResetError):
            break                           # dropped already: what this test waits for
    wait_for(lambda: pair.writer.reports >= 3000 or parent_end.fileno() == -1, timeout=30)
    wait_for(lambda: parent_end.fileno() == -1, timeout=10)      # dropped
    pair.reports.sync("n1", 1, 1, False, [state("a")])          # the other link works
    assert pair.stored() == {"a": (RUNNING, 100, 1)}
    stuck.close()


def test_a_lost_link_stops_the_worker_but_stop_does_not(tmp_path):
    """The link failing (the parent closed it) calls on_lost once; stop() does not."""
    for by_stop in (False, True):
        parent_end, worker_end = socket.socketpair()
        lost = threading.Event()
        writer = relay.RelayedWriter(worker_end, on_lost=lost.set)
        writer.start()
        if by_stop:
            writer.stop()
            assert not lost.wait(0.3)
        else:
            parent_end.close()
            assert lost.wait(5)
            with pytest.raises(errors.Unavailable):
                writer.submit(Report("n1", 1, 1, False, [], (), 1), timeout=5)
            writer.stop()
        parent_end.close()
