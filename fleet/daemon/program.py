"""One supervised agent: its process state machine.

`Program` decides; it never sleeps and never starts a thread. Every decision
takes `now` (monotonic seconds) so tests drive time with a fake clock and fake
process ops. `change_state()` is the only place a state is assigned: it checks
the transition table, stamps the time, logs `id: OLD -> NEW`, and marks the
program dirty so the runner publishes the change (state file, syncer). The caller (runner.py) holds `lock` around every call here.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable

from fleet.config import AgentConfig
from fleet.daemon.procops import SIGKILL, Child, Exit, ProcOps
from fleet.daemon.statedir import AgentRecord
from fleet.errors import Conflict
from fleet.states import RUNNING_STATES, STOPPED_STATES, State, check_transition, health

log = logging.getLogger(__name__)


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


class Program:
    """The state machine of one agent. Guard every call with `self.lock`."""

    def __init__(self, config: AgentConfig, ops: ProcOps, open_log: Callable[[str], int]):
        self.config = config
        self.ops = ops
        self.open_log = open_log          # agent id -> an O_APPEND fd for stdout/stderr
        self.lock = threading.Condition()  # guards all below; the runner notifies on changes
        self.state = State.UNSPECIFIED
        self.changed_at = ops.wall_ms()
        self.child: Child | None = None
        self.start_time = 0               # wall ms of the current process's spawn
        self.spawns = 0                   # processes started since the daemon started
        self.restart_count = 0
        self.failures = 0                 # consecutive failed starts
        self.last_exit = Exit(-1, 0)
        self.last_error = ""
        self.start_deadline: float | None = None   # STARTING -> RUNNING at this time
        self.retry_at: float | None = None         # BACKOFF -> STARTING at this time
        self.retry_wall_ms = 0
        self.kill_at: float | None = None          # STOPPING -> SIGKILL at this time
        self.config_hash = config.config_hash()    # of `config`, which never changes
        self.running_hash = self.config_hash       # config of the live process
        self._env: dict[str, str] | None = None    # the agents' environment, built once
        self.dirty = False                # changed since the runner last published

    # ---- the one state changer ----

    def change_state(self, new: State, now: float) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.changed_at = self.ops.wall_ms()
        log.info("%s: %s -> %s pid=%s", self.config.id, old.name, new.name,
                 self.child.pid if self.child else 0)
        self.dirty = True

    # ---- operations (the runner serialises them per agent) ----

    def start(self, now: float) -> None:
        """Spawn unless already starting or running; from FATAL, retries reset."""
        if self.state in (State.STARTING, State.RUNNING):
            return
        if self.state is State.STOPPING:
            raise Conflict(f"agent '{self.config.id}' is still stopping")
        if self.state in (State.FATAL, State.BACKOFF, State.STOPPED, State.EXITED):
            self.failures = 0
        self.retry_at = None
        self.spawn(now)

    def stop(self, now: float) -> None:
        """Send stop_signal to the group; the runner waits for the exit."""
        if self.state in STOPPED_STATES or self.state is State.STOPPING:
            return
        if self.state in (State.BACKOFF, State.UNKNOWN, State.UNSPECIFIED) or self.child is None:
            self.retry_at = None
            self.change_state(State.STOPPED, now)
            return
        self.kill_at = now + self.config.stop_timeout
        self.change_state(State.STOPPING, now)
        if not self.ops.kill_group(self.child.pgid, self.config.stop_signal):
            self.kill_at = now  # the group is gone already; the exit is on its way

    def set_initial(self, now: float) -> None:
        """First decision at daemon start for an agent not adopted."""
        if self.config.autostart:
            self.spawn(now)
        else:
            self.change_state(State.STOPPED, now)

    def set_unknown(self, reason: str, now: float) -> None:
        """A record says a process may run, but it cannot be checked: UNKNOWN."""
        self.last_error = reason
        self.change_state(State.UNKNOWN, now)

    def adopt(self, child: Child, start_time: int, restart_count: int, running_hash: str,
              now: float) -> None:
        """Take over a live process a previous daemon started."""
        self.child = child
        self.start_time = start_time
        self.restart_count = restart_count
        self.running_hash = running_hash
        self.spawns = 1
        self.change_state(State.RUNNING, now)

    # ---- events ----

    def spawn(self, now: float) -> None:
        """Start the process: STARTING, or a failed start (BACKOFF / FATAL)."""
        try:
            fd = self.open_log(self.config.id)
            try:
                child = self.ops.spawn(self.config.command, self.config.cwd,
                                       self.environment(), fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # A failed spawn is a failed start: through STARTING to BACKOFF or FATAL.
            self.last_error = f"spawn failed: {exc.strerror or exc}"
            log.warning("%s: %s", self.config.id, self.last_error)
            if self.state is not State.STARTING:
                self.change_state(State.STARTING, now)
            self.start_failed(now)
            return
        self.child = child
        self.start_time = self.ops.wall_ms()
        self.running_hash = self.config_hash
        if self.spawns:
            self.restart_count += 1
        self.spawns += 1
        self.start_deadline = now + self.config.start_seconds
        self.change_state(State.STARTING, now)
        if self.config.start_seconds <= 0:
            self.tick(now)

    def environment(self) -> dict[str, str]:
        """The daemon's environment with the agent's env over it; built at the first
        spawn and kept (copying and encoding os.environ at every spawn costs)."""
        if self._env is None:
            env = dict(os.environ)
            env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
            env.update(self.config.env)
            self._env = env
        return self._env

    def start_failed(self, now: float) -> None:
        self.failures += 1
        retries = self.config.start_retries
        if retries != -1 and self.failures > retries:
            self.last_error = self.last_error or "start_retries used up"
            self.change_state(State.FATAL, now)
            return
        delay = self.backoff_delay(self.failures)
        self.retry_at = now + delay
        self.retry_wall_ms = self.ops.wall_ms() + int(delay * 1000)
        self.change_state(State.BACKOFF, now)

    def backoff_delay(self, failures: int) -> float:
        """min(backoff_max, initial * 2^(n-1)) * U(0.8, 1.0) before retry n."""
        base = self.config.backoff_initial * (2 ** min(failures - 1, 62))
        return min(self.config.backoff_max, base) * self.ops.jitter()

    def exited(self, status: Exit, now: float) -> None:
        """The process is gone: decide what follows from the state it was in."""
        child, self.child = self.child, None
        self.last_exit = status
        self.start_deadline = self.kill_at = None
        if child is not None:
            self.ops.kill_group(child.pgid, SIGKILL)  # leave no stray group member
        if self.state is State.STOPPING:
            self.change_state(State.STOPPED, now)
        elif self.state is State.STARTING:
            self.last_error = f"exited within start_seconds ({self.describe_exit()})"
            self.start_failed(now)
        elif self.state is State.RUNNING:
            self.after_running_exit(now)

    def after_running_exit(self, now: float) -> None:
        policy = self.config.restart
        failed = self.last_exit.code != 0 or self.last_exit.signal != 0
        if policy == "always" or (policy == "on-failure" and failed):
            self.failures = 0
            self.spawn(now)
        else:
            self.change_state(State.EXITED, now)

    def describe_exit(self) -> str:
        if self.last_exit.signal:
            return f"signal {self.last_exit.signal}"
        return f"exit code {self.last_exit.code}"

    def tick(self, now: float) -> None:
        """Act on whichever deadline has passed."""
        if self.state is State.STARTING and self.start_deadline is not None \
                and now >= self.start_deadline:
            self.start_deadline = None
            self.failures = 0
            self.change_state(State.RUNNING, now)
        elif self.state is State.BACKOFF and self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self.spawn(now)
        elif self.state is State.STOPPING and self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            if self.child is not None:
                log.warning("%s: pid=%s did not stop within %ss; SIGKILL to the group",
                            self.config.id, self.child.pid, self.config.stop_timeout)
                self.ops.kill_group(self.child.pgid, SIGKILL)

    def next_deadline(self) -> float | None:
        for deadline, state in ((self.start_deadline, State.STARTING),
                                (self.retry_at, State.BACKOFF), (self.kill_at, State.STOPPING)):
            if deadline is not None and self.state is state:
                return deadline
        return None

    # ---- facts ----

    def snapshot(self) -> Snapshot:
        alive = self.state in RUNNING_STATES and self.child is not None
        now_ms = self.ops.wall_ms()
        return Snapshot(
            agent_id=self.config.id, type=self.config.type, version=self.config.version,
            state=self.state, pid=self.child.pid if alive else 0,
            start_time=self.start_time, restart_count=self.restart_count,
            last_exit_code=self.last_exit.code, last_exit_signal=self.last_exit.signal,
            health=health(self.state), last_heartbeat=now_ms if alive else 0,
            next_retry_time=self.retry_wall_ms if self.state is State.BACKOFF else 0,
            last_error=self.last_error, changed_at=self.changed_at,
            config_changed=alive and self.running_hash != self.config_hash)

    def record(self) -> AgentRecord | None:
        """What the state file keeps, so a restarted daemon can adopt the process."""
        child = self.child
        if child is None or self.state not in RUNNING_STATES:
            return None
        return AgentRecord(pid=child.pid, pgid=child.pgid, create_time=child.create_time,
                           config_hash=self.running_hash, restart_count=self.restart_count,
                           start_time=self.start_time, stop_signal=self.config.stop_signal,
                           stop_timeout=self.config.stop_timeout)
