"""Storage: opening databases, migrations, the registry, and NodeStore reads and writes."""
import contextlib
import shutil
import sqlite3
import sys
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import errors
from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.store import pgjson
from fleet.manager.store.db import PostgresBackend, SQLiteBackend, open_database
from fleet.manager.store.migrations import migrate, schema_version
from fleet.manager.ingest import REPORT_COLUMNS, AgentUpsert, agent_upsert
from fleet.manager.store.models import Agent, Node
from fleet.manager.nodes import AGENT_FIELDS, NodeFacts, NodeStore
from fleet.manager.store.registry import Registry
from fleet.v1 import fleet_pb2 as pb
from helpers import wait_for
from tests.pg import postgresql_only, sqlite_only

NODE_FIELDS = {"node_id", "hostname", "ip", "advertise_address", "os", "arch", "labels",
               "daemon_version", "status", "registered_at", "last_seen"}


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(db_url):
    db = open_database(db_url)
    migrate(db)
    yield db
    dbmod.close_database(db)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(database, clock):
    return NodeStore(database, Registry.load(database), offline_after=90, clock=clock)


def info(agent_id, status=pb.AGENT_STATUS_RUNNING, **kw):
    return pb.AgentInfo(agent_id=agent_id, status=status, **kw)


def test_migrations_create_schema_version_1(database):
    """A fresh database is migrated to the latest version with node and agent tables."""
    assert schema_version(database) == migrations.MIGRATIONS[-1][0]
    with database.connection_context():
        assert {"node", "agent", "schema_version"} <= set(database.get_tables())


def test_migrations_idempotent_on_restart(db_url):
    """Running the migrations again (a restart) changes nothing and keeps the data."""
    url = db_url
    db = open_database(url)
    migrate(db)
    NodeStore(db, Registry()).register(NodeFacts("n1", boot_id=3))
    again = open_database(url)
    assert migrate(again) == migrate(again) == migrations.MIGRATIONS[-1][0]
    with again.connection_context():
        versions = again.execute_sql("SELECT COUNT(*) FROM schema_version").fetchone()[0]
    assert versions == len(migrations.MIGRATIONS)
    assert Registry.load(again).get("n1") == (3, 0)


@pytest.mark.parametrize("model", [Node, Agent])
def test_models_match_migrated_tables(database, model):
    """Every model field is a column of its migrated table, and nothing else is."""
    with database.connection_context():
        columns = {c.name for c in database.get_columns(model._meta.table_name)}
    assert columns == set(model._meta.columns)


@sqlite_only
def test_sqlite_pragmas(database):
    """SQLite connections run in WAL with synchronous=NORMAL and a busy timeout."""
    with database.connection_context():
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
        assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 5000


@sqlite_only
def test_sqlite_transactions_are_immediate(database, tmp_path):
    """A transaction takes the write lock at BEGIN, never a deferred read lock."""
    with database.connection_context(), database.atomic():
        other = sqlite3.connect(tmp_path / "fleet.db", timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()


def test_bad_urls_are_config_errors():
    """A URL of no known backend, or an empty SQLite path, is a ConfigError."""
    for url in ("mysql://x/y", "sqlite:///", "fleet.db"):
        with pytest.raises(errors.ConfigError):
            open_database(url)


def test_postgresql_without_driver_is_a_clear_error(monkeypatch):
    """Without psycopg2 a PostgreSQL URL fails naming the missing driver."""
    monkeypatch.setitem(sys.modules, "psycopg2", None)     # import psycopg2 raises ImportError
    with pytest.raises(errors.ConfigError, match="psycopg2"):
        open_database("postgresql://u:p@localhost:5432/fleet")


def test_backend_sql_per_engine():
    """Placeholders and the bulk VALUES clause are per backend; the upsert keeps its guard."""
    sqlite_sql = agent_upsert(SQLiteBackend(), REPORT_COLUMNS)
    pg_sql = agent_upsert(PostgresBackend(), REPORT_COLUMNS)
    assert sqlite_sql.count("?") == len(REPORT_COLUMNS) and "%s" not in sqlite_sql
    assert "VALUES %s ON CONFLICT (node_id, agent_id)" in pg_sql
    for sql in (sqlite_sql, pg_sql):
        assert "agent.seq <= excluded.seq" in sql and "type = CASE" in sql
    assert PostgresBackend().sql("a = ? AND b = ?") == "a = %s AND b = %s"


def test_postgresql_bulk_rows_go_in_rounds_of_distinct_keys_in_key_order():
    """Rows repeating a key go to successive rounds (their order kept), each sorted by key."""
    rows = [("b", 1), ("a", 1), ("b", 2), ("a", 2), ("b", 3)]
    assert dbmod.distinct_rounds(rows, 1) == [[("a", 1), ("b", 1)], [("a", 2), ("b", 2)],
                                              [("b", 3)]]


@sqlite_only
@pytest.mark.parametrize("count", [1, 2, 3, 1023, 1024, 2600])
def test_sqlite_bulk_upsert_in_multirow_statements_equals_one_row_at_a_time(database, count):
    """SQLite's upsert_many binds many rows per statement (few steps, so few trips to get
    the GIL back) and ends exactly as executemany of the one-row statement would: rows
    applied in their order, a key repeated in one batch included."""
    backend = SQLiteBackend()
    sql = agent_upsert(backend, REPORT_COLUMNS)
    rows = [(f"n{i % 7}", f"a{i % 450}", "t", "1", pb.AGENT_STATUS_RUNNING, i, None, 0, -1, 0,
             "healthy", None, 1, i, 1, "", None, 1, False, "") for i in range(count)]
    reference = sqlite3.connect(":memory:")
    reference.execute("CREATE TABLE agent (node_id, agent_id, type DEFAULT '', version, status, "
                      "pid, start_time, restart_count, last_exit_code, last_exit_signal, health, "
                      "last_heartbeat, boot_id DEFAULT 0, seq DEFAULT 0, last_sync_time, "
                      "last_error, next_retry_time, changed_at, config_changed, health_message, "
                      "UNIQUE (node_id, agent_id))")
    reference.executemany(sql, rows)
    statements = []
    with database.atomic():
        database.connection().set_trace_callback(statements.append)
        backend.upsert_many(database.cursor(), sql, rows, key=2)
        database.connection().set_trace_callback(None)
    stored = database.execute_sql("SELECT node_id, agent_id, pid, seq FROM agent "
                                  "ORDER BY node_id, agent_id").fetchall()
    assert stored == reference.execute("SELECT node_id, agent_id, pid, seq FROM agent "
                                       "ORDER BY node_id, agent_id").fetchall()
    assert len(stored) == min(count, 7 * 450) and len(statements) <= 12
    assert len(statements) == bin(count % 1024).count("1") + count // 1024


class Recording:
    """A DB-API cursor that keeps the text of every statement it executes."""

    def __init__(self, cursor):
        self.cursor, self.sent = cursor, []

    def execute(self, query, params=None):
        self.sent.append(query)
        return self.cursor.execute(query, params)

    def __getattr__(self, name):
        return getattr(self.cursor, name)


@postgresql_only
def test_postgresql_bulk_upsert_sends_rows_as_one_json_value_and_stores_them_exactly(database):
    """Many rows go to PostgreSQL as one JSON parameter, not as literals in the
    statement: one statement per round of distinct keys, and every value comes back
    as sent (tabs, newlines, backslashes, \\N, quotes, non-ASCII, NULLs, booleans,
    64-bit integers); a key repeated in the batch ends as its last row left it, as
    with one statement per row."""
    backend = PostgresBackend()
    sql = agent_upsert(backend, REPORT_COLUMNS)
    tricky = ["tab\there", "new\nline\r", "back\\slash \\N", "quote ' \"", "ünïcødé ☃", "",
              "\\."]
    rows = [(f"n{i % 5}", f"a{i % 120}", "t", tricky[i % 7], pb.AGENT_STATUS_RUNNING, 2**62 + i,
             None if i % 2 else i, 0, -1, 0, "healthy", None, 1, i, 1, tricky[(i + 1) % 7],
             None, 1, bool(i % 3), tricky[(i + 2) % 7]) for i in range(300)]
    cursor = Recording(database.cursor())
    with database.atomic():
        pgjson.plan(cursor, sql)                                    # the catalog, read once
        cursor.sent.clear()
        backend.upsert_many(cursor, sql, rows, key=2)               # keys repeat: 3 rounds
    prepare, *executes = cursor.sent                                # prepared once, then run
    assert prepare.startswith("PREPARE") and "jsonb_array_elements" in prepare
    assert len(executes) == 3 and all(q.startswith("EXECUTE") and len(q) < 100 for q in executes)
    expected = {row[:2]: row for row in rows}                       # seq grows: the last wins
    stored = database.execute_sql(f"SELECT {', '.join(REPORT_COLUMNS)} FROM agent").fetchall()
    assert {tuple(row[:2]): tuple(row) for row in stored} == expected


@postgresql_only
def test_postgresql_report_updates_stay_on_their_page(database):
    """Agent pages keep room (migration 11), so a report's update of its agents is a
    HOT update on PostgreSQL: a new row version on the same page, no index entry."""
    backend = PostgresBackend()
    sql = agent_upsert(backend, REPORT_COLUMNS)
    rows = [(f"n{i // 20}", f"a{i % 20}", "t", "1", pb.AGENT_STATUS_RUNNING, i, None, 0, -1, 0,
             "healthy", None, 1, 1, 1, "", None, 1, False, "") for i in range(2000)]
    assert database.execute_sql("SELECT reloptions FROM pg_class WHERE relname = 'agent'"
                                ).fetchone()[0] == ["fillfactor=50"]
    for seq in range(1, 5):
        with database.atomic():
            backend.upsert_many(database.cursor(), sql,
                                [r[:13] + (seq,) + r[14:] for r in rows], key=2)

    def counts():
        database.execute_sql("SELECT pg_stat_clear_snapshot()")
        return database.execute_sql("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                    "WHERE relname = 'agent'").fetchone()
    updated, hot = wait_for(lambda: counts()[0] >= 6000 and counts())
    assert hot >= 0.95 * updated


@postgresql_only
def test_postgresql_connections_are_pooled_but_the_writers_is_never_passed_on(db_url):
    """A connection_context() hands its PostgreSQL connection back to a pool, and the next
    one, in any thread, gets the same server backend (no new server process and
    authentication per registration or HTTP read); the writer's connection, which
    carries its lock timeout, is closed for good instead of being passed on."""
    from fleet.manager.store.writer import IngestWriter, Report
    db = open_database(db_url)
    migrate(db)

    def session():
        with db.connection_context():
            return db.execute_sql("SELECT pg_backend_pid(), current_setting('lock_timeout')"
                                  ).fetchone()
    first = session()
    seen = []
    other = threading.Thread(target=lambda: seen.append(session()))
    other.start()
    other.join()
    assert session() == first and seen == [first] and first[1] == "0"
    writer = IngestWriter(db, lock_timeout_ms=1234)
    writer.start()
    with pytest.raises(errors.NotFound):           # no such node: the write still ran
        writer.submit(Report("ghost", 1, None, False, [], (), 1))
    writer.stop()
    assert writer.batches == 1
    settings, both = [], threading.Barrier(2)

    def hold():                                     # two connections out of the pool at once
        with db.connection_context():
            settings.append(db.execute_sql("SELECT current_setting('lock_timeout')").fetchone()[0])
            both.wait(5)
    holders = [threading.Thread(target=hold) for _ in range(2)]
    for holder in holders:
        holder.start()
    for holder in holders:
        holder.join()
    assert settings == ["0", "0"]
    dbmod.close_database(db)


@postgresql_only
def test_postgresql_writer_statements_are_prepared_once_per_connection(db_url):
    """The writer's statements (the batch's node update, the agent upsert, a full
    report's delete) are prepared on the server at their first use on a connection
    and only executed after; a connection opened after a failure prepares them
    again, and every batch still stores what it should."""
    from fleet.manager.nodes import NodeFacts, NodeStore
    from fleet.manager.store.writer import IngestWriter, Report, Waiting
    db = open_database(db_url)
    migrate(db)
    NodeStore(db, Registry.load(db)).register(NodeFacts("n1", boot_id=1))
    writer = IngestWriter(db)       # not started: its batches run on this thread
    later = dbmod.now_ms() + 60_000 # than the registration's last_seen

    def batch(seq):
        row = (("n1", "a", "t", "1", pb.AGENT_STATUS_RUNNING, seq) + (None, 0, -1, 0, "healthy")
               + (None, 1, seq, 1, "", None, 1, False, ""))
        pending = Waiting(Report("n1", 1, seq, True, [row], (), later + seq), 0)
        writer._write([pending])
        assert pending.error is None
        return db.execute_sql("SELECT name, statement FROM pg_prepared_statements").fetchall()

    first = batch(1)
    prepared = dict(db.connection().prepared)
    assert len(first) == len(prepared) == 3
    assert {"UPDATE node", "INSERT INTO agent", "DELETE FROM agent"} == {
        next(k for k in ("UPDATE node", "INSERT INTO agent", "DELETE FROM agent")
             if k in text) for _, text in first}
    assert batch(2) == first and db.connection().prepared == prepared   # nothing new
    writer._close()                 # as after a failed batch: the connection is gone
    assert batch(3) == first and len(db.connection().prepared) == 3
    assert db.execute_sql("SELECT seq, pid FROM agent").fetchall() == [(3, 3)]
    assert db.execute_sql("SELECT seq, last_seen FROM node").fetchone() == (3, later + 3)
    writer._close()
    dbmod.close_database(db)


@postgresql_only
def test_postgresql_writer_finds_nodes_by_key_before_any_statistics(db_url):
    """The writer's node update looks its batch's nodes up in the index even on a
    table the server has no statistics for yet (a new database right after a mass
    registration), where the planner chose to read every node row, twice."""
    from fleet.manager.store.writer import IngestWriter
    db = open_database(db_url)
    migrate(db)
    db.execute_sql("INSERT INTO node (node_id, hostname, ip, advertise_address, os, arch, "
                   "labels, daemon_version, boot_id, seq, registered_at, last_seen) "
                   "SELECT 'n' || i, '', '', '', '', '', '{}', '', 1, 0, 0, 0 "
                   "FROM generate_series(1, 5000) i")
    db.close()
    writer = IngestWriter(db)
    writer._connect()               # the writer's session, on this thread
    ids = [f"n{i}" for i in range(100, 5000, 250)]      # a batch of 20 nodes
    plan = "\n".join(row[0] for row in db.execute_sql(
        "EXPLAIN " + writer._sql["touch"], (ids, ids) + tuple([1] * len(ids) for _ in range(4))))
    assert "Index Scan using node_node_id_key" in plan and "Nested Loop" in plan
    assert "Seq Scan on node" not in plan and "Hash Join" not in plan, plan
    writer._close()
    dbmod.close_database(db)


@sqlite_only
def test_sqlite_writers_take_turns_on_a_file_lock(database, tmp_path):
    """A group-commit writer waits its turn on a flock beside the database file, however
    long another process's writer holds it, instead of failing on SQLite's busy timeout
    (whose polling sleeps left two workers' writers waiting on each other's sleeps)."""
    backend = SQLiteBackend()
    mine, other = backend.writer_turn(database), backend.writer_turn(database)
    assert mine.path == database.database + "-writer.lock"
    assert isinstance(backend.writer_turn(open_database("sqlite:///:memory:")),
                      type(contextlib.nullcontext()))
    entered = threading.Event()
    with other:         # another open file: to flock, as good as another process
        waiter = threading.Thread(target=lambda: (mine.__enter__(), entered.set()))
        waiter.start()
        assert not entered.wait(0.5)
    assert entered.wait(5)
    mine.__exit__(None, None, None)
    waiter.join()
    mine.close()
    other.close()


def test_register_creates_and_updates_node(store, clock):
    """RegisterNode upserts the facts; registered_at stays, last_seen is the receive time."""
    store.register(NodeFacts("n1", hostname="h1", labels={"role": "edge"}, boot_id=1))
    first = store.get_node("n1")
    clock.now += 10
    store.register(NodeFacts("n1", hostname="h2", ip="10.0.0.2", boot_id=1))
    node = store.get_node("n1")
    assert set(node) == NODE_FIELDS
    assert (node["hostname"], node["ip"], node["labels"]) == ("h2", "10.0.0.2", {})
    assert node["registered_at"] == first["registered_at"]
    assert node["last_seen"] == first["last_seen"] + 10_000


def test_register_seq_restarts_only_with_new_boot(store, database):
    """A new boot resets the stored seq; the same boot keeps it."""
    store.register(NodeFacts("n1", boot_id=1))
    with database.connection_context():
        Node.update(seq=7).where(Node.node_id == "n1").execute(database)
    store.register(NodeFacts("n1", boot_id=1))
    assert Registry.load(database).get("n1") == (1, 7)
    store.register(NodeFacts("n1", boot_id=2))
    assert Registry.load(database).get("n1") == (2, 0)


def test_register_rejects_bad_node_id(store):
    """A malformed node_id is InvalidArgument and nothing is stored."""
    for bad in ("", "../x", "a..b", "-x", "x" * 129):
        with pytest.raises(errors.InvalidArgument):
            store.register(NodeFacts(bad))
    assert store.list_nodes() == []


def test_node_status_computed_at_read_time(store, clock):
    """A node is offline once offline_after has passed since last_seen, read-time."""
    store.register(NodeFacts("n1"))
    assert [n["node_id"] for n in store.list_nodes(status="online")] == ["n1"]
    clock.now += 91
    assert store.get_node("n1")["status"] == "offline"
    assert store.list_nodes(status="online") == []
    assert [n["node_id"] for n in store.list_nodes(status="offline")] == ["n1"]
    with pytest.raises(errors.InvalidArgument):
        store.list_nodes(status="gone")


def test_list_nodes_label_filter(store):
    """label=k=v keeps only nodes with that label; several must all match."""
    store.register(NodeFacts("a", labels={"role": "edge", "dc": "x"}))
    store.register(NodeFacts("b", labels={"role": "core"}))
    assert [n["node_id"] for n in store.list_nodes(label="role=edge")] == ["a"]
    assert [n["node_id"] for n in store.list_nodes(label=["role=edge", "dc=y"])] == []
    with pytest.raises(errors.InvalidArgument):
        store.list_nodes(label="role")


def test_unknown_node_not_found(store):
    """Reads of an unknown node raise NotFound naming it."""
    for call in (store.get_node, store.list_agents, store.delete_node):
        with pytest.raises(errors.NotFound, match="node 'nx' not found"):
            call("nx")
    with pytest.raises(errors.NotFound):
        store.store_agent_infos("nx", [info("a")])


def test_delete_node_refused_while_online(store, clock):
    """Deleting an online node is a Conflict; offline it goes with its agents."""
    store.register(NodeFacts("n1"))
    store.store_agent_infos("n1", [info("a1")])
    with pytest.raises(errors.Conflict):
        store.delete_node("n1")
    clock.now += 100
    store.delete_node("n1")
    with pytest.raises(errors.NotFound):
        store.get_node("n1")
    assert Agent.select().where(Agent.node_id == "n1").count(store._db) == 0
    assert "n1" not in store._registry


def test_store_agent_infos_full_pull(store):
    """A full pull upserts every agent and deletes the node's others, same transaction."""
    store.register(NodeFacts("n1"))
    store.store_agent_infos("n1", [info("a1"), info("a2")])
    agents = store.store_agent_infos("n1", [info("a2", pb.AGENT_STATUS_BACKOFF,
                                                   next_retry_time=5, last_error="boom")])
    assert [a["agent_id"] for a in agents] == ["a2"]
    assert set(agents[0]) == set(AGENT_FIELDS)
    assert (agents[0]["status"], agents[0]["next_retry_time"], agents[0]["last_error"]) == \
        ("backoff", 5, "boom")


def test_pull_skips_invalid_infos_and_keeps_type(store):
    """Invalid pulled infos are skipped; the type of an existing row never changes."""
    store.register(NodeFacts("n1"))
    store.store_agent_infos("n1", [info("a1", type="first")])
    agents = store.store_agent_infos("n1", [info("a1", type="second"), info("bad id"),
                                            info("a3", pb.AGENT_STATUS_UNSPECIFIED)])
    assert [(a["agent_id"], a["type"]) for a in agents] == [("a1", "first")]


def test_update_agent_after_operate(store):
    """update_agent stores one operated agent and returns its stored dict; unset times None."""
    store.register(NodeFacts("n1"))
    store.store_agent_infos("n1", [info("a1"), info("a2")])
    agent = store.update_agent("n1", info("a1", pb.AGENT_STATUS_STOPPED, last_exit_code=0))
    assert (agent["status"], agent["pid"], agent["start_time"]) == ("stopped", 0, None)
    assert len(store.list_agents("n1")) == 2
    with pytest.raises(errors.NotFound, match="agent 'zz'"):
        store.get_agent("n1", "zz")


def test_registry_tracks_newest_boot_and_seq():
    """advance only moves forward; set replaces; forget drops the node."""
    registry = Registry()
    registry.advance("n1", 1, 1)
    assert registry.get("n1") is None
    registry.set("n1", 2, 5)
    registry.advance("n1", 2, 4)
    registry.advance("n1", 2, 6)
    assert registry.get("n1") == (2, 6)
    registry.forget("n1")
    assert "n1" not in registry and len(registry) == 0


def test_migration_3_adds_the_reported_fields_to_a_version_2_database(db_url, monkeypatch):
    """A version 2 database gains agent changed_at/config_changed and node stopped_at,
    keeping its rows (unset, false, unset)."""
    url = db_url
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    db = open_database(url)
    assert migrate(db) == 2
    with db.connection_context():
        db.execute_sql("INSERT INTO node (node_id, registered_at, last_seen) VALUES ('n1', 1, 1)")
        db.execute_sql("INSERT INTO agent (node_id, agent_id, status) VALUES ('n1', 'a', 3)")
    monkeypatch.undo()
    assert migrate(open_database(url)) == migrations.MIGRATIONS[-1][0]
    with db.connection_context():
        row = Agent.get(Agent.agent_id == "a")
        assert (row.status, row.changed_at, row.config_changed) == (3, None, False)
        assert Node.get(Node.node_id == "n1").stopped_at is None
    dbmod.close_database(db)


def test_migration_5_adds_health_message_keeping_the_rows(db_url, monkeypatch):
    """A version 3 database gains agent.health_message, empty on the rows it keeps."""
    url = db_url
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        tuple(m for m in migrations.MIGRATIONS if m[0] <= 3))
    db = open_database(url)
    assert migrate(db) == 3
    with db.connection_context():
        db.execute_sql("INSERT INTO agent (node_id, agent_id, status) VALUES ('n1', 'a', 3)")
    monkeypatch.undo()
    assert migrate(open_database(url)) == migrations.MIGRATIONS[-1][0]
    with db.connection_context():
        assert Agent.get(Agent.agent_id == "a").health_message == ""
    dbmod.close_database(db)


def test_a_new_file_another_connection_holds_is_waited_for_not_refused(tmp_path):
    """Turning a new file to WAL needs an exclusive lock that SQLite asks for once,
    without its busy handler: opening fleet's database while another connection is
    in a transaction on that new file waits for it (up to the busy timeout) instead
    of failing at once with "database is locked"."""
    path = str(tmp_path / "fleet.db")
    holder = sqlite3.connect(path, isolation_level=None,    # rollback journal, as new
                             check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE other (x)")
    release = threading.Timer(0.5, holder.execute, ("COMMIT",))
    release.start()
    try:
        db = open_database(f"sqlite:///{path}")
        assert migrate(db) == migrations.MIGRATIONS[-1][0]
        assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        dbmod.close_database(db)
    finally:
        release.join()
        holder.close()


def test_concurrent_migrations_of_a_fresh_database_all_succeed(db_url):
    """Managers starting at once on one empty database each migrate it or find it migrated."""
    results, failures = [], []

    def start():
        try:
            db = open_database(db_url)
            results.append(migrate(db))
            dbmod.close_database(db)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == [] and results == [migrations.MIGRATIONS[-1][0]] * 6
    again = open_database(db_url)
    with again.connection_context():
        versions = again.execute_sql("SELECT COUNT(*) FROM schema_version").fetchone()[0]
    assert versions == len(migrations.MIGRATIONS)


@postgresql_only
def test_deleting_a_node_waits_for_a_report_writing_it(store, database, db_url, clock):
    """A node deleted while a report's transaction writes it takes the rows that report
    added too (PostgreSQL: the delete locks the node row before reading its agents)."""
    import psycopg2
    store.register(NodeFacts("n1"))
    clock.now += 100                                    # offline: deletable
    writer = psycopg2.connect(db_url)                   # a report's transaction, mid-way
    cursor = writer.cursor()
    cursor.execute("INSERT INTO agent (node_id, agent_id, status) VALUES ('n1', 'late', 3)")
    cursor.execute("UPDATE node SET last_seen = last_seen WHERE node_id = 'n1'")
    deleting = threading.Thread(target=store.delete_node, args=("n1",))
    deleting.start()
    wait_for(lambda: _waiting_for_a_lock(db_url), timeout=10)
    writer.commit()                                     # its orphan check saw the node
    deleting.join(10)
    writer.close()
    with database.connection_context():
        assert Agent.select().where(Agent.node_id == "n1").count(database) == 0


def _waiting_for_a_lock(url):
    """True while a session of the database waits for a lock."""
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                       "AND datname = current_database()")
        return cursor.fetchone()[0] > 0
    finally:
        conn.close()


@postgresql_only
def test_a_cancelled_statement_is_unavailable_not_a_bug(database):
    """PostgreSQL's QueryCanceled (statement_timeout; like DeadlockDetected, two classes
    below OperationalError) raised by peewee or a raw cursor is errors.Unavailable."""

    @dbmod.storage_faults
    def slow(raw):
        with database.connection_context():
            database.execute_sql("SET statement_timeout = 50")
            if raw:
                database.cursor().execute("SELECT pg_sleep(5)")
            else:
                database.execute_sql("SELECT pg_sleep(5)")

    for raw in (False, True):
        with pytest.raises(errors.Unavailable, match="statement timeout"):
            slow(raw)


def test_an_operate_result_wins_over_a_report_another_manager_stored(store, database):
    """A pulled agent is stamped with the node's stored seq, not this manager's cached one:
    it replaces the state a report through another manager stored meanwhile."""
    store.register(NodeFacts("n1"))
    store.store_agent_infos("n1", [info("a1", pid=111)])
    with database.atomic():     # another manager's report: seq 10, in node and agent rows
        database.execute_sql("UPDATE node SET seq = 10 WHERE node_id = 'n1'")
        database.execute_sql("UPDATE agent SET seq = 10, pid = 112 WHERE node_id = 'n1'")
    assert store.update_agent("n1", info("a1", pid=222))["pid"] == 222


STATUSES = (pb.AGENT_STATUS_RUNNING, pb.AGENT_STATUS_STOPPED, pb.AGENT_STATUS_BACKOFF)
report_rows = st.lists(st.tuples(
    st.sampled_from(["n1", "n2"]), st.sampled_from(["a", "b"]),            # the key
    st.sampled_from(["", "t1", "t2"]), st.sampled_from(STATUSES),         # type, status
    st.sampled_from(["healthy", "unhealthy", "unknown"]),                  # health
    st.integers(1, 2), st.integers(1, 4), st.integers(0, 9)), max_size=8)  # boot, seq, pid


def as_report_row(node_id, agent_id, type_, status, health, boot, seq, pid):
    return (node_id, agent_id, type_, "1", status, pid, None, 0, -1, 0, health, None, boot, seq,
            1, "", None, 1, False, "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(report_rows, min_size=1, max_size=5))
def test_sqlite_split_agent_upsert_stores_what_one_statement_does(batches):
    """On SQLite the report upsert leaves status and health to a second statement that
    assigns them only where they changed; any sequence of batches (keys repeated in
    one, older rows, equal versions, a type set once) ends as the one-statement upsert
    leaves it."""
    where = tempfile.mkdtemp(prefix="fleet-split-")
    split, single = (open_database(f"sqlite:///{where}/{name}.db") for name in ("split", "one"))
    for db in (split, single):
        migrate(db)
    backend = SQLiteBackend()
    upsert = AgentUpsert(backend, REPORT_COLUMNS)
    assert upsert.keys_sql is not None and "status = excluded.status" not in upsert.sql
    one_statement = agent_upsert(backend, REPORT_COLUMNS)
    for batch in batches:
        rows = [as_report_row(*row) for row in batch]
        with split.atomic():
            upsert.run(split.cursor(), rows)
        with single.atomic():
            backend.upsert_many(single.cursor(), one_statement, rows, key=2)
    query = f"SELECT {', '.join(REPORT_COLUMNS)} FROM agent ORDER BY node_id, agent_id"
    assert split.execute_sql(query).fetchall() == single.execute_sql(query).fetchall()
    for db in (split, single):
        db.close()
    shutil.rmtree(where)


@sqlite_only
def test_sqlite_report_upsert_leaves_the_views_indexes_alone_when_their_keys_stay(database):
    """A report whose states keep their status and health writes fewer pages than the
    one-statement upsert, which rewrites the entries of the views' indexes on them
    (agent_status_key, agent_health_key) for every row."""
    backend = SQLiteBackend()
    rows = [as_report_row(f"n{n:03d}", f"a{a:02d}", "t", pb.AGENT_STATUS_RUNNING, "healthy",
                          1, 1, a) for n in range(100) for a in range(20)]

    def frames_written(write):
        database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        with database.atomic():
            write(database.cursor())
        return database.execute_sql("PRAGMA wal_checkpoint(NOOP)").fetchone()[1]

    upsert = AgentUpsert(backend, REPORT_COLUMNS)
    frames_written(lambda cursor: upsert.run(cursor, rows))                  # the rows exist
    newer = [row[:13] + (2,) + row[14:] for row in rows]
    split = frames_written(lambda cursor: upsert.run(cursor, newer))
    newest = [row[:13] + (3,) + row[14:] for row in rows]
    single = frames_written(lambda cursor: backend.upsert_many(
        cursor, agent_upsert(backend, REPORT_COLUMNS), newest, key=2))
    assert split < single * 0.75, (split, single)
    stored = database.execute_sql("SELECT DISTINCT seq, status, health, type FROM agent").fetchall()
    assert stored == [(3, pb.AGENT_STATUS_RUNNING, "healthy", "t")]
