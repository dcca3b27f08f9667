"""The in-memory set of registered nodes and their newest (boot_id, seq).

The report hot path asks this instead of the database: "is the node
registered, and what boot and seq did it last report?" It is loaded from the
node table at start, updated after registrations and committed reports, and
forgotten on node deletion. One lock guards the dict; it is never held while
doing I/O.
"""
from __future__ import annotations

import threading
from typing import Optional

import peewee

from fleet.manager.store import models


class Registry:
    """node_id -> (boot_id, seq) of every registered node."""

    def __init__(self, nodes: Optional[dict[str, tuple[int, int]]] = None):
        self._lock = threading.Lock()
        # node_id -> (boot_id, seq): the newest report (or registration) applied.
        self._nodes: dict[str, tuple[int, int]] = dict(nodes or {})

    @classmethod
    def load(cls, db: peewee.Database) -> "Registry":
        """A registry of every node in the database."""
        with db.connection_context():
            query = models.Node.select(models.Node.node_id, models.Node.boot_id,
                                       models.Node.seq).tuples()
            nodes = {node_id: (boot_id, seq) for node_id, boot_id, seq in query.execute(db)}
        return cls(nodes)

    def get(self, node_id: str) -> Optional[tuple[int, int]]:
        """(boot_id, seq) of a registered node, None if it is not registered."""
        with self._lock:
            return self._nodes.get(node_id)

    def __contains__(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._nodes

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
