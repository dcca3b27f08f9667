"""The daemon's client of ManagerService: one channel, a deadline on every call,
and failover along the configured manager addresses when one is unreachable or
does not answer in time. A busy manager (RESOURCE_EXHAUSTED with a retry hint:
errors.Overloaded) is up, and is asked again: no failover."""
from __future__ import annotations

import logging
import socket
import threading

import grpc

from fleet.config import TLSConfig
from fleet.values import split_address
from fleet.errors import DeadlineExceeded, FleetError, Unauthenticated, Unavailable
from fleet.rpc import from_rpc_error, open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEADLINE_SECONDS = 5.0


class Unimplemented(FleetError):
    """The manager does not know the method (an older release)."""


class ManagerClient:
    def __init__(self, addresses: tuple[str, ...], token: str = "", tls: TLSConfig | None = None,
                 deadline: float = DEADLINE_SECONDS):
        self.addresses = addresses
        self.token = token
        self.tls = tls
        self.deadline = deadline
        self._lock = threading.Lock()   # guards the channel and the index
        self._index = 0                 # which address the channel dials
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.ManagerServiceStub | None = None

    @property
    def address(self) -> str:
        return self.addresses[self._index]

    def _get_stub(self) -> pb_grpc.ManagerServiceStub:
        with self._lock:
            if self._stub is None:
                self._channel = open_channel(self.address, self.token, self.tls)
                self._stub = pb_grpc.ManagerServiceStub(self._channel)
            return self._stub

    def _failover(self) -> None:
        """Next time, dial afresh: the next manager address if there is more than one.

        A new channel connects at once; an old one would wait out gRPC's own
        reconnect backoff (up to two minutes) after the manager comes back.
        """
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
            self._index = (self._index + 1) % len(self.addresses)
        if channel is not None:
            channel.close()

    def _call(self, name: str, request):
        stub = self._get_stub()
        try:
            return getattr(stub, name)(request, timeout=self.deadline)
        except grpc.RpcError as exc:
            address = self.address
            code = getattr(exc, "code", lambda: None)()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(
                    f"manager {address} refused the cluster token ({name})") from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise Unimplemented(f"manager {address} does not serve {name}") from None
            error = from_rpc_error(exc, f"manager {address} {name}")
            # A manager that hangs is as useless as one that is down: try the next.
            if isinstance(error, (Unavailable, DeadlineExceeded)):
                self._failover()
            raise error from None

    def register(self, request: pb.RegisterNodeRequest) -> pb.RegisterNodeResponse:
        return self._call("RegisterNode", request)

    def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        return self._call("Heartbeat", request)

    def sync(self, request: pb.SyncAgentStatesRequest) -> pb.SyncAgentStatesResponse:
        return self._call("SyncAgentStates", request)

    def report_node_metrics(self, request: pb.ReportNodeMetricsRequest
                            ) -> pb.ReportNodeMetricsResponse:
        return self._call("ReportNodeMetrics", request)

    def get_desired_agents(self, request: pb.GetDesiredAgentsRequest
                           ) -> pb.GetDesiredAgentsResponse:
        return self._call("GetDesiredAgents", request)

    def report_policy_status(self, request: pb.ReportPolicyStatusRequest
                             ) -> pb.ReportPolicyStatusResponse:
        return self._call("ReportPolicyStatus", request)

    def close(self) -> None:
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()


def local_ip_towards(address: str) -> str:
    """The local IP of a socket routed to address (no packet is sent)."""
    try:
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port or 9))
            return sock.getsockname()[0]
    except (OSError, ValueError):
        return "127.0.0.1"
