"""What a gRPC server says about itself: the standard health service
(grpc.health.v1.Health) and server reflection, the same on both roles.

Health answers SERVING for "" (the whole server) and the role's own service
once the server serves, and NOT_SERVING from the first step of shutdown, while
the server still answers, so a load balancer or a client-side health check
drains before the port closes. The token interceptor (fleet.rpc.OPEN_METHODS)
lets Check and Watch through without the cluster token: they tell only up or
down, and probes (grpc_health_probe, load balancers) carry no credentials.
Reflection reveals the API's schema, so it needs the token like the API does.
"""
from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME            # "grpc.health.v1.Health"
REFLECTION_SERVICE = reflection.SERVICE_NAME    # "grpc.reflection.v1alpha.ServerReflection"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingStatus:
    """Health and reflection for one gRPC server whose main service is `service`
    (a full name, e.g. "fleet.v1.DaemonService")."""

    def __init__(self, service: str):
        self.service = service
        # Non-blocking Watch (the default): a watcher holds no worker thread, its
        # updates are sent by the thread that changes the status.
        self._health = health.HealthServicer()
        self._draining = False              # set by draining(), never cleared
        self._health.set("", NOT_SERVING)   # until serving(): "" starts SERVING otherwise
        self._health.set(service, NOT_SERVING)

    def add_to(self, server: grpc.Server) -> None:
        """Register the health and reflection services on `server` (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (self.service, HEALTH_SERVICE, REFLECTION_SERVICE), server)

    def serving(self) -> None:
        """The server serves: "" and the service report SERVING."""
        self._health.set("", SERVING)
        self._health.set(self.service, SERVING)

    def draining(self) -> None:
        """The first step of shutdown: everything reports NOT_SERVING, for good
        (a later serving() is ignored). Safe to call twice."""
        if self._draining:
            return
        self._draining = True
        log.info("health: %s NOT_SERVING (shutting down)", self.service)
        self._health.enter_graceful_shutdown()
