"""What differs between the database engines the manager runs on, behind one interface.

`backend_of(db)` gives the adapter of a database opened by
`fleet.manager.store.db.open_database`: placeholders, the bulk upsert call,
schema locking, row locking, lock timeouts and auto-increment keys. Models and
queries elsewhere stay portable.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import operator
import os
import re
import sqlite3
from typing import Any, ContextManager, Optional, Sequence

import peewee

from fleet.manager.store import pgjson
from fleet.manager.store.checkpoint import Checkpointer, relieve

log = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x666C656574   # PostgreSQL advisory lock of migrations ("fleet")
SCANS_THE_WRITER_NEVER_NEEDS = ("seqscan", "hashjoin", "mergejoin")   # PostgreSQL planner


class Backend:
    """What differs between database engines, behind one small interface."""

    name = "generic"
    param = "?"
    # Whether an UPDATE rewrites the entries of each index on a column it assigns,
    # even one it assigns its own value (fleet.manager.ingest.AgentUpsert).
    rewrites_assigned_indexes = False
    # Whether the server parses and plans every statement it is sent (no statement
    # cache): a statement per row costs that many times over, so rows go as arrays.
    plans_every_statement = False

    def sql(self, text: str) -> str:
        """`text` written with `?` placeholders, in this backend's style."""
        return text if self.param == "?" else text.replace("?", self.param)

    def upsert(self, table: str, columns: Sequence[str], conflict: Sequence[str],
               updates: dict[str, str], where: str = "", bulk: bool = False) -> str:
        """An INSERT ... ON CONFLICT DO UPDATE statement.

        `updates` maps a column to its new value's SQL (may use excluded.COL and
        TABLE.COL); `where`, if given, guards the update, so a conflicting row it
        rejects stays as it was. A `bulk` statement is for `upsert_many`, the
        other for one `execute` with one row of parameters.
        """
        sets = ", ".join(f"{col} = {expr}" for col, expr in updates.items())
        values = self._bulk_values(len(columns)) if bulk else self._values(len(columns))
        guard = f" WHERE {where}" if where else ""
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "
                f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {sets}{guard}")

    def insert_ignoring(self, table: str, columns: Sequence[str], conflict: Sequence[str]) -> str:
        """A bulk INSERT (for `upsert_many`) that skips a row whose `conflict` key is stored."""
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"{self._bulk_values(len(columns))} ON CONFLICT ({', '.join(conflict)}) DO NOTHING")

    def _values(self, count: int) -> str:
        return "(" + ", ".join([self.param] * count) + ")"

    def _bulk_values(self, count: int) -> str:
        return self._values(count)

    def upsert_many(self, cursor: Any, statement: str, rows: Sequence[tuple],
                    key: int = 0) -> None:
        """Run an `upsert` statement for every row, on an open transaction's cursor.

        `key`: how many leading values of a row are its conflict key. Rows
        repeating a key are applied in their order, as one statement per row
        would be (SQLite's executemany is just that); PostgreSQL also locks the
        rows in key order, so that two transactions never deadlock on them.
        """
        cursor.executemany(statement, rows)

    def execute_many(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        """Run one parameterised statement (from `sql()`) for every row."""
        cursor.executemany(sql, rows)

    def auto_pk(self) -> str:
        """Column definition of an auto-incremented integer primary key."""
        raise NotImplementedError

    def lock_schema(self, db: peewee.Database) -> None:
        """Serialise concurrent migrations (called first inside their transaction)."""

    def for_update(self, query: peewee.Select) -> peewee.Select:
        """`query` locking the rows it reads until the end of the transaction."""
        return query

    def writer_session(self, db: peewee.Database, lock_timeout_ms: int) -> None:
        """Set up this thread's connection, the group-commit writer's own (never handed
        to another thread): how long it waits for a lock before failing, and what
        else its statements need."""

    def room_for_updates(self, table: str, percent: int) -> list[str]:
        """Statements keeping `percent` of each page of `table` free for new versions of
        its rows (none where the engine has no such setting)."""
        return []

    def writer_turn(self, db: peewee.Database) -> ContextManager:
        """What a group-commit writer holds around each of its transactions, so that
        the writers of several processes on one database take turns without
        spinning (a reusable context manager; nothing where the engine needs nothing)."""
        return contextlib.nullcontext()

    def checkpointer(self, db: peewee.Database, turn: ContextManager) -> Optional[Checkpointer]:
        """What copies the engine's log back into the database beside a writer that
        holds `turn` (None where the engine does that itself)."""
        return None

    def relieve_writer(self, db: peewee.Database) -> None:
        """Leave the checkpoints of this thread's connection, the writer's, to the
        checkpointer()."""


class SQLiteBackend(Backend):
    name = "sqlite"
    rewrites_assigned_indexes = True

    def auto_pk(self) -> str:
        return "id INTEGER PRIMARY KEY AUTOINCREMENT"

    def lock_schema(self, db: peewee.Database) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def for_update(self, query: peewee.Select) -> peewee.Select:
        return query  # likewise: no other transaction writes until this one ends

    def writer_session(self, db: peewee.Database, lock_timeout_ms: int) -> None:
        db.execute_sql(f"PRAGMA busy_timeout = {int(lock_timeout_ms)}")

    def upsert_many(self, cursor: Any, statement: str, rows: Sequence[tuple],
                    key: int = 0) -> None:
        # Many rows per statement, not executemany: executemany steps once per row,
        # and every step lets go of the GIL and must queue to get it back behind the
        # gRPC threads (up to a switch interval each time: a 640-row batch could
        # wait seconds). One multi-row INSERT is one step, and twice as fast alone.
        # SQLite applies its rows in order, so a key repeated in `rows` ends as
        # executemany would leave it.
        widths = _row_group(statement)
        if widths is None or len(rows) < 2:
            cursor.executemany(statement, rows)
            return
        width, most = widths
        done = 0
        while done < len(rows):
            count = min(most, 1 << ((len(rows) - done).bit_length() - 1))  # a power of 2
            part = rows[done:done + count]
            cursor.execute(_many_rows(statement, count), list(itertools.chain.from_iterable(part)))
            done += count

    def writer_turn(self, db: peewee.Database) -> ContextManager:
        # SQLite's busy handler polls: a writer that finds the lock taken sleeps 1, 2,
        # 5 ... 100 ms whether or not it was freed meanwhile, so the writers of two
        # workers mostly wait on each other's sleeps. A flock on a file beside the
        # database queues them instead, and the kernel wakes the next at once.
        path = db.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return contextlib.nullcontext()
        return FileTurn(path + "-writer.lock")

    def checkpointer(self, db: peewee.Database, turn: ContextManager) -> Optional[Checkpointer]:
        return Checkpointer(db.database, turn) if isinstance(turn, FileTurn) else None

    def relieve_writer(self, db: peewee.Database) -> None:
        relieve(db.connection())


class PostgresBackend(Backend):
    name = "postgresql"
    param = "%s"
    plans_every_statement = True

    def _bulk_values(self, count: int) -> str:
        return "%s"  # execute_values expands it into many row tuples

    def upsert_many(self, cursor: Any, statement: str, rows: Sequence[tuple],
                    key: int = 0) -> None:
        from psycopg2.extras import execute_values  # only present with PostgreSQL
        # One INSERT ... ON CONFLICT DO UPDATE may not touch a row twice.
        rounds = distinct_rounds(rows, key) if key else (rows,)
        json_statement = pgjson.plan(cursor, statement)
        if json_statement is not None:      # the rows as one JSON value, not as literals
            pgjson.write(cursor, json_statement, rounds)
            return
        for part in rounds:
            execute_values(cursor, statement, part, page_size=1000)

    def execute_many(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        from psycopg2.extras import execute_batch  # executemany is a per-row round trip
        execute_batch(cursor, sql, rows, page_size=1000)

    def auto_pk(self) -> str:
        return "id BIGSERIAL PRIMARY KEY"

    def lock_schema(self, db: peewee.Database) -> None:
        # Several manager processes may start at once on one database, even an empty
        # one: a transaction-scoped advisory lock needs no table to exist.
        db.execute_sql(self.sql("SELECT pg_advisory_xact_lock(?)"), (SCHEMA_LOCK_KEY,))

    def for_update(self, query: peewee.Select) -> peewee.Select:
        return query.for_update()

    def writer_session(self, db: peewee.Database, lock_timeout_ms: int) -> None:
        db.execute_sql(f"SET lock_timeout = {int(lock_timeout_ms)}")
        # Every statement of the writer finds its rows by key, for a batch of keys: a
        # nested loop of index lookups is always its plan. The planner, left to cost
        # it, chose sequential scans and hash joins on a table it had no statistics
        # for yet (a new database, a mass registration: until autovacuum's first
        # ANALYZE), which cost the node update 1-3 ms a batch at 5,000 nodes.
        for method in SCANS_THE_WRITER_NEVER_NEEDS:
            db.execute_sql(f"SET enable_{method} = off")

    def room_for_updates(self, table: str, percent: int) -> list[str]:
        # An update that changes no indexed column and finds room on its row's page
        # is a HOT update: no new entry in any index. Pages written before keep
        # their fill until rewritten (VACUUM FULL); new ones leave the room.
        return [f"ALTER TABLE {table} SET (fillfactor = {100 - int(percent)})"]


# Host parameters one SQLite statement may bind (SQLITE_MAX_VARIABLE_NUMBER's default).
_SQLITE_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_ROW_GROUP = re.compile(r"VALUES (\((?:\?, )*\?\))")


@functools.lru_cache(maxsize=64)
def _row_group(statement: str) -> tuple[int, int] | None:
    """(values per row, most rows per statement, a power of 2) of a one-row INSERT."""
    found = _ROW_GROUP.search(statement)
    if found is None:
        return None
    width = found.group(1).count("?")
    return width, 1 << ((_SQLITE_MAX_PARAMS // width).bit_length() - 1)


@functools.lru_cache(maxsize=256)
def _many_rows(statement: str, count: int) -> str:
    """A one-row INSERT `statement` taking `count` rows (the sizes used are powers of
    2, so few texts are built and SQLite's statement cache keeps them prepared)."""
    group = _ROW_GROUP.search(statement).group(1)
    return statement.replace("VALUES " + group, "VALUES " + ", ".join([group] * count), 1)


class FileTurn:
    """An exclusive flock on one file, held for a `with` block (reusable, one
    thread at a time). The kernel drops it if the process dies holding it."""

    def __init__(self, path: str):
        self.path = path
        self._fd = -1

    def __enter__(self) -> "FileTurn":
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file (releasing the lock if held)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def distinct_rounds(rows: Sequence[tuple], key: int) -> list[list[tuple]]:
    """`rows` in lists sorted by key (a row's first `key` values) in which no key
    repeats: the n-th row of a key goes to the n-th list, so applying the lists
    one after another applies each key's rows in their order."""
    key_of = operator.itemgetter(*range(key))
    keys = list(map(key_of, rows))
    if len(set(keys)) == len(keys):         # the usual batch: every key once
        return [sorted(rows, key=key_of)]
    rounds: list[list[tuple]] = []
    seen: dict = {}
    for row, row_key in zip(rows, keys):
        index = seen.get(row_key, 0)
        seen[row_key] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(row)
    for part in rounds:
        part.sort(key=key_of)
    return rounds


def backend_of(db: peewee.Database) -> Backend:
    """The Backend adapter of a database opened by open_database."""
    if isinstance(db, peewee.PostgresqlDatabase):
        return PostgresBackend()
    if isinstance(db, peewee.SqliteDatabase):
        return SQLiteBackend()
    raise TypeError(f"unsupported database {type(db).__name__}")
