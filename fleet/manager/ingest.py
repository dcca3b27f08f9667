"""State reports into the database: validation, then a group-commit writer.

`ReportService.sync` is SyncAgentStates without the wire: it checks the
request against the in-memory Registry (no database lookup per report),
validates each state, turns the valid ones straight into parameter tuples (no
dicts or model objects: this is the hot path) and hands them to the
`IngestWriter`.

`IngestWriter` is one thread, `fleet-ingest`. It takes every report waiting in
its queue (up to a row bound), applies them in ONE transaction with one
executemany of a prepared upsert, commits, and only then wakes each report's
caller. A failed transaction fails every report in it and leaves nothing
half-applied: with Unavailable when the database failed to operate (the daemon
retries), with an internal error (INTERNAL, the traceback logged here) otherwise. SQLite has one writer at a
time, so one thread that batches is faster than many that queue for the lock.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

import peewee

from fleet import errors
from fleet.values import valid_agent_id, valid_node_id
from fleet.manager.db import Backend, backend_of, now_ms
from fleet.manager.registry import Registry
from fleet.states import State

log = logging.getLogger(__name__)

MAX_STATES = 5000               # per report (DESIGN.md, "The wire")
SUBMIT_TIMEOUT = 4.0            # seconds; below the daemons' 5 s deadline
WRITER_LOCK_TIMEOUT_MS = 2000   # the writer gives a locked database this long
MAX_BATCH_ROWS = 20000          # rows per group-commit transaction
STORED_STATUSES = frozenset(int(s) for s in State if s is not State.UNSPECIFIED)
HEALTHS = ("healthy", "unhealthy", "unknown")
MAX_TEXT = 1024                 # characters of a state's type or version
# The raw cursor raises the driver's own errors; inside this they become peewee's kinds
# (OperationalError: locked, disk full), as peewee's own calls do.
DRIVER_ERRORS = peewee.ExceptionWrapper(peewee.EXCEPTIONS)
# The database failing to operate: UNAVAILABLE, the daemon retries. Anything else
# (a constraint, bad SQL, a bug in this module) is INTERNAL with a logged traceback.
STORAGE_FAULTS = (peewee.OperationalError, peewee.InterfaceError)

# Column order of the tuples ReportService builds from reports and fleet.manager.nodes
# from pulled AgentInfo rows: the same columns, since both carry every field.
REPORT_COLUMNS = ("node_id", "agent_id", "type", "version", "status", "pid", "start_time",
                  "restart_count", "last_exit_code", "last_exit_signal", "health",
                  "last_heartbeat", "boot_id", "seq", "last_sync_time", "last_error",
                  "next_retry_time", "changed_at", "config_changed", "health_message")
MAX_ERROR = 4096                # characters of a last_error kept
# Only a row whose stored (boot_id, seq) is not newer than the incoming one changes.
NOT_NEWER = ("agent.boot_id < excluded.boot_id OR "
             "(agent.boot_id = excluded.boot_id AND agent.seq <= excluded.seq)")
# A state without changed_at comes from a daemon of the previous release, whose reports
# lacked these fields: it keeps what a pull stored (next_retry_time only in BACKOFF).
OLD_DAEMON_KEEPS = {
    "last_error": "agent.last_error",
    "next_retry_time": (f"CASE WHEN excluded.status = {int(State.BACKOFF)} "
                        "THEN agent.next_retry_time ELSE NULL END"),
    "config_changed": "agent.config_changed",
}


def agent_upsert(backend: Backend, columns: Sequence[str], bulk: bool = True,
                 report: bool = True) -> str:
    """The agent upsert for rows of `columns`: keeps `type` from creation.

    An empty stored type counts as unset. In a `report`, a state from a daemon
    of the previous release (changed_at unset) keeps the fields it does not
    carry; a pulled AgentInfo has always carried them.
    """
    updates = {c: f"excluded.{c}" for c in columns if c not in ("node_id", "agent_id", "type")}
    updates["type"] = "CASE WHEN agent.type = '' THEN excluded.type ELSE agent.type END"
    for column, kept in OLD_DAEMON_KEEPS.items() if report else ():
        if column in columns:
            updates[column] = (f"CASE WHEN excluded.changed_at IS NULL THEN {kept} "
                               f"ELSE excluded.{column} END")
    return backend.upsert("agent", columns, ("node_id", "agent_id"), updates, NOT_NEWER, bulk)


class Report:
    """One validated report, ready to write; a heartbeat is one with seq None."""

    __slots__ = ("node_id", "boot_id", "seq", "full", "rows", "keep", "received", "stopping")

    def __init__(self, node_id: str, boot_id: int, seq: Optional[int], full: bool,
                 rows: list, keep: Sequence[str], received: int, stopping: bool = False):
        self.node_id = node_id
        self.boot_id = boot_id
        self.seq = seq            # None: touch last_seen only (heartbeat)
        self.full = full          # delete the node's older rows it does not mention
        self.rows = rows          # REPORT_COLUMNS tuples
        self.keep = keep          # agent_ids mentioned but rejected: a full report keeps them
        self.received = received  # manager receive time, Unix ms
        self.stopping = stopping  # the daemon's last report before a clean stop


class _Pending:
    """A submitted report and its outcome, set once by the writer."""

    __slots__ = ("report", "done", "error", "cancelled")

    def __init__(self, report: Report):
        self.report = report
        self.done = threading.Event()
        self.error: Optional[errors.FleetError] = None
        self.cancelled = False    # the caller gave up: skip it if not yet written


class IngestWriter:
    """The group-commit writer thread; `submit` blocks until the report is committed."""

    def __init__(self, db: peewee.Database, max_batch_rows: int = MAX_BATCH_ROWS,
                 lock_timeout_ms: int = WRITER_LOCK_TIMEOUT_MS):
        self._db = db
        self._backend = backend_of(db)
        self._max_rows = max_batch_rows
        self._lock_timeout_ms = lock_timeout_ms
        self._queue: "queue.SimpleQueue[Optional[_Pending]]" = queue.SimpleQueue()
        self._lock = threading.Lock()       # guards _state against submit/stop races
        self._state = "new"                 # new | running | stopped
        self._thread: Optional[threading.Thread] = None
        self._sql = self._statements(self._backend)
        # Committed transactions and the reports in them (written by the thread only).
        self.batches = 0
        self.reports = 0

    @staticmethod
    def _statements(backend: Backend) -> dict[str, str]:
        # Built once: the hot path only binds parameters.
        return {
            "upsert": agent_upsert(backend, REPORT_COLUMNS),
            # Any message says the node runs, except a clean stop's last report.
            "touch": backend.sql("UPDATE node SET last_seen = CASE WHEN last_seen IS NULL "
                                 "OR last_seen < ? THEN ? ELSE last_seen END, stopped_at = ? "
                                 "WHERE node_id = ?"),
            "advance": backend.sql("UPDATE node SET boot_id = ?, seq = ? WHERE node_id = ? "
                                   "AND (boot_id < ? OR (boot_id = ? AND seq < ?))"),
            "delete_older": backend.sql("DELETE FROM agent WHERE node_id = ? "
                                        "AND (boot_id < ? OR (boot_id = ? AND seq < ?))"),
            "orphans": backend.sql("DELETE FROM agent WHERE node_id = ? AND NOT EXISTS "
                                   "(SELECT 1 FROM node WHERE node.node_id = agent.node_id)"),
        }

    def start(self) -> None:
        """Start the writer thread (a second call does nothing)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
            self._thread = threading.Thread(target=self._run, name="fleet-ingest", daemon=True)
            self._thread.start()

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

    def submit(self, report: Report, timeout: float = SUBMIT_TIMEOUT) -> None:
        """Block until `report` is committed; Unavailable if it failed or took too long."""
        pending = _Pending(report)
        with self._lock:
            if self._state != "running":
                raise errors.Unavailable("the manager is not accepting reports (shutting down)")
            self._queue.put(pending)
        if not pending.done.wait(timeout):
            pending.cancelled = True        # a late write is harmless: reports are idempotent
            raise errors.Unavailable("database write timed out; retry")
        if pending.error is not None:
            raise pending.error

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

    def _collect(self) -> tuple[list[_Pending], bool]:
        """The waiting reports (at least one, up to the row bound); False at the end."""
        batch: list[_Pending] = []
        rows = 0
        pending = self._queue.get()
        while True:
            if pending is None:
                return batch, False
            if not pending.cancelled:
                batch.append(pending)
                rows += len(pending.report.rows)
            if rows >= self._max_rows:
                return batch, True
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return batch, True

    def _write(self, batch: list[_Pending]) -> None:
        try:
            self._connect()
            with self._db.atomic(), DRIVER_ERRORS:
                self._apply(self._db.cursor(), [p.report for p in batch])
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
        self._finish(batch, None)

    def _apply(self, cursor, reports: list[Report]) -> None:
        """Every statement of a batch, inside its one transaction."""
        backend, sql = self._backend, self._sql
        rows: list[tuple] = []
        touches, advances, nodes = [], [], {}
        for r in reports:
            rows += r.rows
            touches.append((r.received, r.received, r.received if r.stopping else None,
                            r.node_id))
            nodes[r.node_id] = (r.node_id,)
            if r.seq is not None:
                advances.append((r.boot_id, r.seq, r.node_id, r.boot_id, r.boot_id, r.seq))
        if rows:
            backend.upsert_many(cursor, sql["upsert"], rows)
        backend.execute_many(cursor, sql["touch"], touches)
        if advances:
            backend.execute_many(cursor, sql["advance"], advances)
        for r in reports:
            if r.full and r.seq is not None:
                self._delete_unmentioned(cursor, r)
        # A node deleted while its report was queued must not get rows back.
        backend.execute_many(cursor, sql["orphans"], list(nodes.values()))

    def _delete_unmentioned(self, cursor, r: Report) -> None:
        # After the upsert every row the report mentions carries its (boot_id,
        # seq) or a newer one, so "older than the report" means "not mentioned".
        sql = self._sql["delete_older"]
        params: list = [r.node_id, r.boot_id, r.boot_id, r.seq]
        if r.keep:
            sql += self._backend.sql(" AND agent_id NOT IN (%s)" % ", ".join("?" * len(r.keep)))
            params += list(r.keep)
        cursor.execute(sql, params)

    @staticmethod
    def _finish(batch: Iterable[_Pending], error: Optional[errors.FleetError]) -> None:
        for pending in batch:
            pending.error = error
            pending.done.set()

    def _connect(self) -> None:
        if self._db.is_closed():
            self._db.connect()
            self._backend.set_lock_timeout(self._db, self._lock_timeout_ms)

    def _close(self) -> None:
        try:
            if not self._db.is_closed():
                self._db.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail too
            log.debug("closing the writer's connection failed", exc_info=True)


class SyncResult:
    """What SyncAgentStates answers, before it becomes a proto."""

    __slots__ = ("accepted", "errors", "report_full_state")

    def __init__(self, accepted: int, errors_: list, report_full_state: bool):
        self.accepted = accepted
        self.errors = errors_           # [(agent_id, reason)]
        self.report_full_state = report_full_state

    @property
    def rejected(self) -> int:
        """How many states were rejected."""
        return len(self.errors)

    @property
    def success(self) -> bool:
        """True when no state was rejected (the wire's success = rejected == 0)."""
        return not self.errors


class ReportService:
    """SyncAgentStates and Heartbeat: checks, then the writer."""

    def __init__(self, registry: Registry, writer: IngestWriter,
                 clock: Callable[[], float] = time.time, submit_timeout: float = SUBMIT_TIMEOUT):
        self._registry = registry
        self._writer = writer
        self._clock = clock
        self._submit_timeout = submit_timeout

    def sync(self, node_id: str, boot_id: int, seq: int, full: bool,
             states: Sequence, stopping: bool = False) -> SyncResult:
        """Store a report; `states` are AgentState protos (or objects alike).

        `stopping`: the daemon's last report before a clean stop; the node
        reads offline until its next message.

        Raises InvalidArgument (bad node_id, too many states), NotFound (node
        not registered), Conflict (boot older than the stored one) with
        nothing written, or Unavailable when the write failed.
        """
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        if len(states) > MAX_STATES:
            raise errors.InvalidArgument(
                f"{len(states)} states in one report; at most {MAX_STATES}")
        known = self._registry.get(node_id)
        if known is None:
            raise errors.NotFound(f"node {node_id!r} is not registered")
        if boot_id < known[0]:
            raise errors.Conflict(f"boot {boot_id} is older than the node's boot {known[0]}")
        received = now_ms(self._clock)
        rows, rejected = build_rows(node_id, boot_id, seq, received, states)
        keep = [agent_id for agent_id, _ in rejected if valid_agent_id(agent_id)]
        self._writer.submit(Report(node_id, boot_id, seq, full, rows, keep, received, stopping),
                            self._submit_timeout)
        if stopping:
            log.info("node %s stopped cleanly (boot %d): offline", node_id, boot_id)
        self._registry.advance(node_id, boot_id, seq)
        # A full report already repairs any gap: asking for another is waste.
        missed = boot_id > known[0] or seq != known[1] + 1
        return SyncResult(len(rows), rejected, missed and not full)

    def heartbeat(self, node_id: str, boot_id: int) -> bool:
        """Record that the node is alive; True if it must register (again)."""
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        known = self._registry.get(node_id)
        if known is None:
            return True
        self._writer.submit(Report(node_id, boot_id, None, False, [], (), now_ms(self._clock)),
                            self._submit_timeout)
        return boot_id > known[0]


def build_rows(node_id: str, boot_id: int, seq: int, received: int,
               states: Sequence) -> tuple[list[tuple], list[tuple[str, str]]]:
    """(REPORT_COLUMNS tuples of the valid states, [(agent_id, reason)] of the rest)."""
    rows: list[tuple] = []
    rejected: list[tuple[str, str]] = []
    ids = [s.agent_id for s in states]
    duplicated = _duplicates(ids) if len(set(ids)) != len(ids) else ()
    for s in states:
        agent_id = s.agent_id
        if agent_id in duplicated:
            reason = "agent_id appears more than once in the report"
        else:
            reason = state_fault(s)
        if reason is None:
            rows.append(agent_row(node_id, s, boot_id, seq, received))
        else:
            rejected.append((agent_id[:128], reason))
    return rows, rejected


def agent_row(node_id: str, s, boot_id: int, seq: int, received: int) -> tuple:
    """The REPORT_COLUMNS tuple of one valid AgentState or AgentInfo (0 times: NULL)."""
    return (node_id, s.agent_id, s.type, s.version, s.status, s.pid, s.start_time or None,
            s.restart_count, s.last_exit_code, s.last_exit_signal, s.health or "unknown",
            s.last_heartbeat or None, boot_id, seq, received,
            s.last_error[:MAX_ERROR].replace("\x00", "\ufffd"), s.next_retry_time or None,
            s.changed_at or None, bool(s.config_changed),
            s.health_message[:MAX_ERROR].replace("\x00", "\ufffd"))


def state_fault(s) -> Optional[str]:
    """Why one AgentState or AgentInfo cannot be stored, or None when it can.

    Besides the wire's rules (agent_id, a known status, pid >= 0), its
    next_retry_time and changed_at are not negative, its type and version storable on every backend (no NUL,
    bounded) and its health one of the API's values ("" is unset: stored as
    "unknown"). A last_error or health_message is stored cut to MAX_ERROR, NUL replaced: a long
    message never costs the state.
    """
    if not valid_agent_id(s.agent_id):
        return "invalid agent_id: want ^[A-Za-z0-9_-]{1,64}$"
    if s.status not in STORED_STATUSES:
        return f"status {s.status} is unspecified or unknown"
    for name in ("pid", "next_retry_time", "changed_at"):
        if getattr(s, name) < 0:
            return f"negative {name} {getattr(s, name)}"
    if s.health and s.health not in HEALTHS:
        return f"health must be one of {', '.join(HEALTHS)}"
    for name in ("type", "version"):
        text = getattr(s, name)
        if len(text) > MAX_TEXT or "\x00" in text:
            return f"{name} must be at most {MAX_TEXT} characters, without NUL"
    return None


def _duplicates(ids: list[str]) -> frozenset[str]:
    seen: set[str] = set()
    return frozenset(i for i in ids if i in seen or seen.add(i))
