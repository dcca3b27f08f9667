"""The audit log: who did which operation to which node or agent, and how it ended.

An operation is what changes a node or an agent through the HTTP API: operate
(start, stop, restart), a manual sync, and a node's deletion. FleetService runs
each inside `AuditLog.timed(...)`, which writes one row when it ends, whether
it succeeded or failed: `result` is "ok" or the FleetError code ("unavailable",
"not_found", ...), `message` the error message. An operation refused because
the token's scope is too low is recorded too, with result "permission_denied"
(an operator wants to see who tried). Requests refused before they name a
well-formed node, agent and operation (bad token, malformed id or body) are
not operations and leave no row.

`actor` is the name of the API token (fleet.manager.tokens), never the token.
Each row is one INSERT in its own short transaction on the caller's thread: it
never waits on the ingest writer's queue. A failed audit write is logged and
does not fail the operation, which has already happened.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, Optional

import peewee

from fleet import errors
from fleet.manager import paging
from fleet.manager.store.db import now_ms, storage_faults
from fleet.manager.store.models import AuditEntry

log = logging.getLogger(__name__)

DEFAULT_LIMIT = paging.DEFAULT_LIMIT      # entries in a page
MAX_MESSAGE = 1024          # characters of an error message kept
MAX_ACTOR = 128
FIELDS = ("id", "time", "actor", "node_id", "agent_id", "operation", "result", "message",
          "duration_ms")


class AuditLog:
    """Writes and reads the `audit` table."""

    def __init__(self, db: peewee.Database, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self._db = db
        self._clock = clock            # wall time of an entry (Unix seconds)
        self._monotonic = monotonic    # its duration, immune to clock steps
        # Told (operation, result) of every entry, before it is written (metrics).
        self.on_record: Optional[Callable[[str, str], None]] = None

    @contextlib.contextmanager
    def timed(self, actor: str, node_id: str, agent_id: Optional[str],
              operation: str) -> Iterator[None]:
        """Run the block as one operation and record it when it ends (error re-raised)."""
        started, begun = now_ms(self._clock), self._monotonic()
        result, message = "ok", ""
        try:
            yield
        except errors.FleetError as exc:
            result, message = exc.code, exc.message
            raise
        except Exception:
            result, message = "internal", "internal error"
            raise
        finally:
            duration = max(0, int((self._monotonic() - begun) * 1000))
            self.record(actor, node_id, agent_id, operation, result, message, started, duration)

    def record(self, actor: str, node_id: str, agent_id: Optional[str], operation: str,
               result: str, message: str = "", time_ms: Optional[int] = None,
               duration_ms: int = 0) -> None:
        """Store one entry; a database failure is logged, never raised."""
        row = {"time": now_ms(self._clock) if time_ms is None else time_ms,
               "actor": (actor or "-")[:MAX_ACTOR], "node_id": node_id, "agent_id": agent_id,
               "operation": operation, "result": result,
               "message": (message or "")[:MAX_MESSAGE].replace("\x00", "\ufffd"),
               "duration_ms": max(0, int(duration_ms))}
        if self.on_record is not None:
            self.on_record(operation, result)
        try:
            with self._db.connection_context():
                AuditEntry.insert(row).execute(self._db)   # autocommit: its own transaction
        except peewee.DatabaseError as exc:
            log.error("audit write failed: node=%s agent=%s op=%s by=%s result=%s: %s",
                      node_id, agent_id or "-", operation, row["actor"], result, exc)

    @storage_faults
    def list(self, node: Optional[str] = None, limit: int = DEFAULT_LIMIT,
             cursor: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
        """Entries newest first, at most `limit`, only those of `node` if given, after
        `cursor`; and the cursor of the next page (None on the last)."""
        limit = paging.check_limit(limit)
        after = paging.decode_time_id(cursor)
        query = AuditEntry.select().order_by(AuditEntry.time.desc(), AuditEntry.id.desc())
        if node:
            query = query.where(AuditEntry.node_id == node)
        if after is not None:
            query = query.where(peewee.Tuple(AuditEntry.time, AuditEntry.id) < peewee.Tuple(*after))
        with self._db.connection_context():
            rows, more = paging.split_page(list(query.limit(limit + 1).execute(self._db)), limit)
        next_cursor = paging.encode_time_id(rows[-1].time, rows[-1].id) if more else None
        return [{name: getattr(row, name) for name in FIELDS} for row in rows], next_cursor
