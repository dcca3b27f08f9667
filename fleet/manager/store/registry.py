"""The in-memory set of registered nodes and their newest (boot_id, seq).

The report hot path asks this instead of the database: "is the node
registered, and what boot and seq did it last report?" It is loaded from the
node table at start, updated after registrations and committed reports, and
forgotten on node deletion. One lock guards the dict; it is never held while
doing I/O.

It is a cache: several managers (or `workers`) share one database, and a node
may have registered through another one. A miss asks the database (`lookup`)
and keeps what it found, so such a node is known, not answered NOT_FOUND. A
cached (boot_id, seq) may lag the database's but is never newer, so the checks
made with it refuse only what really is older.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import peewee

from fleet import errors
from fleet.values import valid_node_id

from fleet.manager.store import models
from fleet.manager.store.db import storage_faults

Lookup = Callable[[str], Optional[tuple[int, int]]]


class Registry:
    """node_id -> (boot_id, seq) of every registered node."""

    def __init__(self, nodes: Optional[dict[str, tuple[int, int]]] = None,
                 lookup: Optional[Lookup] = None):
        self._lock = threading.Lock()
        # node_id -> (boot_id, seq): the newest report (or registration) applied.
        self._nodes: dict[str, tuple[int, int]] = dict(nodes or {})
        self._lookup = lookup             # a miss asks it (the database), if given

    @classmethod
    def load(cls, db: peewee.Database) -> "Registry":
        """A registry of every node in the database, refilled from it on a miss."""
        with db.connection_context():
            query = models.Node.select(models.Node.node_id, models.Node.boot_id,
                                       models.Node.seq).tuples()
            nodes = {node_id: (boot_id, seq) for node_id, boot_id, seq in query.execute(db)}
        return cls(nodes, lookup=lambda node_id: _stored(db, node_id))

    def get(self, node_id: str) -> Optional[tuple[int, int]]:
        """(boot_id, seq) of a registered node, None if it is not registered.

        A node not cached is looked up (Unavailable when the database fails); a
        malformed node_id never reaches the database (PostgreSQL refuses a NUL)."""
        with self._lock:
            known = self._nodes.get(node_id)
        if known is not None or self._lookup is None or not valid_node_id(node_id):
            return known
        found = self._lookup(node_id)     # outside the lock: database I/O
        if found is None:
            return None
        with self._lock:
            known = self._nodes.get(node_id)
            if known is None or found > known:
                self._nodes[node_id] = known = found
            return known

    def require(self, node_id: str, boot_id: int) -> tuple[int, int]:
        """(boot_id, seq) of a registered node a message of boot `boot_id` may speak
        for: NotFound if it is not registered, Conflict if that boot is older than
        the node's."""
        known = self.get(node_id)
        if known is None:
            raise errors.NotFound(f"node {node_id!r} is not registered")
        if boot_id < known[0]:
            raise errors.Conflict(f"boot {boot_id} is older than the node's boot {known[0]}")
        return known

    def __contains__(self, node_id: str) -> bool:
        return self.get(node_id) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    def set(self, node_id: str, boot_id: int, seq: int) -> None:
        """Record a registration: its (boot_id, seq) replaces what was known."""
        with self._lock:
            self._nodes[node_id] = (boot_id, seq)

    def advance(self, node_id: str, boot_id: int, seq: int) -> None:
        """Move a registered node to (boot_id, seq) if that is newer; else nothing."""
        with self._lock:
            known = self._nodes.get(node_id)
            if known is not None and (boot_id, seq) > known:
                self._nodes[node_id] = (boot_id, seq)

    def forget(self, node_id: str) -> None:
        """Drop a deleted node: its next report gets NOT_FOUND and re-registers."""
        with self._lock:
            self._nodes.pop(node_id, None)


@storage_faults
def _stored(db: peewee.Database, node_id: str) -> Optional[tuple[int, int]]:
    """(boot_id, seq) of `node_id` as the database has it; None if not registered."""
    with db.connection_context():
        row = (models.Node.select(models.Node.boot_id, models.Node.seq)
               .where(models.Node.node_id == node_id).tuples().execute(db))
        found = list(row)
    return tuple(found[0]) if found else None
