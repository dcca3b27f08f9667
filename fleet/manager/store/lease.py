"""Leases: a periodic duty done by one manager at a time, agreed through the database.

Several managers (or `workers`) share one database; the duties that must run once
(offline marking, retention purges, driving a rollout) each take a named lease
before they run. A lease is a row `(name, holder, expires_at)`: the holder renews
it before it expires; anyone may take it once it has. A manager that dies holding
a lease loses it after its time-to-live, and another one takes the duty over.

acquire() is one INSERT ... ON CONFLICT DO NOTHING and one guarded UPDATE in a
single write transaction, so two managers never both win the same lease, on
SQLite (BEGIN IMMEDIATE) or PostgreSQL (the UPDATE locks the row).
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Callable

import peewee

from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import now_ms

log = logging.getLogger(__name__)

DEFAULT_TTL = 30.0   # seconds; holders renew at least every ttl / 3


def holder_name() -> str:
    """A name unique to this manager process: host, pid and a random part."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """One named lease, as seen by one holder."""

    def __init__(self, db: peewee.Database, name: str, holder: str, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self._clock = clock
        backend = backend_of(db)
        self._insert = backend.sql(
            "INSERT INTO lease (name, holder, expires_at) VALUES (?, '', 0) "
            "ON CONFLICT (name) DO NOTHING")
        self._take = backend.sql(
            "UPDATE lease SET holder = ?, expires_at = ? "
            "WHERE name = ? AND (holder = ? OR expires_at < ?)")
        self._drop = backend.sql(
            "UPDATE lease SET expires_at = 0 WHERE name = ? AND holder = ?")

    def acquire(self) -> bool:
        """Take or renew the lease; True while this holder has it until now + ttl."""
        now = now_ms(self._clock)
        with self._db.atomic():
            self._db.execute_sql(self._insert, (self.name,))
            cursor = self._db.execute_sql(
                self._take, (self.holder, now + int(self.ttl * 1000), self.name, self.holder, now))
            won = cursor.rowcount == 1
        return won

    def release(self) -> None:
        """Give the lease up at once (a clean stop), if this holder has it."""
        with self._db.atomic():
            self._db.execute_sql(self._drop, (self.name, self.holder))

    def holder_now(self) -> tuple[str, int]:
        """(holder, expires_at ms) as stored; ("", 0) for a lease never taken."""
        row = self._db.execute_sql(backend_of(self._db).sql(
            "SELECT holder, expires_at FROM lease WHERE name = ?"), (self.name,)).fetchone()
        return (row[0], row[1]) if row else ("", 0)
