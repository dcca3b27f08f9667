"""The manager's Prometheus metrics: `GET /metrics` in the text exposition format.

Each Manager owns one `ManagerMetrics` with its own CollectorRegistry (never
prometheus_client's global one, so two managers in one process do not clash).
It holds two kinds of series:

- the fleet as stored, computed at scrape time by `FleetCollector` from three
  GROUP BY queries (nodes by status, agents by status and by health), and the
  per-agent `up` and `restarts` lines, which one query writes in the text
  format itself (`FleetCollector.agent_lines`: a fifth of the cost);
- what this manager process saw since it started, as counters and a histogram
  that small hooks feed: reports and states received and the time a
  SyncAgentStates took including the commit wait (ManagerServicer.on_report),
  operations by result (AuditLog.on_record), HTTP requests by route pattern and
  code (`instrument`, a WSGI wrapper around the bottle app). The route is the
  pattern (`/api/v1/nodes/<node_id>`), never the raw path, and a path that
  matched no route counts as "unmatched": a client cannot make new series.
  With `[manager] workers = N` these are counted across all the workers
  (fleet.manager.api.sharedmetrics), so any worker answers a scrape alike.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

import peewee
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from fleet.manager.api.sharedmetrics import INGEST_GAUGES, IngestGauges
from fleet.manager.ingest import HEALTHS
from fleet.manager.nodes import NODE_STATUSES
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import now_ms
from fleet.states import State

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds of a SyncAgentStates: a report waits for the group commit of the writer.
REPORT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_NAMES = {int(s): s.api_name for s in State if s is not State.UNSPECIFIED}
UNMATCHED = "unmatched"        # the route label of a request that matched no route
AGENT_UP_HEAD = ("# HELP fleet_agent_up 1 if the agent is running (as last stored)\n"
                 "# TYPE fleet_agent_up gauge\n")
AGENT_RESTARTS_HEAD = ("# HELP fleet_agent_restarts Restarts of the agent as its daemon "
                       "counts them\n# TYPE fleet_agent_restarts gauge\n")


class ManagerMetrics:
    """One manager's registry: the fleet collector and the process's own counters."""

    def __init__(self, db: peewee.Database, offline_after: float,
                 clock: Callable[[], float] = time.time, shared: Optional[str] = None):
        """`shared`: the directory all workers count in (fleet.manager.api.sharedmetrics);
        None: this process's own counters."""
        self.registry = CollectorRegistry(auto_describe=False)
        self._fleet = FleetCollector(db, offline_after, clock)
        self.registry.register(self._fleet)
        self._shared = shared
        self._ingest_gauges: Optional[IngestGauges] = None
        if shared:
            MultiProcessCollector(self.registry, path=shared)
        else:
            ProcessCollector(namespace="fleet_manager", registry=self.registry)
        own = None if shared else self.registry      # shared: counted in the files
        self.reports = Counter("fleet_reports_received", "SyncAgentStates reports received",
                               registry=own)
        self.states = Counter("fleet_states_received", "Agent states carried by reports",
                              registry=own)
        self.report_seconds = Histogram(
            "fleet_report_duration_seconds",
            "Time of a SyncAgentStates on the manager, including the commit wait",
            buckets=REPORT_BUCKETS, registry=own)
        self.http_requests = Counter(
            "fleet_http_requests", "HTTP requests by route pattern, method and status code",
            ("route", "method", "code"), registry=own)
        self.operations = Counter(
            "fleet_operations", "Audited operations (start, stop, restart, sync, delete) "
            "by result: ok or the error code", ("operation", "result"), registry=own)

    def watch_ingest(self, stats: Callable[[], dict]) -> None:
        """Expose the writer's queue: `stats` is Backlog.stats (fleet.manager.store.backlog)."""
        if self._shared:
            self._ingest_gauges = IngestGauges(stats)
            self._ingest_gauges.start()
        else:
            self.registry.register(_IngestCollector(stats))

    def close(self) -> None:
        """Stop sharing the ingest queue's figures (workers only)."""
        if self._ingest_gauges is not None:
            self._ingest_gauges.stop()

    def report_received(self, seconds: float, states: int) -> None:
        """A SyncAgentStates ended after `seconds`, carrying `states` states."""
        self.reports.inc()
        self.states.inc(states)
        self.report_seconds.observe(seconds)

    def operation_done(self, operation: str, result: str) -> None:
        """An audited operation ended with `result` ("ok" or an error code)."""
        self.operations.labels(operation, result).inc()

    def exposition(self) -> tuple[bytes, str]:
        """(the text exposition of every series now, its Content-Type)."""
        return generate_latest(self.registry) + self._fleet.agent_lines(), CONTENT_TYPE

    def instrument(self, app: Callable) -> Callable:
        """`app` (a bottle app) counting each request by route pattern, method and code."""
        counter = self.http_requests

        def counted(environ: dict, start_response: Callable) -> Iterable[bytes]:
            seen = []

            def start(status: str, headers: list, exc_info=None):
                seen.append(status[:3])
                return start_response(status, headers, exc_info)

            try:
                return app(environ, start)
            finally:
                route = environ.get("bottle.route")    # set by bottle once a route matched
                if route is not None:
                    counter.labels(route.rule, route.method, seen[-1] if seen else "500").inc()
                else:
                    counter.labels(UNMATCHED, "", seen[-1] if seen else "500").inc()

        return counted


class _IngestCollector:
    """The ingest writer's queue and its refusals (backpressure), read at every scrape."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats

    def collect(self) -> list:
        """One gauge per figure of the queue."""
        stats = self._stats()
        return [GaugeMetricFamily(name, text, value=stats[key])
                for key, name, text, _ in INGEST_GAUGES]


class FleetCollector:
    """The fleet as the database holds it now, read at every scrape."""

    def __init__(self, db: peewee.Database, offline_after: float,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self._backend = backend_of(db)
        self._offline_after_ms = int(offline_after * 1000)
        self._clock = clock

    def collect(self) -> list:
        """The nodes', agents' and per-agent gauges (none when the database fails)."""
        try:
            with self._db.connection_context():
                return list(self._families())
        except peewee.DatabaseError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            return []

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._db.execute_sql(self._backend.sql(sql), params).fetchall()

    def _families(self):
        nodes = GaugeMetricFamily("fleet_nodes", "Nodes by status", labels=("status",))
        online_since = now_ms(self._clock) - self._offline_after_ms
        counts = dict(self._query(
            "SELECT CASE WHEN last_seen >= ? AND stopped_at IS NULL THEN 'online' "
            "ELSE 'offline' END, COUNT(*) FROM node GROUP BY 1", (online_since,)))
        for status in NODE_STATUSES:
            nodes.add_metric((status,), counts.get(status, 0))
        yield nodes
        yield _by("fleet_agents", "Agents by status", "status", STATUS_NAMES.values(),
                  {STATUS_NAMES.get(s): n for s, n in
                   self._query("SELECT status, COUNT(*) FROM agent GROUP BY status")})
        yield _by("fleet_agents_by_health", "Agents by health", "health", HEALTHS,
                  dict(self._query("SELECT health, COUNT(*) FROM agent GROUP BY health")))

    def agent_lines(self) -> bytes:
        """fleet_agent_up and fleet_agent_restarts in the text format, one line per agent.

        The database writes the lines: 10,000 agents through prometheus_client's
        families took ~110 ms to build and ~100 ms to format, this ~20 ms. Node and
        agent ids need no escaping: every write checks them against
        ^[A-Za-z0-9][A-Za-z0-9_.-]*$ and ^[A-Za-z0-9_-]+$.
        """
        labels = "'{node=\"' || node_id || '\",agent=\"' || agent_id || '\"} '"
        try:
            with self._db.connection_context():
                rows = self._query(
                    f"SELECT 'fleet_agent_up' || {labels} || "
                    f"CASE WHEN status = {int(State.RUNNING)} THEN '1' ELSE '0' END, "
                    f"'fleet_agent_restarts' || {labels} || restart_count "
                    "FROM agent ORDER BY node_id, agent_id")
        except peewee.DatabaseError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            return b""
        up = "\n".join(row[0] for row in rows)
        restarts = "\n".join(row[1] for row in rows)
        text = (AGENT_UP_HEAD + (up + "\n" if rows else "")
                + AGENT_RESTARTS_HEAD + (restarts + "\n" if rows else ""))
        return text.encode("utf-8")

def _by(name: str, documentation: str, label: str, values: Iterable[str],
        counts: dict) -> GaugeMetricFamily:
    """A gauge with one sample per value of `label` (0 for a value with no rows)."""
    family = GaugeMetricFamily(name, documentation, labels=(label,))
    for value in values:
        family.add_metric((value,), counts.get(value, 0))
    return family

