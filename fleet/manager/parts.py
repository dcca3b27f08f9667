"""The manager's storage-side objects wired together: registry, ingest writer,
node, event and node metrics stores, their retention purge, and the
ManagerService servicer over them."""
from __future__ import annotations

import dataclasses
import socket
from typing import Callable, Optional

import peewee

from fleet.manager.events import EventStore
from fleet.manager.ingest import IngestWriter, ReportService
from fleet.manager.nodemetrics import NodeMetricsStore
from fleet.manager.nodes import NodeStore
from fleet.manager.changes.policystore import PolicyStore
from fleet.manager.retention import PURGE_INTERVAL, Purger
from fleet.manager.servicer import ManagerServicer
from fleet.manager.store.backlog import DEFAULT_MAX_ROWS, Backlog
from fleet.manager.store.db import close_database
from fleet.manager.store.lease import Lease, holder_name
from fleet.manager.store.registry import Registry
from fleet.manager.store.relay import RelayedWriter


@dataclasses.dataclass
class ManagerParts:
    """The manager's storage-side objects, wired; `start()` before serving."""

    db: peewee.Database
    registry: Registry
    writer: IngestWriter | RelayedWriter
    nodes: NodeStore
    reports: ReportService
    servicer: ManagerServicer
    events: EventStore
    purger: Purger
    node_metrics: NodeMetricsStore
    policies: PolicyStore | None = None

    def start(self) -> None:
        """Start the ingest writer and the retention purge (idempotent)."""
        self.writer.start()
        self.purger.start()

    def stop(self) -> None:
        """Drain and stop the writer (after the gRPC server stopped) and the purge;
        close this thread's connection."""
        self.purger.stop()
        self.writer.stop()
        close_database(self.db)


def build_manager(db: peewee.Database, offline_after: float = 90.0, sync_interval: float = 0.0,
                  heartbeat_interval: float = 0.0,
                  events_retention: float = 604800.0,
                  node_metrics_retention: float = 604800.0,
                  ingest_queue: int = DEFAULT_MAX_ROWS,
                  relay: Optional[socket.socket] = None,
                  on_relay_lost: Optional[Callable[[], None]] = None) -> ManagerParts:
    """Wire registry, writer, stores and servicer over a migrated database.

    `ingest_queue`: the bound of the writer's queue in states (and events); past
    it a report is refused (errors.Overloaded). `relay`: a worker's end of the pair
    to the parent that writes its reports (fleet.manager.store.relay), instead of a
    writer of its own; `on_relay_lost` is called if that link fails.
    """
    registry = Registry.load(db)
    backlog = Backlog(ingest_queue)
    writer = RelayedWriter(relay, backlog, on_relay_lost) if relay is not None \
        else IngestWriter(db, backlog=backlog)
    nodes = NodeStore(db, registry, offline_after)
    reports = ReportService(registry, writer)
    node_metrics = NodeMetricsStore(db, registry, node_metrics_retention)
    policies = PolicyStore(db, registry)
    servicer = ManagerServicer(nodes, reports, sync_interval, heartbeat_interval,
                               node_metrics=node_metrics, policies=policies)
    events = EventStore(db, events_retention)
    # One purge across every manager and worker on this database: the lease's holder.
    lease = Lease(db, "purge", holder_name(), ttl=PURGE_INTERVAL * 1.5)
    return ManagerParts(db, registry, writer, nodes, reports, servicer, events,
                        Purger([events, node_metrics], lease=lease), node_metrics, policies)
