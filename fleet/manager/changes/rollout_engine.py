"""The rollout engine: thread `fleet-rollouts` drives every unfinished rollout, wave by wave.

Only the holder of the database lease `rollouts` drives (fleet.manager.store.lease),
so with several managers on one database exactly one operates the nodes; the
others only serve the HTTP API. Each tick (about a second) renews the lease and
calls `step(now)`, which for each rollout with work left:

1. checks its nodes in flight: a node succeeds once its stored agent row (kept
   fresh by the daemon's reports) reaches the operation's goal: `running` and
   health `healthy` with a new pid for a restart, `running` and `healthy` for a
   start, `stopped` for a stop. It fails at its deadline (operated + wait_seconds)
   with the last status, health and message, or at once when the agent turns
   `fatal` (a start or restart) or the node or agent is gone;
2. when no node is in flight, ends the rollout (failed once more than
   max_failures nodes failed, else succeeded when none is left) or starts the
   next wave: up to max_parallel pending nodes, each marked running and
   `operated` in the database BEFORE its operate call goes to the daemon, the
   calls made in parallel. An operate that fails fails its node with the error.

Every change is written at once (fleet.manager.changes.rollouts.RolloutStore), so a
manager that takes the lease over (a restart, or another manager after the
holder died) resumes where the last one stopped: a node found in flight is
never operated again, only waited for anew (its deadline is moved to
now + wait_seconds), and a restart that never reached the daemon fails as "pid
unchanged". A rollout of a kind this manager cannot drive is marked interrupted.

A policy rollout's wave releases pins instead of operating, and a node in flight is
checked by fleet.manager.changes.policy_rollouts.PolicyPins.check (node.old_pid holds the
version the node was pinned at).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from fleet import errors
from fleet.manager.nodes import NodeStore
from fleet.manager.changes.policy_rollouts import PolicyPins
from fleet.manager.pool import DaemonClientPool
from fleet.manager.changes.rollouts import OPERATIONS, RolloutStore
from fleet.manager.store.lease import Lease
from fleet.manager.store.models import Rollout, RolloutNode

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0          # between steps; also how often the lease is renewed
OPERATE_BATCH = 32          # operate calls in parallel at most, within one wave
OPERATE_JOIN = 60.0         # seconds to wait for one batch of operate calls


class RolloutEngine:
    """Drives rollouts under the `rollouts` lease; `step(now)` is one pass (tests call it)."""

    def __init__(self, store: RolloutStore, nodes: NodeStore, pool: DaemonClientPool,
                 lease: Lease, tick: float = TICK_SECONDS,
                 clock: Callable[[], float] = time.time, pins: Optional[PolicyPins] = None):
        self._store = store
        self._pins = pins            # policy rollouts release pins; None: not driven here
        self._nodes = nodes          # node addresses and the stored agent rows
        self._pool = pool            # the daemon clients, shared with the HTTP API
        self._lease = lease
        self._tick = tick
        self._clock = clock
        self._holding = False        # held the lease at the last tick
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- the thread ----

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-rollouts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the step under way) and hand the lease over."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(OPERATE_JOIN + 5)
        if self._holding:
            try:
                self._lease.release()
            except errors.FleetError as exc:
                log.warning("rollouts lease not released: %s", exc.message)
            except Exception:  # noqa: BLE001 - it expires by itself
                log.exception("rollouts lease not released")
            self._holding = False

    def wake(self) -> None:
        """Step now rather than at the next tick (a rollout was created)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - log and try again at the next tick
                log.exception("rollout step failed")
            self._wake.wait(self._tick)
            self._wake.clear()

    def tick(self) -> bool:
        """Renew (or take) the lease and, holding it, step; True when it stepped."""
        now = self._clock()
        if not self._lease.acquire():
            if self._holding:
                log.info("rollouts lease lost to another manager")
            self._holding = False
            return False
        if not self._holding:
            log.info("rollouts lease taken: %s", self._lease.holder)
            self._take_over(now)
            self._holding = True
        self.step(now)
        return True

    # ---- one pass ----

    def step(self, now: float) -> None:
        """Advance every rollout with work left, oldest first."""
        for rollout_id in self._store.active():
            try:
                self._advance(rollout_id, now)
            except errors.FleetError as exc:
                log.warning("rollout %d not advanced: %s", rollout_id, exc.message)

    def _take_over(self, now: float) -> None:
        """Nodes found in flight get a fresh wait: their last driver may have died (and
        a policy node's pin is released again, in case it died before doing so)."""
        for rollout_id in self._store.active():
            row, nodes = self._store.load(rollout_id)
            self._store.extend_running(rollout_id, _ms(now + row.wait_seconds))
            if row.policy and self._pins is not None:
                for node in nodes:
                    if node.status == "running":
                        self._pins.release(node.node_id, row.policy)

    def _advance(self, rollout_id: int, now: float) -> None:
        row, nodes = self._store.load(rollout_id)
        at = _ms(now)
        if row.status == "pending":
            if not self._store.set_status(rollout_id, ("pending",), "running", at):
                return
            row.status = "running"
        if (self._pins is None) if row.policy else (row.operation not in OPERATIONS):
            self._store.set_status(rollout_id, ("pending", "running"), "interrupted", at)
            return
        for node in nodes:
            if node.status == "running":
                node.status = self._check(row, node, at)
        if row.status != "running":
            return                  # cancelled: only its nodes in flight are followed
        if any(node.status == "running" for node in nodes):
            return                  # the wave is not over
        failed = sum(node.status == "failed" for node in nodes)
        pending = [node for node in nodes if node.status == "pending"]
        if failed > row.max_failures:
            self._store.set_status(rollout_id, ("running",), "failed", at)
        elif not pending:
            self._store.set_status(rollout_id, ("running",), "succeeded", at)
        else:
            self._start_wave(row, pending[:row.max_parallel], now)

    # ---- nodes ----

    def _check(self, row: Rollout, node: RolloutNode, at: int) -> str:
        """A node in flight: its new status (written when it changed)."""
        if row.policy:
            return self._check_policy(row, node, at)
        try:
            agent = self._nodes.get_agent(node.node_id, row.agent_id)
        except errors.NotFound as exc:
            return self._end(row, node, "failed", exc.message, at)
        if reached(row.operation, agent, node.old_pid):
            return self._end(row, node, "succeeded", describe(agent), at)
        if agent["status"] == "fatal" and row.operation != "stop":
            return self._end(row, node, "failed", f"fatal: {describe(agent)}", at)
        if at >= (node.deadline or 0):
            return self._end(row, node, "failed", f"not {goal(row.operation)} after "
                             f"{row.wait_seconds}s: {describe(agent, node.old_pid)}", at)
        return "running"

    def _check_policy(self, row: Rollout, node: RolloutNode, at: int) -> str:
        """A policy node in flight: old_pid holds the version it was pinned at."""
        status, message = self._pins.check(node.node_id, row.policy, node.old_pid,
                                           node.started_at or 0)
        if status == "running" and at >= (node.deadline or 0):
            return self._end(row, node, "failed", f"not applied and healthy after "
                             f"{row.wait_seconds}s: {message}", at)
        return status if status == "running" else self._end(row, node, status, message, at)

    def _release_wave(self, row: Rollout, wave: list[RolloutNode], now: float) -> None:
        """A policy wave: each node marked running (old_pid := its pinned version), then
        its pin released; its next heartbeat gets the newest version."""
        at, deadline = _ms(now), _ms(now + row.wait_seconds)
        released = []
        for node in wave:
            pinned = self._pins.pin_version(node.node_id, row.policy)
            if self._store.begin_node(row.id, node.node_id, at, deadline, pinned):
                self._pins.release(node.node_id, row.policy)
                released.append(node.node_id)
        log.info("rollout %d: wave of %d: policy %s released on %s", row.id, len(released),
                 row.policy, ", ".join(released))

    def _end(self, row: Rollout, node: RolloutNode, status: str, message: str, at: int) -> str:
        self._store.end_node(row.id, node.node_id, status, message, at)
        return status

    def _start_wave(self, row: Rollout, wave: list[RolloutNode], now: float) -> None:
        """Mark each node running and operated, then operate them all in parallel."""
        if row.policy:
            self._release_wave(row, wave, now)
            return
        at, deadline = _ms(now), _ms(now + row.wait_seconds)
        calls = []
        for node in wave:
            try:
                agent = self._nodes.get_agent(node.node_id, row.agent_id)
                address = self._nodes.get_node(node.node_id).get("advertise_address") or ""
            except errors.NotFound as exc:
                if self._store.begin_node(row.id, node.node_id, at, deadline, 0):
                    self._end(row, node, "failed", exc.message, at)
                continue
            if self._store.begin_node(row.id, node.node_id, at, deadline, agent["pid"]):
                calls.append((node, address))
        log.info("rollout %d: wave of %d: %s %s on %s", row.id, len(calls), row.operation,
                 row.agent_id, ", ".join(node.node_id for node, _ in calls))
        for start in range(0, len(calls), OPERATE_BATCH):
            self._operate_batch(row, calls[start:start + OPERATE_BATCH])

    def _operate_batch(self, row: Rollout, calls: list) -> None:
        threads = [threading.Thread(target=self._operate, args=(row, node, address),
                                    name="fleet-rollouts-operate", daemon=True)
                   for node, address in calls]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + OPERATE_JOIN
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _operate(self, row: Rollout, node: RolloutNode, address: str) -> None:
        """One operate call; its answer is stored, its failure fails the node."""
        try:
            if not address:
                raise errors.Unavailable(f"node {node.node_id!r} has no address to dial")
            with self._pool.client(node.node_id, address) as daemon:
                info = daemon.operate(row.agent_id, row.operation, "rollout",
                                      f"rollout {row.id}")
            self._nodes.update_agent(node.node_id, info)
            log.info("rollout %d: operated node=%s agent=%s op=%s pid=%s", row.id,
                     node.node_id, row.agent_id, row.operation, info.pid)
        except errors.FleetError as exc:
            self._end(row, node, "failed", f"{row.operation}: {exc.message}", _ms(self._clock()))
        except Exception:  # noqa: BLE001 - a bug fails the node, not the engine
            log.exception("rollout %d: operate on %s failed", row.id, node.node_id)
            self._end(row, node, "failed", f"{row.operation}: internal error",
                      _ms(self._clock()))


def reached(operation: str, agent: dict, old_pid: int) -> bool:
    """Whether a stored agent row shows `operation` done: running and healthy (with a
    new pid for a restart of a running agent), or stopped for a stop."""
    if operation == "stop":
        return agent["status"] == "stopped"
    healthy = agent["status"] == "running" and agent["health"] == "healthy"
    if operation == "restart":
        return healthy and agent["pid"] > 0 and agent["pid"] != old_pid
    return healthy


def goal(operation: str) -> str:
    """What a node must reach, in words."""
    return "stopped" if operation == "stop" else "running and healthy"


def describe(agent: dict, old_pid: int = 0) -> str:
    """The agent's status, health, pid and why, in one line."""
    text = f"status={agent['status']} health={agent['health']} pid={agent['pid']}"
    if old_pid and agent["pid"] == old_pid:
        text += " (pid unchanged)"
    why = agent.get("health_message") or agent.get("last_error") or ""
    return text + (f": {why}" if why else "")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
