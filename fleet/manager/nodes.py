"""Nodes and their agents off the report hot path: registration, reads, deletion,
and the agent rows the manager pulls from a daemon (manual sync, operate).

Results are plain dicts shaped like the HTTP API's Node and Agent objects
(DESIGN.md, "HTTP API"), so callers never touch peewee. Every call opens and
closes its own connection: the HTTP and gRPC worker threads keep none. A database
that fails to operate (locked, full) raises Unavailable, never a peewee error.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterable, Optional, Sequence

import peewee

from fleet import errors
from fleet.values import valid_node_id
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import now_ms, storage_faults
from fleet.manager.ingest import (HEALTHS, MAX_TEXT, REPORT_COLUMNS, AgentUpsert, agent_row,
                                  state_fault)
from fleet.manager.store.models import Agent, Node
from fleet.manager.store.registry import Registry
from fleet.states import State

log = logging.getLogger(__name__)

NODE_STATUSES = ("online", "offline")
AGENT_STATUSES = tuple(s.api_name for s in State if s is not State.UNSPECIFIED)
MAX_TYPE = MAX_TEXT    # characters of a type filter (as stored at most)
MAX_KEEP_IDS = 10000   # a pull naming more agents than this skips its delete step
NODE_BATCH = 1000      # node rows read at once while filling a page by labels

NODE_FACTS = ("hostname", "ip", "advertise_address", "os", "arch", "labels", "daemon_version")
AGENT_FIELDS = ("node_id", "agent_id", "type", "version", "status", "pid", "start_time",
                "restart_count", "last_exit_code", "last_exit_signal", "last_error",
                "next_retry_time", "health", "health_message", "changed_at", "config_changed",
                "last_heartbeat", "last_sync_time")


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What a RegisterNode request says about its node."""

    node_id: str
    hostname: str = ""
    ip: str = ""
    advertise_address: str = ""
    os: str = ""
    arch: str = ""
    labels: dict = dataclasses.field(default_factory=dict)
    daemon_version: str = ""
    boot_id: int = 0


class NodeStore:
    """Registration, node and agent reads, deletion, and pulled agent rows."""

    def __init__(self, db: peewee.Database, registry: Registry, offline_after: float = 90.0,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self._backend = backend_of(db)
        self._registry = registry
        self._offline_after_ms = int(offline_after * 1000)  # seconds, from ManagerConfig
        self._clock = clock
        self._register_sql = self._build_register_sql()
        self._pull = AgentUpsert(self._backend, REPORT_COLUMNS, report=False)

    def _build_register_sql(self) -> str:
        columns = ("node_id",) + NODE_FACTS + ("boot_id", "seq", "registered_at", "last_seen")
        updates = {c: f"excluded.{c}" for c in NODE_FACTS + ("last_seen",)}
        # SET expressions see the old row: seq restarts only with a new boot.
        updates["seq"] = "CASE WHEN node.boot_id = excluded.boot_id THEN node.seq ELSE 0 END"
        updates["boot_id"] = "excluded.boot_id"
        updates["stopped_at"] = "NULL"      # a registering daemon is running again
        return self._backend.upsert("node", columns, ("node_id",), updates)

    # ---- registration ----

    @storage_faults
    def register(self, facts: NodeFacts) -> None:
        """Create or update a node from its RegisterNode; InvalidArgument for a bad node_id.

        The registration is the node's word on its boot: a lower boot_id than
        the stored one (state_dir wiped) replaces it, and the node's agent rows
        are re-stamped so its new reports can overwrite them.
        """
        if not valid_node_id(facts.node_id):
            raise errors.InvalidArgument(f"invalid node_id {facts.node_id[:200]!r}")
        facts = _storable(facts)
        now = now_ms(self._clock)
        labels = Node.labels.db_value(dict(facts.labels))
        params = (facts.node_id, facts.hostname, facts.ip, facts.advertise_address, facts.os,
                  facts.arch, labels, facts.daemon_version, facts.boot_id, 0, now, now)
        with self._db.connection_context(), self._db.atomic():
            self._db.execute_sql(self._register_sql, params)
            self._db.execute_sql(self._backend.sql(
                "UPDATE agent SET boot_id = ?, seq = 0 WHERE node_id = ? AND boot_id > ?"),
                (facts.boot_id, facts.node_id, facts.boot_id))
            boot_id, seq = self._db.execute_sql(self._backend.sql(
                "SELECT boot_id, seq FROM node WHERE node_id = ?"), (facts.node_id,)).fetchone()
        self._registry.set(facts.node_id, boot_id, seq)
        log.info("node %s registered (boot %d, %s, %s)", facts.node_id, boot_id,
                 facts.hostname, facts.advertise_address)

    # ---- nodes ----

    @storage_faults
    def list_nodes(self, status: Optional[str] = None,
                   label: Optional[str | Iterable[str]] = None,
                   limit: Optional[int] = None, after: Optional[str] = None) -> list[dict]:
        """Nodes by node_id, optionally only `status` ("online"|"offline") and labels "k=v";
        only those after node_id `after`, and at most `limit` (None: all)."""
        if status and status not in NODE_STATUSES:
            raise errors.InvalidArgument(f"status must be online or offline, not {status!r}")
        wanted = parse_labels(label)
        now = now_ms(self._clock)
        query = Node.select().order_by(Node.node_id)
        if status == "online":
            query = query.where((Node.last_seen >= now - self._offline_after_ms) &
                                Node.stopped_at.is_null())
        elif status == "offline":
            query = query.where(Node.last_seen.is_null() |
                                (Node.last_seen < now - self._offline_after_ms) |
                                Node.stopped_at.is_null(False))
        found: list[Node] = []
        with self._db.connection_context():
            # Labels are matched here, not in SQL: read on in batches until the page is full.
            while limit is None or len(found) < limit:
                batch_query = query if after is None else query.where(Node.node_id > after)
                if limit is not None:
                    batch_query = batch_query.limit(max(limit, NODE_BATCH))
                batch = list(batch_query.execute(self._db))
                found += [row for row in batch if all(row.labels.get(k) == v for k, v in wanted)]
                if limit is None or len(batch) < max(limit, NODE_BATCH):
                    break
                after = batch[-1].node_id
        return [self._node_dict(row, now) for row in found[:limit]]

    @storage_faults
    def get_node(self, node_id: str) -> dict:
        """One node; NotFound if it is not registered."""
        return self._node_dict(self._node_row(node_id), now_ms(self._clock))

    @storage_faults
    def delete_node(self, node_id: str, force: bool = False) -> None:
        """Remove a node and its agents; Conflict while it is online unless `force`."""
        with self._db.connection_context(), self._db.atomic():
            # Locked: a report writing this node commits first, so its rows go too.
            row = self._node_row(node_id, lock=True)
            if not force and self._is_online(row, now_ms(self._clock)):
                raise errors.Conflict(f"node {node_id!r} is online; stop its daemon first")
            Agent.delete().where(Agent.node_id == node_id).execute(self._db)
            Node.delete().where(Node.node_id == node_id).execute(self._db)
        self._registry.forget(node_id)
        log.info("node %s deleted", node_id)

    def _node_row(self, node_id: str, lock: bool = False) -> Node:
        query = Node.select().where(Node.node_id == node_id)
        if lock:
            query = self._backend.for_update(query)
        with self._db.connection_context():
            rows = list(query.execute(self._db))
        if not rows:
            raise errors.NotFound(f"node {node_id!r} not found")
        return rows[0]

    def _is_online(self, row: Node, now: int) -> bool:
        """Seen within offline_after, and not since stopped cleanly."""
        return (row.stopped_at is None and row.last_seen is not None
                and now - row.last_seen <= self._offline_after_ms)

    def _node_dict(self, row: Node, now: int) -> dict:
        node = {"node_id": row.node_id}
        node.update((name, getattr(row, name)) for name in NODE_FACTS)
        node["labels"] = dict(row.labels)
        node["status"] = "online" if self._is_online(row, now) else "offline"
        node["registered_at"] = row.registered_at
        node["last_seen"] = row.last_seen
        return node

    # ---- agents ----

    @storage_faults
    def list_agents(self, node_id: str, health: Optional[str] = None,
                    limit: Optional[int] = None, after: Optional[str] = None, *,
                    status: Optional[str] = None, type: Optional[str] = None) -> list[dict]:
        """The stored agents of a node by agent_id, optionally only those of `health`,
        `status` and `type`, after agent_id `after`, at most `limit` (None: all);
        NotFound for an unknown node, InvalidArgument for a bad filter."""
        where = Agent.node_id == node_id
        for condition in agent_filters(status, health, type):
            where &= condition
        if after is not None:
            where &= Agent.agent_id > after
        query = Agent.select(*agent_columns()).where(where).order_by(Agent.agent_id)
        if limit is not None:
            query = query.limit(limit)
        with self._db.connection_context():     # one connection for both reads
            self._node_row(node_id)
            return [agent_from_values(values) for values in query.tuples().execute(self._db)]

    @storage_faults
    def get_agent(self, node_id: str, agent_id: str) -> dict:
        """One stored agent; NotFound for an unknown node or agent."""
        query = Agent.select().where((Agent.node_id == node_id) & (Agent.agent_id == agent_id))
        with self._db.connection_context():
            self._node_row(node_id)
            rows = list(query.execute(self._db))
        if not rows:
            raise errors.NotFound(f"agent {agent_id!r} not found on node {node_id!r}")
        return agent_dict(rows[0])

    @storage_faults
    def store_agent_infos(self, node_id: str, infos: Sequence, full: bool = True) -> list[dict]:
        """Store AgentInfo protos (or alike) pulled from the node; its agents afterwards.

        `full`: the infos are all the node's agents, so rows of others are
        deleted (same transaction). Invalid infos are skipped with a warning.
        Rows carry the node's current (boot_id, seq) as stored, not as the registry
        caches it: with several managers, the cache lags the reports another one
        stored, and rows stamped with it would lose to them. A newer report still wins.
        """
        now = now_ms(self._clock)
        with self._db.connection_context(), self._db.atomic():
            # The node row first, as reports lock it; gone by now: NotFound, no rows.
            node = self._node_row(node_id, lock=True)
            rows = _pull_rows(node_id, (node.boot_id, node.seq), now, infos)
            if rows:
                self._pull.run(self._db.cursor(), rows)
            if full:
                self._delete_others(node_id, [row[1] for row in rows])
        return self.list_agents(node_id)

    @storage_faults
    def update_agent(self, node_id: str, info) -> dict:
        """Store one AgentInfo returned by an operate; the stored agent."""
        self.store_agent_infos(node_id, [info], full=False)
        return self.get_agent(node_id, info.agent_id)

    def _delete_others(self, node_id: str, agent_ids: list[str]) -> None:
        if len(agent_ids) > MAX_KEEP_IDS:
            log.warning("node %s: %d agents pulled; not deleting others", node_id, len(agent_ids))
            return
        query = Agent.delete().where(Agent.node_id == node_id)
        if agent_ids:
            query = query.where(Agent.agent_id.not_in(agent_ids))
        query.execute(self._db)


def _storable(facts: NodeFacts) -> NodeFacts:
    """`facts` with each NUL of its texts replaced (PostgreSQL's text cannot hold one;
    labels are stored as JSON, which escapes it)."""
    return dataclasses.replace(facts, **{name: getattr(facts, name).replace("\x00", "\ufffd")
                                         for name in NODE_FACTS if name != "labels"})


def _pull_rows(node_id: str, known: tuple[int, int], now: int, infos: Sequence) -> list[tuple]:
    """REPORT_COLUMNS tuples of the valid infos; the rest are logged and skipped."""
    rows, seen = [], set()
    boot_id, seq = known
    for i in infos:
        fault = "listed twice" if i.agent_id in seen else state_fault(i)
        if fault:
            log.warning("node %s: skipping pulled agent %r: %s", node_id, i.agent_id[:128], fault)
            continue
        seen.add(i.agent_id)
        rows.append(agent_row(node_id, i, boot_id, seq, now))
    return rows


def agent_dict(row: Agent) -> dict:
    """The HTTP API's Agent object for a stored row (status as its lower-case name)."""
    return agent_from_values([getattr(row, name) for name in AGENT_FIELDS])


def agent_columns() -> list:
    """The Agent fields to select for agent_from_values, in AGENT_FIELDS order."""
    return [getattr(Agent, name) for name in AGENT_FIELDS]


def agent_from_values(values) -> dict:
    """The HTTP API's Agent object for a stored row's AGENT_FIELDS values (a model-free
    read: `.select(*agent_columns()).tuples()` costs a fraction of a model per row)."""
    agent = dict(zip(AGENT_FIELDS, values))
    try:
        agent["status"] = State(agent["status"]).api_name
    except ValueError:
        agent["status"] = State.UNKNOWN.api_name
    if agent["health"] not in HEALTHS:        # rows written before health was checked
        agent["health"] = "unknown"
    return agent


def parse_labels(label: Optional[str | Iterable[str]]) -> list[tuple[str, str]]:
    """[(key, value)] of label filters "k=v"; InvalidArgument naming `label` for another."""
    if not label:
        return []
    texts = [label] if isinstance(label, str) else list(label)
    pairs = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"label filter must be KEY=VALUE, not {text!r}")
        pairs.append((key, value))
    return pairs


def agent_filters(status: Optional[str], health: Optional[str],
                  type: Optional[str]) -> list:
    """peewee conditions for the status, health and type filters given (checked):
    a node's agent list and the fleet's (fleet.manager.views) filter alike."""
    where = []
    if status:
        if status not in AGENT_STATUSES:
            raise errors.InvalidArgument(
                f"status must be one of {', '.join(AGENT_STATUSES)}, not {status[:64]!r}")
        where.append(Agent.status == State[status.upper()].value)
    if health:
        if health not in HEALTHS:
            raise errors.InvalidArgument(
                f"health must be one of {', '.join(HEALTHS)}, not {health[:64]!r}")
        where.append(Agent.health == health)
    if type:
        if len(type) > MAX_TYPE or "\x00" in type:
            raise errors.InvalidArgument(
                f"type must be text of at most {MAX_TYPE} characters, without NUL")
        where.append(Agent.type == type)
    return where
