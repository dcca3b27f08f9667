"""State reports through ReportService and the group-commit IngestWriter (no gRPC)."""
import queue
import sqlite3
import threading
import time
import urllib.parse

import pytest

from fleet import errors
from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.store.backends import backend_of
from fleet.manager.ingest import IngestWriter, Report, ReportService, agent_row
from fleet.manager.store.writer import Waiting
from fleet.manager.store.models import Agent, Node
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.store.registry import Registry
from fleet.v1 import fleet_pb2 as pb
from helpers import wait_for
from tests.pg import WriteLock, postgresql_only, sqlite_only

RUNNING = pb.AGENT_STATUS_RUNNING


class Manager:
    """The storage side of a manager over one database (SQLite file or PostgreSQL)."""

    def __init__(self, url, lock_timeout_ms=200, start=True):
        self.url = url
        self.db = dbmod.open_database(url)
        migrations.migrate(self.db)
        self.registry = Registry.load(self.db)
        self.writer = IngestWriter(self.db, lock_timeout_ms=lock_timeout_ms)
        self.nodes = NodeStore(self.db, self.registry)
        self.reports = ReportService(self.registry, self.writer)
        if start:
            self.writer.start()

    def rows(self, node_id="n1"):
        """{agent_id: (type, status, pid, boot_id, seq)} as stored."""
        query = Agent.select().where(Agent.node_id == node_id)
        with self.db.connection_context():
            return {a.agent_id: (a.type, a.status, a.pid, a.boot_id, a.seq)
                    for a in query.execute(self.db)}

    def sync(self, seq, states, boot=1, full=False, node_id="n1"):
        return self.reports.sync(node_id, boot, seq, full, states)


@pytest.fixture
def manager(db_url):
    m = Manager(db_url)
    m.nodes.register(NodeFacts("n1", boot_id=1))
    yield m
    m.writer.stop()


def state(agent_id, status=RUNNING, pid=100, **kw):
    return pb.AgentState(agent_id=agent_id, status=status, pid=pid, **kw)


@pytest.fixture
def exclusive_lock(manager):
    lock = WriteLock(manager.url)
    yield lock
    lock.close()


def test_invalid_states_rejected_valid_stored(manager):
    """A report's valid states are stored; each invalid one is named with a reason."""
    result = manager.sync(1, [state("ok1"), state("bad id"), state("unspec", status=0),
                              state("unknown", status=42), state("neg", pid=-1),
                              state("dup"), state("dup", pid=2), state("ok2")])
    assert (result.accepted, result.rejected, result.success) == (2, 6, False)
    reasons = dict(result.errors)
    assert set(reasons) == {"bad id", "unspec", "unknown", "neg", "dup"}
    assert "pid" in reasons["neg"] and "status" in reasons["unknown"]
    assert set(manager.rows()) == {"ok1", "ok2"}


def test_clean_report_succeeds(manager):
    """A report without faults has success true and every state accepted."""
    result = manager.sync(1, [state("a"), state("b")])
    assert (result.success, result.accepted, result.rejected, result.errors) == (True, 2, 0, [])


def test_type_kept_from_first_creation(manager):
    """An agent's type is the one it was created with; later reports do not change it."""
    manager.sync(1, [state("a", type="node_exporter", version="1")])
    manager.sync(2, [state("a", type="telegraf", version="2", pid=7)])
    assert manager.rows()["a"] == ("node_exporter", RUNNING, 7, 1, 2)


def test_stale_report_does_not_overwrite_newer_rows(manager):
    """A report with an older (boot_id, seq) than a row's leaves that row alone."""
    manager.sync(5, [state("a", pid=5), state("b", pid=5)])
    manager.sync(4, [state("a", pid=4), state("c", pid=4)])
    rows = manager.rows()
    assert rows["a"][2:] == (5, 1, 5) and rows["b"][2] == 5
    assert rows["c"][2:] == (4, 1, 4)           # new rows are still created
    manager.nodes.register(NodeFacts("n1", boot_id=2))
    manager.sync(1, [state("a", pid=9)], boot=2)  # a newer boot wins whatever its seq
    assert manager.rows()["a"][2:] == (9, 2, 1)


def test_full_report_deletes_unmentioned(manager):
    """A full report deletes the node's agents it does not mention, keeping rejected ones."""
    manager.sync(1, [state("a"), state("b"), state("c")])
    result = manager.sync(2, [state("a"), state("c", status=0)], full=True)
    assert result.rejected == 1
    assert set(manager.rows()) == {"a", "c"}
    manager.sync(3, [], full=True)
    assert manager.rows() == {}


def test_stale_full_report_keeps_newer_agents(manager):
    """A late full report does not delete agents a newer report added."""
    manager.sync(2, [state("a"), state("new")])
    manager.sync(1, [state("a")], full=True)
    assert set(manager.rows()) == {"a", "new"}


def test_seq_gap_and_new_boot_ask_for_full_state(manager):
    """A seq gap or a new boot is applied and answered with report_full_state."""
    assert not manager.sync(1, [state("a")]).report_full_state
    assert not manager.sync(2, [state("a")]).report_full_state
    gap = manager.sync(5, [state("a", pid=5)])
    assert gap.report_full_state and manager.rows()["a"][2] == 5
    boot = manager.sync(6, [state("a", pid=6)], boot=2)
    assert boot.report_full_state and manager.rows()["a"][2:] == (6, 2, 6)
    assert manager.registry.get("n1") == (2, 6)
    assert not manager.sync(9, [state("a")], boot=2, full=True).report_full_state


def test_node_boot_and_seq_updated(manager):
    """The node's stored (boot_id, seq) follows the newest applied report."""
    manager.sync(3, [state("a")])
    manager.sync(2, [state("a")])
    with manager.db.connection_context():
        node = Node.get(Node.node_id == "n1")
    assert (node.boot_id, node.seq) == (1, 3)
    assert Registry.load(manager.db).get("n1") == (1, 3)


def test_one_batch_moves_each_node_by_its_own_reports(db_url):
    """The nodes of one batch are updated together (one statement on PostgreSQL), each
    by its own reports: a newer report moves boot and seq, an older one and a heartbeat
    only last_seen, a clean stop sets stopped_at, and a deleted node's report alone
    is NOT_FOUND."""
    m = Manager(db_url, start=False)
    for node_id in ("new", "old", "beat", "stop"):
        m.nodes.register(NodeFacts(node_id, boot_id=2))
    with m.db.connection_context():
        Node.update(seq=9, last_seen=500).where(Node.node_id == "old").execute()
    t = int(time.time() * 1000) + 60_000    # later than the registrations' last_seen
    reports = [Report("new", 2, 4, False, [agent_row("new", state("a"), 2, 4, t)], (), t),
               Report("new", 2, 3, False, [agent_row("new", state("a"), 2, 3, t - 1)], (), t - 1),
               Report("old", 2, 3, False, [agent_row("old", state("a"), 2, 3, t)], (), t),
               Report("beat", 2, None, False, [], (), t + 1),
               Report("stop", 2, 1, True, [], (), t + 2, stopping=True),
               Report("gone", 2, 1, False, [agent_row("gone", state("a"), 2, 1, t)], (), t)]
    pending = [Waiting(r, 0) for r in reports]
    for p in pending:               # queued before the thread runs: one batch
        m.writer._queue.put(p)
    m.writer.start()
    try:
        assert all(p.wait(10) for p in pending)
        assert m.writer.batches == 1
        assert [type(p.error).__name__ for p in pending] == ["NoneType"] * 5 + ["NotFound"]
        with m.db.connection_context():
            nodes = {n.node_id: (n.boot_id, n.seq, n.last_seen, n.stopped_at)
                     for n in Node.select()}
        assert nodes["new"] == (2, 4, t, None)
        assert nodes["old"] == (2, 9, t, None)
        assert nodes["beat"] == (2, 0, t + 1, None)
        assert nodes["stop"] == (2, 1, t + 2, t + 2)
        assert "gone" not in nodes and m.rows("gone") == {}
        assert m.rows("new")["a"][3:] == (2, 4) and m.rows("old")["a"][3:] == (2, 3)
    finally:
        m.writer.stop()


def test_unregistered_node_not_found(manager):
    """A report from a node never registered is NotFound and writes nothing."""
    with pytest.raises(errors.NotFound):
        manager.sync(1, [state("a")], node_id="n2")
    assert manager.rows("n2") == {}


def test_bad_node_id_invalid_argument(manager):
    """A missing or malformed node_id rejects the whole report."""
    for bad in ("", "a/b", ".."):
        with pytest.raises(errors.InvalidArgument):
            manager.sync(1, [state("a")], node_id=bad)


def test_too_many_states_rejects_whole_report(manager):
    """More than 5,000 states rejects the request; nothing is written."""
    with pytest.raises(errors.InvalidArgument, match="5000"):
        manager.sync(1, [state(f"a{i}") for i in range(5001)])
    assert manager.rows() == {}
    assert manager.sync(1, [state(f"a{i}") for i in range(5000)]).accepted == 5000


def test_older_boot_failed_precondition(manager):
    """A report from a boot older than the stored one is Conflict (FAILED_PRECONDITION)."""
    manager.nodes.register(NodeFacts("n1", boot_id=3))
    with pytest.raises(errors.Conflict):
        manager.sync(1, [state("a")], boot=2)
    assert manager.rows() == {}


def test_heartbeat(manager):
    """Heartbeat: unknown node or newer boot -> reregister; it updates last_seen."""
    assert manager.reports.heartbeat("nx", 1) is True
    with manager.db.connection_context():
        Node.update(last_seen=1).where(Node.node_id == "n1").execute(manager.db)
    assert manager.reports.heartbeat("n1", 1) is False
    assert manager.nodes.get_node("n1")["last_seen"] > 1
    assert manager.reports.heartbeat("n1", 2) is True


def test_locked_database_unavailable_then_recovers(manager, exclusive_lock):
    """A locked database fails a report Unavailable, half-writing nothing; it succeeds once free."""
    manager.sync(1, [state("a", pid=1), state("b", pid=1)])
    before = manager.rows()
    exclusive_lock.take()
    with pytest.raises(errors.Unavailable):
        manager.sync(2, [state("a", pid=2), state("c", pid=2)], full=True)
    exclusive_lock.release()
    assert manager.rows() == before
    result = manager.sync(2, [state("a", pid=2), state("c", pid=2)], full=True)
    assert result.success
    assert {k: v[2] for k, v in manager.rows().items()} == {"a": 2, "c": 2}


@sqlite_only
def test_a_writer_waits_its_turn_behind_another_writer(db_url):
    """On SQLite a report waits while another worker's writer holds the turn, for longer
    than the busy timeout, and is stored once it is free (not failed: database locked)."""
    m = Manager(db_url, lock_timeout_ms=200)
    m.nodes.register(NodeFacts("n1", boot_id=1))
    turn = backend_of(m.db).writer_turn(m.db)     # another worker's writer ...
    lock = WriteLock(m.url)
    results = []
    with turn:
        lock.take()                               # ... in a long transaction
        sender = threading.Thread(target=lambda: results.append(m.sync(1, [state("a")])))
        sender.start()
        wait_for(lambda: m.writer._queue.qsize() == 0)
        sender.join(1.0)                          # five busy timeouts
        assert sender.is_alive() and not results
        lock.release()
    sender.join(5)
    assert results and results[0].success and m.rows()["a"][2] == 100
    lock.close()
    m.writer.stop()


def test_failure_mid_batch_rolls_back_everything(manager, monkeypatch):
    """A statement failing after the upsert leaves none of the batch applied."""
    manager.sync(1, [state("a", pid=1)])

    def boom(cursor, report):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(manager.writer, "_delete_unmentioned", boom)
    with pytest.raises(errors.Unavailable, match="disk I/O"):
        manager.sync(2, [state("a", pid=2), state("b", pid=2)], full=True)
    assert manager.rows() == {"a": ("", RUNNING, 1, 1, 1)}
    monkeypatch.undo()
    assert manager.sync(2, [state("a", pid=2)], full=True).success


class CountingQueue(queue.SimpleQueue):
    """The writer's queue, counting what was put in it."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.puts = 0

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        with self.lock:
            self.puts += 1


def test_concurrent_reports_share_transactions(db_url):
    """Reports waiting behind a busy database are committed together in few transactions."""
    m = Manager(db_url, lock_timeout_ms=3000, start=False)
    m.writer._queue = queued = CountingQueue()
    m.writer.start()
    for i in range(20):
        m.nodes.register(NodeFacts(f"n{i}", boot_id=1))
    lock = WriteLock(m.url)
    lock.take()
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        m.sync(1, [state("a", pid=i)], node_id=f"n{i}"))) for i in range(20)]
    for t in threads:
        t.start()
    wait_for(lambda: queued.puts == 20)
    lock.close()
    for t in threads:
        t.join(5)
    assert len(results) == 20 and all(r.success for r in results)
    assert m.writer.reports == 20 and m.writer.batches <= 3
    assert all(m.rows(f"n{i}")["a"][2] == i for i in range(20))
    m.writer.stop()


def test_report_of_deleted_node_leaves_no_rows(manager):
    """Rows of a report whose node was deleted meanwhile are not kept (no orphans), and
    the submit says NOT_FOUND (the daemon then registers again)."""
    row = agent_row("gone", state("a"), 1, 1, 0)
    with pytest.raises(errors.NotFound):
        manager.writer.submit(Report("gone", 1, 1, False, [row], (), 0))
    assert manager.rows("gone") == {}


def test_writer_start_stop_idempotent_and_drains(db_url):
    """start/stop twice is harmless; stop writes what was submitted; later submits fail."""
    m = Manager(db_url)
    m.writer.start()
    m.nodes.register(NodeFacts("n1", boot_id=1))
    assert m.sync(1, [state("a")]).success
    m.writer.stop()
    m.writer.stop()
    with pytest.raises(errors.Unavailable, match="shutting down"):
        m.sync(2, [state("a")])
    assert set(m.rows()) == {"a"}


# ---- every agent field in reports (issue 7, item 2) --------------------------------------

BACKOFF = pb.AGENT_STATUS_BACKOFF


def test_reports_store_every_agent_field(manager):
    """last_error, next_retry_time, changed_at and config_changed of a report are stored and
    shown as the HTTP Agent shows them (0 times as null)."""
    manager.sync(1, [state("a", status=BACKOFF, pid=0, last_error="exited within start_seconds",
                           next_retry_time=1_700_000_060_000, changed_at=1_700_000_000_000,
                           config_changed=True),
                     state("b", changed_at=1_700_000_000_500)])
    agents = {a["agent_id"]: a for a in manager.nodes.list_agents("n1")}
    assert (agents["a"]["status"], agents["a"]["last_error"], agents["a"]["next_retry_time"],
            agents["a"]["changed_at"], agents["a"]["config_changed"]) == \
        ("backoff", "exited within start_seconds", 1_700_000_060_000, 1_700_000_000_000, True)
    assert (agents["b"]["last_error"], agents["b"]["next_retry_time"],
            agents["b"]["changed_at"], agents["b"]["config_changed"]) == \
        ("", None, 1_700_000_000_500, False)
    manager.sync(2, [state("a", changed_at=1_700_000_061_000)])   # it started: all cleared
    a = manager.nodes.get_agent("n1", "a")
    assert (a["last_error"], a["next_retry_time"], a["config_changed"]) == ("", None, False)


def test_a_report_of_the_previous_release_is_stored_and_keeps_pulled_fields(manager):
    """A daemon of the previous release (AgentState without the appended fields) reports
    fine; what a pull stored of those fields stays (next_retry_time only in BACKOFF)."""
    old = pb.AgentState(agent_id="a", status=BACKOFF, pid=0, health="unhealthy")
    assert manager.sync(1, [old]).success
    assert manager.nodes.get_agent("n1", "a")["changed_at"] is None
    manager.nodes.store_agent_infos("n1", [pb.AgentInfo(
        agent_id="a", status=BACKOFF, last_error="boom", next_retry_time=5, changed_at=3,
        config_changed=True)])
    assert manager.sync(2, [pb.AgentState.FromString(old.SerializeToString())]).success
    a = manager.nodes.get_agent("n1", "a")
    assert (a["last_error"], a["next_retry_time"], a["config_changed"]) == ("boom", 5, True)
    manager.sync(3, [pb.AgentState(agent_id="a", status=RUNNING, pid=7)])
    a = manager.nodes.get_agent("n1", "a")
    assert (a["status"], a["last_error"], a["next_retry_time"]) == ("running", "boom", None)


def test_report_fields_are_checked_and_bounded(manager):
    """A negative next_retry_time or changed_at rejects the state; a long last_error or one
    with NUL is stored cut and cleaned, never costing the state."""
    result = manager.sync(1, [state("retry", next_retry_time=-1), state("changed", changed_at=-5),
                              state("long", last_error="x" * 10_000 + "\x00", changed_at=1)])
    assert dict(result.errors).keys() == {"retry", "changed"}
    assert "next_retry_time" in dict(result.errors)["retry"]
    stored = manager.nodes.get_agent("n1", "long")["last_error"]
    assert stored == "x" * 4096


def test_an_unexpected_error_in_the_writer_is_internal_without_its_text(manager, monkeypatch,
                                                                        caplog):
    """A bug while writing a batch fails its reports as an internal error (INTERNAL on the
    wire) with the traceback logged, not as Unavailable carrying the exception's text."""
    def broken(*args):
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(manager.writer, "_apply", broken)
    with pytest.raises(errors.FleetError) as caught:
        manager.sync(1, [state("a")])
    assert type(caught.value) is errors.FleetError and caught.value.code == "internal"
    assert "secret" not in caught.value.message
    assert "secret detail of a bug" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    assert manager.sync(1, [state("a")]).success     # the writer lives on


# ---- a clean stop (issue 7, item 5) ------------------------------------------------------

def test_a_stopping_report_shows_the_node_offline_until_it_speaks_again(manager):
    """A report flagged stopping makes the node read offline at once (and deletable); a
    later heartbeat, report or registration makes it online again."""
    manager.sync(1, [state("a")])
    manager.reports.sync("n1", 1, 2, True, [state("a", status=pb.AGENT_STATUS_STOPPED, pid=0)],
                         stopping=True)
    assert manager.nodes.get_node("n1")["status"] == "offline"
    assert [n["node_id"] for n in manager.nodes.list_nodes(status="offline")] == ["n1"]
    assert manager.nodes.list_nodes(status="online") == []
    seq = 2
    for speak in (lambda: manager.reports.heartbeat("n1", 1), lambda: manager.sync(seq + 1, []),
                  lambda: manager.nodes.register(NodeFacts("n1", boot_id=1))):
        speak()
        assert manager.nodes.get_node("n1")["status"] == "online"
        seq += 2
        manager.reports.sync("n1", 1, seq, True, [], stopping=True)
        assert manager.nodes.get_node("n1")["status"] == "offline"


def test_health_message_is_stored_and_served_with_the_health_filter(manager):
    """A report's health_message is stored (cut to 4096 characters, NUL replaced) and
    served on the Agent; list_agents filters by health and refuses an unknown one."""
    manager.sync(1, [state("sick", health="unhealthy", health_message="GET u -> 500\x00"),
                     state("fine", health="healthy"),
                     state("long", health="unhealthy", health_message="x" * 5000)])
    wait_for(lambda: len(manager.rows()) == 3)
    sick = manager.nodes.list_agents("n1", "unhealthy")
    assert [(a["agent_id"], a["health_message"]) for a in sick] == \
        [("long", "x" * 4096), ("sick", "GET u -> 500\ufffd")]
    assert [a["agent_id"] for a in manager.nodes.list_agents("n1", "healthy")] == ["fine"]
    assert manager.nodes.list_agents("n1", "unknown") == []
    with pytest.raises(errors.InvalidArgument, match="health must be one of"):
        manager.nodes.list_agents("n1", "poorly")


def test_two_reports_of_one_agent_in_one_batch_apply_in_order(db_url):
    """Reports naming the same agent that share one transaction are applied in order (on
    PostgreSQL one bulk upsert may not touch a row twice): the newest wins, all succeed."""
    m = Manager(db_url, lock_timeout_ms=3000)
    m.nodes.register(NodeFacts("n1", boot_id=1))
    lock = WriteLock(m.url)
    lock.take()
    first = threading.Thread(target=m.reports.heartbeat, args=("n1", 1))
    first.start()                   # the writer takes it, then waits for the lock
    wait_for(lambda: m.writer._queue.qsize() == 0)
    results = []
    threads = [threading.Thread(target=lambda seq=seq: results.append(
        m.sync(seq, [state("a", pid=seq), state(f"only{seq}")]))) for seq in (1, 2, 3)]
    for queued, t in enumerate(threads, 1):
        t.start()
        wait_for(lambda: m.writer._queue.qsize() == queued)     # queued in seq order
    lock.close()
    for t in [first] + threads:
        t.join(5)
    assert len(results) == 3 and all(r.success for r in results)
    assert (m.writer.batches, m.writer.reports) == (2, 4)
    rows = m.rows()
    assert rows["a"] == ("", RUNNING, 3, 1, 3) and set(rows) == {"a", "only1", "only2", "only3"}
    with m.db.connection_context():
        assert (Node.get(Node.node_id == "n1").boot_id, Node.get(Node.node_id == "n1").seq) == (1, 3)
    m.writer.stop()


def test_two_managers_writing_the_same_nodes_lose_nothing(db_url):
    """Two managers' writers on one database, each batching reports of the same nodes in
    its own order, never fail a report (PostgreSQL: rows are locked in one order, so two
    transactions never wait for each other in a cycle)."""
    first = Manager(db_url, lock_timeout_ms=5000)
    nodes = [f"n{i}" for i in range(8)]
    for node in nodes:
        first.nodes.register(NodeFacts(node, boot_id=1))
    second = Manager(db_url, lock_timeout_ms=5000)
    failures = []

    def report(manager, order, seqs):
        for seq in seqs:
            for node in order:
                try:
                    manager.sync(seq, [state(f"a{i}", pid=seq) for i in range(5)],
                                 node_id=node)
                except errors.FleetError as exc:
                    failures.append(exc)

    orders = [nodes[i:] + nodes[:i] for i in range(0, 8, 2)]    # each starts elsewhere
    threads = [threading.Thread(target=report, args=(m, order, range(start, 60, 2)))
               for order in orders for m, start in ((first, 1), (second, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert all(row[2] >= 58 for node in nodes for row in first.rows(node).values())
    first.writer.stop()
    second.writer.stop()


@postgresql_only
def test_a_lost_connection_fails_one_batch_unavailable_then_reconnects(manager, db_url,
                                                                       pg_server):
    """The server ending the writer's connection (restart, failover) fails the batch in
    flight UNAVAILABLE, writing nothing; the next report reconnects and is stored."""
    manager.sync(1, [state("a", pid=1)])
    name = urllib.parse.urlsplit(db_url).path.lstrip("/")
    pg_server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    with pytest.raises(errors.Unavailable):
        manager.sync(2, [state("a", pid=2)])
    assert manager.rows()["a"][2] == 1
    assert manager.sync(2, [state("a", pid=2)]).success
    assert manager.rows()["a"][2] == 2
