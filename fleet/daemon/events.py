"""EventLog: each agent's history, the last KEEP events, kept across daemon restarts.

An event is `{time, agent_id, kind, message, pid, exit_code, exit_signal}` plus
`seq`, the agent's event counter (it never goes back, across restarts too):
with `time`, what makes an event resent after a manager outage or a daemon
restart the same event to the manager, which stores each once.

Storage, in the state dir:
  events/<agent id>.jsonl   one JSON line per event, appended; rewritten with the
                            last KEEP once it holds 2 * KEEP lines
  events/acked.json         {agent id: highest seq the manager acknowledged}
Appends are plain write()s to an open O_APPEND descriptor, never fsync'd: a
daemon that crashes loses nothing written (the kernel has it); a machine that
loses power may lose the last seconds of events, and an older acked.json only
makes the daemon resend events the manager then ignores.

The history lives in the files; memory holds only the events the manager has
not acknowledged (none while it answers; at most KEEP per agent in an outage).
The syncer sends `unsent()` events with each report and calls `acknowledge()`
once the report is acknowledged. Unsent events are those still in the window:
an outage longer than KEEP events of one agent loses the oldest of them.

Thread-safety: `record` may be called from any thread, but not while holding
a lock a runner needs (it writes the file). The in-memory rings have their own
lock, never held during I/O; each agent's file has its own.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from typing import Callable

from fleet.daemon.statedir import write_atomic
from fleet.values import valid_agent_id

log = logging.getLogger(__name__)

KEEP = 256                      # events kept per agent (DESIGN.md)
KINDS = ("started", "running", "exited", "backoff", "fatal", "stopping", "stopped",
         "adopted", "unhealthy", "healthy", "limit", "restart", "reload")
RESTART_CAUSES = ("operator", "health", "limit", "policy", "reload")
MAX_MESSAGE = 1024              # characters of a message kept
ACKED = "acked.json"


@dataclasses.dataclass(frozen=True, slots=True)   # 12,800 of them at most: no __dict__
class Event:
    """One entry of an agent's history."""

    seq: int                    # the agent's event counter
    time: int                   # Unix ms
    agent_id: str
    kind: str
    message: str
    pid: int = 0
    exit_code: int = -1
    exit_signal: int = 0


class _Agent:
    """One agent's unsent events, counters and file (guarded by EventLog._lock but
    `lines` and `fd`, which `file_lock` guards)."""

    __slots__ = ("unsent", "next_seq", "acked", "lines", "fd", "file_lock")

    def __init__(self):
        # Not yet acknowledged, oldest first; the oldest fall out past KEEP.
        self.unsent: collections.deque[Event] = collections.deque(maxlen=KEEP)
        self.next_seq = 1
        self.acked = 0          # highest seq the manager acknowledged
        self.lines = 0          # lines in the file (compacted at 2 * KEEP)
        self.fd = -1            # O_APPEND descriptor, opened on first write
        self.file_lock = threading.Lock()   # orders this agent's writes


class EventLog:
    def __init__(self, directory: str, clock: Callable[[], float] = time.time):
        self.directory = directory
        self.clock = clock
        self.listeners: list[Callable[[], None]] = []   # told after each record
        self._lock = threading.Lock()                    # guards _agents and their unsent
        self._agents: dict[str, _Agent] = {}

    # ---- start ----

    def load(self) -> None:
        """Create the directory and read what a previous daemon kept."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        acked = self._read_acked()
        for name in sorted(os.listdir(self.directory)):
            agent_id = name[:-len(".jsonl")]
            if name.endswith(".jsonl") and valid_agent_id(agent_id):
                kept, lines = self._read(agent_id)
                agent = _Agent()
                agent.lines = lines
                agent.next_seq = kept[-1].seq + 1 if kept else 1
                agent.acked = min(int(acked.get(agent_id, 0)), agent.next_seq - 1)
                agent.unsent.extend(e for e in kept if e.seq > agent.acked)
                self._agents[agent_id] = agent

    def _read_acked(self) -> dict:
        try:
            with open(os.path.join(self.directory, ACKED), encoding="utf-8") as handle:
                acked = json.load(handle)
            return acked if isinstance(acked, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("events: %s unreadable (%s); unacknowledged events are resent", ACKED, exc)
            return {}

    def _read(self, agent_id: str) -> tuple[list[Event], int]:
        """(the last KEEP events in the agent's file, oldest first; its line count)."""
        path = self._path(agent_id)
        found, lines = [], 0
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    lines += 1
                    event = _parse(agent_id, line)
                    if event is not None:   # a torn last line after a crash is skipped
                        found.append(event)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: events file %s unreadable: %s", agent_id, path, exc)
        return found[-KEEP:], lines

    def close(self) -> None:
        with self._lock:
            agents = list(self._agents.values())
        for agent in agents:
            with agent.file_lock:
                if agent.fd >= 0:
                    os.close(agent.fd)
                    agent.fd = -1

    # ---- recording ----

    def record(self, agent_id: str, kind: str, message: str, pid: int = 0,
               exit_code: int = -1, exit_signal: int = 0, time_ms: int | None = None) -> Event:
        """Add one event to the agent's history (and its file); returns it.

        time_ms: when it happened (Unix ms), default now."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        path = self._path(agent_id)
        with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None:
                agent = self._agents[agent_id] = _Agent()
        # file_lock is held from numbering to writing, so the file is in seq order.
        with agent.file_lock:
            with self._lock:
                when = int(self.clock() * 1000) if time_ms is None else time_ms
                event = Event(agent.next_seq, when, agent_id, kind,
                              message[:MAX_MESSAGE], pid, exit_code, exit_signal)
                agent.next_seq += 1
                agent.unsent.append(event)
            self._append(agent, path, event)
        for listener in self.listeners:
            listener()
        return event

    def _append(self, agent: _Agent, path: str, event: Event) -> None:
        """Write the event's line (under file_lock); a failure is logged, the event
        still sent."""
        try:
            if agent.fd < 0:
                agent.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o640)
            os.write(agent.fd, _line(event).encode())
            agent.lines += 1
            if agent.lines >= 2 * KEEP:
                self._compact(agent, path)
        except OSError as exc:
            log.error("%s: cannot write the event %s: %s", event.agent_id, event.kind, exc)

    @staticmethod
    def _compact(agent: _Agent, path: str) -> None:
        """Keep the file's last KEEP lines (under file_lock): bounded on disk too."""
        with open(path, "rb") as handle:
            kept = handle.readlines()[-KEEP:]
        write_atomic(path, b"".join(kept))
        os.close(agent.fd)
        agent.fd = -1
        agent.lines = len(kept)

    # ---- reading and reporting ----

    def events(self, agent_id: str) -> list[Event]:
        """The agent's kept events (the last KEEP), oldest first, read from its file."""
        if not valid_agent_id(agent_id):
            return []
        with self._lock:
            agent = self._agents.get(agent_id)
        if agent is None:
            return []
        with agent.file_lock:
            return self._read(agent_id)[0]

    def unsent(self, limit: int) -> list[Event]:
        """Up to `limit` kept events the manager has not acknowledged, oldest first per agent."""
        found: list[Event] = []
        with self._lock:
            for agent in self._agents.values():
                for event in agent.unsent:
                    found.append(event)
                    if len(found) >= limit:
                        return found
        return found

    def acknowledge(self, events: list[Event]) -> None:
        """The manager stored these: never send them again (kept in acked.json)."""
        if not events:
            return
        with self._lock:
            for event in events:
                agent = self._agents.get(event.agent_id)
                if agent is not None and event.seq > agent.acked:
                    agent.acked = event.seq
                    while agent.unsent and agent.unsent[0].seq <= agent.acked:
                        agent.unsent.popleft()
            acked = {agent_id: a.acked for agent_id, a in self._agents.items() if a.acked}
        try:
            write_atomic(os.path.join(self.directory, ACKED), json.dumps(acked).encode())
        except OSError as exc:
            log.warning("events: cannot write %s: %s", ACKED, exc)

    def _path(self, agent_id: str) -> str:
        if not valid_agent_id(agent_id):
            raise ValueError(f"invalid agent id {agent_id!r}")
        return os.path.join(self.directory, agent_id + ".jsonl")


class NoEvents:
    """An EventLog stand-in that records nothing (tests, tools)."""

    def record(self, agent_id: str, kind: str, message: str, pid: int = 0,
               exit_code: int = -1, exit_signal: int = 0, time_ms: int | None = None) -> None:
        return None


def _line(event: Event) -> str:
    """One event as its file's JSON line."""
    return json.dumps({"seq": event.seq, "time": event.time, "kind": event.kind,
                       "message": event.message, "pid": event.pid,
                       "exit_code": event.exit_code, "exit_signal": event.exit_signal},
                      separators=(",", ":")) + "\n"


def _parse(agent_id: str, line: str) -> Event | None:
    try:
        data = json.loads(line)
        return Event(seq=int(data["seq"]), time=int(data["time"]), agent_id=agent_id,
                     kind=str(data["kind"]), message=str(data.get("message", "")),
                     pid=int(data.get("pid", 0)), exit_code=int(data.get("exit_code", -1)),
                     exit_signal=int(data.get("exit_signal", 0)))
    except (ValueError, KeyError, TypeError):
        return None
