"""Snapshots of agents as the wire carries them (reports and DaemonService answers)."""
from fleet.daemon.program import Snapshot
from fleet.v1 import fleet_pb2 as pb

# AgentInfo is AgentState plus these fields, all named as in Snapshot.
STATE_FIELDS = ("agent_id", "type", "version", "pid", "start_time", "restart_count",
                "last_exit_code", "last_exit_signal", "health", "last_heartbeat")
INFO_FIELDS = STATE_FIELDS + ("next_retry_time", "last_error", "changed_at", "config_changed")


def _fields(snapshot: Snapshot, names: tuple[str, ...]) -> dict:
    values = {name: getattr(snapshot, name) for name in names}
    values["status"] = int(snapshot.state)
    return values


def agent_state(snapshot: Snapshot) -> pb.AgentState:
    """The report form of a snapshot."""
    return pb.AgentState(**_fields(snapshot, STATE_FIELDS))


def agent_info(snapshot: Snapshot) -> pb.AgentInfo:
    """The ListAgents / OperateAgent form of a snapshot."""
    return pb.AgentInfo(**_fields(snapshot, INFO_FIELDS))
