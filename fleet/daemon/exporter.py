"""The daemon's Prometheus endpoint: `GET /metrics` on `[daemon] metrics_listen`.

Imported only when metrics_listen is set: a daemon without it never loads
prometheus_client (its RSS and start time matter on every node).

Every series is read at scrape time from the daemon's own parts, by
`DaemonCollector`: each agent's state and health (one sample per possible value,
1 for the current one), restart count, and the cpu and RSS of its whole process
tree from the sampler's last sweep (absent while no process is watched); the
syncer's pending changes and the time of its last acknowledged report. The
series carry the agent id only; `fleet_daemon_info{node=...}` names the node,
for joins with the manager's series.

Like node_exporter, the endpoint needs no token: it shows only numbers and ids,
never logs, commands or environments. Bind it to an address only the
Prometheus server reaches, or to 127.0.0.1 behind a proxy that authenticates.
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

import fleet
from fleet.daemon.samples import DataPoint
from fleet.daemon.facts import Snapshot
from fleet.states import State
from fleet.values import join_address, split_address

log = logging.getLogger(__name__)

STATES = tuple(s for s in State if s is not State.UNSPECIFIED)
HEALTHS = ("healthy", "unhealthy", "unknown")


class DaemonCollector:
    """The daemon's agents and syncer, as gauges read at every scrape."""

    def __init__(self, node_id: str, snapshots: Callable[[], list[Snapshot]],
                 samples: Callable[[], dict[str, DataPoint]],
                 sync_status: Callable[[], tuple[int, float]]):
        self._node_id = node_id
        self._snapshots = snapshots       # every agent's state now (Supervisor.snapshots)
        self._samples = samples           # agent id -> last tree sample (Sampler.latest)
        self._sync_status = sync_status   # (pending changes, Unix s of the last report)

    def collect(self) -> list[GaugeMetricFamily]:
        """Every family, built from one look at each part."""
        info = GaugeMetricFamily("fleet_daemon_info", "This daemon: its node id and version",
                                 labels=("node", "version"))
        info.add_metric((self._node_id, fleet.__version__), 1)
        pending, last_report = self._sync_status()
        return [info, *self._agents(),
                GaugeMetricFamily("fleet_daemon_sync_pending",
                                  "Agent state changes not yet acknowledged by the manager",
                                  value=pending),
                GaugeMetricFamily("fleet_daemon_last_report_timestamp_seconds",
                                  "Unix time of the last state report the manager "
                                  "acknowledged (0: none yet)", value=last_report)]

    def _agents(self) -> list[GaugeMetricFamily]:
        agent = ("agent",)
        state = GaugeMetricFamily("fleet_daemon_agent_state",
                                  "1 for the agent's state, 0 for the others",
                                  labels=("agent", "state"))
        health = GaugeMetricFamily("fleet_daemon_agent_health",
                                   "1 for the agent's health, 0 for the others",
                                   labels=("agent", "health"))
        restarts = GaugeMetricFamily("fleet_daemon_agent_restarts",
                                     "Restarts of the agent (kept across daemon restarts)",
                                     labels=agent)
        cpu = GaugeMetricFamily("fleet_daemon_agent_cpu_percent",
                                "CPU of the agent's process tree, percent of one core",
                                labels=agent)
        rss = GaugeMetricFamily("fleet_daemon_agent_rss_bytes",
                                "Resident memory of the agent's process tree", labels=agent)
        samples = self._samples()
        for snap in sorted(self._snapshots(), key=lambda s: s.agent_id):
            name = snap.agent_id
            for value in STATES:
                state.add_metric((name, value.api_name), 1 if snap.state is value else 0)
            for value in HEALTHS:
                health.add_metric((name, value), 1 if snap.health == value else 0)
            restarts.add_metric((name,), snap.restart_count)
            point = samples.get(name)
            if point is not None:
                cpu.add_metric((name,), point.cpu)
                rss.add_metric((name,), point.memory_rss)
        return [state, health, restarts, cpu, rss]


class MetricsServer:
    """A small threaded HTTP server answering GET /metrics; bound at construction."""

    def __init__(self, address: str):
        host, port = split_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="fleet_daemon", registry=self.registry)
        server_class = _Server6 if ":" in host else _Server
        self._httpd = make_server(host, port, _only_metrics(make_wsgi_app(self.registry)),
                                  server_class, _QuietHandler)
        self.address = join_address(host, self._httpd.server_address[1])  # the real port
        self._thread: Optional[threading.Thread] = None

    def start(self, collector: DaemonCollector) -> None:
        """Serve `collector`'s series (and this process's) on a daemon thread."""
        self.registry.register(collector)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.25,),
                                        name="fleet-metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()


def _only_metrics(app: Callable) -> Callable:
    """`app` on /metrics; 404 elsewhere."""
    def routed(environ: dict, start_response: Callable):
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"fleet daemon: metrics are at /metrics\n"]
    return routed


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True            # a stuck scrape never holds the daemon's exit

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS wait for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """No line per scrape."""
