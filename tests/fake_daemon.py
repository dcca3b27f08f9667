"""A small fake DaemonService served by real gRPC on 127.0.0.1:0, for manager tests.

It keeps agents in memory, honours the node_id rule of the real daemon
(FAILED_PRECONDITION on a mismatch), and can be told to fail every call with a
status code or to hold calls until released (deadline tests).
"""
from __future__ import annotations

import threading

import grpc

from fleet.rpc import create_server
from fleet.v1 import fleet_pb2, fleet_pb2_grpc

S = fleet_pb2


def agent_info(agent_id: str, status=S.AGENT_STATUS_RUNNING, pid: int = 4242, **fields):
    """An AgentInfo with plausible defaults."""
    values = dict(agent_id=agent_id, type="exporter", version="1.0", status=status, pid=pid,
                  start_time=1_700_000_000_000, restart_count=0, last_exit_code=-1,
                  last_exit_signal=0, health="healthy", last_heartbeat=1_700_000_001_000,
                  changed_at=1_700_000_000_000)
    values.update(fields)
    return S.AgentInfo(**values)


class FakeDaemon(fleet_pb2_grpc.DaemonServiceServicer):
    """In-memory agents; `fail` = (grpc.StatusCode, details) fails every call."""

    def __init__(self, node_id: str, agents=()):
        self.node_id = node_id
        self.agents = {a.agent_id: a for a in agents}
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.hold = threading.Event()   # while `holding`, calls wait for it
        self.holding = False
        self.calls: list[tuple[str, object]] = []
        self.log_lines = [f"line {n}" for n in range(1, 301)]

    def _enter(self, name, request, context):
        self.calls.append((name, request))
        if self.holding:
            self.hold.wait(10)
        if self.fail:
            context.abort(*self.fail)
        if request.node_id and request.node_id != self.node_id:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this is node {self.node_id!r}, not {request.node_id!r}")

    def _agent(self, agent_id, context):
        if agent_id not in self.agents:
            context.abort(grpc.StatusCode.NOT_FOUND, f"agent {agent_id!r} not found")
        return self.agents[agent_id]

    def ListAgents(self, request, context):
        self._enter("ListAgents", request, context)
        return S.ListAgentsResponse(agents=list(self.agents.values()))

    def OperateAgent(self, request, context):
        self._enter("OperateAgent", request, context)
        agent = self._agent(request.agent_id, context)
        if request.operation not in ("start", "stop", "restart"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad operation")
        updated = S.AgentInfo()
        updated.CopyFrom(agent)
        if request.operation == "stop":
            updated.status, updated.pid, updated.health = S.AGENT_STATUS_STOPPED, 0, "unknown"
        else:
            updated.status, updated.health = S.AGENT_STATUS_STARTING, "unknown"
            updated.pid = agent.pid + 1
            updated.restart_count = agent.restart_count + (request.operation == "restart")
        self.agents[request.agent_id] = updated
        return S.OperateAgentResponse(agent=updated)

    def GetAgentMetrics(self, request, context):
        self._enter("GetAgentMetrics", request, context)
        self._agent(request.agent_id, context)
        points = [S.ResourceDataPoint(timestamp=1_700_000_000_000 + n * 10_000, cpu=1.5 * n,
                                      memory_rss=1000 + n, memory_vms=2000 + n, disk_read_bytes=n,
                                      disk_write_bytes=2 * n, open_files=3, threads=2,
                                      process_count=2, disk_read_rate=0.5 * n,
                                      disk_write_rate=1.5, cpu_max=1.5 * n,
                                      memory_rss_max=1000 + n, resolution_seconds=10)
                  for n in range(min(request.duration_seconds // 10, 360))]
        return S.GetAgentMetricsResponse(data_points=points)

    def GetAgentLogs(self, request, context):
        self._enter("GetAgentLogs", request, context)
        self._agent(request.agent_id, context)
        count = request.lines or 100
        # Its "log" is log_lines; an offset counts lines, not bytes (enough for the manager).
        end = len(self.log_lines)
        if request.HasField("offset"):
            start = request.offset if request.offset <= end else 0
            lines = [line for line in self.log_lines[start:] if request.grep in line][:count]
            return S.GetAgentLogsResponse(lines=lines, next_offset=end)
        lines = [line for line in self.log_lines if request.grep in line]
        return S.GetAgentLogsResponse(lines=lines[-count:], truncated=False, next_offset=end)


def serve_fake(node_id: str, agents=(), token: str = ""):
    """Start a FakeDaemon on 127.0.0.1:0; returns (server, "127.0.0.1:PORT", fake)."""
    fake = FakeDaemon(node_id, agents)
    server, port = create_server(
        "127.0.0.1:0", [lambda s: fleet_pb2_grpc.add_DaemonServiceServicer_to_server(fake, s)],
        token=token, max_workers=8)
    server.start()
    return server, f"127.0.0.1:{port}", fake
