"""What differs between the database engines the manager runs on, behind one interface.

`backend_of(db)` gives the adapter of a database opened by
`fleet.manager.store.db.open_database`: placeholders, the bulk upsert call,
schema locking, row locking, lock timeouts and auto-increment keys. Models and
queries elsewhere stay portable.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import peewee

log = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x666C656574   # PostgreSQL advisory lock of migrations ("fleet")


class Backend:
    """What differs between database engines, behind one small interface."""

    name = "generic"
    param = "?"

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

    def set_lock_timeout(self, db: peewee.Database, millis: int) -> None:
        """How long this thread's connection waits for a lock before failing."""


class SQLiteBackend(Backend):
    name = "sqlite"

    def auto_pk(self) -> str:
        return "id INTEGER PRIMARY KEY AUTOINCREMENT"

    def lock_schema(self, db: peewee.Database) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def for_update(self, query: peewee.Select) -> peewee.Select:
        return query  # likewise: no other transaction writes until this one ends

    def set_lock_timeout(self, db: peewee.Database, millis: int) -> None:
        db.execute_sql(f"PRAGMA busy_timeout = {int(millis)}")


class PostgresBackend(Backend):
    name = "postgresql"
    param = "%s"

    def _bulk_values(self, count: int) -> str:
        return "%s"  # execute_values expands it into many row tuples

    def upsert_many(self, cursor: Any, statement: str, rows: Sequence[tuple],
                    key: int = 0) -> None:
        from psycopg2.extras import execute_values  # only present with PostgreSQL
        # One INSERT ... ON CONFLICT DO UPDATE may not touch a row twice.
        for part in distinct_rounds(rows, key) if key else (rows,):
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

    def set_lock_timeout(self, db: peewee.Database, millis: int) -> None:
        db.execute_sql(f"SET lock_timeout = {int(millis)}")


def distinct_rounds(rows: Sequence[tuple], key: int) -> list[list[tuple]]:
    """`rows` in lists sorted by key (a row's first `key` values) in which no key
    repeats: the n-th row of a key goes to the n-th list, so applying the lists
    one after another applies each key's rows in their order."""
    rounds: list[list[tuple]] = []
    seen: dict[tuple, int] = {}
    for row in rows:
        index = seen.get(row[:key], 0)
        seen[row[:key]] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(row)
    for part in rounds:
        part.sort(key=lambda row: row[:key])
    return rounds


def backend_of(db: peewee.Database) -> Backend:
    """The Backend adapter of a database opened by open_database."""
    if isinstance(db, peewee.PostgresqlDatabase):
        return PostgresBackend()
    if isinstance(db, peewee.SqliteDatabase):
        return SQLiteBackend()
    raise TypeError(f"unsupported database {type(db).__name__}")
