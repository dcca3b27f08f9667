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
import threading
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME            # "grpc.health.v1.Health"
REFLECTION_SERVICE = reflection.SERVICE_NAME    # "grpc.reflection.v1alpha.ServerReflection"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class ServingStatus:
    """Health and reflection for one gRPC server whose main service is `service`
    (a full name, e.g. "fleet.v1.DaemonService")."""

    def __init__(self, service: str):
        self.service = service
        self._health = HealthService()
        self._draining = False              # set by draining(), never cleared
        self._health.set("", NOT_SERVING)   # until serving()
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
        self._health.freeze(NOT_SERVING)


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health with a non-blocking Watch that never sends under its lock.

    grpcio-health-checking's servicer sends every watcher's update while holding
    its lock, and a send waits for the server's polling thread; that thread runs a
    closing watcher's callback, which wants the same lock: with a watcher going
    away during a status change (a shutdown under probes), both wait for ever. Here
    the lock guards only the table; each watcher has its own lock around its sends,
    and every send carries the status current at that moment, so a watcher's last
    message is always the latest status.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, int] = {}            # service -> status
        self._watchers: dict[str, set[_Watcher]] = {}
        self._frozen = False                         # freeze(): no status changes after

    def set(self, service: str, status: int) -> None:
        """Set a service's status and tell its watchers (ignored once frozen)."""
        with self._lock:
            if self._frozen:
                return
            self._status[service] = status
            watchers = list(self._watchers.get(service, ()))
        for watcher in watchers:
            watcher.update(lambda: self._current(service))

    def freeze(self, status: int) -> None:
        """Every service takes `status` for good (graceful shutdown)."""
        with self._lock:
            services = list(self._status)
        for service in services:
            self.set(service, status)
        with self._lock:
            self._frozen = True

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback=None):
        service = request.service
        watcher = _Watcher(send_response_callback)
        with self._lock:
            self._watchers.setdefault(service, set()).add(watcher)
        context.add_callback(lambda: self._forget(service, watcher))
        watcher.update(lambda: self._current(service))

    Watch.experimental_non_blocking = True   # grpc passes send_response_callback

    def _current(self, service: str) -> int:
        with self._lock:
            return self._status.get(service, SERVICE_UNKNOWN)

    def _forget(self, service: str, watcher: "_Watcher") -> None:
        """The stream ended (on the server's polling thread): drop it; send nothing."""
        watcher.closed = True
        with self._lock:
            self._watchers.get(service, set()).discard(watcher)


class _Watcher:
    """One Watch stream: its sends, one at a time."""

    def __init__(self, send: Callable[[object], None]):
        self._send = send
        self._lock = threading.Lock()   # one send at a time, in status order
        self.closed = False

    def update(self, current: Callable[[], int]) -> None:
        """Send the status current now (read under this watcher's lock)."""
        with self._lock:
            if not self.closed:
                self._send(health_pb2.HealthCheckResponse(status=current()))
