"""A thread per agent that notices its exit at once and keeps its deadlines.

The thread blocks in poll() on the process's pidfd (readable the moment the
process exits, child or adopted) and on a wake pipe, with the program's next
deadline as the timeout: no periodic tick. Operations come from other threads,
are serialised per agent by `ops_lock`, and wake the thread when they change
what it waits for. After every locked section the changes are published
(state file, sampler, syncer) outside the program's lock.
"""
from __future__ import annotations

import logging
import math
import select
import threading
from typing import Callable

from fleet.daemon.facts import PendingEvent, Snapshot
from fleet.daemon.program import Program
from fleet.daemon.statedir import AgentRecord
from fleet.daemon.wakepipe import WakePipe
from fleet.errors import Conflict, InvalidArgument
from fleet.states import State

log = logging.getLogger(__name__)

OPERATIONS = ("start", "stop", "restart")
STOP_WAIT_SECONDS = 25.0  # stop returns by then, still STOPPING, while the kill goes on


class Runner:
    def __init__(self, program: Program,
                 publish: Callable[[Snapshot, AgentRecord | None, list[PendingEvent]], None],
                 settle: Callable[[], Callable[[Program, float], None]] | None = None):
        self.program = program
        # Called with each change (snapshot, record, events made), in order.
        self.publish = publish
        # Before a stop of an UNKNOWN agent: the action that identifies its process
        # (adopt it, or find none); raises Conflict while it cannot be identified.
        self.settle = settle
        self.ops_lock = threading.Lock()  # serialises operations on this agent
        self._publish_lock = threading.Lock()  # keeps publications in state order
        self._wakes = WakePipe()
        self._closed = False
        self.refuse_operations = False    # set at shutdown
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fleet-agent-{program.config.id}")

    # ---- lifecycle ----

    def start(self, init: Callable[[Program, float], None]) -> None:
        """Run init(program, now) under the lock, then start the thread."""
        with self.program.lock:
            init(self.program, self.program.ops.monotonic())
        self._publish()
        self._thread.start()

    def close(self) -> None:
        """End the thread (the process, if any, is left alone); safe to call twice."""
        with self.program.lock:
            if self._closed:
                return
            self._closed = True
        self.wake()
        if self._thread.is_alive():
            self._thread.join(5)
        self._wakes.close()

    def wake(self) -> None:
        """Make the thread look at its program again (an operation changed it)."""
        self._wakes.wake()

    # ---- operations ----

    def operate(self, operation: str, cause: str = "operator", detail: str = "") -> Snapshot:
        """start, stop or restart; returns the agent's state afterwards.

        A restart records a `restart` event whose message names its `cause`
        (operator, health, limit, policy) and `detail`, before its stop.
        """
        if operation not in OPERATIONS:
            raise InvalidArgument(f"unknown operation {operation!r}: use start, stop or restart")
        reason = cause + (f": {detail}" if detail else "")
        why = f"cause={reason}"
        with self.ops_lock:
            if self.refuse_operations:
                raise Conflict("the daemon is shutting down")
            if operation in ("stop", "restart"):
                self._settle_unknown()
                if operation == "restart":   # published with the stop's (or start's) change
                    with self.program.lock:
                        child = self.program.child
                        self.program.note_event("restart", why, child.pid if child else 0)
                self._stop(reason if operation == "restart" else "")
            if operation in ("start", "restart"):
                self._locked(lambda p, now: self._start(p, now, operation == "restart", why))
            return self.snapshot()

    def restart_for(self, cause: str, why: str) -> bool:
        """Restart a RUNNING agent for `cause` ("health", "limit") through the state
        machine, without waiting: the stop signal now, the start when the group has
        exited (counted in restart_count). False, doing nothing, when the agent is
        not RUNNING, an operation on it is in progress, or the daemon shuts down.
        Never blocks: probes and the sampler call it from their threads.
        """
        if not self.ops_lock.acquire(blocking=False):
            return False  # an operator's operation decides the agent's fate now
        try:
            if self.refuse_operations:
                return False
            done = []
            try:
                self._locked(lambda p, now: done.append(p.restart_for(cause, why, now)))
            except Conflict as exc:
                log.error("%s: restart (cause %s) failed: %s", self.program.config.id,
                          cause, exc.message)
                return False
            return bool(done and done[0])
        finally:
            self.ops_lock.release()

    def record_health(self, action: Callable[[Program], None]) -> None:
        """Apply a health or limit verdict (`action(program)` under the lock) and
        publish what it changed."""
        with self.program.lock:
            action(self.program)
        self._publish()

    def _start(self, program: Program, now: float, restart: bool, why: str) -> None:
        if self.refuse_operations:  # shutdown began while this operation was stopping
            raise Conflict("the daemon is shutting down")
        if restart and program.state is State.STOPPING and program.restart_cause:
            return                  # slower to stop than the wait: it starts once it has
        program.start(now, restart, f"restart requested ({why})" if restart else "")

    def _settle_unknown(self) -> None:
        """Identify an UNKNOWN agent's process before stopping it, so that a stop
        never forgets a process that may live (Conflict while it cannot)."""
        with self.program.lock:
            if self.program.state is not State.UNKNOWN or self.settle is None:
                return
        self._locked(self.settle())

    def reconfigure(self, config) -> None:
        """Take a reloaded definition (Program.reconfigure) and publish it."""
        with self.program.lock:
            self.program.reconfigure(config)
        self._publish()

    def begin_shutdown(self, why: str = "daemon shutdown") -> None:
        """Refuse later operations and send the stop signal; do not wait.

        Takes no ops_lock: an operation in progress (a stop waiting out its
        stop_timeout) must not delay the signal. A refused signal is logged.
        """
        with self.program.lock:
            self.refuse_operations = True
        try:
            self._locked(lambda p, now: p.stop(now, why))
        except Conflict as exc:
            log.error("%s: left running: %s", self.program.config.id, exc.message)

    def _stop(self, restart_cause: str = "") -> None:
        """Stop and wait up to STOP_WAIT_SECONDS. For a restart (`restart_cause`) the
        start is kept pending on the program, so an agent slower to stop than the
        wait (a long stop_timeout) still starts once its group has exited."""
        def stop(program: Program, now: float) -> None:
            program.stop(now)
            if restart_cause and program.state is State.STOPPING:
                program.restart_cause = restart_cause

        self._locked(stop)
        self.wait_stopped(self.program.ops.monotonic() + STOP_WAIT_SECONDS)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until the agent is no longer STOPPING, or the deadline passes."""
        program = self.program
        with program.lock:
            while program.state is State.STOPPING:
                remaining = deadline - program.ops.monotonic()
                if remaining <= 0:
                    log.warning("%s: still stopping pid=%s", program.config.id,
                                program.child.pid if program.child else 0)
                    break
                program.lock.wait(remaining)

    def _locked(self, action: Callable[[Program, float], None]) -> None:
        try:
            with self.program.lock:
                action(self.program, self.program.ops.monotonic())
                self.program.lock.notify_all()
        finally:  # a refused action may still have changed last_error
            self.wake()
            self._publish()

    def snapshot(self) -> Snapshot:
        with self.program.lock:
            return self.program.snapshot()

    # ---- the thread ----

    def _run(self) -> None:
        program = self.program
        while True:
            with program.lock:
                if self._closed:
                    return
                pidfd = program.child.pidfd if program.child else -1
                deadline = program.next_deadline()
            try:
                exited = self._wait(pidfd, deadline)
                self._handle(pidfd, exited)
            except Exception:  # noqa: BLE001 - log and keep supervising
                log.exception("%s: supervisor thread error", program.config.id)
                threading.Event().wait(0.1)

    def _wait(self, pidfd: int, deadline: float | None) -> bool:
        """Block until the process exits, a wake, or the deadline; True if it exited."""
        poller = select.poll()
        poller.register(self._wakes.fd, select.POLLIN)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        timeout = None
        if deadline is not None:
            timeout = max(0, math.ceil((deadline - self.program.ops.monotonic()) * 1000))
        events = poller.poll(timeout)
        exited = False
        for fd, _ in events:
            if fd == self._wakes.fd:
                self._wakes.drain()
            elif fd == pidfd:
                exited = True
        return exited

    def _handle(self, pidfd: int, exited: bool) -> None:
        program = self.program
        with program.lock:
            now = program.ops.monotonic()
            child = program.child
            if exited and child is not None and child.pidfd == pidfd:
                program.exited(program.ops.reap(child), now)
            program.tick(now)
            program.lock.notify_all()
        self._publish()

    def _publish(self) -> None:
        """Hand every changed state to the listener, in the order they happened."""
        with self._publish_lock:
            with self.program.lock:
                if not self.program.dirty:
                    return
                self.program.dirty = False
                snapshot = self.program.snapshot()
                record = self.program.record()
                events = self.program.take_events()
            self.publish(snapshot, record, events)
