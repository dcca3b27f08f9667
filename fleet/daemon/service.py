"""DaemonService over gRPC: thin translation between protos and the supervisor."""
from __future__ import annotations

import logging

from fleet.daemon.logs import LogKeeper
from fleet.daemon.metrics import Sampler
from fleet.daemon.convert import agent_info
from fleet.daemon.supervisor import Supervisor
from fleet.errors import Conflict, InvalidArgument
from fleet.rpc import translate
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_LINES, MAX_LINES = 100, 1000
DEFAULT_DURATION, MAX_DURATION = 3600, 86400
MAX_GREP = 1024


def bounded(value: int, default: int, maximum: int, what: str) -> int:
    """0 means default; otherwise 1..maximum, else InvalidArgument."""
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument(f"{what} must be between 1 and {maximum}, got {value}")
    return value


class DaemonServicer(pb_grpc.DaemonServiceServicer):
    def __init__(self, node_id: str, supervisor: Supervisor, logs: LogKeeper, sampler: Sampler):
        self.node_id = node_id
        self.supervisor = supervisor
        self.logs = logs
        self.sampler = sampler
        self.shutting_down = False   # set at shutdown: operations are refused
        self.reloader = None         # a fleet.daemon.reload.Reloader; None: Reload refused

    def _check_node(self, request) -> None:
        if request.node_id and request.node_id != self.node_id:
            raise Conflict(f"this is node '{self.node_id}', not '{request.node_id}'")

    @translate
    def ListAgents(self, request, context):
        self._check_node(request)
        return pb.ListAgentsResponse(agents=[agent_info(s) for s in self.supervisor.snapshots()])

    @translate
    def OperateAgent(self, request, context):
        self._check_node(request)
        runner = self.supervisor.runner(request.agent_id)
        if self.shutting_down:
            raise Conflict("the daemon is shutting down")
        snapshot = runner.operate(request.operation, *operate_cause(request))
        log.info("operate %s %s: %s pid=%s", request.operation, request.agent_id,
                 snapshot.state.name, snapshot.pid)
        return pb.OperateAgentResponse(agent=agent_info(snapshot))

    @translate
    def GetAgentMetrics(self, request, context):
        self._check_node(request)
        self.supervisor.runner(request.agent_id)
        duration = bounded(request.duration_seconds, DEFAULT_DURATION, MAX_DURATION,
                           "duration_seconds")
        points = self.sampler.points(request.agent_id, duration)
        # DataPoint's fields are ResourceDataPoint's: samples of the last hour, then
        # one-minute points before them (coarsest last), each oldest first.
        return pb.GetAgentMetricsResponse(data_points=[
            pb.ResourceDataPoint(**p._asdict()) for p in points])

    @translate
    def GetAgentLogs(self, request, context):
        self._check_node(request)
        self.supervisor.runner(request.agent_id)
        lines = bounded(request.lines, DEFAULT_LINES, MAX_LINES, "lines")
        if len(request.grep) > MAX_GREP or "\x00" in request.grep:
            raise InvalidArgument(f"grep must be at most {MAX_GREP} characters, without NUL")
        offset = request.offset if request.HasField("offset") else None
        if offset is not None and offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {offset}")
        found, truncated, next_offset = self.logs.read(request.agent_id, lines, request.grep,
                                                       offset)
        return pb.GetAgentLogsResponse(lines=found, truncated=truncated, next_offset=next_offset)

    @translate
    def Reload(self, request, context):
        self._check_node(request)
        if self.shutting_down or self.reloader is None:
            raise Conflict("the daemon is shutting down: no reload")
        changes = self.reloader.reload()
        return pb.ReloadResponse(
            agents=[agent_info(s) for s in self.supervisor.snapshots()],
            changes=[pb.AgentChange(agent_id=c.agent_id, change=c.change) for c in changes])

CAUSES = ("", "operator", "rollout", "policy")   # who asks an OperateAgent, for its events
MAX_DETAIL = 200


def operate_cause(request) -> tuple[str, str]:
    """(cause, detail) of an OperateAgentRequest: "" is the operator; InvalidArgument for
    another cause or a detail too long or with NUL."""
    if request.cause not in CAUSES:
        raise InvalidArgument(f"cause must be one of {', '.join(c for c in CAUSES if c)}")
    if len(request.detail) > MAX_DETAIL or "\x00" in request.detail:
        raise InvalidArgument(f"detail must be at most {MAX_DETAIL} characters, without NUL")
    return request.cause or "operator", request.detail
