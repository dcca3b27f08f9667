"""The schema's migrations: each one in order, once, in one transaction.

`migrate(db)` brings a database opened by fleet.manager.store.db.open_database to
the newest version, at every start and from several processes at once: the
migrations run under the backend's schema lock (BEGIN IMMEDIATE on SQLite, an
advisory lock on PostgreSQL) and `schema_version` records each applied one.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import peewee

from fleet import errors
from fleet.manager.store.backends import Backend, backend_of
from fleet.manager.store.db import now_ms

log = logging.getLogger(__name__)


def _execute_all(db: peewee.Database, statements: Sequence[str]) -> None:
    """Run a migration's statements in order (inside migrate()'s transaction)."""
    for statement in statements:
        db.execute_sql(statement)


def _migration_1(db: peewee.Database, backend: Backend) -> None:
    """node and agent tables (DESIGN.md, "Storage")."""
    statements = [
        f"""CREATE TABLE node ({backend.auto_pk()},
            node_id VARCHAR(128) NOT NULL UNIQUE, hostname TEXT NOT NULL DEFAULT '',
            ip TEXT NOT NULL DEFAULT '', advertise_address TEXT NOT NULL DEFAULT '',
            os TEXT NOT NULL DEFAULT '', arch TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{{}}', daemon_version TEXT NOT NULL DEFAULT '',
            boot_id BIGINT NOT NULL DEFAULT 0, seq BIGINT NOT NULL DEFAULT 0,
            registered_at BIGINT NOT NULL, last_seen BIGINT)""",
        f"""CREATE TABLE agent ({backend.auto_pk()},
            node_id VARCHAR(128) NOT NULL, agent_id VARCHAR(64) NOT NULL,
            type TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '',
            status INTEGER NOT NULL, pid BIGINT NOT NULL DEFAULT 0, start_time BIGINT,
            restart_count BIGINT NOT NULL DEFAULT 0, last_exit_code BIGINT NOT NULL DEFAULT -1,
            last_exit_signal BIGINT NOT NULL DEFAULT 0, health TEXT NOT NULL DEFAULT 'unknown',
            last_error TEXT NOT NULL DEFAULT '', next_retry_time BIGINT, last_heartbeat BIGINT,
            boot_id BIGINT NOT NULL DEFAULT 0, seq BIGINT NOT NULL DEFAULT 0,
            last_sync_time BIGINT)""",
        "CREATE UNIQUE INDEX agent_node_id_agent_id ON agent (node_id, agent_id)",
    ]
    _execute_all(db, statements)


def _migration_2(db: peewee.Database, backend: Backend) -> None:
    """audit table: one row per operation (fleet.manager.audit), read newest first."""
    statements = [
        f"""CREATE TABLE audit ({backend.auto_pk()},
            time BIGINT NOT NULL, actor TEXT NOT NULL, node_id VARCHAR(128) NOT NULL,
            agent_id VARCHAR(64), operation VARCHAR(16) NOT NULL, result VARCHAR(32) NOT NULL,
            message TEXT NOT NULL DEFAULT '', duration_ms BIGINT NOT NULL)""",
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_node_id_time ON audit (node_id, time)",
    ]
    _execute_all(db, statements)


def _migration_3(db: peewee.Database, backend: Backend) -> None:
    """Reports carry every agent field (changed_at, config_changed); a node's clean stop."""
    statements = [
        "ALTER TABLE agent ADD COLUMN changed_at BIGINT",
        "ALTER TABLE agent ADD COLUMN config_changed BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE node ADD COLUMN stopped_at BIGINT",
    ]
    _execute_all(db, statements)


def _migration_4(db: peewee.Database, backend: Backend) -> None:
    """event table: agents' histories (fleet.manager.events), each event stored once."""
    statements = [
        f"""CREATE TABLE event ({backend.auto_pk()},
            node_id VARCHAR(128) NOT NULL, agent_id VARCHAR(64) NOT NULL,
            seq BIGINT NOT NULL, time BIGINT NOT NULL, kind VARCHAR(16) NOT NULL,
            message TEXT NOT NULL DEFAULT '', pid BIGINT NOT NULL DEFAULT 0,
            exit_code BIGINT NOT NULL DEFAULT -1, exit_signal BIGINT NOT NULL DEFAULT 0,
            received BIGINT NOT NULL)""",
        # What makes a resent event the same one; also serves one agent's history.
        "CREATE UNIQUE INDEX event_identity ON event (node_id, agent_id, seq, time)",
        "CREATE INDEX event_time ON event (time, id)",
        "CREATE INDEX event_node_agent_time ON event (node_id, agent_id, time, id)",
        "CREATE INDEX event_node_time ON event (node_id, time, id)",
        "CREATE INDEX event_kind_time ON event (kind, time, id)",
    ]
    _execute_all(db, statements)


def _migration_5(db: peewee.Database, backend: Backend) -> None:
    """Every agent carries health_message: why it is not healthy, in words."""
    db.execute_sql("ALTER TABLE agent ADD COLUMN health_message TEXT NOT NULL DEFAULT ''")


def _migration_6(db: peewee.Database, backend: Backend) -> None:
    """Fleet-wide agent views (fleet.manager.views): each filter is an index range
    read in page order (node_id, agent_id), never a scan of the agent table."""
    for column in ("status", "health", "type"):
        db.execute_sql(f"CREATE INDEX agent_{column}_key ON agent ({column}, node_id, agent_id)")
def _migration_7(db: peewee.Database, backend: Backend) -> None:
    """Node metrics (fleet.manager.nodemetrics): raw samples for an hour, one-minute
    rollups (means, peak cpu, sample count), and each node's latest sample."""
    floats = ("cpu", "load1", "load5", "load15", "disk_read_rate", "disk_write_rate",
              "net_rx_rate", "net_tx_rate")
    ints = ("memory_used", "memory_total", "swap_used", "swap_total", "disk_used",
            "disk_total")
    raw = ", ".join([f"{c} DOUBLE PRECISION NOT NULL" for c in floats]
                    + [f"{c} BIGINT NOT NULL" for c in ints])
    means = ", ".join(f"{c} DOUBLE PRECISION NOT NULL" for c in floats + ints)
    statements = [
        f"""CREATE TABLE node_metric (node_id VARCHAR(128) NOT NULL, time BIGINT NOT NULL,
            resolution DOUBLE PRECISION NOT NULL, {raw}, PRIMARY KEY (node_id, time))""",
        "CREATE INDEX node_metric_time ON node_metric (time)",
        f"""CREATE TABLE node_metric_minute (node_id VARCHAR(128) NOT NULL,
            minute BIGINT NOT NULL, cpu_max DOUBLE PRECISION NOT NULL,
            samples INTEGER NOT NULL, {means}, PRIMARY KEY (node_id, minute))""",
        "CREATE INDEX node_metric_minute_minute ON node_metric_minute (minute)",
        """CREATE TABLE node_resources (node_id VARCHAR(128) NOT NULL PRIMARY KEY,
            time BIGINT NOT NULL, sample TEXT NOT NULL)""",
    ]
    _execute_all(db, statements)


# (version, function): append only; a released migration never changes.
def _migration_8(db: peewee.Database, backend: Backend) -> None:
    """lease table: duties done by one manager at a time (fleet.manager.store.lease)."""
    db.execute_sql("""CREATE TABLE lease (name VARCHAR(64) NOT NULL PRIMARY KEY,
        holder VARCHAR(160) NOT NULL, expires_at BIGINT NOT NULL)""")


def _migration_9(db: peewee.Database, backend: Backend) -> None:
    """Policies (fleet.manager.changes.policystore): every version of each policy (a delete is a
    version too, deleted), each node's last reported result per policy, and the pins
    that hold a node at one version of a policy while a rollout releases it."""
    statements = [
        """CREATE TABLE policy (name VARCHAR(64) NOT NULL, version BIGINT NOT NULL,
            selector TEXT NOT NULL, agents TEXT NOT NULL, updated_at BIGINT NOT NULL,
            deleted BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (name, version))""",
        """CREATE TABLE policy_status (node_id VARCHAR(128) NOT NULL,
            policy VARCHAR(64) NOT NULL, version BIGINT NOT NULL, applied BOOLEAN NOT NULL,
            reason TEXT NOT NULL DEFAULT '', conflicts TEXT NOT NULL DEFAULT '[]',
            reported_at BIGINT NOT NULL, PRIMARY KEY (node_id, policy))""",
        "CREATE INDEX policy_status_policy ON policy_status (policy, node_id)",
        """CREATE TABLE policy_pin (node_id VARCHAR(128) NOT NULL,
            policy VARCHAR(64) NOT NULL, version BIGINT NOT NULL,
            PRIMARY KEY (node_id, policy))""",
        "CREATE INDEX policy_pin_policy ON policy_pin (policy, node_id)",
    ]
    _execute_all(db, statements)


def _migration_10(db: peewee.Database, backend: Backend) -> None:
    """Rollouts (fleet.manager.changes.rollouts): one row per rollout, one per node it covers,
    each state change written as it happens so another manager can resume it."""
    statements = [
        f"""CREATE TABLE rollout ({backend.auto_pk()},
            operation VARCHAR(16) NOT NULL DEFAULT '', agent_id VARCHAR(64) NOT NULL DEFAULT '',
            policy VARCHAR(128), selector TEXT NOT NULL, max_parallel INTEGER NOT NULL,
            max_failures INTEGER NOT NULL, wait_seconds INTEGER NOT NULL,
            status VARCHAR(16) NOT NULL, actor TEXT NOT NULL DEFAULT '',
            created_at BIGINT NOT NULL, finished_at BIGINT)""",
        "CREATE INDEX rollout_status ON rollout (status, id)",
        """CREATE TABLE rollout_node (rollout_id BIGINT NOT NULL, node_id VARCHAR(128) NOT NULL,
            status VARCHAR(16) NOT NULL, message TEXT NOT NULL DEFAULT '',
            operated BOOLEAN NOT NULL DEFAULT FALSE, old_pid BIGINT NOT NULL DEFAULT 0,
            started_at BIGINT, deadline BIGINT, finished_at BIGINT,
            PRIMARY KEY (rollout_id, node_id))""",
        "CREATE INDEX rollout_node_status ON rollout_node (status, rollout_id)",
    ]
    _execute_all(db, statements)


def _migration_11(db: peewee.Database, backend: Backend) -> None:
    """Half of each agent page left free: every report rewrites its agents' rows, never
    an indexed column of theirs (status, health and type rarely change), so on
    PostgreSQL the new versions stay on their page and no index is touched (HOT
    updates: the upsert of 1,000 rows executed in 17 ms instead of 48 in EXPLAIN
    ANALYZE on the bench server).
    Nothing on SQLite, which updates rows in place."""
    _execute_all(db, backend.room_for_updates("agent", 50))


MIGRATIONS: tuple[tuple[int, Callable[[peewee.Database, Backend], None]], ...] = (
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
    (6, _migration_6),
    (7, _migration_7),
    (8, _migration_8),
    (9, _migration_9),
    (10, _migration_10),
    (11, _migration_11),
)


def migrate(db: peewee.Database) -> int:
    """Apply the migrations the database lacks, in one transaction; the new version.

    Safe to run at every start and from several processes at once. Raises
    Unavailable when the database cannot be reached or written.
    """
    backend = backend_of(db)
    try:
        with db.connection_context(), db.atomic():
            backend.lock_schema(db)
            db.execute_sql("CREATE TABLE IF NOT EXISTS schema_version "
                           "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            return _apply_missing(db, backend)
    except peewee.DatabaseError as exc:
        raise errors.Unavailable(f"database {db.database!r}: {exc}") from exc


def _apply_missing(db: peewee.Database, backend: Backend) -> int:
    row = db.execute_sql("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    for version, apply in MIGRATIONS:
        if version > current:
            log.info("applying database migration %d", version)
            apply(db, backend)
            db.execute_sql(backend.sql("INSERT INTO schema_version (version, applied_at) "
                                       "VALUES (?, ?)"), (version, now_ms()))
            current = version
    return current


def schema_version(db: peewee.Database) -> int:
    """The highest applied migration, 0 for an empty database."""
    with db.connection_context():
        if "schema_version" not in db.get_tables():
            return 0
        return db.execute_sql("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0

