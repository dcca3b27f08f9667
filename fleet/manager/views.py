"""Fleet-wide views: every agent of every node, filtered and paged, and the overview.

`FleetViews.agents` serves GET /api/v1/agents: agents ordered by (node_id,
agent_id), filtered by status, health, type, node and the labels of their node,
a keyset page at a time (fleet.manager.paging). A page never scans the agent
table: migration 6 indexes (status | health | type, node_id, agent_id) beside
the unique (node_id, agent_id), so each filter is an index range read in page
order and stops after limit + 1 rows. With several filters the database picks
one of those indexes and checks the others on the rows it reads.

Node and label filters walk the matching nodes in node_id order (labels are
JSON, matched here) and read their agents with `node_id IN (...)` a batch of
nodes at a time, so the database reads each node's agents from the index in
order instead of sorting them.

`FleetViews.overview` serves GET /api/v1/overview: nodes by status, agents by
status and by health (each counted on an index that covers it), and the
agents that restarted most in the last hour (`top_restarts`, from the event
table; see `RESTARTS_SQL` for the rule).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

import peewee

from fleet import errors
from fleet.manager import paging
from fleet.manager.ingest import HEALTHS
from fleet.manager.nodes import (AGENT_STATUSES, agent_columns, agent_filters,
                                 agent_from_values, parse_labels)
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import now_ms, storage_faults
from fleet.manager.store.models import Agent, Node
from fleet.states import State
from fleet.values import valid_node_id

log = logging.getLogger(__name__)

NODE_BATCH = 200          # nodes whose agents one `node_id IN (...)` query reads
RESTART_WINDOW_MS = 3_600_000
TOP_RESTARTS = 10

# An agent's restarts in a window: its `restart` events (operator, health, limit or
# policy restarts: one each), plus its `started` events that follow neither
# `stopped` nor `restart` (a crash of a running process, or a retry after a failed
# start). A start after a stop, a restart's own start and an agent's first start
# (no earlier event stored) are not restarts: the rule the daemon's restart_count
# follows. Each `started` looks up the agent's previous event on the
# (node_id, agent_id, time, id) index. The inner LIMIT (MAX_EXAMINED) bounds the
# work and keeps SQLite and PostgreSQL from flattening the inner query into the
# aggregate, which would evaluate the lookup once per reference.
RESTARTS_SQL = """
SELECT node_id, agent_id, SUM(counted) AS restarts FROM (
  SELECT e.node_id AS node_id, e.agent_id AS agent_id,
         CASE WHEN e.kind = 'restart' THEN 1
              ELSE COALESCE((SELECT CASE WHEN p.kind IN ('stopped', 'restart') THEN 0 ELSE 1 END
                             FROM event p
                             WHERE p.node_id = e.node_id AND p.agent_id = e.agent_id
                               AND (p.time, p.id) < (e.time, e.id)
                             ORDER BY p.time DESC, p.id DESC LIMIT 1), 0) END AS counted
  FROM event e WHERE e.kind IN ('started', 'restart') AND e.time >= ? LIMIT ?
) AS counts GROUP BY node_id, agent_id HAVING SUM(counted) > 0
ORDER BY restarts DESC, node_id, agent_id LIMIT ?"""
MAX_EXAMINED = 1_000_000     # starts and restarts of the last hour looked at, at most


class FleetViews:
    """Reads across the whole fleet for the HTTP API; plain dicts out, never peewee rows."""

    def __init__(self, db: peewee.Database, offline_after: float = 90.0,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self._backend = backend_of(db)
        self._offline_after_ms = int(offline_after * 1000)   # [manager] offline_after
        self._clock = clock

    # ---- agents ----

    @storage_faults
    def agents(self, status: Optional[str] = None, health: Optional[str] = None,
               type: Optional[str] = None, node: Optional[str] = None,
               label: Optional[str | Iterable[str]] = None,
               limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None
               ) -> tuple[list[dict], Optional[str]]:
        """Agents by (node_id, agent_id) matching every filter given, after `cursor`, at
        most `limit`; and the next page's cursor (None on the last). InvalidArgument
        naming the parameter for a bad filter, limit or cursor."""
        where = agent_filters(status, health, type)
        if node and not valid_node_id(node):
            raise errors.InvalidArgument(f"node {node[:130]!r} is not a valid node id")
        wanted = parse_labels(label)
        limit = paging.check_limit(limit)
        after = paging.decode_fleet_agent(cursor)
        with self._db.connection_context():
            if node or wanted:
                rows = self._page_of_nodes(node, wanted, where, after, limit + 1)
            else:
                if after is not None:
                    where.append(peewee.Tuple(Agent.node_id, Agent.agent_id) >
                                 peewee.Tuple(*after))
                rows = self._select(where, limit + 1)
        agents, more = paging.split_page([agent_from_values(values) for values in rows], limit)
        if not more:
            return agents, None
        return agents, paging.encode_fleet_agent(agents[-1]["node_id"], agents[-1]["agent_id"])

    def _select(self, where: list, count: int, by_agent: bool = False) -> list[tuple]:
        """At most `count` agents' AGENT_FIELDS values matching every condition, in
        (node_id, agent_id) order."""
        query = Agent.select(*agent_columns())
        if where:
            query = query.where(*where)
        order = (Agent.agent_id,) if by_agent else (Agent.node_id, Agent.agent_id)
        return list(query.order_by(*order).limit(count).tuples().execute(self._db))

    def _page_of_nodes(self, node: Optional[str], wanted: list[tuple[str, str]], where: list,
                       after: Optional[tuple[str, str]], count: int) -> list[tuple]:
        """At most `count` agents of the nodes named by `node` and carrying the labels
        `wanted`, after `after`: the cursor's node first, then batches of nodes."""
        rows: list[tuple] = []
        for batch in self._matching_nodes(node, wanted, after[0] if after else None):
            if after is not None and batch[0] == after[0]:
                rows += self._select(where + [Agent.node_id == after[0],
                                              Agent.agent_id > after[1]], count, by_agent=True)
                batch = batch[1:]
            if batch and len(rows) < count:
                rows += self._select(where + [Agent.node_id.in_(batch)], count - len(rows))
            if len(rows) >= count:
                break
        return rows

    def _matching_nodes(self, node: Optional[str], wanted: list[tuple[str, str]],
                        start: Optional[str]) -> Iterable[list[str]]:
        """Batches of the node_ids from `start` on (the database's order) that are
        `node` (if given) and carry every label wanted."""
        query = Node.select(Node.node_id, Node.labels).order_by(Node.node_id)
        if node:
            query = query.where(Node.node_id == node)
        bound = Node.node_id >= start if start is not None else None
        while True:
            batch = list((query.where(bound) if bound is not None else query)
                         .limit(NODE_BATCH).execute(self._db))
            matched = [row.node_id for row in batch
                       if all(row.labels.get(k) == v for k, v in wanted)]
            if matched:
                yield matched
            if len(batch) < NODE_BATCH:
                return
            bound = Node.node_id > batch[-1].node_id

    # ---- overview ----

    @storage_faults
    def overview(self) -> dict:
        """Nodes by status, agents by status and health, and `top_restarts`: at most
        TOP_RESTARTS agents with the most restarts in the last hour, most first."""
        now = now_ms(self._clock)
        with self._db.connection_context(), self._snapshot():
            total, online = self._db.execute_sql(self._backend.sql(
                "SELECT COUNT(*), SUM(CASE WHEN stopped_at IS NULL AND last_seen >= ? "
                "THEN 1 ELSE 0 END) FROM node"), (now - self._offline_after_ms,)).fetchone()
            by_status = self._db.execute_sql(
                "SELECT status, COUNT(*) FROM agent GROUP BY status").fetchall()
            by_health = self._db.execute_sql(
                "SELECT health, COUNT(*) FROM agent GROUP BY health").fetchall()
            restarts = self._top_restarts(now)
        online = int(online or 0)
        return {
            "nodes": {"total": total, "online": online, "offline": total - online},
            "agents": {"total": sum(count for _, count in by_status),
                       "status": _count_by(by_status, AGENT_STATUSES, _status_name),
                       "health": _count_by(by_health, HEALTHS, _health_name)},
            "top_restarts": restarts,
        }

    def _top_restarts(self, now: int) -> list[dict]:
        """At most TOP_RESTARTS agents by their restarts of the last hour (RESTARTS_SQL)."""
        rows = self._db.execute_sql(self._backend.sql(RESTARTS_SQL),
                                    (now - RESTART_WINDOW_MS, MAX_EXAMINED, TOP_RESTARTS))
        return [{"node_id": node_id, "agent_id": agent_id, "restarts": int(restarts)}
                for node_id, agent_id, restarts in rows.fetchall()]

    def _snapshot(self):
        """A read transaction, so that the counts agree with each other. SQLite:
        DEFERRED (a reader takes no write lock); PostgreSQL: its default."""
        if self._backend.name == "sqlite":
            return self._db.atomic(lock_type="DEFERRED")
        return self._db.atomic()


def _status_name(value: int) -> str:
    try:
        state = State(value)
    except ValueError:
        return State.UNKNOWN.api_name
    return state.api_name if state is not State.UNSPECIFIED else State.UNKNOWN.api_name


def _health_name(value: str) -> str:
    return value if value in HEALTHS else "unknown"   # as agent_dict shows it


def _count_by(rows: list, names: Iterable[str], name_of: Callable) -> dict[str, int]:
    """{name: count} with every name present (0 when none), stored values mapped by name_of."""
    counts = dict.fromkeys(names, 0)
    for value, count in rows:
        counts[name_of(value)] += count
    return counts
