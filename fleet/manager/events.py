"""Agents' events on the manager: validation of the reported ones, their rows, the
queries the HTTP API serves, and the retention purge.

Daemons send each agent's events with their state reports (fleet.daemon.events);
the ingest writer stores them in the report's transaction with an insert that
skips an event already stored: an event is known by (node_id, agent_id, seq,
time), so a retried report, or a daemon resending after a manager restart,
stores each event once. Reads are newest first, paged by an opaque cursor (the
last event's time and row id). `EventStore.purge` deletes events older than
`[manager] events_retention` seconds, by their time, in small batches so the
ingest writer never waits long for the database (run every minute by
fleet.manager.retention.Purger).
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable, Optional, Sequence

import peewee

from fleet import errors
from fleet.manager.store.backends import Backend, backend_of
from fleet.manager.store.db import now_ms, storage_faults
from fleet.values import valid_agent_id, valid_node_id

log = logging.getLogger(__name__)

KINDS = ("started", "running", "exited", "backoff", "fatal", "stopping", "stopped",
         "adopted", "unhealthy", "healthy", "limit", "restart", "reload")
MAX_PER_REPORT = 5000           # events in one report
MAX_MESSAGE = 1024              # characters of a message kept
DEFAULT_LIMIT, MAX_LIMIT = 500, 5000   # page size (DESIGN.md, "HTTP API")
MAX_SINCE = 10 ** 18 - 1        # Unix ms; the HTTP layer reads at most 18 digits
PURGE_BATCH = 5000              # rows per purge statement
# Column order of the rows event_rows builds (and the insert binds).
COLUMNS = ("node_id", "agent_id", "seq", "time", "kind", "message", "pid", "exit_code",
           "exit_signal", "received")
IDENTITY = ("node_id", "agent_id", "seq", "time")
FIELDS = ("node_id", "agent_id", "time", "kind", "message", "pid", "exit_code", "exit_signal")


def insert_sql(backend: Backend) -> str:
    """The bulk insert of COLUMNS rows that skips events already stored."""
    return backend.insert_ignoring("event", COLUMNS, IDENTITY)


def event_rows(node_id: str, events: Sequence, received: int
               ) -> tuple[list[tuple], list[tuple[str, str]]]:
    """(COLUMNS tuples of the valid AgentEvents, [(agent_id, reason)] of the rest)."""
    rows: list[tuple] = []
    rejected: list[tuple[str, str]] = []
    for e in events:
        reason = event_fault(e)
        if reason is None:
            message = e.message[:MAX_MESSAGE].replace("\x00", "\ufffd")
            rows.append((node_id, e.agent_id, e.seq, e.time, e.kind, message, e.pid,
                         e.exit_code, e.exit_signal, received))
        else:
            rejected.append((e.agent_id[:128], f"event {e.seq}: {reason}"))
    return rows, rejected


def event_fault(e) -> Optional[str]:
    """Why one AgentEvent cannot be stored, or None when it can."""
    if not valid_agent_id(e.agent_id):
        return "invalid agent_id: want ^[A-Za-z0-9_-]{1,64}$"
    if e.kind not in KINDS:
        return f"kind {e.kind[:32]!r} is not one of {', '.join(KINDS)}"
    if e.seq < 1 or e.time < 1:
        return "seq and time must be positive"
    if e.pid < 0:
        return f"negative pid {e.pid}"
    return None


class EventStore:
    """Reads and purges the `event` table."""

    def __init__(self, db: peewee.Database, retention: float = 604800.0,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self._backend = backend_of(db)
        self.retention = retention      # seconds an event is kept
        self._clock = clock

    @storage_faults
    def list(self, node: Optional[str] = None, agent: Optional[str] = None,
             kind: Optional[str] = None, since: Optional[int] = None,
             limit: int = DEFAULT_LIMIT, cursor: Optional[str] = None
             ) -> tuple[list[dict], Optional[str]]:
        """Events newest first matching every filter given, at most `limit`, and the
        cursor of the next page (None on the last). InvalidArgument for a bad one."""
        limit, since = check_page(limit, since)
        where, params = [], []
        for column, value, check in (("node_id", node, valid_node_id),
                                     ("agent_id", agent, valid_agent_id),
                                     ("kind", kind, KINDS.__contains__)):
            if value:
                if not check(value):
                    raise errors.InvalidArgument(f"{_filter_name(column)} {value[:130]!r} "
                                                 "is not a valid filter")
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        if cursor:
            last_time, last_id = decode_cursor(cursor)
            where.append("(time < ? OR (time = ? AND id < ?))")
            params += [last_time, last_time, last_id]
        sql = ("SELECT id, " + ", ".join(FIELDS) + " FROM event"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY time DESC, id DESC LIMIT ?")
        with self._db.connection_context():
            rows = self._db.execute_sql(self._backend.sql(sql), params + [limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        events = [dict(zip(FIELDS, row[1:])) for row in rows]
        next_cursor = encode_cursor(events[-1]["time"], rows[-1][0]) if more else None
        return events, next_cursor

    @storage_faults
    def has_agent(self, node_id: str, agent_id: str) -> bool:
        """True if the agent is stored or has events (an agent removed from its
        node's config keeps its history until the retention ends)."""
        sql = self._backend.sql(
            "SELECT 1 FROM agent WHERE node_id = ? AND agent_id = ? UNION ALL "
            "SELECT 1 FROM event WHERE node_id = ? AND agent_id = ? LIMIT 1")
        with self._db.connection_context():
            return self._db.execute_sql(
                sql, (node_id, agent_id, node_id, agent_id)).fetchone() is not None

    def purge(self) -> int:
        """Delete events older than the retention, a batch per transaction; how many."""
        cutoff = now_ms(self._clock) - int(self.retention * 1000)
        sql = self._backend.sql("DELETE FROM event WHERE id IN "
                                "(SELECT id FROM event WHERE time < ? LIMIT ?)")
        total = 0
        with self._db.connection_context():
            while True:
                with self._db.atomic():
                    deleted = self._db.execute_sql(sql, (cutoff, PURGE_BATCH)).rowcount
                total += deleted
                if deleted < PURGE_BATCH:
                    break
        if total:
            log.info("events: purged %d older than %g s", total, self.retention)
        return total


def check_page(limit: int, since: Optional[int]) -> tuple[int, Optional[int]]:
    """limit in 1..MAX_LIMIT and since >= 0 (Unix ms), else InvalidArgument."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or not 0 <= since <= MAX_SINCE):
        raise errors.InvalidArgument("since must be Unix milliseconds (an integer >= 0)")
    return limit, since


CURSOR_PATTERN = r"^[0-9]{1,18}-[0-9]{1,18}$"


def encode_cursor(time_ms: int, row_id: int) -> str:
    """The cursor after the event (time_ms, row_id): opaque to clients, who pass it back."""
    return f"{time_ms}-{row_id}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    """(time, row id) from a cursor encode_cursor made; InvalidArgument otherwise."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise errors.InvalidArgument("cursor is not one this server gave "
                                     "(pass next_cursor back unchanged)")
    time_text, id_text = cursor.split("-")
    return int(time_text), int(id_text)


def _filter_name(column: str) -> str:
    return {"node_id": "node", "agent_id": "agent"}.get(column, column)


class EventService:
    """The events endpoints without HTTP: ids and existence checked, then the store."""

    def __init__(self, store: EventStore, nodes):
        self._store = store
        self._nodes = nodes     # fleet.manager.nodes.NodeStore: get_node raises NotFound

    def agent_events(self, node_id: str, agent_id: str, since: Optional[int] = None,
                     limit: int = DEFAULT_LIMIT, cursor: Optional[str] = None
                     ) -> tuple[list[dict], Optional[str]]:
        """One agent's events, newest first; NotFound for an unknown node or agent."""
        if not valid_node_id(node_id):
            raise errors.NotFound(f"node {node_id[:130]!r} not found")
        self._nodes.get_node(node_id)
        if not valid_agent_id(agent_id) or not self._store.has_agent(node_id, agent_id):
            raise errors.NotFound(f"agent {agent_id[:66]!r} not found on node {node_id!r}")
        return self._store.list(node_id, agent_id, None, since, limit, cursor)

    def events(self, node: Optional[str] = None, agent: Optional[str] = None,
               kind: Optional[str] = None, since: Optional[int] = None,
               limit: int = DEFAULT_LIMIT, cursor: Optional[str] = None
               ) -> tuple[list[dict], Optional[str]]:
        """Events of the fleet, newest first, filtered; a filter naming nothing
        stored matches nothing."""
        return self._store.list(node, agent, kind, since, limit, cursor)
