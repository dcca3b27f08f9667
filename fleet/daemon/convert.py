"""Snapshots of agents as the wire carries them (reports and DaemonService answers)."""
from fleet.daemon.program import Snapshot
from fleet.v1 import fleet_pb2 as pb


def agent_state(snapshot: Snapshot) -> pb.AgentState:
    """The report form of a snapshot."""
    return pb.AgentState(
        agent_id=snapshot.agent_id, type=snapshot.type, version=snapshot.version,
        status=int(snapshot.state), pid=snapshot.pid, start_time=snapshot.start_time,
        restart_count=snapshot.restart_count, last_exit_code=snapshot.last_exit_code,
        last_exit_signal=snapshot.last_exit_signal, health=snapshot.health,
        last_heartbeat=snapshot.last_heartbeat)


def agent_info(snapshot: Snapshot) -> pb.AgentInfo:
    """The ListAgents / OperateAgent form of a snapshot."""
    return pb.AgentInfo(
        agent_id=snapshot.agent_id, type=snapshot.type, version=snapshot.version,
        status=int(snapshot.state), pid=snapshot.pid, start_time=snapshot.start_time,
        restart_count=snapshot.restart_count, last_exit_code=snapshot.last_exit_code,
        last_exit_signal=snapshot.last_exit_signal, health=snapshot.health,
        last_heartbeat=snapshot.last_heartbeat, next_retry_time=snapshot.next_retry_time,
        last_error=snapshot.last_error, changed_at=snapshot.changed_at,
        config_changed=snapshot.config_changed)
