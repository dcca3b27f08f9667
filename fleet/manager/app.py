"""The manager: database, tokens, ManagerService over gRPC, the HTTP API, and the
daemon client pool, started in order and stopped in the reverse one."""
from __future__ import annotations

import logging

from fleet.config import ManagerConfig
from fleet.values import join_address, split_address
from fleet.manager.agents import AgentService
from fleet.manager.audit import AuditLog
from fleet.manager.db import migrate, open_database
from fleet.manager.http import make_app
from fleet.manager.pool import DaemonClientPool
from fleet.manager.servicer import ManagerParts, build_manager
from fleet.manager.tokens import ApiAuth, resolve_tokens
from fleet.manager.web import HttpServer, serve_http
from fleet.rpc import as_client, create_server

log = logging.getLogger(__name__)

GRPC_WORKERS = 64   # each report holds a worker until its rows are committed


class Manager:
    def __init__(self, config: ManagerConfig):
        self.config = config
        self.cluster_token = ""
        self.grpc_port = 0                 # the ports actually bound
        self.http_port = 0
        self.parts: ManagerParts | None = None
        self.pool: DaemonClientPool | None = None
        self._grpc = None
        self._http: HttpServer | None = None

    def start(self) -> None:
        """Open and migrate the database, bind both ports, serve. Raises on failure."""
        cfg = self.config
        api_tokens, self.cluster_token, _ = resolve_tokens(cfg)
        db = open_database(cfg.db)
        migrate(db)
        self.parts = build_manager(db, offline_after=cfg.offline_after)
        # With [manager.tls] set, daemons are dialled over TLS too (mutual with client_ca).
        self.pool = DaemonClientPool(self.cluster_token, as_client(cfg.tls),
                                     timeout=cfg.daemon_timeout,
                                     operate_timeout=cfg.operate_timeout)
        service = AgentService(self.parts.nodes, self.pool, AuditLog(db))
        app = make_app(service, ApiAuth(api_tokens, self.cluster_token))
        self._grpc, self.grpc_port = create_server(
            cfg.grpc, [self.parts.servicer.add_to], token=self.cluster_token, tls=cfg.tls,
            max_workers=GRPC_WORKERS)
        self._http = serve_http(app, cfg.http, cfg.tls, request_timeout=cfg.http_request_timeout,
                                max_connections=cfg.http_max_connections)
        self.http_port = self._http.port
        self.parts.start()
        self._grpc.start()
        log.info("listening grpc=%s", join_address(split_address(cfg.grpc)[0], self.grpc_port))
        self._http.start_background()
        log.info("listening http=%s", self._http.address)

    def stop_http(self) -> None:
        """Stop taking HTTP requests (the first step of shutdown)."""
        if self._http is not None:
            self._http.stop()

    def close(self) -> None:
        """Stop gRPC, drain the writer, close the channels and the database."""
        self.stop_http()
        if self._grpc is not None:
            self._grpc.stop(grace=2.0).wait(3.0)
        if self.pool is not None:
            self.pool.close_all()
        if self.parts is not None:
            self.parts.stop()
