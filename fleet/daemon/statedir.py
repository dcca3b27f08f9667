"""The daemon's state directory: its lock, node id, boot counter and agent records.

Layout:
  daemon.lock           flock held while a daemon runs (a second one exits 1)
  node_id               a UUID created once, unless configured
  boot_id               a counter, +1 at each daemon start
  agents/<id>.json      pid, create time, pgid, config hash, restart count
  logs/<id>.log         the agents' stdout and stderr
  events/               the agents' last events (fleet/daemon/events.py)
  metrics/<id>.metrics  the agents' metrics history (fleet/daemon/history.py)
Every write is atomic (write a temp file, then rename). Agent ids are checked
against the id rule before they become a path, so none escapes the directory.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import uuid

from fleet.values import valid_agent_id, valid_node_id
from fleet.errors import FleetError, InvalidArgument

log = logging.getLogger(__name__)


class StateDirLocked(FleetError):
    """Another daemon holds this state directory."""


class UnreadableRecord(FleetError):
    """A record exists but cannot be read: whether its process runs is unknown."""


@dataclasses.dataclass(frozen=True)
class AgentRecord:
    """What a restarted daemon needs to adopt a live agent."""

    pid: int
    pgid: int
    create_time: float
    config_hash: str
    restart_count: int
    start_time: int
    stop_signal: int = 15
    stop_timeout: float = 10.0


def write_atomic(path: str, data: bytes) -> None:
    """Replace path with data so a reader sees the old or the new file, never half."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


class StateDir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.agents_dir = os.path.join(self.path, "agents")
        self.logs_dir = os.path.join(self.path, "logs")
        self.events_dir = os.path.join(self.path, "events")
        self.metrics_dir = os.path.join(self.path, "metrics")
        self._lock_fd = -1

    def open(self) -> None:
        """Create the layout and take the lock; StateDirLocked if it is held."""
        for folder in (self.path, self.agents_dir, self.logs_dir):
            os.makedirs(folder, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(self.path, "daemon.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(f"state_dir {self.path} is locked by another daemon") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def node_id(self, configured: str) -> str:
        """The configured node id, else the one kept here (created once)."""
        if configured:
            return configured
        path = os.path.join(self.path, "node_id")
        try:
            with open(path, encoding="utf-8") as handle:
                kept = handle.read().strip()
            if valid_node_id(kept):
                return kept
            log.warning("state_dir node_id %r is invalid; creating a new one", kept)
        except FileNotFoundError:
            pass
        new = str(uuid.uuid4())
        write_atomic(path, new.encode() + b"\n")
        return new

    def next_boot_id(self) -> int:
        """Increment and return the boot counter."""
        path = os.path.join(self.path, "boot_id")
        try:
            with open(path, encoding="utf-8") as handle:
                boot = int(handle.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            boot = 0
        boot += 1
        write_atomic(path, f"{boot}\n".encode())
        return boot

    def _agent_path(self, agent_id: str) -> str:
        if not valid_agent_id(agent_id):
            raise InvalidArgument(f"invalid agent id {agent_id!r}")
        return os.path.join(self.agents_dir, agent_id + ".json")

    def write_agent(self, agent_id: str, record: AgentRecord | None) -> None:
        """Keep record for agent_id; None removes it (the agent has no process)."""
        path = self._agent_path(agent_id)
        if record is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        write_atomic(path, json.dumps(vars(record)).encode())  # flat: no deep-copying asdict()

    def read_agent(self, agent_id: str) -> AgentRecord | None:
        """The record kept for agent_id, or None if there is none.

        Raises UnreadableRecord if the file exists but cannot be read or parsed.
        """
        try:
            with open(self._agent_path(agent_id), encoding="utf-8") as handle:
                return AgentRecord(**json.load(handle))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise UnreadableRecord(f"unreadable state record: {exc}") from exc

    def recorded_agents(self) -> list[str]:
        """Ids of every agent with a record."""
        ids = []
        for name in os.listdir(self.agents_dir):
            if name.endswith(".json") and valid_agent_id(name[:-5]):
                ids.append(name[:-5])
        return sorted(ids)
