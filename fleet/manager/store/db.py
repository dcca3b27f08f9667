"""Opening the manager's database (its migrations: migrations.py; the engines'
differences: backends.py).

`open_database(url)` picks the backend from the URL:
    sqlite:///fleet.db (relative), sqlite:////var/lib/fleet.db (absolute),
    postgresql://user:pass@host:5432/fleet (psycopg2, imported only then).
Everything SQLite- or PostgreSQL-specific (pragmas, placeholders, the bulk
upsert call, schema locking, auto-increment keys) lives in the Backend classes
(fleet.manager.store.backends); models and queries elsewhere stay portable.

SQLite: WAL, synchronous=NORMAL, a busy timeout, peewee's per-thread
connections, and every transaction `BEGIN IMMEDIATE` (the database's default
lock_type), so no transaction ever reads under a shared lock and then fails to
upgrade it to write.

PostgreSQL: READ COMMITTED, its default. What BEGIN IMMEDIATE serialises on
SQLite, row locks taken in one order do there (a node's row, then its agents
and events by key: IngestWriter._apply); migrations take an advisory lock.
"""
from __future__ import annotations

import functools
import logging
import sqlite3
import time
import urllib.parse
from typing import Any, Callable

import peewee
from playhouse.pool import PooledDatabase, PooledPostgresqlDatabase  # shipped with peewee

from fleet import errors
from fleet.manager.store import models, pgprepared
from fleet.manager.store.backends import (  # noqa: F401 - re-exported: their old home
    SCHEMA_LOCK_KEY, Backend, PostgresBackend, SQLiteBackend, backend_of, distinct_rounds)

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_MS = 5000
PRAGMA_RETRY_SECONDS = 0.01     # between tries of a connection's pragmas on a locked file
POOL_RECYCLE_SECONDS = 300      # a pooled PostgreSQL connection is replaced at this age


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """The current time in Unix milliseconds."""
    return int(clock() * 1000)


class _DriverErrors(peewee.ExceptionWrapper):
    """peewee's translation of a driver's errors into its own kinds, looking through
    every base class: psycopg2's DeadlockDetected and SerializationFailure (under
    TransactionRollbackError) and QueryCanceled sit two levels below OperationalError,
    past the one level peewee's own wrapper looks; and raw cursors (bulk upserts) are
    not wrapped by peewee at all."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is None or isinstance(exc_value, peewee.PeeweeException):
            return
        for base in exc_type.__mro__:
            if base.__name__ in self.exceptions:
                raise self.exceptions[base.__name__](
                    exc_value, *exc_value.args).with_traceback(traceback)


# `with DRIVER_ERRORS:` around a driver's calls raises peewee's kinds of errors.
DRIVER_ERRORS = _DriverErrors(peewee.EXCEPTIONS)


def storage_faults(function: Callable) -> Callable:
    """Decorator: the database failing to operate (locked, disk full, I/O error, connection
    lost, a deadlock) raises errors.Unavailable (HTTP 503, gRPC UNAVAILABLE), not a bug's
    500, whether peewee or a raw cursor raised it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with DRIVER_ERRORS:
                return function(*args, **kwargs)
        except peewee.OperationalError as exc:
            raise errors.Unavailable(f"database unavailable: {exc}") from exc

    return wrapper


# ---- opening ----------------------------------------------------------------

def open_database(url: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> peewee.Database:
    """A peewee database for `url`, not yet connected; binds the models to it.

    Connections are per thread and opened on first use; close a thread's own
    with `db.close()` (or use `with db.connection_context():`). Raises
    ConfigError for a URL it cannot use or a missing PostgreSQL driver.
    """
    if url.startswith("sqlite:///"):
        db = _open_sqlite(url[len("sqlite:///"):], busy_timeout_ms)
    elif url.startswith(("postgresql://", "postgres://")):
        db = _open_postgres(url)
    else:
        raise errors.ConfigError([f"[manager] db: not sqlite:///PATH or postgresql://...: {url!r}"])
    models.database_proxy.initialize(db)
    return db


class _SqliteDatabase(peewee.SqliteDatabase):
    """peewee's SqliteDatabase whose rollback leaves alone a transaction SQLite ended itself.

    On SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY or SQLITE_NOMEM SQLite may roll the
    transaction back on its own; peewee's ROLLBACK would then fail with "cannot
    rollback - no transaction is active" and hide the real error (a full disk).
    """

    def rollback(self) -> None:
        if not self.is_closed() and not self.connection().in_transaction:
            return
        super().rollback()

    def _set_pragmas(self, conn) -> None:
        # Turning a new file to WAL (journal_mode) takes an exclusive lock, which SQLite
        # asks for once, without its busy handler: a manager starting beside another
        # that is migrating the same new file got "database is locked" at once (8 of
        # 200 trials of six at a time). The pragmas are retried until the busy timeout.
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                super()._set_pragmas(conn)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(PRAGMA_RETRY_SECONDS)


def _open_sqlite(path: str, busy_timeout_ms: int) -> peewee.SqliteDatabase:
    if not path:
        raise errors.ConfigError(["[manager] db: sqlite:/// needs a file path"])
    pragmas = {
        "journal_mode": "wal",          # readers never block the writer
        "synchronous": "normal",        # durable at checkpoints; safe with WAL
        "busy_timeout": int(busy_timeout_ms),
        "foreign_keys": 0,
    }
    # lock_type makes every peewee transaction BEGIN IMMEDIATE.
    return _SqliteDatabase(path, pragmas=pragmas, lock_type="IMMEDIATE",
                           timeout=busy_timeout_ms / 1000.0, check_same_thread=False)


def _open_postgres(url: str) -> peewee.PostgresqlDatabase:
    try:
        import psycopg2  # noqa: F401 - optional: only PostgreSQL users need it
    except ImportError as exc:
        raise errors.ConfigError(["[manager] db: PostgreSQL needs the psycopg2 driver "
                                  "(pip install psycopg2-binary)"]) from exc
    parts = urllib.parse.urlsplit(url)
    name = urllib.parse.unquote(parts.path.lstrip("/"))
    if not name:
        raise errors.ConfigError(["[manager] db: postgresql URL names no database"])
    params: dict[str, Any] = dict(urllib.parse.parse_qsl(parts.query))
    if parts.username:
        params["user"] = urllib.parse.unquote(parts.username)
    if parts.password:
        params["password"] = urllib.parse.unquote(parts.password)
    if parts.hostname:
        params["host"] = parts.hostname
    if parts.port:
        params["port"] = parts.port
    # Pooled: a connection_context() hands its connection back instead of closing
    # it. Opening one is a new server process and an authentication (milliseconds),
    # and every registration, HTTP read and node-metrics batch opens one.
    # The connections remember the writer's prepared statements (pgprepared).
    return PooledPostgresqlDatabase(name, max_connections=None,
                                    stale_timeout=POOL_RECYCLE_SECONDS,
                                    connection_factory=pgprepared.connection_class(), **params)


def close_database(db: peewee.Database) -> None:
    """Close the calling thread's connection, if open (others close their own), and
    the idle connections of a pool."""
    if not db.is_closed():
        db.close()
    if isinstance(db, PooledDatabase):
        db.close_idle()


def discard_connection(db: peewee.Database) -> None:
    """Close the calling thread's connection for good: a pooled one whose session was
    changed (a lock timeout) or broke is not handed to the next thread."""
    if isinstance(db, PooledDatabase):
        db.manual_close()
    elif not db.is_closed():
        db.close()
