"""Many rows into PostgreSQL as one JSON parameter, for PostgresBackend.upsert_many.

An `INSERT ... VALUES %s ON CONFLICT ...` of execute_values carries every value as
a literal in the statement's text: psycopg2 formats each one in the writer
thread, under the GIL (about 25 µs a 20-column row), and the server parses and
plans them all again for every statement. Here the rows go as ONE parameter, a
JSON array of arrays that the C encoder of the json module writes (about 3 µs a
row), and the statement reads it back on the server:

    INSERT INTO t (a, b) SELECT (e->>0)::text, (e->>1)::bigint
      FROM jsonb_array_elements(%s::jsonb) e ORDER BY 1 ON CONFLICT (a) ...

One round trip and one small plan per batch, rows applied in key order (the lock
order every writer keeps). It replaced COPY into a temporary staging table,
which took three more round trips and formatted each value in Python: measured
side by side on the bench server with 300-row batches, 34,000 rows/s and 5.8 µs
of the manager's CPU a row against 25,000 and 16.4 µs, the server's CPU the
same (23 µs a row).

Each column is cast to its type without a length (`character varying`, not
`character varying(128)`): an explicit cast would cut a long value silently,
where the insert refuses it as any other would. JSON null is NULL; integers
travel as JSON numbers, which PostgreSQL reads exactly at any size.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

from fleet.manager.store import pgprepared

# "INSERT INTO table (a, b) VALUES %s ON CONFLICT (a) ..." as the backends build it.
_STATEMENT = re.compile(r"^INSERT INTO (\w+) \(([\w, ]+)\) VALUES %s ON CONFLICT \(([\w, ]+)\)")
MAX_ROWS = 5000                 # per statement: a batch's JSON stays a few MB at most
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

_plans: dict[str, Optional[str]] = {}


def plan(cursor: Any, statement: str) -> Optional[str]:
    """The JSON form of an upsert built by the backends (its one parameter: the rows'
    JSON), or None for another statement. The column types are read from the
    catalog once per statement and process (migrations ran before any write)."""
    if statement not in _plans:
        found = _STATEMENT.match(statement)
        _plans[statement] = _json_statement(cursor, statement, *found.groups()) \
            if found else None
    return _plans[statement]


def _json_statement(cursor: Any, statement: str, table: str, columns: str, keys: str) -> str:
    cursor.execute("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                   "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                   (table,))
    types = dict(cursor.fetchall())
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(f"(e->>{i})::{types[name]}" for i, name in enumerate(names))
    order = ", ".join(str(names.index(k.strip()) + 1) for k in keys.split(","))
    return statement.replace("VALUES %s", f"SELECT {values} FROM jsonb_array_elements("
                             f"%s::jsonb) e ORDER BY {order}", 1)


def write(cursor: Any, json_statement: str, rounds: Sequence[Sequence[tuple]]) -> None:
    """Apply `rounds` (lists of rows with no key twice) one after the other, on an open
    transaction's cursor. A value JSON cannot carry (bytes, a datetime, NaN) raises
    TypeError or ValueError before anything is sent."""
    for rows in rounds:
        for start in range(0, len(rows), MAX_ROWS):
            pgprepared.execute(cursor, json_statement, (_encode(rows[start:start + MAX_ROWS]),))
