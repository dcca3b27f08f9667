"""StateSyncer: the daemon's one thread (`fleet-syncer`) that reports to the manager.

A full report every sync_interval; a prompt report of changed agents, debounced,
after any state change; heartbeats between. Changed states wait in `pending`
(one entry per agent: the newer state wins, so it is bounded by the agent
count) until a report carrying them is acknowledged. Failures keep them and
retry with capped, jittered backoff. `seq` counts acknowledged reports of this
boot; a retry reuses it. A manager that forgot the node (NOT_FOUND or
`reregister`) gets a registration and then a full report. The registration's
facts are computed afresh each time, for the manager then dialled (after a
failover, the IP towards that one). An unreachable manager changes nothing
else on the node. A clean stop ends with a full report flagged `stopping`, so
the manager shows the node offline at once.

A busy manager refuses a report with RESOURCE_EXHAUSTED and a hint
(errors.Overloaded): no report is sent before the hint plus a jitter of up to
half of it (so refused daemons do not come back together), heartbeats go on
meanwhile (the node stays online), the same manager is asked again (busy is
not down: no failover), and it is one warning a minute. Failures back off with
"equal jitter" (half the delay fixed, half random), so daemons that lost a
manager together do not return to it together.

Every report also carries the agents' events the manager has not yet
acknowledged (fleet/daemon/events.py), at most MAX_EVENTS; they are marked
acknowledged only with the report, so a failed or retried report resends them
and the manager, which knows each event by (agent, seq, time), stores each once.
A recorded event asks for a prompt report, as a state change does.

After each acknowledged full report, the `NodeMetricsSender` it was given
(fleet/daemon/nodereport.py) sends the machine's samples not yet sent; its
failures never fail the report.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Callable

from fleet.daemon.events import Event, EventLog
from fleet.daemon.manager_client import ManagerClient
from fleet.daemon.facts import Snapshot
from fleet.daemon.convert import agent_state
from fleet.errors import FleetError, NotFound, Overloaded, Unauthenticated
from fleet.v1 import fleet_pb2 as pb

if TYPE_CHECKING:
    from fleet.daemon.nodereport import NodeMetricsSender  # it imports this module

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.1
RETRY_INITIAL, RETRY_MAX = 1.0, 30.0
WARN_EVERY_SECONDS = 60.0
MAX_EVENTS = 1000               # events per report; more follow in the next ones
RETRY_AFTER_MAX = 60.0          # seconds: a busy manager's hint is obeyed up to this
RETRY_AFTER_JITTER = 0.5        # a refused report waits hint * (1 + U(0, this))


class StateSyncer:
    def __init__(self, client: ManagerClient,
                 registration: Callable[[str], pb.RegisterNodeRequest],
                 snapshots: Callable[[], list[Snapshot]], sync_interval: float,
                 heartbeat_interval: float, clock: Callable[[], float] = time.monotonic,
                 events: EventLog | None = None,
                 node_metrics: "NodeMetricsSender | None" = None):
        self.client = client
        self.registration = registration      # manager address -> this node's facts
        self.node: pb.RegisterNodeRequest | None = None   # the last accepted registration
        self.snapshots = snapshots            # every agent's current state
        self.sync_interval = sync_interval
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        self.events = events                  # the agents' histories; None: none sent
        self.node_metrics = node_metrics      # sends the machine's samples; None: none sent
        self._cond = threading.Condition()    # guards all below; notified on news
        self._pending: dict[str, Snapshot] = {}
        self._prompt_at: float | None = None  # when the debounced report is due
        self._full_at = 0.0                   # when the next full report is due
        self._beat_at = 0.0                   # when the next heartbeat is due
        self._retry_at = 0.0                  # nothing is sent before this after a failure
        self._reports_at = 0.0                # no report before this: the manager was busy
        self._failures = 0
        self._registered = False
        self._seq = 0                         # acknowledged reports of this boot
        self._closing = False
        self._last_warning = -WARN_EVERY_SECONDS
        # With accept_policies: a fleet.daemon.policies.PolicyKeeper (its `running`
        # version goes in heartbeats, `heard()` gets the answer's) and the call that
        # hands the work to the reload worker.
        self.policies = None
        self.on_policy_work: Callable[[], None] = lambda: None
        self.reports_sent = 0                 # acknowledged reports (for tests and logs)
        self.refusals = 0                     # reports a busy manager refused (for tests)
        self.last_report_time = 0.0           # Unix seconds of the last acknowledged report
        self._thread = threading.Thread(target=self._run, name="fleet-syncer", daemon=True)

    # ---- from other threads ----

    def notify(self, snapshot: Snapshot) -> None:
        """A state changed: report it soon (merged with others that follow)."""
        with self._cond:
            self._pending[snapshot.agent_id] = snapshot
            if self._prompt_at is None:
                self._prompt_at = self.clock() + DEBOUNCE_SECONDS
                # Only a new prompt deadline can shorten the thread's wait; the changes
                # that follow within the debounce would wake it for nothing (a restart
                # is three changes, and each wake-up competes with the operation).
                self._cond.notify()

    def poke(self) -> None:
        """An event was recorded: report soon."""
        with self._cond:
            if self._prompt_at is None:
                self._prompt_at = self.clock() + DEBOUNCE_SECONDS
            self._cond.notify()

    def request_full(self) -> None:
        """Send a full report now (a reload removed agents: the manager drops their rows)."""
        with self._cond:
            self._full_at = 0.0
            self._cond.notify()

    def reregister(self) -> None:
        """Register again (a reload changed the labels), then a full report."""
        with self._cond:
            self._registered = False
            self._cond.notify()

    def start(self) -> None:
        if not self._thread.is_alive() and not self._closing:
            self._thread.start()

    def stop(self, final_report: bool = True) -> None:
        """End the thread, then send one last full report flagged `stopping` (best effort):
        the manager shows the node offline at once."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self.client.deadline * 2 + 1)
        if final_report and self._registered:
            try:
                self._report(full=True, stopping=True)
            except FleetError as exc:
                log.warning("final state report failed: %s", exc)

    # ---- the thread ----

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._wait_for_work()
                if due is None:
                    return
            address = self.client.address    # a failed call moves the client to the next
            try:
                self._do(due)
                self._succeeded()
            except Overloaded as exc:
                self._refused(exc)
            except FleetError as exc:
                self._failed(exc, address)
            except Exception:  # noqa: BLE001 - log and keep reporting
                log.exception("state syncer error")
                self._failed(None, address)
            else:
                if due == "full":
                    self._send_node_metrics()

    def _send_node_metrics(self) -> None:
        """The node's samples after a full report; nothing here fails the reports."""
        if self.node_metrics is None:
            return
        try:
            self.node_metrics.send(self.node)
        except Exception:  # noqa: BLE001 - log and keep reporting
            log.exception("node metrics sender error")

    def _wait_for_work(self) -> str | None:
        """Under the lock: wait until something is due; its name, or None to exit."""
        while not self._closing:
            now = self.clock()
            due = self._due(now)
            if due:
                return due
            if now < self._retry_at:
                wake = [self._retry_at]
            else:
                wake = [max(t, self._reports_at) for t in (self._full_at, self._prompt_at)
                        if t is not None] + [self._beat_at]
            self._cond.wait(max(0.0, min(wake) - now))
        return None

    def _due(self, now: float) -> str:
        if now < self._retry_at:
            return ""
        if not self._registered:
            return "register"
        if now >= self._reports_at:
            if now >= self._full_at:
                return "full"
            if self._prompt_at is not None and now >= self._prompt_at:
                return "changes"
        if now >= self._beat_at:
            return "heartbeat"
        return ""

    def _do(self, due: str) -> None:
        if due == "register":
            self._register()
        elif due == "heartbeat":
            self._heartbeat()
        else:
            self._report(full=due == "full")

    def _register(self) -> None:
        node = self.registration(self.client.address)
        answer = self.client.register(node)
        if answer.sync_interval_seconds > 0:
            self.sync_interval = answer.sync_interval_seconds
        if answer.heartbeat_interval_seconds > 0:
            self.heartbeat_interval = answer.heartbeat_interval_seconds
        log.info("registered node %s with manager %s (boot %s, ip %s, address %s)",
                 node.node_id, self.client.address, node.boot_id, node.ip,
                 node.advertise_address)
        with self._cond:
            self.node = node
            self._registered = True
            self._full_at = 0.0  # a full report follows every registration

    def _heartbeat(self) -> None:
        policies = self.policies
        answer = self.client.heartbeat(pb.HeartbeatRequest(
            node_id=self.node.node_id, boot_id=self.node.boot_id,
            timestamp=int(time.time() * 1000), accept_policies=policies is not None,
            policy_version=policies.running if policies is not None else ""))
        with self._cond:
            self._beat_at = self.clock() + self.heartbeat_interval
            if answer.reregister:
                self._registered = False
        if policies is not None and policies.heard(answer.policy_version):
            self.on_policy_work()

    def _report(self, full: bool, stopping: bool = False) -> None:
        with self._cond:
            taken = dict(self._pending)   # acknowledged entries leave pending below
            self._prompt_at = None
        states = self.snapshots() if full else list(taken.values())
        events = self.events.unsent(MAX_EVENTS) if self.events is not None else []
        request = pb.SyncAgentStatesRequest(
            node_id=self.node.node_id, boot_id=self.node.boot_id, seq=self._seq + 1,
            full=full, states=[agent_state(s) for s in states], stopping=stopping,
            events=[agent_event(e) for e in events])
        try:
            answer = self.client.sync(request)
        except NotFound:
            with self._cond:
                self._registered = False
            raise
        self._acknowledged(taken, full, answer, events)

    def _acknowledged(self, taken: dict[str, Snapshot], full: bool,
                      answer: pb.SyncAgentStatesResponse, events: list[Event]) -> None:
        """Drop what the report carried from pending (a newer change stays)."""
        now = self.clock()
        if events:
            self.events.acknowledge(events)
        with self._cond:
            self._seq += 1
            self._reports_at = 0.0
            self.reports_sent += 1
            self.last_report_time = time.time()
            for agent_id, snapshot in taken.items():
                if self._pending.get(agent_id) is snapshot:
                    del self._pending[agent_id]
            if full:
                self._full_at = now + self.sync_interval
            if self.policies is None:   # else heartbeats go on: they carry the policy version
                self._beat_at = now + self.heartbeat_interval
            if answer.report_full_state:
                self._full_at = now
            if (self._pending or len(events) >= MAX_EVENTS) and self._prompt_at is None:
                self._prompt_at = now + DEBOUNCE_SECONDS
        if answer.rejected:
            self._warn("manager rejected %d state(s): %s", answer.rejected,
                       "; ".join(f"{e.agent_id}: {e.reason}" for e in answer.errors[:5]))

    def _succeeded(self) -> None:
        with self._cond:
            self._failures = 0
            self._retry_at = 0.0

    def _failed(self, exc: FleetError | None, address: str = "") -> None:
        """Count a failed call to manager `address` and schedule the retry."""
        with self._cond:
            self._failures += 1
            # Capped at the sync interval too, so a manager that comes back has
            # every node's truth within two sync intervals.
            cap = min(RETRY_MAX, max(self.sync_interval, 0.05))
            delay = min(cap, RETRY_INITIAL * 2 ** min(self._failures - 1, 10))
            delay *= random.uniform(0.5, 1.0)
            self._retry_at = self.clock() + delay
            pending = len(self._pending)
        if isinstance(exc, Unauthenticated):
            # Nothing gets through until an operator fixes the token: say so every time.
            log.error("%s; check [daemon] cluster_token; %d pending; retrying in %.1fs",
                      exc, pending, delay)
            return
        self._warn("report to manager %s failed (%s); %d pending; retrying in %.1fs",
                   address or self.client.address, exc, pending, delay)

    def _refused(self, exc: Overloaded) -> None:
        """The manager is busy: the report waits its hint plus jitter; heartbeats go on."""
        hint = min(RETRY_AFTER_MAX, exc.retry_after_ms / 1000)
        wait = hint * (1 + random.uniform(0, RETRY_AFTER_JITTER))
        with self._cond:
            self._failures, self._retry_at = 0, 0.0     # it answered: it is up
            self._reports_at = self.clock() + wait
            self.refusals += 1
            pending = len(self._pending)
        self._warn("manager %s is busy (%s); %d pending; reporting again in %.1fs",
                   self.client.address, exc, pending, wait)

    def _warn(self, message: str, *args) -> None:
        """A warning at most once a minute: a manager down for hours is one story."""
        now = self.clock()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._pending)


def agent_event(event: Event) -> pb.AgentEvent:
    """The wire form of an event."""
    return pb.AgentEvent(time=event.time, agent_id=event.agent_id, kind=event.kind,
                         message=event.message, pid=event.pid, exit_code=event.exit_code,
                         exit_signal=event.exit_signal, seq=event.seq)
