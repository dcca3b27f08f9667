"""The node's agents: builds a Program and a Runner per configured agent,
adopts the processes a previous daemon left running, and stops them all.
A reload or a policy adds, reconfigures and removes agents while it runs
(fleet/daemon/reconcile.py decides which).

Every published change goes to the state file (so a restarted daemon can
adopt), to the sampler (which pid to watch) and to the listeners (the syncer).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from fleet.config import AgentConfig
from fleet.daemon.logs import LogKeeper
from fleet.daemon.metrics import Sampler
from fleet.daemon.procops import SIGKILL, Child, ProcOps, SignalDenied, find_problem
from fleet.daemon.events import EventLog, NoEvents
from fleet.daemon.facts import PendingEvent, Snapshot
from fleet.daemon.program import Program, agent_environment
from fleet.daemon.runner import Runner
from fleet.daemon.statedir import AgentRecord, StateDir, UnreadableRecord
from fleet.errors import Conflict, NotFound
from fleet.states import State

log = logging.getLogger(__name__)

_UNWRITTEN = object()   # no record written by this daemon yet: the next one is written


class Supervisor:
    def __init__(self, agents: tuple[AgentConfig, ...], statedir: StateDir, logs: LogKeeper,
                 sampler: Sampler, ops: ProcOps | None = None,
                 events: EventLog | NoEvents | None = None):
        self.statedir = statedir
        self.events = events or NoEvents()    # every agent's history
        self.logs = logs
        self.sampler = sampler
        self.ops = ops or ProcOps()
        self.listeners: list[Callable[[Snapshot], None]] = []  # told of every change
        # agent id -> runner. Replaced whole (never changed in place) when a reload
        # adds or removes an agent, so other threads iterate a copy safely.
        self.runners: dict[str, Runner] = {}
        self._configs = agents
        self._started = False
        self._lock = threading.Lock()   # guards replacing `runners`, and _closing
        self._closing = False           # stop_all() began: no agent is added any more

    # ---- lifecycle ----

    def start(self) -> None:
        """Adopt or start every configured agent, and stop recorded agents no longer
        configured."""
        if self._started:
            return
        self._started = True
        configured = {agent.id for agent in self._configs}
        for agent_id in self.statedir.recorded_agents():
            if agent_id not in configured:
                self._stop_orphan(agent_id)
        warn_missing(self._configs)
        for config in self._configs:
            self.add(config)

    def add(self, config: AgentConfig) -> Runner:
        """Build the agent's runner and start it (adopting its live process, if a
        record names one). Once stop_all() began, Conflict: nothing is started.

        The runner is listed before its first publication, so the listeners (the
        health checker) find it; a stop_all() in between leaves it STOPPED.
        """
        self.logs.register(config.id, config.log_max_bytes, config.log_backups)
        program = Program(config, self.ops, self.logs.open_for_agent)
        runner = Runner(program, self._publisher(config.id), self._settler(config))
        with self._lock:
            if self._closing:
                raise Conflict("the daemon is shutting down")
            self.runners = {**self.runners, config.id: runner}
        initial = self._initial_action(config)
        runner.start(lambda p, now: None if runner.refuse_operations else initial(p, now))
        return runner

    def configs(self) -> tuple[AgentConfig, ...]:
        """The definitions of the agents supervised now, in order."""
        return tuple(runner.program.config for runner in self.runners.values())

    def remove(self, agent_ids: list[str], why: str) -> None:
        """Stop these agents (in parallel) and forget them: runner, record, log
        rotation and metrics. One that does not stop in time keeps its record."""
        runners = [self.runners[i] for i in agent_ids if i in self.runners]
        for runner in runners:
            runner.begin_shutdown(why)
        longest = max((r.program.config.stop_timeout for r in runners), default=0)
        deadline = self.ops.monotonic() + longest + 2.0
        for runner in runners:
            runner.wait_stopped(deadline)
        with self._lock:
            self.runners = {i: r for i, r in self.runners.items() if i not in agent_ids}
        for runner in runners:
            self._forget(runner)

    def _forget(self, runner: Runner) -> None:
        agent_id = runner.program.config.id
        runner.close()
        self.logs.unregister(agent_id)
        self.sampler.forget(agent_id)
        state = runner.snapshot().state
        if state in (State.STOPPING, State.UNKNOWN):
            log.error("%s: removed but %s; its state record is kept", agent_id, state.name)
            return
        try:
            self.statedir.write_agent(agent_id, None)
        except OSError as exc:
            log.error("%s: cannot remove the state record: %s", agent_id, exc)
        log.info("%s: removed", agent_id)

    def _identify(self, agent_id: str) -> tuple[AgentRecord | None, Child | None]:
        """The agent's record and its live process (None if none lives).

        Raises UnreadableRecord when a process may live but cannot be identified.
        """
        record = self.statedir.read_agent(agent_id)
        return record, self.ops.adopt(record.pid, record.pgid, record.create_time) \
            if record else None

    def _initial_action(self, config: AgentConfig) -> Callable[[Program, float], None]:
        try:
            record, child = self._identify(config.id)
        except UnreadableRecord as exc:
            # Starting it could make a duplicate; leave it to an operator's start or stop.
            reason = exc.message
            log.warning("%s: %s; state UNKNOWN until started or stopped", config.id, reason)
            return lambda program, now: program.set_unknown(reason, now)
        if child is None:
            return lambda program, now: program.set_initial(now)
        if record.config_hash != config.config_hash():
            log.warning("%s: config changed since pid=%s started; applied at its next restart",
                        config.id, child.pid)
        log.info("%s: adopted pid=%s", config.id, child.pid)
        return lambda program, now: program.adopt(
            child, record.start_time, record.restart_count, record.config_hash, now)

    def _settler(self, config: AgentConfig) -> Callable[[], Callable[[Program, float], None]]:
        """For a stop of an UNKNOWN agent: identify its process again. One that
        lives is adopted (so the stop kills it); none living means nothing to
        forget (STOPPED); still unidentifiable is refused, the record kept."""
        def settle() -> Callable[[Program, float], None]:
            try:
                record, child = self._identify(config.id)
            except UnreadableRecord as exc:
                path = os.path.join(self.statedir.agents_dir, config.id + ".json")
                raise Conflict(
                    f"agent '{config.id}' cannot be stopped: {exc.message}, so a process it "
                    f"started may still run; stop that process by hand and remove {path} "
                    "(then stop again), or start the agent") from exc
            if child is None:
                return lambda program, now: program.change_state(
                    State.STOPPED, now, "stop requested: no recorded process lives")
            log.info("%s: identified pid=%s; stopping it", config.id, child.pid)
            return lambda program, now: program.adopt(
                child, record.start_time, record.restart_count, record.config_hash, now)
        return settle

    def _stop_orphan(self, agent_id: str) -> None:
        """Stop a recorded agent that left the config, in the background."""
        try:
            record = self.statedir.read_agent(agent_id)
            child = self.ops.adopt(record.pid, record.pgid, record.create_time) if record else None
        except UnreadableRecord as exc:
            # Keep the record: the process it names may live.
            log.warning("%s: no longer configured and %s; leaving it and its record",
                        agent_id, exc.message)
            return
        self.statedir.write_agent(agent_id, None)
        if child is None:
            return
        log.info("%s: no longer configured; stopping pid=%s", agent_id, child.pid)
        threading.Thread(target=self._kill_orphan, args=(child, record), daemon=True,
                         name=f"fleet-orphan-{agent_id}").start()

    def _kill_orphan(self, child, record: AgentRecord) -> None:
        try:
            self.ops.kill_group(child.pgid, record.stop_signal)
            deadline = self.ops.monotonic() + record.stop_timeout
            gone = threading.Event()
            while self.ops.group_alive(child.pgid) and self.ops.monotonic() < deadline:
                gone.wait(0.05)  # an orphan is not our child: no pidfd wait for its group
            self.ops.kill_group(child.pgid, SIGKILL)
        except SignalDenied as exc:
            log.error("no longer configured pid=%s: left running: %s", child.pid, exc)
        finally:
            self.ops.close(child)

    def stop_all(self) -> None:
        """Stop every agent in parallel: signal them all, then wait for them all.

        Each agent is SIGKILLed after its own stop_timeout, so this returns within
        the largest stop_timeout (plus a little), however many agents there are.
        """
        with self._lock:
            self._closing = True
            runners = list(self.runners.values())
        for runner in runners:
            runner.begin_shutdown()
        self._wait_stopped(runners)

    def finish_stopping(self) -> None:
        """Wait for the agents already STOPPING (an operation's stop in progress) to
        end, each SIGKILLed after its stop_timeout as ever: a daemon that leaves its
        agents running (stop_agents_on_exit = false) must not leave one half-stopped,
        its kill never sent, nor exit while that operation waits on it."""
        self._wait_stopped([runner for runner in list(self.runners.values())
                            if runner.snapshot().state is State.STOPPING])

    def _wait_stopped(self, runners: list[Runner]) -> None:
        """Wait for `runners` to stop, all within the longest stop_timeout (plus a
        little): each is SIGKILLed after its own."""
        longest = max((r.program.config.stop_timeout for r in runners), default=0)
        deadline = self.ops.monotonic() + longest + 2.0
        for runner in runners:
            runner.wait_stopped(deadline)

    def close(self) -> None:
        """End the runner threads; agents' processes are left as they are."""
        for runner in self.runners.values():
            runner.close()

    def detach(self) -> None:
        """Leave every agent running (daemon restart in place); just end the threads."""
        self.close()

    # ---- queries and operations ----

    def find(self, agent_id: str) -> Runner | None:
        """The agent's runner, or None (never supervised, or removed by a reload)."""
        return self.runners.get(agent_id)

    def runner(self, agent_id: str) -> Runner:
        runner = self.runners.get(agent_id)
        if runner is None:
            raise NotFound(f"agent '{agent_id}' not found")
        return runner

    def snapshots(self) -> list[Snapshot]:
        return [runner.snapshot() for runner in self.runners.values()]

    def operate(self, agent_id: str, operation: str) -> Snapshot:
        return self.runner(agent_id).operate(operation)

    # ---- publication ----

    def _publisher(self, agent_id: str
                   ) -> Callable[[Snapshot, AgentRecord | None, list[PendingEvent]], None]:
        written: list = [_UNWRITTEN]   # the record last kept on disk for this agent

        def publish(snapshot: Snapshot, record: AgentRecord | None,
                    events: list[PendingEvent]) -> None:
            for event in events:
                self.events.record(agent_id, event.kind, event.message, event.pid,
                                   event.exit_code, event.exit_signal, time_ms=event.time)
            try:
                # UNKNOWN keeps the evidence until an operator acts; an unchanged record
                # (STARTING -> RUNNING, RUNNING -> STOPPING) is not written again.
                if snapshot.state is not State.UNKNOWN and record != written[0]:
                    self.statedir.write_agent(agent_id, record)
                    written[0] = record
            except OSError as exc:
                written[0] = _UNWRITTEN
                log.error("%s: cannot write the state record: %s", agent_id, exc)
            if snapshot.pid and snapshot.state in (State.STARTING, State.RUNNING):
                self.sampler.watch(agent_id, snapshot.pid)
            else:
                self.sampler.unwatch(agent_id)
            for listener in self.listeners:
                listener(snapshot)
        return publish


def warn_missing(configs: tuple[AgentConfig, ...]) -> list[str]:
    """Log a WARNING for each agent whose command or cwd is missing, resolved as
    its spawn will resolve them (its PATH, its cwd); return the warnings. Called
    at start, and by a reload with the new definitions."""
    warnings = []
    for config in configs:
        problem = find_problem(config.command, config.cwd, agent_environment(config))
        if problem:
            warnings.append(f"{config.id}: {problem}")
            log.warning("%s: %s; its starts will fail", config.id, problem)
    return warnings
