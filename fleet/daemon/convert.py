"""Snapshots of agents as the wire carries them (reports and DaemonService answers)."""
from fleet.daemon.facts import Snapshot
from fleet.v1 import fleet_pb2 as pb

# Every field of AgentState and of AgentInfo (the same fields, the same numbers) but
# status, named as in Snapshot: a report carries all the daemon knows of an agent.
STATE_FIELDS = ("agent_id", "type", "version", "pid", "start_time", "restart_count",
                "last_exit_code", "last_exit_signal", "health", "last_heartbeat",
                "next_retry_time", "last_error", "changed_at", "config_changed",
                "health_message")
INFO_FIELDS = STATE_FIELDS


def _fields(snapshot: Snapshot) -> dict:
    values = {name: getattr(snapshot, name) for name in STATE_FIELDS}
    values["status"] = int(snapshot.state)
    return values


def agent_state(snapshot: Snapshot) -> pb.AgentState:
    """The report form of a snapshot."""
    return pb.AgentState(**_fields(snapshot))


def agent_info(snapshot: Snapshot) -> pb.AgentInfo:
    """The ListAgents / OperateAgent form of a snapshot."""
    return pb.AgentInfo(**_fields(snapshot))
