"""What a supervised agent tells the rest of the daemon: a `Snapshot` of its facts at
one moment (for reports, ListAgents, probes and the exporter) and the
`PendingEvent`s its state machine made (fleet.daemon.program). Plain frozen data,
so any thread may keep and read them without the program's lock."""
from __future__ import annotations

import dataclasses

from fleet.states import State


@dataclasses.dataclass(frozen=True)
class PendingEvent:
    """An event the program made, for the runner to record (fleet/daemon/events.py)."""

    time: int                 # wall ms
    kind: str
    message: str
    pid: int = 0
    exit_code: int = -1
    exit_signal: int = 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What reports and ListAgents carry about one agent, at one moment."""

    agent_id: str
    type: str
    version: str
    state: State
    pid: int
    start_time: int
    restart_count: int
    last_exit_code: int
    last_exit_signal: int
    health: str
    last_heartbeat: int
    next_retry_time: int
    last_error: str
    changed_at: int
    config_changed: bool
    health_message: str = ""   # why it is not healthy, in words; "" when healthy
