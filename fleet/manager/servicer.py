"""ManagerService over gRPC: proto in, service call, proto out.

Authentication (the cluster token) is the server's interceptor (fleet.rpc);
errors become statuses in fleet.rpc.translate.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import grpc

from fleet.manager.ingest import ReportService
from fleet.manager.nodemetrics import NodeMetricsStore
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.changes.policystore import PolicyStore
from fleet.rpc import translate
from fleet.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)


class ManagerServicer(fleet_pb2_grpc.ManagerServiceServicer):
    """What daemons call: RegisterNode, Heartbeat, SyncAgentStates, ReportNodeMetrics."""

    def __init__(self, nodes: NodeStore, reports: ReportService,
                 sync_interval: float = 0.0, heartbeat_interval: float = 0.0,
                 node_metrics: NodeMetricsStore | None = None,
                 policies: PolicyStore | None = None):
        self._nodes = nodes
        self._reports = reports
        self._node_metrics = node_metrics   # None: ReportNodeMetrics is UNIMPLEMENTED
        self._policies = policies           # None: no policies (GetDesiredAgents UNIMPLEMENTED)
        # Told to daemons at registration; 0 means "keep your own".
        self._sync_interval = sync_interval
        self._heartbeat_interval = heartbeat_interval
        # Told (seconds, states) after every SyncAgentStates, failed ones too (metrics).
        self.on_report: Callable[[float, int], None] = _ignore

    def add_to(self, server: grpc.Server) -> None:
        """Register on a server: `create_server(addr, [servicer.add_to])`."""
        fleet_pb2_grpc.add_ManagerServiceServicer_to_server(self, server)

    @translate
    def RegisterNode(self, request, context):
        """Upsert the node's facts and boot; answer the intervals to use."""
        self._nodes.register(NodeFacts(
            node_id=request.node_id, hostname=request.hostname, ip=request.ip,
            advertise_address=request.advertise_address, os=request.os, arch=request.arch,
            labels=dict(request.labels), daemon_version=request.daemon_version,
            boot_id=request.boot_id))
        if self._policies is not None:
            self._policies.node_registered(request.node_id, dict(request.labels))
        return fleet_pb2.RegisterNodeResponse(
            sync_interval_seconds=self._sync_interval,
            heartbeat_interval_seconds=self._heartbeat_interval)

    @translate
    def Heartbeat(self, request, context):
        """Touch last_seen; reregister for an unknown node or a newer boot; the node's
        policy version to a daemon that accepts policies (from memory: no scan)."""
        reregister = self._reports.heartbeat(request.node_id, request.boot_id)
        version = ""
        if request.accept_policies and not reregister and self._policies is not None:
            version = self._policies.version_of(request.node_id)
        return fleet_pb2.HeartbeatResponse(reregister=reregister,
                                           sync_interval_seconds=self._sync_interval,
                                           policy_version=version)

    @translate
    def SyncAgentStates(self, request, context):
        """Store a report's valid states (committed before the reply) and name the rest."""
        began = time.monotonic()
        try:
            result = self._reports.sync(request.node_id, request.boot_id, request.seq,
                                        request.full, request.states, request.stopping,
                                        request.events)
        finally:
            self.on_report(time.monotonic() - began, len(request.states))
        response = fleet_pb2.SyncAgentStatesResponse(
            success=result.success, accepted=result.accepted, rejected=result.rejected,
            report_full_state=result.report_full_state)
        if result.errors:
            response.message = f"{result.rejected} of {len(request.states)} states rejected"
            response.errors.extend(fleet_pb2.StateError(agent_id=agent_id, reason=reason)
                                   for agent_id, reason in result.errors)
        return response

    @translate
    def ReportNodeMetrics(self, request, context):
        """Store a batch of the node's samples, all or none."""
        if self._node_metrics is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "node metrics are not kept here")
        accepted = self._node_metrics.report(request.node_id, request.boot_id, request.samples,
                                             request.interval_seconds)
        return fleet_pb2.ReportNodeMetricsResponse(accepted=accepted)

    @translate
    def GetDesiredAgents(self, request, context):
        """The policies that apply to the node (pins respected), with their agents."""
        if self._policies is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "policies are not kept here")
        version, policies = self._policies.desired_agents(request.node_id)
        return fleet_pb2.GetDesiredAgentsResponse(policy_version=version, policies=[
            fleet_pb2.PolicyAgents(name=name, version=number, agents_json=agents)
            for name, number, agents in policies])

    @translate
    def ReportPolicyStatus(self, request, context):
        """Store the node's result for each policy (they replace its earlier ones)."""
        if self._policies is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "policies are not kept here")
        self._policies.report(request.node_id, request.boot_id, request.policy_version,
                              request.results)
        return fleet_pb2.ReportPolicyStatusResponse()


def _ignore(seconds: float, states: int) -> None:
    """The default on_report: nothing is measured."""
