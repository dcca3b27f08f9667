"""The group-commit writer of state reports (split from ingest.py, which validates).

`IngestWriter` is one thread, `fleet-ingest`. It takes every report waiting in
its queue (up to a row bound), applies them in ONE transaction with one
executemany of a prepared upsert (and one insert of their events, each stored
once: fleet.manager.events), commits, and only then wakes each report's
caller. A failed transaction fails every report in it and leaves nothing
half-applied: with Unavailable when the database failed to operate (the daemon
retries), with an internal error (INTERNAL, the traceback logged here)
otherwise. SQLite has one writer at a time, so one thread that batches is
faster than many that queue for the lock; on SQLite a checkpointer thread beside
it copies the log back into the database (fleet.manager.store.checkpoint).

The queue is bounded (fleet.manager.store.backlog): a report is admitted before
its rows are built and leaves the count when its batch ends; past the bound it
is refused at once (errors.Overloaded) and nothing of it is written. A
heartbeat (no rows) is never refused: it only touches its node.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterable, Optional, Sequence

import peewee

from fleet import errors
from fleet.manager import events
from fleet.manager.store.backends import Backend, backend_of
from fleet.manager.store.backlog import DEFAULT_MAX_ROWS, Backlog
from fleet.manager.store.db import DRIVER_ERRORS  # the raw cursor: peewee's kinds of errors
from fleet.manager.store.db import discard_connection
from fleet.manager.store import pgprepared

log = logging.getLogger(__name__)

WRITER_LOCK_TIMEOUT_MS = 2000   # the writer gives a locked database this long
MAX_BATCH_ROWS = 20000          # rows per group-commit transaction
SUBMIT_TIMEOUT = 4.0            # seconds; below the daemons' 5 s deadline
# The database failing to operate: UNAVAILABLE, the daemon retries. Anything else
# (a constraint, bad SQL, a bug in this module) is INTERNAL with a logged traceback.
STORAGE_FAULTS = (peewee.OperationalError, peewee.InterfaceError)


class Report:
    """One validated report, ready to write; a heartbeat is one with seq None."""

    __slots__ = ("node_id", "boot_id", "seq", "full", "rows", "keep", "received", "stopping",
                 "events")

    def __init__(self, node_id: str, boot_id: int, seq: Optional[int], full: bool,
                 rows: list, keep: Sequence[str], received: int, stopping: bool = False,
                 events: Sequence[tuple] = ()):
        self.node_id = node_id
        self.boot_id = boot_id
        self.seq = seq            # None: touch last_seen only (heartbeat)
        self.full = full          # delete the node's older rows it does not mention
        self.rows = rows          # REPORT_COLUMNS tuples
        self.keep = keep          # agent_ids mentioned but rejected: a full report keeps them
        self.received = received  # manager receive time, Unix ms
        self.stopping = stopping  # the daemon's last report before a clean stop
        self.events = events      # fleet.manager.events.COLUMNS tuples


class Pending:
    """A report in the writer's queue; `finish` is told its outcome, once, by the writer."""

    __slots__ = ("report", "cost", "cancelled")

    def __init__(self, report: Report, cost: int = 0):
        self.report = report
        self.cost = cost          # what Backlog.admit reserved for it; 0 for a heartbeat
        self.cancelled = False    # the caller gave up: skip it if not yet written

    def finish(self, error: Optional[errors.FleetError]) -> None:
        """The report was committed (error None) or failed with `error`."""
        raise NotImplementedError


class Waiting(Pending):
    """A submitted report whose caller waits for its outcome.

    The caller waits on a lock the writer releases: an Event would cost a Condition,
    a second lock and their bookkeeping per report, under the GIL.
    """

    __slots__ = ("_done", "error")

    def __init__(self, report: Report, cost: int):
        super().__init__(report, cost)
        self._done = threading.Lock()
        self._done.acquire()      # held until finished
        self.error: Optional[errors.FleetError] = None

    def wait(self, timeout: float) -> bool:
        """Block until finished (True) or `timeout` seconds passed (False)."""
        return self._done.acquire(timeout=timeout)

    def finish(self, error: Optional[errors.FleetError]) -> None:
        """Set the outcome and wake the caller."""
        self.error = error
        self._done.release()


class IngestWriter:
    """The group-commit writer thread; `submit` blocks until the report is committed."""

    def __init__(self, db: peewee.Database, max_batch_rows: int = MAX_BATCH_ROWS,
                 lock_timeout_ms: int = WRITER_LOCK_TIMEOUT_MS,
                 backlog: Optional[Backlog] = None):
        self._db = db
        self._backend = backend_of(db)
        self._max_rows = max_batch_rows
        self._lock_timeout_ms = lock_timeout_ms
        self._queue: "queue.SimpleQueue[Optional[Pending]]" = queue.SimpleQueue()
        self._lock = threading.Lock()       # guards _state against submit/stop races
        self._state = "new"                 # new | running | stopped
        self._thread: Optional[threading.Thread] = None
        self._sql = self._statements(self._backend)
        self._turn = self._backend.writer_turn(db)   # other processes' writers wait
        self._checkpointer = self._backend.checkpointer(db, self._turn)
        self.backlog = backlog or Backlog(DEFAULT_MAX_ROWS)
        # Committed transactions and the reports in them (written by the thread only).
        self.batches = 0
        self.reports = 0
        # Called by the thread once every report of a batch was finished.
        self.after_batch: Optional[Callable[[], None]] = None

    @staticmethod
    def _statements(backend: Backend) -> dict:
        # Built once: the hot path only binds parameters.
        from fleet.manager.ingest import REPORT_COLUMNS, AgentUpsert  # ingest imports this
        newer = "(boot_id < ? OR (boot_id = ? AND seq < ?))"
        batch_newer = "(node.boot_id < v.boot OR (node.boot_id = v.boot AND node.seq < v.seq))"
        return {
            "upsert": AgentUpsert(backend, REPORT_COLUMNS),
            "events": events.insert_sql(backend),
            # One statement per node and batch: any message says the node runs
            # (except a clean stop's last report), and a report's (boot_id, seq)
            # moves the node's on if newer (a heartbeat passes NULLs: no move).
            "node": backend.sql(
                "UPDATE node SET last_seen = CASE WHEN last_seen IS NULL OR last_seen < ? "
                "THEN ? ELSE last_seen END, stopped_at = ?, "
                f"boot_id = CASE WHEN {newer} THEN ? ELSE boot_id END, "
                f"seq = CASE WHEN {newer} THEN ? ELSE seq END WHERE node_id = ?"),
            # The same for every node of a batch in one statement, where a statement per
            # node costs its parse and plan each (PostgreSQL: a third of the server's
            # CPU a state went to them). The batch's node rows are locked in node_id
            # order first (the CTE: a locking one runs whole, sorted), whatever order
            # the join takes; the nodes it returns are those still registered.
            "touch": (
                "WITH locked AS (SELECT node_id FROM node WHERE node_id = ANY(%s::text[]) "
                "ORDER BY node_id FOR UPDATE) "
                "UPDATE node SET last_seen = CASE WHEN node.last_seen IS NULL "
                "OR node.last_seen < v.received THEN v.received ELSE node.last_seen END, "
                f"stopped_at = v.stopped, boot_id = CASE WHEN {batch_newer} THEN v.boot "
                f"ELSE node.boot_id END, seq = CASE WHEN {batch_newer} THEN v.seq "
                "ELSE node.seq END FROM locked, unnest(%s::text[], %s::bigint[], "
                "%s::bigint[], %s::bigint[], %s::bigint[]) AS v(node_id, received, stopped, "
                "boot, seq) WHERE locked.node_id = v.node_id AND node.node_id = v.node_id "
                "RETURNING node.node_id") if backend.plans_every_statement else None,
            "delete_older": backend.sql("DELETE FROM agent WHERE node_id = ? "
                                        "AND (boot_id < ? OR (boot_id = ? AND seq < ?))"),
            "orphans": {table: backend.sql(
                f"DELETE FROM {table} WHERE node_id = ? AND NOT EXISTS "
                f"(SELECT 1 FROM node WHERE node.node_id = {table}.node_id)")
                for table in ("agent", "event")},
        }

    def start(self) -> None:
        """Start the writer thread (a second call does nothing)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
            self._thread = threading.Thread(target=self._run, name="fleet-ingest", daemon=True)
            self._thread.start()
            if self._checkpointer is not None:
                self._checkpointer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what was submitted, then end the thread; later submits fail."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
            self._queue.put(None)           # the thread drains up to here and exits
        self._thread.join(timeout)
        self._fail_leftovers()
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def admit(self, rows: int) -> int:
        """Room in the queue for a report of `rows` states and events: the cost to pass
        to submit(). Raises errors.Overloaded (nothing to undo) past the bound."""
        return self.backlog.admit(rows)

    def submit(self, report: Report, timeout: float = SUBMIT_TIMEOUT, cost: int = 0) -> None:
        """Block until `report` is committed; Unavailable if it failed or took too long.

        `cost`: what admit() answered for it (released here, whatever happens); 0 for
        a report not admitted (a heartbeat).
        """
        pending = Waiting(report, cost)
        self.enqueue(pending)
        if not pending.wait(timeout):
            pending.cancelled = True        # a late write is harmless: reports are idempotent
            raise errors.Unavailable("database write timed out; retry")
        if pending.error is not None:
            raise pending.error

    def enqueue(self, pending: Pending) -> None:
        """Queue a report without waiting for it: the thread finishes `pending`.
        Unavailable (its cost released) once the writer stopped."""
        with self._lock:
            running = self._state == "running"
            if running:
                self._queue.put(pending)
        if not running:
            self.backlog.release(pending.cost, committed=False)
            raise errors.Unavailable("the manager is not accepting reports (shutting down)")

    def _fail_leftovers(self) -> None:
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            if pending is not None:
                self._finish([pending], errors.Unavailable("the manager is shutting down"))

    def _run(self) -> None:
        try:
            while True:
                batch, more = self._collect()
                if batch:
                    self._write(batch)
                if not more:
                    return
        finally:
            self._close()

    def _collect(self) -> tuple[list[Pending], bool]:
        """The waiting reports (at least one, up to the row bound); False at the end."""
        batch: list[Pending] = []
        rows = 0
        pending = self._queue.get()
        while True:
            if pending is None:
                return batch, False
            if pending.cancelled:
                self.backlog.release(pending.cost, committed=False)
            else:
                batch.append(pending)
                rows += len(pending.report.rows) + len(pending.report.events)
            if rows >= self._max_rows:
                return batch, True
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return batch, True

    def _write(self, batch: list[Pending]) -> None:
        try:
            self._connect()
            with self._turn, self._db.atomic(), DRIVER_ERRORS:
                gone = self._apply(self._db.cursor(), [p.report for p in batch])
        except STORAGE_FAULTS as exc:       # locked, disk full, connection lost
            log.warning("state write of %d reports failed: %s", len(batch), exc)
            self._close()                   # a broken connection reconnects next batch
            self._finish(batch, errors.Unavailable(f"database unavailable: {exc}"))
            return
        except Exception:  # noqa: BLE001 - a bug: logged here, never told to the daemons
            log.exception("state write of %d reports failed", len(batch))
            self._close()
            self._finish(batch, errors.FleetError("internal error"))
            return
        self.batches += 1
        self.reports += len(batch)
        self._finish([p for p in batch if p.report.node_id not in gone], None)
        for pending in batch:           # deleted through another manager or worker
            if pending.report.node_id in gone:
                self._finish([pending], errors.NotFound(
                    f"node {pending.report.node_id!r} is not registered"))

    def _apply(self, cursor, reports: list[Report]) -> set[str]:
        """Every statement of a batch, inside its one transaction; the node_ids that
        have no node row (deleted: their reports were not stored).

        Rows are locked in one order, as registration, pulls and deletion do
        too: the batch's node rows first (by node_id), then their agents and
        events (by key). Transactions of several managers on one PostgreSQL
        database then never wait for each other in a cycle (a deadlock).

        Few statements, each for many rows: on SQLite every statement lets go of
        the GIL and queues to get it back (fleet.manager.store.backends).
        """
        backend, sql = self._backend, self._sql
        reports = sorted(reports, key=lambda r: r.node_id)   # stable: a node's stay in order
        rows: list[tuple] = []
        event_rows: list[tuple] = []
        nodes: dict[str, list] = {}     # node_id -> [received, stopped_at, newest (boot, seq)]
        for r in reports:
            rows += r.rows
            event_rows += r.events
            node = nodes.setdefault(r.node_id, [r.received, None, None])
            node[0] = max(node[0], r.received)
            node[1] = r.received if r.stopping else None    # the last report's word
            if r.seq is not None and (node[2] is None or (r.boot_id, r.seq) > node[2]):
                node[2] = (r.boot_id, r.seq)
        gone = self._touch_nodes(cursor, nodes)
        if rows:
            sql["upsert"].run(cursor, rows)
        if event_rows:
            backend.upsert_many(cursor, sql["events"], event_rows, key=len(events.IDENTITY))
        for r in reports:
            if r.full and r.seq is not None:
                self._delete_unmentioned(cursor, r)
        # A node deleted while its report was queued must not get rows back.
        for table, statement in sql["orphans"].items():
            backend.execute_many(cursor, statement, [(node_id,) for node_id in sorted(gone)])
        return gone

    def _touch_nodes(self, cursor, nodes: dict[str, list]) -> set[str]:
        """Each node of the batch seen at `received` (stopped at `stopped_at`) and moved
        on to its newest (boot, seq), in node_id order; the node_ids with no node row."""
        node_ids = sorted(nodes)
        if self._sql["touch"] is not None:
            columns: list[list] = [[], [], [], []]     # received, stopped, boot, seq
            for node_id in node_ids:
                received, stopped, newest = nodes[node_id]
                for column, value in zip(columns, (received, stopped, *(newest or (None, None)))):
                    column.append(value)
            pgprepared.execute(cursor, self._sql["touch"], (node_ids, node_ids, *columns))
            return set(node_ids).difference(row[0] for row in cursor.fetchall())
        node_rows = []
        for node_id in node_ids:
            received, stopped, newest = nodes[node_id]
            boot, seq = newest or (None, None)
            node_rows.append((received, received, stopped, boot, boot, seq, boot,
                              boot, boot, seq, seq, node_id))
        self._backend.execute_many(cursor, self._sql["node"], node_rows)
        return self._missing(cursor, node_ids)

    def _missing(self, cursor, node_ids: list[str]) -> set[str]:
        """Which of `node_ids` have no node row."""
        found: set[str] = set()
        for start in range(0, len(node_ids), 500):
            chunk = node_ids[start:start + 500]
            cursor.execute(self._backend.sql("SELECT node_id FROM node WHERE node_id IN (%s)"
                                             % ", ".join("?" * len(chunk))), chunk)
            found.update(row[0] for row in cursor.fetchall())
        return set(node_ids) - found

    def _delete_unmentioned(self, cursor, r: Report) -> None:
        # After the upsert every row the report mentions carries its (boot_id,
        # seq) or a newer one, so "older than the report" means "not mentioned".
        sql = self._sql["delete_older"]
        params: list = [r.node_id, r.boot_id, r.boot_id, r.seq]
        if not r.keep:                  # the usual full report: one statement, prepared
            pgprepared.execute(cursor, sql, params)
            return
        sql += self._backend.sql(" AND agent_id NOT IN (%s)" % ", ".join("?" * len(r.keep)))
        cursor.execute(sql, params + list(r.keep))

    def _finish(self, batch: Iterable[Pending], error: Optional[errors.FleetError]) -> None:
        for pending in batch:
            self.backlog.release(pending.cost, committed=error is None)
            pending.finish(error)
        if self.after_batch is not None:
            self.after_batch()

    def _connect(self) -> None:
        if self._db.is_closed():
            self._db.connect()
            self._backend.writer_session(self._db, self._lock_timeout_ms)
            if self._checkpointer is not None:
                self._backend.relieve_writer(self._db)

    def _close(self) -> None:
        # Never back to a pool: the connection carries the writer's lock timeout.
        try:
            discard_connection(self._db)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail too
            log.debug("closing the writer's connection failed", exc_info=True)
