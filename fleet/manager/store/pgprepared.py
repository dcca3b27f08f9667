"""Server-side prepared statements for the ingest writer's statements on PostgreSQL.

psycopg2 sends every execute() as text, which the server parses, analyses and
plans again each time: for the writer's node update and agent upsert, about
a tenth of the server's CPU a state (bench/bench_writer.py). `execute` PREPAREs
a statement once per connection, at its first use there, and EXECUTEs it after.

The statements a connection prepared are kept on the connection itself
(`connection_class`, the psycopg2 connection fleet's PostgreSQL databases open),
so they go with it: a connection discarded after a failure takes its list along,
and a new one prepares again. PREPARE outlives a rolled-back transaction, as the
list does.
"""
from __future__ import annotations

import functools
import itertools
import re
from typing import Any, Sequence

_PLACEHOLDER = re.compile(r"%s")


@functools.lru_cache(maxsize=None)
def connection_class() -> type:
    """psycopg2's connection with a `prepared` dict (statement text -> its name);
    psycopg2 is imported here, only when PostgreSQL is used."""
    import psycopg2.extensions

    class Connection(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.prepared: dict[str, str] = {}

    return Connection


def execute(cursor: Any, sql: str, params: Sequence) -> None:
    """cursor.execute(sql, params), prepared on the cursor's connection (`sql` uses %s
    placeholders and no other %); a plain execute on another kind of connection."""
    prepared = getattr(cursor.connection, "prepared", None)
    if prepared is None:
        cursor.execute(sql, params)
        return
    name = prepared.get(sql)
    if name is None:
        name = f"fleet_writer_{len(prepared) + 1}"
        number = itertools.count(1)
        cursor.execute(f"PREPARE {name} AS " +
                       _PLACEHOLDER.sub(lambda _: f"${next(number)}", sql))
        prepared[sql] = name
    cursor.execute(f"EXECUTE {name} ({', '.join(['%s'] * len(params))})", params)
