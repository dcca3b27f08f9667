"""Policy rollouts: a policy's new version moved to its pinned nodes, a wave at a time.

A `PUT /api/v1/policies/<name>` with `"hold": true` pins every matching node at the
previous version (table policy_pin). A rollout of that policy (fleet.manager.changes.rollouts,
driven by fleet.manager.changes.rollout_engine) takes the nodes pinned at an older version
than the newest, sorted by node_id. A node's "operate" is releasing its pin (the
row deleted, this manager's PolicyStore snapshot dropped so its next heartbeat
answers the newest version). Releasing twice is harmless.

A node then succeeds once its policy_status reports the newest version applied and
every agent of that version is running and healthy in the stored agent rows; an
agent whose definition differs from the pinned version's must also have started
after the release (its start_time, the daemon's clock, is compared with the
manager's: clocks a few seconds apart can at worst make a node wait, never pass
early by more than that). It fails at once when the daemon reports the version
not applied (with its reason) or one of those agents turns fatal, and at its
deadline otherwise.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import peewee

from fleet import errors
from fleet.manager.nodes import NodeStore
from fleet.manager.changes.policystore import PolicyRow, PolicyStore
from fleet.manager.store.db import backend_of, storage_faults

log = logging.getLogger(__name__)


class PolicyPins:
    """The pins of policies as a rollout sees them: which nodes, release, and check."""

    def __init__(self, db: peewee.Database, policies: PolicyStore, nodes: NodeStore):
        self._db = db
        self._backend = backend_of(db)
        self._policies = policies
        self._nodes = nodes

    def head(self, name: str) -> Optional[PolicyRow]:
        """The policy's newest version; None when it does not exist (or was deleted)."""
        row = self._policies.head(name)
        return None if row is None or row.deleted else row

    @storage_faults
    def pinned(self, name: str, version: int) -> list[str]:
        """Node ids pinned for `name` at a version older than `version`, sorted."""
        sql = self._backend.sql("SELECT node_id FROM policy_pin WHERE policy = ? "
                                "AND version < ? ORDER BY node_id")
        with self._db.connection_context():
            return [row[0] for row in self._db.execute_sql(sql, (name, version))]

    @storage_faults
    def pin_version(self, node_id: str, name: str) -> int:
        """The version the node is pinned at for `name`; 0 when it is not pinned."""
        with self._db.connection_context():
            row = self._db.execute_sql(self._backend.sql(
                "SELECT version FROM policy_pin WHERE node_id = ? AND policy = ?"),
                (node_id, name)).fetchone()
        return row[0] if row else 0

    @storage_faults
    def release(self, node_id: str, name: str) -> int:
        """Delete the node's pin for `name`: the version it was pinned at (0: none)."""
        with self._db.connection_context(), self._db.atomic():
            row = self._db.execute_sql(self._backend.sql(
                "SELECT version FROM policy_pin WHERE node_id = ? AND policy = ?"),
                (node_id, name)).fetchone()
            self._db.execute_sql(self._backend.sql(
                "DELETE FROM policy_pin WHERE node_id = ? AND policy = ?"), (node_id, name))
        self._policies.invalidate()
        log.info("policy %s: pin of node %s released (was v%s)", name, node_id,
                 row[0] if row else "-")
        return row[0] if row else 0

    def check(self, node_id: str, name: str, pinned: int, released_at: int
              ) -> tuple[str, str]:
        """("running"|"succeeded"|"failed", message) of a node whose pin was released at
        `released_at` (Unix ms), pinned at version `pinned` before."""
        head = self.head(name)
        if head is None:
            return "failed", f"policy {name!r} was deleted"
        status = self._policies.statuses([name]).get((node_id, name))
        if status is not None and status[0] == head.version and not status[1]:
            return "failed", f"policy {name} v{head.version} not applied: {status[2]}"
        fresh = _changed_agents(self._agents_of(name, pinned), _by_id(head.agents_json))
        waiting = []
        for agent_id in sorted(_by_id(head.agents_json)):
            try:
                agent = self._nodes.get_agent(node_id, agent_id)
            except errors.NotFound:
                waiting.append(f"{agent_id}: not reported yet")
                continue
            new = agent_id not in fresh or (agent["start_time"] or 0) >= released_at
            if new and agent["status"] == "fatal":
                return "failed", f"agent {agent_id} fatal: {_describe(agent)}"
            if not (new and agent["status"] == "running" and agent["health"] == "healthy"):
                waiting.append(f"{agent_id}: {_describe(agent)}"
                               + ("" if new else " (not restarted yet)"))
        if status is None or status[0] != head.version:
            waiting.insert(0, f"v{head.version} not reported applied"
                           + (f" (reported v{status[0]})" if status else ""))
        if waiting:
            return "running", "; ".join(waiting)
        return "succeeded", f"policy {name} v{head.version} applied, agents running and healthy"

    def _agents_of(self, name: str, version: int) -> dict:
        if version <= 0:
            return {}
        sql = self._backend.sql("SELECT agents FROM policy WHERE name = ? AND version = ?")
        with self._db.connection_context():
            row = self._db.execute_sql(sql, (name, version)).fetchone()
        return _by_id(row[0]) if row else {}


def _by_id(agents_json: str) -> dict:
    try:
        return {item["id"]: item for item in json.loads(agents_json or "[]")
                if isinstance(item, dict) and "id" in item}
    except ValueError:
        return {}


def _changed_agents(old: dict, new: dict) -> set:
    """Ids of the agents of `new` that are not in `old` or defined differently."""
    return {agent_id for agent_id, item in new.items() if old.get(agent_id) != item}


def _describe(agent: dict) -> str:
    text = f"status={agent['status']} health={agent['health']} pid={agent['pid']}"
    why = agent.get("health_message") or agent.get("last_error") or ""
    return text + (f": {why}" if why else "")
