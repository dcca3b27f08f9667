"""State reports into the database: validation, then the group-commit writer.

`ReportService.sync` is SyncAgentStates without the wire: it checks the
request against the in-memory Registry (no database lookup per report),
validates each state (and each event: fleet.manager.events), turns the valid
ones straight into parameter tuples (no dicts or model objects: this is the
hot path) and hands them to the `IngestWriter` (fleet.manager.store.writer), which
commits them before the reply.
"""
from __future__ import annotations

import logging
import operator
import time
from typing import Callable, Optional, Sequence

from fleet import errors
from fleet.values import valid_agent_id, valid_node_id
from fleet.manager import events as agent_events
from fleet.manager.store.backends import Backend
from fleet.manager.store.db import now_ms
from fleet.manager.store.registry import Registry
from fleet.manager.store.writer import SUBMIT_TIMEOUT, IngestWriter, Report  # noqa: F401 - re-exported
from fleet.states import State

log = logging.getLogger(__name__)

MAX_STATES = 5000               # per report (DESIGN.md, "The wire")
STORED_STATUSES = frozenset(int(s) for s in State if s is not State.UNSPECIFIED)
HEALTHS = ("healthy", "unhealthy", "unknown")
MAX_TEXT = 1024                 # characters of a state's type or version

# Column order of the tuples ReportService builds from reports and fleet.manager.nodes
# from pulled AgentInfo rows: the same columns, since both carry every field.
REPORT_COLUMNS = ("node_id", "agent_id", "type", "version", "status", "pid", "start_time",
                  "restart_count", "last_exit_code", "last_exit_signal", "health",
                  "last_heartbeat", "boot_id", "seq", "last_sync_time", "last_error",
                  "next_retry_time", "changed_at", "config_changed", "health_message")
MAX_ERROR = 4096                # characters of a last_error kept
VIEW_KEYS = ("status", "health")   # agent columns that lead a views' index and change often
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
                 report: bool = True, keys: bool = True) -> str:
    """The agent upsert for rows of `columns`: keeps `type` from creation.

    An empty stored type counts as unset. In a `report`, a state from a daemon
    of the previous release (changed_at unset) keeps the fields it does not
    carry; a pulled AgentInfo has always carried them. Without `keys` an update
    leaves the VIEW_KEYS columns alone (AgentUpsert assigns them apart).
    """
    updates = {c: f"excluded.{c}" for c in columns if c not in ("node_id", "agent_id", "type")}
    updates["type"] = "CASE WHEN agent.type = '' THEN excluded.type ELSE agent.type END"
    for column, kept in OLD_DAEMON_KEEPS.items() if report else ():
        if column in columns:
            updates[column] = (f"CASE WHEN excluded.changed_at IS NULL THEN {kept} "
                               f"ELSE excluded.{column} END")
    if not keys:
        updates = {c: sql for c, sql in updates.items() if c not in VIEW_KEYS}
    return backend.upsert("agent", columns, ("node_id", "agent_id"), updates, NOT_NEWER, bulk)


class AgentUpsert:
    """Rows of `columns` into the agent table by agent_upsert's rules, in few statements.

    SQLite rewrites the entries of every index on a column an UPDATE assigns, even
    when the value stays: assigning status and health with every report rewrote the
    fleet-wide views' indexes on them for every state (the upsert's rate at 50,000-
    54,000 rows/s; 76,000-96,000 without them, 300-row transactions). There the
    upsert leaves those two alone, and a second statement assigns them only to the
    rows whose values changed, among those the upsert just wrote: per key the last
    row of the newest (boot_id, seq), which is what the upsert left stored. `type`
    stays in the upsert although its index costs too (99,000-110,000 rows/s without
    it): its rule, the first non-empty type applied, depends on the order of a
    batch's rows, which a second statement cannot see. PostgreSQL compares the
    values itself (an update changing no indexed column is HOT): one statement.
    """

    def __init__(self, backend: Backend, columns: Sequence[str], report: bool = True):
        self._backend = backend
        split = backend.rewrites_assigned_indexes
        self.sql = agent_upsert(backend, columns, report=report, keys=not split)
        self.keys_sql: Optional[str] = None
        if split:
            picked = ("node_id", "agent_id", "boot_id", "seq") + VIEW_KEYS
            self._pick = operator.itemgetter(*(columns.index(c) for c in picked))
            self.keys_sql = backend.sql(
                f"WITH v({', '.join(picked)}) AS (VALUES ({', '.join('?' * len(picked))})) "
                "UPDATE agent SET status = v.status, health = v.health FROM v "
                "WHERE agent.node_id = v.node_id AND agent.agent_id = v.agent_id "
                "AND agent.boot_id = v.boot_id AND agent.seq = v.seq "
                "AND (agent.status <> v.status OR agent.health <> v.health)")

    def run(self, cursor, rows: Sequence[tuple]) -> None:
        """Write `rows` (tuples of `columns`) on an open transaction's cursor."""
        self._backend.upsert_many(cursor, self.sql, rows, key=2)   # (node_id, agent_id)
        if self.keys_sql is None:
            return
        stored: dict = {}           # (node_id, agent_id) -> the row the upsert left
        for row in map(self._pick, rows):
            before = stored.get(row[:2])
            if before is None or row[2:4] >= before[2:4]:
                stored[row[:2]] = row
        self._backend.upsert_many(cursor, self.keys_sql, list(stored.values()))


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
             states: Sequence, stopping: bool = False, events: Sequence = ()) -> SyncResult:
        """Store a report; `states` are AgentState protos (or objects alike), `events`
        AgentEvent ones (each stored once however often it is sent; a bad one
        is an error of its agent, counted with the states').

        `stopping`: the daemon's last report before a clean stop; the node
        reads offline until its next message.

        Raises InvalidArgument (bad node_id, too many states), NotFound (node
        not registered), Conflict (boot older than the stored one),
        Overloaded (the writer's queue is past its bound: retry after the hint)
        with nothing written, or Unavailable when the write failed.
        """
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        if len(states) > MAX_STATES:
            raise errors.InvalidArgument(
                f"{len(states)} states in one report; at most {MAX_STATES}")
        if len(events) > agent_events.MAX_PER_REPORT:
            raise errors.InvalidArgument(f"{len(events)} events in one report; "
                                         f"at most {agent_events.MAX_PER_REPORT}")
        known = self._registry.require(node_id, boot_id)
        # Refused before any work: a refusal must cost far less than a report.
        cost = self._writer.admit(len(states) + len(events))
        try:
            received = now_ms(self._clock)
            rows, rejected = build_rows(node_id, boot_id, seq, received, states)
            keep = [agent_id for agent_id, _ in rejected if valid_agent_id(agent_id)]
            event_rows, bad_events = agent_events.event_rows(node_id, events, received)
            report = Report(node_id, boot_id, seq, full, rows, keep, received, stopping,
                            event_rows)
        except BaseException:
            self._writer.backlog.release(cost, committed=False)
            raise
        self._submit(report, cost)
        if stopping:
            log.info("node %s stopped cleanly (boot %d): offline", node_id, boot_id)
        self._registry.advance(node_id, boot_id, seq)
        # A full report already repairs any gap: asking for another is waste.
        missed = boot_id > known[0] or seq != known[1] + 1
        return SyncResult(len(rows), rejected + bad_events, missed and not full)

    def heartbeat(self, node_id: str, boot_id: int) -> bool:
        """Record that the node is alive; True if it must register (again)."""
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        known = self._registry.get(node_id)
        if known is None:
            return True
        try:
            self._submit(Report(node_id, boot_id, None, False, [], (), now_ms(self._clock)))
        except errors.NotFound:
            return True
        return boot_id > known[0]

    def _submit(self, report: Report, cost: int = 0) -> None:
        """writer.submit(); a node deleted meanwhile (through another manager or
        worker, whose registry forgot it, not this one's) is forgotten here too."""
        try:
            self._writer.submit(report, self._submit_timeout, cost)
        except errors.NotFound:
            self._registry.forget(report.node_id)
            raise


def build_rows(node_id: str, boot_id: int, seq: int, received: int,
               states: Sequence) -> tuple[list[tuple], list[tuple[str, str]]]:
    """(REPORT_COLUMNS tuples of the valid states, [(agent_id, reason)] of the rest).

    The hot path: each field is read once, and a state passing `state_fault`'s rules,
    checked inline, skips it (tests/test_properties.py holds the two to one verdict).
    """
    rows: list[tuple] = []
    rejected: list[tuple[str, str]] = []
    ids = [s.agent_id for s in states]
    duplicated = _duplicates(ids) if len(set(ids)) != len(ids) else ()
    for s in states:
        agent_id, status, pid, type_, version, health = (
            s.agent_id, s.status, s.pid, s.type, s.version, s.health)
        next_retry, changed = s.next_retry_time, s.changed_at
        if (agent_id in duplicated or status not in STORED_STATUSES or pid < 0
                or next_retry < 0 or changed < 0 or (health and health not in HEALTHS)
                or len(type_) > MAX_TEXT or len(version) > MAX_TEXT
                or "\x00" in type_ or "\x00" in version or not valid_agent_id(agent_id)):
            reason = ("agent_id appears more than once in the report"
                      if agent_id in duplicated else state_fault(s))
            if reason is not None:
                rejected.append((agent_id[:128], reason))
                continue
        last_error, message = s.last_error, s.health_message
        rows.append((node_id, agent_id, type_, version, status, pid, s.start_time or None,
                     s.restart_count, s.last_exit_code, s.last_exit_signal,
                     health or "unknown", s.last_heartbeat or None, boot_id, seq, received,
                     _message(last_error) if last_error else "", next_retry or None,
                     changed or None, bool(s.config_changed),
                     _message(message) if message else ""))
    return rows, rejected


def agent_row(node_id: str, s, boot_id: int, seq: int, received: int) -> tuple:
    """The REPORT_COLUMNS tuple of one valid AgentState or AgentInfo (0 times: NULL),
    as build_rows makes them."""
    return (node_id, s.agent_id, s.type, s.version, s.status, s.pid, s.start_time or None,
            s.restart_count, s.last_exit_code, s.last_exit_signal, s.health or "unknown",
            s.last_heartbeat or None, boot_id, seq, received, _message(s.last_error),
            s.next_retry_time or None, s.changed_at or None, bool(s.config_changed),
            _message(s.health_message))


def _message(text: str) -> str:
    """A last_error or health_message as stored: cut to MAX_ERROR, NUL replaced."""
    return text[:MAX_ERROR].replace("\x00", "\ufffd")


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
