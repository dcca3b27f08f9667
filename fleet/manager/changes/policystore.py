"""Policies in the database, and what each node should run (DESIGN.md "Changing the fleet").

Tables (migration 9): `policy` keeps every version of every policy (a delete is a
version too, with `deleted` set), `policy_pin` holds a node at one version of a
policy (a held PUT pins; rollouts release), `policy_status` keeps each node's last
reported result per policy.

What a node should run: for each policy whose newest version is not deleted, the
pinned version when the node has a pin for it, else the newest one, if the node's
labels carry every label of that version's selector. Its version string is the
sorted `name:version` of those, joined by "," ("" for none).

Heartbeats ask for that string on every beat, so it is answered from memory: a
`Snapshot` of the policies' heads and the pins, trusted for SNAPSHOT_TTL seconds
and then checked against a fingerprint of the tables (row counts, newest change),
so a change made by another manager, or a pin released by a rollout, is seen
within that time; a change made here replaces it at once. Each node's answer is
cached with the labels and the snapshot generation it was computed from.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

import peewee

from fleet import errors
from fleet.manager.store.db import backend_of, now_ms, storage_faults
from fleet.manager.store.models import Node
from fleet.manager.store.registry import Registry
from fleet.values import valid_node_id

log = logging.getLogger(__name__)

SNAPSHOT_TTL = 1.0        # seconds a snapshot is used before its fingerprint is checked
MAX_RESULTS = 1000        # PolicyResults in one ReportPolicyStatus
MAX_CONFLICTS = 1000      # agent ids in one result's conflicts
MAX_REASON = 4096         # characters of a reason kept
MAX_VERSION_TEXT = 65536  # characters of a reported policy_version
AGENTS_CACHE = 512        # (name, version) -> agents JSON kept in memory (versions never change)
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # a policy's name


@dataclasses.dataclass(frozen=True)
class PolicyRow:
    """One stored version of a policy."""

    name: str
    version: int
    labels: dict           # the selector's labels: a node must carry every one
    agents_json: str       # a JSON array of [[agents]] tables
    updated_at: int        # Unix ms
    deleted: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The policies' heads and the pins, as read at one time."""

    generation: int
    fingerprint: tuple
    heads: dict            # name -> (version, labels) of every policy not deleted
    selectors: dict        # (name, version) -> labels of every pinned version
    pins: dict             # node_id -> {name: version}


def matches(labels: dict, selector: dict) -> bool:
    """True when `labels` carry every label of `selector` (an empty one matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def desired(snapshot: Snapshot, node_id: str, labels: dict) -> list[tuple[str, int]]:
    """[(policy, version)] the node should run, sorted by name."""
    pins = snapshot.pins.get(node_id, {})
    found = []
    for name, (version, selector) in snapshot.heads.items():
        pinned = pins.get(name)
        if pinned is not None and (name, pinned) in snapshot.selectors:
            version, selector = pinned, snapshot.selectors[(name, pinned)]
        if matches(labels, selector):
            found.append((name, version))
    return sorted(found)


def version_text(pairs: Iterable[tuple[str, int]]) -> str:
    """The policy version string of the contract: sorted `name:version` joined by ","."""
    return ",".join(f"{name}:{version}" for name, version in sorted(pairs))


class PolicyStore:
    """The policy tables, and each node's desired policies answered from memory."""

    def __init__(self, db: peewee.Database, registry: Registry,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self._db = db
        self._backend = backend_of(db)
        self._registry = registry        # which nodes are registered (reports are checked)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()    # guards the four below; never held over I/O
        self._snapshot: Optional[Snapshot] = None
        self._checked_at = float("-inf")     # monotonic time the snapshot was last confirmed
        self._labels: dict[str, dict] = {}   # node_id -> labels of its registration
        self._answers: dict[str, tuple] = {}  # node_id -> (labels, generation, pairs)
        self._agents: dict[tuple[str, int], str] = {}   # (name, version) -> agents JSON
        self._generation = 0

    # ---- what nodes should run ----

    def node_registered(self, node_id: str, labels: dict) -> None:
        """Remember a node's labels from its registration (its answer is recomputed)."""
        with self._lock:
            self._labels[node_id] = dict(labels)
            self._answers.pop(node_id, None)

    def invalidate(self) -> None:
        """Forget the snapshot: the next question reads the tables (after a change)."""
        with self._lock:
            self._snapshot = None

    def desired_pairs(self, node_id: str) -> list[tuple[str, int]]:
        """[(policy, version)] the node should run; [] for a node not registered."""
        snapshot = self.snapshot()
        labels = self._node_labels(node_id)
        if labels is None:
            return []
        key = tuple(sorted(labels.items()))
        with self._lock:
            cached = self._answers.get(node_id)
        if cached is not None and cached[0] == key and cached[1] == snapshot.generation:
            return cached[2]
        pairs = desired(snapshot, node_id, labels)
        with self._lock:
            self._answers[node_id] = (key, snapshot.generation, pairs)
        return pairs

    def version_of(self, node_id: str) -> str:
        """The node's policy version string ("" when no policy applies)."""
        return version_text(self.desired_pairs(node_id))

    @storage_faults
    def desired_agents(self, node_id: str) -> tuple[str, list[tuple[str, int, str]]]:
        """(version string, [(policy, version, agents JSON)]) for GetDesiredAgents;
        NotFound for a node not registered."""
        if not valid_node_id(node_id) or node_id not in self._registry:
            raise errors.NotFound(f"node {node_id[:130]!r} is not registered")
        pairs = self.desired_pairs(node_id)
        with self._lock:
            missing = [pair for pair in pairs if pair not in self._agents]
        if missing:
            read = self._read_agents(missing)
            with self._lock:
                if len(self._agents) + len(read) > AGENTS_CACHE:
                    self._agents.clear()
                self._agents.update(read)
        with self._lock:
            found = [(name, version, self._agents.get((name, version), "[]"))
                     for name, version in pairs]
        return version_text(pairs), found

    def _read_agents(self, pairs: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        sql = self._backend.sql("SELECT agents FROM policy WHERE name = ? AND version = ?")
        found = {}
        with self._db.connection_context():
            for name, version in pairs:
                row = self._db.execute_sql(sql, (name, version)).fetchone()
                if row is not None:
                    found[(name, version)] = row[0]
        return found

    def _node_labels(self, node_id: str) -> Optional[dict]:
        """The node's labels (from its registration; read once from the table)."""
        with self._lock:
            labels = self._labels.get(node_id)
        if labels is not None:
            return labels
        if node_id not in self._registry:
            return None
        with self._db.connection_context():
            rows = list(Node.select(Node.labels).where(Node.node_id == node_id)
                        .execute(self._db))
        labels = dict(rows[0].labels) if rows else {}
        with self._lock:
            self._labels.setdefault(node_id, labels)
        return labels

    # ---- the snapshot ----

    @storage_faults
    def snapshot(self, fresh: bool = False) -> Snapshot:
        """The current Snapshot: the cached one while its fingerprint holds (checked
        after SNAPSHOT_TTL seconds, or now when `fresh`), else read anew."""
        now = self._monotonic()
        with self._lock:
            snapshot, checked = self._snapshot, self._checked_at
        if snapshot is not None and not fresh and now - checked < SNAPSHOT_TTL:
            return snapshot
        try:
            with self._db.connection_context():
                fingerprint = self._fingerprint()
                if snapshot is not None and snapshot.fingerprint == fingerprint:
                    with self._lock:
                        self._checked_at = now
                    return snapshot
                loaded = self._load(fingerprint)
        except peewee.OperationalError as exc:
            if snapshot is None or fresh:
                raise
            # A heartbeat must not fail for this: the last snapshot answers meanwhile.
            log.warning("policy snapshot not refreshed: %s", exc)
            return snapshot
        with self._lock:
            self._snapshot, self._checked_at = loaded, now
        log.debug("policy snapshot %d: %d policies, %d pinned nodes", loaded.generation,
                  len(loaded.heads), len(loaded.pins))
        return loaded

    def _fingerprint(self) -> tuple:
        # Versions are only ever added and pins only added by a PUT (which adds a
        # version) or removed: these figures change with every change.
        policies = self._db.execute_sql(
            "SELECT COUNT(*), COALESCE(MAX(updated_at), 0) FROM policy").fetchone()
        pins = self._db.execute_sql(
            "SELECT COUNT(*), COALESCE(SUM(version), 0) FROM policy_pin").fetchone()
        return tuple(policies) + tuple(pins)

    def _load(self, fingerprint: tuple) -> Snapshot:
        heads = {}
        for name, version, selector, deleted in self._db.execute_sql(
                "SELECT p.name, p.version, p.selector, p.deleted FROM policy p JOIN "
                "(SELECT name, MAX(version) AS version FROM policy GROUP BY name) h "
                "ON p.name = h.name AND p.version = h.version"):
            if not deleted:
                heads[name] = (version, json.loads(selector))
        pins: dict[str, dict[str, int]] = {}
        for node_id, name, version in self._db.execute_sql(
                "SELECT node_id, policy, version FROM policy_pin"):
            pins.setdefault(node_id, {})[name] = version
        selectors = {(name, version): json.loads(selector)
                     for name, version, selector in self._db.execute_sql(
                         "SELECT DISTINCT p.name, p.version, p.selector FROM policy p "
                         "JOIN policy_pin q ON q.policy = p.name AND q.version = p.version")}
        with self._lock:
            self._generation += 1
            generation = self._generation
        return Snapshot(generation, fingerprint, heads, selectors, pins)

    # ---- versions ----

    @storage_faults
    def head(self, name: str) -> Optional[PolicyRow]:
        """The newest version of a policy (perhaps deleted); None if it never existed."""
        with self._db.connection_context():
            return self._head(name)

    def _head(self, name: str) -> Optional[PolicyRow]:
        row = self._db.execute_sql(self._backend.sql(
            "SELECT name, version, selector, agents, updated_at, deleted FROM policy "
            "WHERE name = ? ORDER BY version DESC LIMIT 1"), (name,)).fetchone()
        return _policy_row(row) if row else None

    @storage_faults
    def heads(self, after: Optional[str], limit: int) -> list[PolicyRow]:
        """Policies not deleted, by name, after `after`, at most `limit`."""
        sql = ("SELECT p.name, p.version, p.selector, p.agents, p.updated_at, p.deleted "
               "FROM policy p JOIN (SELECT name, MAX(version) AS version FROM policy "
               "GROUP BY name) h ON p.name = h.name AND p.version = h.version "
               "WHERE p.deleted = ? AND p.name > ? ORDER BY p.name LIMIT ?")
        with self._db.connection_context():
            rows = self._db.execute_sql(self._backend.sql(sql), (False, after or "", limit))
            return [_policy_row(row) for row in rows]

    @storage_faults
    def write(self, name: str, labels: dict, agents_json: str, hold: bool = False,
              delete: bool = False) -> tuple[Optional[PolicyRow], PolicyRow]:
        """Store a new version of `name` unless it changes nothing; (previous head, head).

        `hold`: pin, in the same transaction, every node matching the previous
        version at it. `delete`: the new version is a deletion (its pins and
        statuses go). Conflict when another manager wrote the same version first.
        """
        selector = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        try:
            with self._db.connection_context(), self._db.atomic():
                before = self._head(name)
                if delete and (before is None or before.deleted):
                    raise errors.NotFound(f"policy {name!r} not found")
                same = before is not None and before.deleted == delete and (
                    delete or (before.labels == labels and before.agents_json == agents_json))
                if same:
                    return before, before
                row = PolicyRow(name, (before.version if before else 0) + 1, labels,
                                agents_json, now_ms(self._clock), delete)
                self._db.execute_sql(self._backend.sql(
                    "INSERT INTO policy (name, version, selector, agents, updated_at, deleted) "
                    "VALUES (?, ?, ?, ?, ?, ?)"), (name, row.version, selector, agents_json,
                                                   row.updated_at, delete))
                if delete:
                    self._forget(name)
                elif hold and before is not None and not before.deleted:
                    self._pin(before)
        except peewee.IntegrityError as exc:
            raise errors.Conflict(f"policy {name!r} was changed at the same time; "
                                  "read it and try again") from exc
        self.invalidate()
        return before, row

    def _forget(self, name: str) -> None:
        for table in ("policy_pin", "policy_status"):
            self._db.execute_sql(self._backend.sql(f"DELETE FROM {table} WHERE policy = ?"),
                                 (name,))

    def _pin(self, previous: PolicyRow) -> None:
        """Pin every node matching `previous` at its version (a pin already there stays)."""
        rows = [(node_id, previous.name, previous.version)
                for node_id, labels in self._node_labels_table()
                if matches(labels, previous.labels)]
        if rows:
            statement = self._backend.insert_ignoring(
                "policy_pin", ("node_id", "policy", "version"), ("node_id", "policy"))
            self._backend.upsert_many(self._db.cursor(), statement, rows)
        log.info("policy %s: %d nodes pinned at version %d", previous.name, len(rows),
                 previous.version)

    def _node_labels_table(self) -> list[tuple[str, dict]]:
        query = Node.select(Node.node_id, Node.labels).tuples()
        return [(node_id, Node.labels.python_value(labels) if isinstance(labels, str)
                 else labels) for node_id, labels in query.execute(self._db)]

    @storage_faults
    def nodes(self) -> list[tuple[str, dict]]:
        """(node_id, labels) of every registered node."""
        with self._db.connection_context():
            return self._node_labels_table()

    # ---- status reports ----

    @storage_faults
    def report(self, node_id: str, boot_id: int, policy_version: str,
               results: Sequence) -> int:
        """Store a ReportPolicyStatus: its results replace the node's earlier ones.

        NotFound for a node not registered, Conflict for an older boot,
        InvalidArgument for a malformed or oversized result (nothing written).
        """
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        self._registry.require(node_id, boot_id)
        rows = _status_rows(node_id, policy_version, results, now_ms(self._clock))
        with self._db.connection_context(), self._db.atomic():
            self._db.execute_sql(self._backend.sql(
                "DELETE FROM policy_status WHERE node_id = ?"), (node_id,))
            if rows:
                self._backend.execute_many(self._db.cursor(), self._backend.sql(
                    "INSERT INTO policy_status (node_id, policy, version, applied, reason, "
                    "conflicts, reported_at) VALUES (?, ?, ?, ?, ?, ?, ?)"), rows)
        log.info("node %s runs policies %r: %d results, %d not applied", node_id,
                 policy_version[:200], len(rows), sum(1 for row in rows if not row[3]))
        return len(rows)

    @storage_faults
    def statuses(self, names: Sequence[str]) -> dict[tuple[str, str], tuple]:
        """(node_id, policy) -> (version, applied, reason, conflicts) of those policies."""
        if not names:
            return {}
        marks = ", ".join("?" * len(names))
        sql = self._backend.sql("SELECT node_id, policy, version, applied, reason, conflicts "
                                f"FROM policy_status WHERE policy IN ({marks})")
        with self._db.connection_context():
            return {(node_id, policy): (version, bool(applied), reason, json.loads(conflicts))
                    for node_id, policy, version, applied, reason, conflicts
                    in self._db.execute_sql(sql, tuple(names))}


def _policy_row(row: tuple) -> PolicyRow:
    name, version, selector, agents, updated_at, deleted = row
    return PolicyRow(name, version, json.loads(selector), agents, updated_at, bool(deleted))


def _status_rows(node_id: str, policy_version: str, results: Sequence,
                 received: int) -> list[tuple]:
    """policy_status rows of a report's PolicyResults; InvalidArgument for a bad one."""
    if len(results) > MAX_RESULTS:
        raise errors.InvalidArgument(f"{len(results)} results in one report; "
                                     f"at most {MAX_RESULTS}")
    if len(policy_version) > MAX_VERSION_TEXT:
        raise errors.InvalidArgument(f"policy_version over {MAX_VERSION_TEXT} characters")
    rows, seen = [], set()
    for result in results:
        if not NAME_RE.fullmatch(result.name) or result.name in seen:
            raise errors.InvalidArgument(f"result names an invalid or repeated policy "
                                         f"{result.name[:80]!r}")
        if result.version < 0 or len(result.conflicts) > MAX_CONFLICTS:
            raise errors.InvalidArgument(f"result {result.name}: negative version or over "
                                         f"{MAX_CONFLICTS} conflicts")
        seen.add(result.name)
        reason = result.reason[:MAX_REASON].replace("\x00", "\ufffd")
        conflicts = json.dumps([c[:128] for c in result.conflicts])
        rows.append((node_id, result.name, result.version, bool(result.applied), reason,
                     conflicts, received))
    return rows
