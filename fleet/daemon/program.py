"""One supervised agent: its process state machine.

`Program` decides; it never sleeps and never starts a thread. Every decision
takes `now` (monotonic seconds) so tests drive time with a fake clock and fake
process ops. `change_state()` is the only place a state is assigned: it checks
the transition table, stamps the time, logs `id: OLD -> NEW`, and marks the
program dirty so the runner publishes the change (state file, syncer). The caller (runner.py) holds `lock` around every call here.
Each change, and each exit of a process, also becomes an event (`events`, what
the runner hands to the EventLog outside the lock): the kind is named by the
new state, the message is the logged reason.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from fleet.config import AgentConfig
from fleet.daemon.facts import PendingEvent, Snapshot
from fleet.daemon.procops import SIGKILL, Child, Exit, ProcOps, SignalDenied, SpawnError
from fleet.daemon.statedir import AgentRecord
from fleet.errors import Conflict
from fleet.states import (RUNNING_STATES, STOPPED_STATES, UNHEALTHY_STATES, State,
                          check_transition, health)

log = logging.getLogger(__name__)

# The event kind a change to each state records (UNKNOWN records none: it is no
# step of the agent's life, only the daemon not knowing).
STATE_KINDS = {State.STARTING: "started", State.RUNNING: "running", State.BACKOFF: "backoff",
               State.FATAL: "fatal", State.STOPPING: "stopping", State.STOPPED: "stopped",
               State.EXITED: "exited"}


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
        self.spawned_at = 0.0             # monotonic time of the current process's spawn
        self.spawns = 0                   # processes started since the daemon started
        self.restart_count = 0
        self.failures = 0                 # consecutive failed starts
        self.last_exit = Exit(-1, 0)
        self.last_error = ""
        self.start_deadline: float | None = None   # STARTING -> RUNNING at this time
        self.retry_at: float | None = None         # BACKOFF -> STARTING at this time
        self.retry_wall_ms = 0
        self.kill_at: float | None = None          # STOPPING -> SIGKILL at this time
        self.config_hash = config.config_hash()    # of `config` (replaced by reconfigure())
        self.running_hash = self.config_hash       # config of the live process
        self._env: dict[str, str] | None = None    # the agents' environment, built once
        self.dirty = False                # changed since the runner last published
        self.events: list[PendingEvent] = []   # made since the runner last published
        # Of the current process (reset at each spawn), set by fleet.daemon.health:
        self.probe_health = "unknown"     # the probe's verdict: healthy | unhealthy | unknown
        self.probe_message = ""           # why the probe says it is not healthy
        self.limit_message = ""           # a resource limit held too long ("" when within)
        self.restart_cause = ""           # STOPPING for a restart (operator, health...): start after

    # ---- the one state changer ----

    def change_state(self, new: State, now: float, why: str = "", kind: str = "",
                     exit_status: Exit | None = None, pid: int | None = None) -> None:
        """Move to `new` (the table permitting); `why` is logged with the change and
        is the message of its event (`kind`, default the state's; `exit_status` and
        `pid`, default the current process's, go with it)."""
        old = self.state
        check_transition(old, new)
        self.state = new
        self.changed_at = self.ops.wall_ms()
        if pid is None:
            pid = self.child.pid if self.child else 0
        log.info("%s: %s -> %s pid=%s%s", self.config.id, old.name, new.name,
                 pid, f" ({why})" if why else "")
        kind = kind or STATE_KINDS.get(new, "")
        if kind:
            self.note_event(kind, why, pid, exit_status)
        self.dirty = True

    def note_event(self, kind: str, message: str, pid: int = 0,
                   exit_status: Exit | None = None) -> None:
        """Keep an event for the runner to record with the next change it publishes."""
        code, signal = (exit_status.code, exit_status.signal) if exit_status else (-1, 0)
        self.events.append(PendingEvent(self.ops.wall_ms(), kind, message, pid, code, signal))

    def take_events(self) -> list[PendingEvent]:
        """The events made since the last call."""
        events, self.events = self.events, []
        return events

    # ---- operations (the runner serialises them per agent) ----

    def start(self, now: float, restart: bool = False, why: str = "") -> None:
        """Spawn unless already starting or running; from FATAL, retries reset.

        A start from STOPPED is not counted in restart_count (a stop then a start
        is two operations, not a restart); the restart operation passes restart.
        """
        if self.state in (State.STARTING, State.RUNNING):
            return
        if self.state is State.STOPPING:
            raise Conflict(f"agent '{self.config.id}' is still stopping")
        counts = restart or self.state is not State.STOPPED
        if self.state in (State.FATAL, State.BACKOFF, State.STOPPED, State.EXITED):
            self.failures = 0
        self.retry_at = None
        self.spawn(now, why or ("restart requested" if restart else "start requested"), counts)

    def stop(self, now: float, why: str = "stop requested") -> None:
        """Send stop_signal to the group; the runner waits for the exit.

        UNKNOWN is left alone: a process fleet cannot identify may run, and only
        the runner, which can read the state record, may settle that. Conflict
        if the group may not be signalled (EPERM): it is not gone.
        """
        self.restart_cause = ""  # a stop wins over a pending health or limit restart
        if self.state in STOPPED_STATES or self.state in (State.STOPPING, State.UNKNOWN):
            return
        if self.state in (State.BACKOFF, State.UNSPECIFIED) or self.child is None:
            self.retry_at = None
            self.change_state(State.STOPPED, now, why)
            return
        pgid, sig = self.child.pgid, self.config.stop_signal
        try:
            sent = self.ops.kill_group(pgid, sig)
        except SignalDenied as exc:
            self.note_error(f"stop failed: {exc}")
            raise Conflict(f"agent '{self.config.id}': {self.last_error}") from exc
        # Not sent: the group is gone already and the exit is on its way.
        self.kill_at = now + self.config.stop_timeout if sent else now
        self.change_state(State.STOPPING, now, f"{why}: signal {sig} to group {pgid}")

    def note_error(self, message: str) -> None:
        """Keep message as last_error and log it as an error."""
        self.last_error = message
        self.dirty = True
        log.error("%s: %s pid=%s", self.config.id, message, self.child.pid if self.child else 0)

    def signal_group(self, pgid: int, sig: int) -> None:
        """Signal the group; a refusal (EPERM) is reported, never taken for "gone"."""
        try:
            self.ops.kill_group(pgid, sig)
        except SignalDenied as exc:
            self.note_error(str(exc))

    def set_initial(self, now: float) -> None:
        """First decision at daemon start for an agent not adopted."""
        if self.config.autostart:
            self.spawn(now, "autostart")
        else:
            self.change_state(State.STOPPED, now, "autostart = false")

    def set_unknown(self, reason: str, now: float) -> None:
        """A record says a process may run, but it cannot be checked: UNKNOWN."""
        self.last_error = reason
        self.change_state(State.UNKNOWN, now, reason)

    def reconfigure(self, config: AgentConfig) -> None:
        """Take a reloaded definition of this agent; a live process keeps running
        (config_changed shows whether its command, cwd or env differ) and the next
        spawn uses the new one."""
        self.config = config
        self.config_hash = config.config_hash()
        self._env = None
        self.dirty = True

    def adopt(self, child: Child, start_time: int, restart_count: int, running_hash: str,
              now: float) -> None:
        """Take over a live process a previous daemon started."""
        self.child = child
        self.start_time = start_time
        self.restart_count = restart_count
        self.running_hash = running_hash
        self.spawns = 1
        self.change_state(State.RUNNING, now, "adopted", kind="adopted")

    # ---- events ----

    def spawn(self, now: float, why: str, counts: bool = True) -> None:
        """Start the process: STARTING, or a failed start (BACKOFF / FATAL).

        counts: a respawn adds one to restart_count (not a start from STOPPED).
        """
        try:
            child = self._spawn_logged()
        except SpawnError as exc:
            # A failed spawn is a failed start: through STARTING to BACKOFF or FATAL.
            self.last_error = str(exc)
            if self.state is not State.STARTING:
                self.change_state(State.STARTING, now, why)
            self.start_failed(now)
            return
        self.child = child
        self.start_time = self.ops.wall_ms()
        self.spawned_at = now
        self.probe_health, self.probe_message, self.limit_message = "unknown", "", ""
        self.running_hash = self.config_hash
        if self.spawns and counts:
            self.restart_count += 1
        self.spawns += 1
        self.start_deadline = now + self.config.start_seconds
        self.change_state(State.STARTING, now, why)
        if self.config.start_seconds <= 0:
            self.tick(now)

    def _spawn_logged(self) -> Child:
        """ops.spawn with the agent's log as stdout and stderr; a failure to
        start is also written to that log, as one fleet line."""
        try:
            fd = self.open_log(self.config.id)
        except OSError as exc:
            raise SpawnError(f"cannot open the agent's log: {exc.strerror or exc}") from exc
        try:
            return self.ops.spawn(self.config.command, self.config.cwd, self.environment(), fd)
        except SpawnError as exc:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.ops.wall_ms() / 1000))
            try:
                os.write(fd, f"[fleet {stamp}] start failed: {exc}\n".encode())
            except OSError:
                pass  # the log is only a second copy; last_error keeps the cause
            raise
        finally:
            os.close(fd)

    def environment(self) -> dict[str, str]:
        """agent_environment(), built at the first spawn and kept (copying and
        encoding os.environ at every spawn costs)."""
        if self._env is None:
            self._env = agent_environment(self.config)
        return self._env

    def start_failed(self, now: float) -> None:
        """A start failed (last_error says why): BACKOFF before a retry, or FATAL."""
        self.failures += 1
        retries = self.config.start_retries
        if retries != -1 and self.failures > retries:
            self.change_state(State.FATAL, now,
                              f"{self.last_error}; start_retries ({retries}) used up")
            return
        delay = self.backoff_delay(self.failures)
        self.retry_at = now + delay
        self.retry_wall_ms = self.ops.wall_ms() + int(delay * 1000)
        self.change_state(State.BACKOFF, now,
                          f"{self.last_error}; {self._retry()} in {delay:.1f} s")

    def _retry(self) -> str:
        """`retry 2 of 5`: the retry that follows the current failure."""
        limit = self.config.start_retries
        return f"retry {self.failures}" + ("" if limit == -1 else f" of {limit}")

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
            self.signal_group(child.pgid, SIGKILL)  # leave no stray group member
        pid = child.pid if child else 0
        if self.state is State.STOPPING and self.restart_cause:
            cause, self.restart_cause = self.restart_cause, ""
            self.change_state(State.STOPPED, now, f"exited with {status.describe()}",
                              exit_status=status, pid=pid)
            self.failures = 0  # as after a crash of a RUNNING process: restart at once
            self.spawn(now, f"restart requested (cause={cause})")
        elif self.state is State.STOPPING:
            self.change_state(State.STOPPED, now, f"exited with {status.describe()}",
                              exit_status=status, pid=pid)
        elif self.state is State.STARTING:
            self.last_error = (f"exited {now - self.spawned_at:.1f} s after start "
                               f"with {status.describe()}")
            self.note_event("exited", self.last_error, pid, status)
            self.start_failed(now)
        elif self.state is State.RUNNING:
            self.after_running_exit(pid, now)

    def after_running_exit(self, pid: int, now: float) -> None:
        """Restart at once, or EXITED, as the restart policy says.

        An adopted process's exit status is unknown (it is not our child): it
        counts as a failure, so on-failure restarts it. Were the exit clean, the
        restarted process, now our child, exits cleanly again and stays EXITED.
        """
        policy, status = self.config.restart, self.last_exit
        failed = not status.known or status.code != 0 or status.signal != 0
        if not status.known:
            self.last_error = f"exit status unknown: adopted process pid={pid}"
        words = f"exited with {status.describe()}"
        if policy == "always" or (policy == "on-failure" and failed):
            self.failures = 0
            self.note_event("exited", words, pid, status)
            self.spawn(now, f"{words}; restarting: restart={policy}")
        else:
            self.change_state(State.EXITED, now, f"{words}; not restarted: restart={policy}",
                              exit_status=status, pid=pid)

    def tick(self, now: float) -> None:
        """Act on whichever deadline has passed."""
        if self.state is State.STARTING and self.start_deadline is not None \
                and now >= self.start_deadline:
            self.start_deadline = None
            self.failures = 0
            self.last_error = ""       # the start worked: what failed before explains nothing now
            self.change_state(State.RUNNING, now, f"up {self.config.start_seconds:g} s")
        elif self.state is State.BACKOFF and self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self.spawn(now, self._retry())
        elif self.state is State.STOPPING and self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            if self.child is not None:
                log.warning("%s: pid=%s did not stop within %ss; SIGKILL to the group",
                            self.config.id, self.child.pid, self.config.stop_timeout)
                self.signal_group(self.child.pgid, SIGKILL)

    def next_deadline(self) -> float | None:
        for deadline, state in ((self.start_deadline, State.STARTING),
                                (self.retry_at, State.BACKOFF), (self.kill_at, State.STOPPING)):
            if deadline is not None and self.state is state:
                return deadline
        return None

    # ---- health (fleet.daemon.health decides; these record) ----

    def set_probe(self, pid: int, verdict: str, message: str) -> None:
        """The probe's verdict on process `pid` (ignored once another process runs)."""
        if self.child is None or self.child.pid != pid:
            return
        if (verdict, message) != (self.probe_health, self.probe_message):
            self.probe_health, self.probe_message = verdict, message
            self.dirty = True

    def set_limit(self, pid: int, message: str) -> None:
        """A limit held too long by process `pid` ("" once back within its limits)."""
        if self.child is None or self.child.pid != pid or message == self.limit_message:
            return
        self.limit_message = message
        self.dirty = True

    def restart_for(self, cause: str, why: str, now: float) -> bool:
        """Restart a RUNNING agent for `cause` (health, limit): stop it now, start
        it when its group has exited. False, doing nothing, in any other state.

        Like a crash of a RUNNING process it restarts at once (counted in
        restart_count); a probe or a limit acts only on a process up past its
        grace or `for`, so it never restarts faster than a crash would.
        """
        if self.state is not State.RUNNING or self.child is None:
            return False
        self.note_event("restart", f"cause={cause}: {why}", self.child.pid)
        self.stop(now, f"restart (cause={cause}): {why}")
        self.restart_cause = cause if self.state is State.STOPPING else ""
        return self.state is State.STOPPING

    def health_now(self) -> tuple[str, str]:
        """(health, health_message): the probe's and limits' verdict on a live
        process, else the state's (DESIGN.md "Health, limits and events")."""
        alive = self.state in (State.STARTING, State.RUNNING) and self.child is not None
        if alive and self.limit_message:
            return "unhealthy", self.limit_message
        if alive and self.config.health is not None:
            if self.probe_health == "unknown":
                return "unknown", self.probe_message or "no probe result yet"
            return self.probe_health, self.probe_message
        verdict = health(self.state)
        if verdict == "healthy":
            return verdict, ""
        if self.state is State.EXITED:
            return verdict, f"exited with {self.last_exit.describe()}"
        if self.state in UNHEALTHY_STATES or self.state is State.UNKNOWN:
            return verdict, f"{self.state.api_name}: {self.last_error}" if self.last_error \
                else self.state.api_name
        return verdict, self.state.api_name

    # ---- facts ----

    def snapshot(self) -> Snapshot:
        alive = self.state in RUNNING_STATES and self.child is not None
        now_ms = self.ops.wall_ms()
        verdict, message = self.health_now()
        return Snapshot(
            agent_id=self.config.id, type=self.config.type, version=self.config.version,
            state=self.state, pid=self.child.pid if alive else 0,
            start_time=self.start_time, restart_count=self.restart_count,
            last_exit_code=self.last_exit.code, last_exit_signal=self.last_exit.signal,
            health=verdict, health_message=message, last_heartbeat=now_ms if alive else 0,
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


def agent_environment(config: AgentConfig) -> dict[str, str]:
    """The environment an agent's process gets: the daemon's, minus gRPC's
    fork switch, plus the agent's env."""
    env = dict(os.environ)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    env.update(config.env)
    return env
