"""The manager: database, tokens, ManagerService over gRPC, the HTTP API, and the
daemon client pool, started in order and stopped in the reverse one.

Both ports are bound before anything is written: a start that fails on a port
in use leaves no token file and no database behind.

A `worker` (one of `[manager] workers`, fleet.manager.workers) binds both ports
with SO_REUSEPORT beside its siblings, leaves token files and migrations to its
parent, and names itself in an `X-Fleet-Worker: PID` header on every HTTP answer."""
from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Iterable

from fleet.config import ManagerConfig
from fleet.fdlimit import raise_soft_limit
from fleet.listen import listen
from fleet.values import join_address, split_address
from fleet.manager.service import FleetService
from fleet.manager.audit import AuditLog
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.events import EventService
from fleet.manager.api.metrics import ManagerMetrics
from fleet.manager.api.sharedmetrics import shared_dir
from fleet.manager.views import FleetViews
from fleet.manager.api.routes import make_app
from fleet.manager.pool import DaemonClientPool
from fleet.manager.parts import ManagerParts, build_manager
from fleet.manager.changes.policies import PolicyService
from fleet.manager.changes.policy_rollouts import PolicyPins
from fleet.manager.changes.rollout_engine import RolloutEngine
from fleet.manager.changes.rollouts import RolloutService, RolloutStore
from fleet.manager.store.lease import Lease, holder_name
from fleet.manager.tokens import ApiAuth, ManagerTokens, create_token_files, resolve_tokens
from fleet.manager.api.server import HttpServer, serve_http
from fleet.rpc import as_client, create_server
from fleet.serving import ServingStatus
from fleet.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)

GRPC_WORKERS = 64   # each report holds a worker until its rows are committed
FEW_DESCRIPTORS = 4096   # below this limit, a fleet of a few thousand nodes cannot connect


def prepare_storage(config: ManagerConfig) -> None:
    """What a manager writes before serving, done once by the parent of workers:
    new token files, and the database created or migrated."""
    create_token_files(resolve_tokens(config))
    db = open_database(config.db)
    try:
        migrate(db)
    finally:
        close_database(db)


class Manager:
    def __init__(self, config: ManagerConfig, worker: bool = False, writer_fd: int = 0,
                 on_writer_lost: Callable[[], None] | None = None):
        self.config = config
        self.worker = worker               # one of several processes sharing the ports
        self.writer_fd = writer_fd         # a worker whose parent writes its reports ...
        self.on_writer_lost = on_writer_lost   # ... and what it does when that link fails
        self.cluster_token = ""
        self.grpc_port = 0                 # the ports actually bound
        self.http_port = 0
        self.parts: ManagerParts | None = None
        self.metrics: ManagerMetrics | None = None   # this manager's own registry
        self.routes = None                 # the bottle app (before the metrics' WSGI wrapper)
        self.pool: DaemonClientPool | None = None
        self.rollouts: RolloutEngine | None = None   # drives rollouts under the lease
        self._grpc = None
        self._http: HttpServer | None = None
        self._tokens: ManagerTokens | None = None   # resolved by bind()
        self._serving: ServingStatus | None = None   # gRPC health and reflection
        self._app = _LateApp()

    def bind(self) -> None:
        """Resolve the tokens (reading, not writing, token files) and bind both ports.

        Raises ConfigError for a bad token file, OSError `cannot listen ...`
        for a port in use. Safe to call twice.
        """
        if self._http is not None:
            return
        cfg = self.config
        limit = raise_soft_limit()          # a connection a daemon: as far as allowed
        if 0 <= limit < FEW_DESCRIPTORS:
            log.warning("descriptor limit %d: room for fewer than %d daemons' connections; "
                        "raise the hard limit (systemd LimitNOFILE=, ulimit -Hn)",
                        limit, limit - 256)
        self._tokens = resolve_tokens(cfg)
        self.cluster_token = self._tokens.cluster
        self._grpc, self.grpc_port = listen("grpc", cfg.grpc, lambda: create_server(
            cfg.grpc, [], token=self.cluster_token, tls=cfg.tls, max_workers=GRPC_WORKERS,
            reuse_port=self.worker), reuse_port=self.worker)
        self._http = listen("http", cfg.http, lambda: serve_http(
            self._app, cfg.http, cfg.tls, request_timeout=cfg.http_request_timeout,
            max_connections=cfg.http_max_connections, reuse_port=self.worker),
            reuse_port=self.worker)
        self.http_port = self._http.port

    def start(self) -> None:
        """bind(), then write new token files, open the database and serve.

        Raises what bind() does, and Unavailable for token files or a database
        it cannot use.
        """
        cfg = self.config
        self.bind()
        db = open_database(cfg.db)
        if not self.worker:                # the parent of workers did both
            create_token_files(self._tokens)
            migrate(db)
        self.parts = build_manager(db, offline_after=cfg.offline_after,
                                   events_retention=cfg.events_retention,
                                   node_metrics_retention=cfg.node_metrics_retention,
                                   ingest_queue=cfg.ingest_queue,
                                   relay=socket.socket(fileno=self.writer_fd)
                                   if self.writer_fd else None,
                                   on_relay_lost=self.on_writer_lost)
        self.parts.servicer.add_to(self._grpc)
        self._serving = ServingStatus(pb.DESCRIPTOR.services_by_name["ManagerService"].full_name)
        self._serving.add_to(self._grpc)
        # With [manager.tls] set, daemons are dialled over TLS too (mutual with client_ca).
        self.pool = DaemonClientPool(self.cluster_token, as_client(cfg.tls),
                                     timeout=cfg.daemon_timeout,
                                     operate_timeout=cfg.operate_timeout)
        rollout_store = RolloutStore(db)
        self._pins = PolicyPins(db, self.parts.policies, self.parts.nodes)
        self.rollouts = RolloutEngine(rollout_store, self.parts.nodes, self.pool,
                                      Lease(db, "rollouts", holder_name(), cfg.lease_ttl),
                                      pins=self._pins)
        self._app.target = self._make_app(db, rollout_store)
        self.parts.start()
        self.rollouts.start()
        self._grpc.start()
        self._serving.serving()
        log.info("listening grpc=%s", join_address(split_address(cfg.grpc)[0], self.grpc_port))
        self._http.start_background()
        log.info("listening http=%s", self._http.address)

    def _make_app(self, db, rollout_store: RolloutStore) -> Callable:
        """The HTTP API over the parts, counted by this manager's metrics."""
        self.metrics = ManagerMetrics(db, self.config.offline_after,
                                      shared=shared_dir() if self.worker else None)
        self.parts.servicer.on_report = self.metrics.report_received
        self.metrics.watch_ingest(self.parts.writer.backlog.stats)
        audit = AuditLog(db)
        audit.on_record = self.metrics.operation_done
        service = FleetService(self.parts.nodes, self.pool, audit,
                               FleetViews(db, self.config.offline_after),
                               node_metrics=self.parts.node_metrics)
        self.routes = make_app(service, ApiAuth(self._tokens.api, self.cluster_token),
                               events=EventService(self.parts.events, self.parts.nodes),
                               metrics=self.metrics, metrics_public=self.config.metrics_public,
                               policies=PolicyService(self.parts.policies, audit),
                               rollouts=RolloutService(rollout_store, self.parts.nodes, db,
                                                       audit, self.rollouts.wake,
                                                       pins=self._pins))
        app = self.metrics.instrument(self.routes)
        return _named(app, str(os.getpid())) if self.worker else app

    def stop_http(self) -> None:
        """The first step of shutdown: gRPC health turns NOT_SERVING (load balancers
        drain while gRPC still answers), and HTTP stops taking requests."""
        if self._serving is not None:
            self._serving.draining()
        if self._http is not None:
            self._http.stop()

    def close(self) -> None:
        """Stop gRPC, drain the writer, close the channels and the database."""
        self.stop_http()
        if self._grpc is not None:
            self._grpc.stop(grace=2.0).wait(3.0)
        if self.rollouts is not None:
            self.rollouts.stop()
        if self.pool is not None:
            self.pool.close_all()
        if self.parts is not None:
            self.parts.stop()
        if self.metrics is not None:
            self.metrics.close()


def _named(app: Callable, pid: str) -> Callable:
    """`app` answering with an `X-Fleet-Worker: PID` header: which worker served."""
    def named(environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list, *exc_info) -> Callable:
            return start_response(status, headers + [("X-Fleet-Worker", pid)], *exc_info)
        return app(environ, start)
    return named


class _LateApp:
    """The WSGI app the HTTP port is bound with before the database exists.

    `target`, the real app, is set before the server starts serving; a request
    that came earlier would get 503.
    """

    def __init__(self):
        self.target: Callable | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.target is None:
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": {"code": "unavailable", "message": "starting"}}']
        return self.target(environ, start_response)
