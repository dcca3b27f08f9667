"""Rollouts: one operation applied to the nodes of a selector, in waves, kept in the database.

A rollout is created through the HTTP API (`RolloutService.create`): the body
is checked (`parse_spec`), the nodes whose labels match the selector and that
have the agent are frozen into `rollout_node` rows, sorted by node_id, and the
rollout is `pending`. The engine (fleet.manager.changes.rollout_engine) drives it to its
end; every change is one short transaction here, so a manager that dies leaves
a rollout another one can resume.

A policy rollout (`{"policy": NAME}`, no operation, agent_id or selector) takes
the nodes pinned for the policy at an older version than its newest
(fleet.manager.changes.policy_rollouts); 404 for an unknown policy, 409 when none is pinned.

Rollout statuses: pending -> running -> succeeded | failed, cancelled from
pending or running; interrupted when a manager cannot drive it (a kind this
release does not know). A node's: pending -> running -> succeeded | failed, or
pending -> skipped (cancelled, or the rollout stopped on failures).

Failures: `max_failures` is the number of failed nodes tolerated. Once more
than that have failed, no further node is started, the pending ones are
skipped and the rollout ends `failed`; 0 stops at the first failure. A rollout
that went through every node with at most max_failures failed ones `succeeded`
(its failed nodes are listed).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any, Callable, Optional

import peewee

from fleet import errors
from fleet.values import valid_agent_id
from fleet.manager import paging
from fleet.manager.audit import AuditLog
from fleet.manager.nodes import NodeStore
from fleet.manager.changes.policy_rollouts import PolicyPins
from fleet.manager.store.db import now_ms, storage_faults
from fleet.manager.store.models import Agent, Rollout, RolloutNode

log = logging.getLogger(__name__)

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled", "interrupted")
ENDED = ("succeeded", "failed", "cancelled", "interrupted")
NODE_STATUSES = ("pending", "running", "succeeded", "failed", "skipped")
OPERATIONS = ("restart", "start", "stop")
KEYS = ("operation", "agent_id", "policy", "selector", "max_parallel", "max_failures",
        "wait_seconds")
RANGES = {"max_parallel": (1, 1000), "max_failures": (0, 100000), "wait_seconds": (1, 3600)}
DEFAULTS = {"max_parallel": 5, "max_failures": 0, "wait_seconds": 60}
MAX_LABELS = 32
MAX_MESSAGE = 1024
ID_CURSOR = r"^[0-9]{1,18}$"      # rollouts page newest first: the last id served


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """What a POST /api/v1/rollouts asks for, checked."""

    operation: str
    agent_id: str
    labels: dict
    max_parallel: int = DEFAULTS["max_parallel"]
    max_failures: int = DEFAULTS["max_failures"]
    wait_seconds: int = DEFAULTS["wait_seconds"]
    policy: Optional[str] = None     # a policy rollout: operation and agent_id are ""


def parse_spec(body: Any) -> RolloutSpec:
    """The RolloutSpec of a request body; InvalidArgument naming the key at fault."""
    if not isinstance(body, dict):
        raise errors.InvalidArgument("body must be a JSON object")
    for key in body:
        if key not in KEYS:
            raise errors.InvalidArgument(f"unknown key {str(key)[:64]!r}")
    numbers = _numbers(body)
    if body.get("policy") is not None:
        return RolloutSpec("", "", {}, policy=_policy_name(body), **numbers)
    operation = body.get("operation")
    if operation not in OPERATIONS:
        raise errors.InvalidArgument(f"operation must be one of {', '.join(OPERATIONS)}")
    agent_id = body.get("agent_id")
    if not isinstance(agent_id, str) or not valid_agent_id(agent_id):
        raise errors.InvalidArgument("agent_id must be 1 to 64 of A-Z a-z 0-9 _ -")
    return RolloutSpec(operation, agent_id, _labels(body.get("selector", {})), **numbers)


def _numbers(body: dict) -> dict:
    numbers = {}
    for key, (low, high) in RANGES.items():
        value = body.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise errors.InvalidArgument(f"{key} must be an integer from {low} to {high}")
        numbers[key] = value
    return numbers


def _policy_name(body: dict) -> str:
    """The policy of a policy rollout's body, which must not name operation, agent_id
    or selector (its nodes are the policy's pinned ones)."""
    for key in ("operation", "agent_id", "selector"):
        if key in body:
            raise errors.InvalidArgument(f"{key}: a policy rollout takes no {key} (its nodes "
                                         "are those pinned at an older version)")
    name = body["policy"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise errors.InvalidArgument("policy must be 1 to 64 of A-Z a-z 0-9 _ -")
    return name


def _labels(selector: Any) -> dict:
    """The {"k": "v"} of a selector {"labels": {...}}; InvalidArgument naming selector."""
    if not isinstance(selector, dict) or set(selector) - {"labels"}:
        raise errors.InvalidArgument('selector must be {"labels": {"KEY": "VALUE", ...}}')
    labels = selector.get("labels", {})
    # Any strings: nodes' labels are matched in Python, and the body is 64 KiB at most.
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS or not all(
            isinstance(value, str) for value in labels.values()):
        raise errors.InvalidArgument(
            f"selector.labels must map at most {MAX_LABELS} keys to strings")
    return dict(labels)


class RolloutStore:
    """The rollout and rollout_node tables: creation, reads, cancel, and the engine's
    state changes, each one transaction."""

    def __init__(self, db: peewee.Database, clock: Callable[[], float] = time.time):
        self._db = db
        self._clock = clock

    # ---- the API's side ----

    @storage_faults
    def create(self, spec: RolloutSpec, node_ids: list[str], actor: str = "") -> dict:
        """Store a pending rollout over `node_ids` (sorted here); the Rollout JSON."""
        now = now_ms(self._clock)
        with self._db.connection_context(), self._db.atomic():
            rollout_id = Rollout.insert(
                operation=spec.operation, agent_id=spec.agent_id, policy=spec.policy,
                selector={"labels": spec.labels}, max_parallel=spec.max_parallel,
                max_failures=spec.max_failures, wait_seconds=spec.wait_seconds,
                status="pending", actor=actor, created_at=now).execute(self._db)
            rows = [{"rollout_id": rollout_id, "node_id": n, "status": "pending"}
                    for n in sorted(set(node_ids))]
            for start in range(0, len(rows), 500):
                RolloutNode.insert_many(rows[start:start + 500]).execute(self._db)
        return self.get(rollout_id)

    @storage_faults
    def get(self, rollout_id: int) -> dict:
        """The Rollout JSON; NotFound for an unknown id."""
        with self._db.connection_context():
            rows = list(Rollout.select().where(Rollout.id == rollout_id).execute(self._db))
            if not rows:
                raise errors.NotFound(f"rollout {rollout_id} not found")
            nodes = list(RolloutNode.select().where(RolloutNode.rollout_id == rollout_id)
                         .order_by(RolloutNode.node_id).execute(self._db))
        return rollout_dict(rows[0], nodes)

    @storage_faults
    def list(self, limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None
             ) -> tuple[list[dict], Optional[str]]:
        """A page of rollouts newest first (with their nodes) and the next cursor."""
        limit = paging.check_limit(limit)
        if cursor and not (isinstance(cursor, str) and re.fullmatch(ID_CURSOR, cursor)):
            raise errors.InvalidArgument("cursor is not one this server gave "
                                         "(pass next_cursor back unchanged)")
        query = Rollout.select().order_by(Rollout.id.desc())
        if cursor:
            query = query.where(Rollout.id < int(cursor))
        with self._db.connection_context():
            rows, more = paging.split_page(list(query.limit(limit + 1).execute(self._db)), limit)
            nodes: dict[int, list] = {row.id: [] for row in rows}
            if rows:
                for node in (RolloutNode.select().where(RolloutNode.rollout_id.in_(list(nodes)))
                             .order_by(RolloutNode.node_id).execute(self._db)):
                    nodes[node.rollout_id].append(node)
        return ([rollout_dict(row, nodes[row.id]) for row in rows],
                str(rows[-1].id) if more else None)

    @storage_faults
    def cancel(self, rollout_id: int) -> dict:
        """Cancel a pending or running rollout: its pending nodes are skipped, a node in
        flight finishes. Conflict once it has ended; NotFound for an unknown id."""
        now = now_ms(self._clock)
        with self._db.connection_context(), self._db.atomic():
            changed = Rollout.update(status="cancelled", finished_at=now).where(
                (Rollout.id == rollout_id) & Rollout.status.in_(("pending", "running"))
            ).execute(self._db)
            if changed:
                self._skip_pending(rollout_id, "cancelled", now)
        current = self.get(rollout_id)
        if not changed:
            raise errors.Conflict(f"rollout {rollout_id} has ended ({current['status']})")
        return current

    # ---- the engine's side ----

    @storage_faults
    def active(self) -> list[int]:
        """Ids of the rollouts with work left: pending or running ones, and ended ones
        (cancelled) whose node in flight is still to be checked; oldest first."""
        with self._db.connection_context():
            ids = {row.id for row in Rollout.select(Rollout.id).where(
                Rollout.status.in_(("pending", "running"))).execute(self._db)}
            ids |= {row.rollout_id for row in RolloutNode.select(RolloutNode.rollout_id)
                    .where(RolloutNode.status == "running").distinct().execute(self._db)}
        return sorted(ids)

    @storage_faults
    def load(self, rollout_id: int) -> tuple[Rollout, list[RolloutNode]]:
        """The rollout's row and its node rows by node_id (the engine's view)."""
        with self._db.connection_context():
            row = Rollout.get_by_id(rollout_id)
            nodes = list(RolloutNode.select().where(RolloutNode.rollout_id == rollout_id)
                         .order_by(RolloutNode.node_id).execute(self._db))
        return row, nodes

    @storage_faults
    def set_status(self, rollout_id: int, old: tuple[str, ...], new: str, now: int) -> bool:
        """Change the rollout's status if it is one of `old`; an end stamps finished_at
        and skips its pending nodes. False when it was not in `old` (cancelled meanwhile)."""
        values: dict = {"status": new}
        if new in ENDED:
            values["finished_at"] = now
        with self._db.connection_context(), self._db.atomic():
            changed = Rollout.update(**values).where(
                (Rollout.id == rollout_id) & Rollout.status.in_(old)).execute(self._db)
            if changed and new in ENDED:
                self._skip_pending(rollout_id, "rollout stopped after too many failures"
                                   if new == "failed" else f"rollout {new}", now)
        if changed:
            log.info("rollout %d: %s -> %s", rollout_id, "|".join(old), new)
        return bool(changed)

    @storage_faults
    def begin_node(self, rollout_id: int, node_id: str, now: int, deadline: int,
                   old_pid: int) -> bool:
        """pending -> running, marked operated, while the rollout runs: written before
        the operate call, so a resumed rollout never operates a node twice. False when
        the rollout no longer runs or the node was not pending."""
        with self._db.connection_context(), self._db.atomic():
            running = Rollout.select().where((Rollout.id == rollout_id) &
                                             (Rollout.status == "running")).exists(self._db)
            if not running:
                return False
            return bool(RolloutNode.update(
                status="running", operated=True, old_pid=old_pid, started_at=now,
                deadline=deadline, message="").where(
                (RolloutNode.rollout_id == rollout_id) & (RolloutNode.node_id == node_id) &
                (RolloutNode.status == "pending")).execute(self._db))

    @storage_faults
    def end_node(self, rollout_id: int, node_id: str, status: str, message: str,
                 now: int) -> None:
        """A running node's result: succeeded or failed, with a message."""
        with self._db.connection_context():
            RolloutNode.update(status=status, message=message[:MAX_MESSAGE],
                               finished_at=now).where(
                (RolloutNode.rollout_id == rollout_id) & (RolloutNode.node_id == node_id) &
                (RolloutNode.status == "running")).execute(self._db)
        log.info("rollout %d: node %s %s%s", rollout_id, node_id, status,
                 f": {message}" if message else "")

    @storage_faults
    def extend_running(self, rollout_id: int, deadline: int) -> None:
        """Give every running node of the rollout until `deadline` (a manager taking
        the rollout over waits again for the nodes it finds in flight)."""
        with self._db.connection_context():
            RolloutNode.update(deadline=deadline).where(
                (RolloutNode.rollout_id == rollout_id) & (RolloutNode.status == "running") &
                (RolloutNode.deadline < deadline)).execute(self._db)

    def _skip_pending(self, rollout_id: int, why: str, now: int) -> None:
        RolloutNode.update(status="skipped", message=why, finished_at=now).where(
            (RolloutNode.rollout_id == rollout_id) & (RolloutNode.status == "pending")
        ).execute(self._db)


def rollout_dict(row: Rollout, nodes: list[RolloutNode]) -> dict:
    """DESIGN.md's Rollout JSON for a row and its node rows."""
    return {"id": row.id, "operation": row.operation or None, "agent_id": row.agent_id or None,
            "policy": row.policy, "selector": row.selector, "max_parallel": row.max_parallel,
            "max_failures": row.max_failures, "wait_seconds": row.wait_seconds,
            "status": row.status, "created_at": row.created_at, "finished_at": row.finished_at,
            "nodes": [{"node_id": n.node_id, "status": n.status, "message": n.message,
                       "started_at": n.started_at, "finished_at": n.finished_at}
                      for n in nodes]}


class RolloutService:
    """The HTTP API's rollouts: create (nodes frozen), list, get, cancel; audited."""

    def __init__(self, store: RolloutStore, nodes: NodeStore, db: peewee.Database,
                 audit: Optional[AuditLog] = None, on_change: Callable[[], None] = lambda: None,
                 pins: Optional[PolicyPins] = None):
        self._store = store
        self._pins = pins              # policy rollouts: None, refused
        self._nodes = nodes
        self._db = db
        self._audit = audit            # records creation and cancel; None: not recorded
        self._on_change = on_change    # wakes the engine

    def create(self, body: Any, actor: str = "") -> dict:
        """Check the body, freeze the matching nodes having the agent, store it pending.
        InvalidArgument naming the key at fault; NotFound naming the selector when no
        node matches it with the agent (like an operate of an unknown agent)."""
        spec = parse_spec(body)
        if spec.policy is not None:
            return self._create_policy(spec, actor)
        wanted = [f"{k}={v}" for k, v in sorted(spec.labels.items())]
        node_ids = [n["node_id"] for n in self._nodes.list_nodes()
                    if all(n["labels"].get(k) == v for k, v in spec.labels.items())]
        node_ids = self._with_agent(node_ids, spec.agent_id)
        if not node_ids:
            raise errors.NotFound(
                f"selector: no node with labels {wanted or '(any)'} has agent {spec.agent_id!r}")
        rollout = self._store.create(spec, node_ids, actor)
        self._record(actor, spec.agent_id, "rollout",
                     f"rollout {rollout['id']}: {spec.operation} {spec.agent_id} on "
                     f"{len(node_ids)} nodes ({', '.join(wanted) or 'every node'})")
        log.info("rollout %d created: %s %s on %d nodes by=%s", rollout["id"], spec.operation,
                 spec.agent_id, len(node_ids), actor or "-")
        self._on_change()
        return rollout

    def _create_policy(self, spec: RolloutSpec, actor: str) -> dict:
        """A policy rollout over the nodes pinned at an older version than the newest.
        NotFound for an unknown policy, Conflict when no node is pinned."""
        if self._pins is None:
            raise errors.InvalidArgument("policy: rollouts of a policy are not kept here")
        head = self._pins.head(spec.policy)
        if head is None:
            raise errors.NotFound(f"policy {spec.policy!r} not found")
        node_ids = self._pins.pinned(spec.policy, head.version)
        if not node_ids:
            raise errors.Conflict(f"policy {spec.policy}: no node is pinned at a version "
                                  f"older than v{head.version}; nothing to roll out")
        spec = dataclasses.replace(spec, labels=dict(head.labels))
        rollout = self._store.create(spec, node_ids, actor)
        self._record(actor, None, "rollout",
                     f"rollout {rollout['id']}: policy {spec.policy} v{head.version} on "
                     f"{len(node_ids)} pinned nodes")
        log.info("rollout %d created: policy %s v%d on %d nodes by=%s", rollout["id"],
                 spec.policy, head.version, len(node_ids), actor or "-")
        self._on_change()
        return rollout

    def list(self, limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None
             ) -> tuple[list[dict], Optional[str]]:
        """A page of rollouts, newest first, and the next page's cursor."""
        return self._store.list(limit, cursor)

    def get(self, rollout_id: str) -> dict:
        """One rollout; NotFound for an unknown or malformed id."""
        return self._store.get(_rollout_id(rollout_id))

    def cancel(self, rollout_id: str, actor: str = "") -> dict:
        """Cancel it (audited); Conflict once ended."""
        number = _rollout_id(rollout_id)
        try:
            rollout = self._store.cancel(number)
        except errors.Conflict as exc:
            self._record(actor, None, "rollout-cancel", f"rollout {number}: {exc.message}",
                         exc.code)
            raise
        self._record(actor, rollout["agent_id"], "rollout-cancel", f"rollout {number}")
        log.info("rollout %d cancelled by=%s", number, actor or "-")
        return rollout

    @storage_faults
    def _with_agent(self, node_ids: list[str], agent_id: str) -> list[str]:
        found: set[str] = set()
        with self._db.connection_context():
            for start in range(0, len(node_ids), 500):
                part = node_ids[start:start + 500]
                found |= {row.node_id for row in Agent.select(Agent.node_id).where(
                    (Agent.agent_id == agent_id) & Agent.node_id.in_(part)).execute(self._db)}
        return sorted(found)

    def _record(self, actor: str, agent_id: Optional[str], operation: str, message: str,
                result: str = "ok") -> None:
        if self._audit is not None:
            self._audit.record(actor, "", agent_id, operation, result, message)


def _rollout_id(text: str) -> int:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,18}", text):
        raise errors.NotFound(f"rollout {str(text)[:32]!r} not found")
    return int(text)
