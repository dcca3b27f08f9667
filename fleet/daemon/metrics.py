"""Resource samples of running agents, kept in fixed-size rings.

One thread ``fleet-metrics`` samples every watched agent each ``interval`` seconds
(its whole process tree, summed: fleet/daemon/proctree.py), appends the figures to
that agent's ``Ring`` (fleet/daemon/samples.py) and folds them into its
``MinuteRing`` (fleet/daemon/rollups.py). A sample costs 64 bytes, so 50 agents
hold an hour at 10 s in 50 * 362 * 64 B = 1.10 MiB, plus 1.85 MiB for a day of
minutes. With a history directory the rings are saved there
(fleet/daemon/history.py) every ``save_interval`` and at stop, and restored at
start, so history outlives the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from fleet.daemon import history, proctree
from fleet.daemon.periodic import Periodic
from fleet.daemon.proctree import ProcessDenied, ProcessGone, Watched
from fleet.daemon.rollups import MINUTE_COLUMNS, MinuteRing
from fleet.daemon.samples import (COLUMNS, HORIZON_SECONDS, DataPoint, Ring, ring_capacity,
                                  with_rates)
from fleet.errors import InvalidArgument

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 1.0
SAVE_INTERVAL_SECONDS = 300  # history is written this often, and at stop


class AgentHistory:
    """One agent's rings: samples of the last hour, and a day of minutes."""

    def __init__(self, capacity: int, interval: float) -> None:
        self.samples = Ring(capacity, float(interval))
        self.minutes = MinuteRing()

    @property
    def nbytes(self) -> int:
        return self.samples.nbytes + self.minutes.nbytes

    def append(self, point: DataPoint) -> None:
        self.samples.append(point)
        self.minutes.add(point)

    def points(self, cutoff_ms: int, now_ms: int, horizon_ms: int) -> list[DataPoint]:
        """Samples since ``cutoff_ms`` within the last ``horizon_ms``, oldest first; then
        (coarsest last) the minutes since ``cutoff_ms`` that end by the oldest of those
        samples (or by now if there is none), oldest first."""
        fine = self.samples.since(max(cutoff_ms, now_ms - horizon_ms))
        boundary = fine[0].timestamp if fine else now_ms
        return fine + self.minutes.points(cutoff_ms, boundary, DataPoint)

    def saved(self) -> history.Saved:
        head, minutes = self.minutes.export()
        return history.Saved(self.samples.resolution, self.samples.export(), head, minutes)

    def restore(self, saved: history.Saved) -> bool:
        """Take back a saved history; False if its samples were dropped (another
        interval: they would misstate their resolution; the minutes hold them)."""
        self.minutes.restore(saved.head, saved.minutes)
        if saved.interval != self.samples.resolution:
            return False
        self.samples.extend(saved.samples)
        return True


class Sampler:
    """Samples watched agents' processes into per-agent rings.

    ``watch``/``unwatch`` follow pids; a ring outlives its pid, so an agent's
    history spans its restarts until ``forget``. With ``history_dir``, ``restore``
    loads the saved histories at start, and the sampling thread saves them every
    ``save_interval`` seconds, and ``stop`` once more.
    """

    def __init__(self, interval: float = 10.0, horizon: float = HORIZON_SECONDS,
                 history_dir: str | None = None,
                 save_interval: float = SAVE_INTERVAL_SECONDS) -> None:
        if interval < MIN_INTERVAL_SECONDS:
            raise InvalidArgument(f"metrics interval must be >= {MIN_INTERVAL_SECONDS}s, "
                                  f"got {interval}")
        self.interval = interval                       # seconds between sweeps
        self._files = history.HistoryFiles(history_dir) if history_dir else None  # or not saved
        self._capacity = ring_capacity(interval, horizon)
        self._horizon_ms = int(horizon * 1000)         # samples answer this much; minutes before
        self._lock = threading.Lock()                  # guards _histories, _procs and _last
        self._histories: dict[str, AgentHistory] = {}  # agent id -> its rings
        self._procs: dict[str, Watched] = {}           # agent id -> watched leader process
        self._last: dict[str, DataPoint] = {}          # agent id -> its process's last sample
        self._save_lock = threading.Lock()             # one save at a time (thread and stop)
        self._save_interval = save_interval
        self._save_deadline = time.monotonic() + save_interval
        # Called with (agent id, pid, whole-tree sample) after each sweep, outside the
        # lock, in this thread: the resource limits' check (fleet.daemon.health).
        self.on_sample: Optional[Callable[[str, int, DataPoint], None]] = None
        # Called once after each sweep, in this thread: the node's own sample
        # (fleet.daemon.node), so sampling the machine costs no thread of its own.
        self.after_sweep: Optional[Callable[[], object]] = None
        # The first sweep runs at once, then one every interval.
        self._periodic = Periodic("fleet-metrics", interval, self._tick, first_delay=0.0)

    def watch(self, agent_id: str, pid: int) -> None:
        """Start sampling ``pid`` for ``agent_id`` (replacing any previous pid); the
        process already watched (a change published again) keeps its baselines."""
        proc = _new_process(agent_id, pid)  # /proc before taking the lock
        with self._lock:
            self._history(agent_id)
            if proc is not None and self._procs.get(agent_id) == proc:  # pid and create time
                return
            self._last.pop(agent_id, None)
            if proc is None:
                self._procs.pop(agent_id, None)
            else:
                self._procs[agent_id] = proc

    def unwatch(self, agent_id: str) -> None:
        """Stop sampling ``agent_id`` (its process is gone); its history stays."""
        with self._lock:
            self._procs.pop(agent_id, None)
            self._last.pop(agent_id, None)

    def forget(self, agent_id: str) -> None:
        """Drop ``agent_id`` and its history (the agent left the config)."""
        with self._lock:
            self._procs.pop(agent_id, None)
            self._last.pop(agent_id, None)
            self._histories.pop(agent_id, None)

    def points(self, agent_id: str, duration_seconds: float,
               now_ms: int | None = None) -> list[DataPoint]:
        """The last ``duration_seconds`` before ``now_ms``: samples of the last hour,
        oldest first, then one-minute points before them, oldest first.

        An agent never watched gives [] like one without samples: whether the agent
        exists is the supervisor's question.
        """
        if now_ms is None:
            now_ms = _now_ms()
        cutoff = now_ms - int(duration_seconds * 1000)
        with self._lock:
            found = self._histories.get(agent_id)
            return found.points(cutoff, now_ms, self._horizon_ms) if found is not None else []

    def latest(self) -> dict[str, DataPoint]:
        """The last whole-tree sample of each agent whose process is watched now."""
        with self._lock:
            return dict(self._last)

    def memory_bytes(self) -> int:
        """Bytes of sample data held by all rings."""
        with self._lock:
            return sum(found.nbytes for found in self._histories.values())

    def sample_once(self, now_ms: int | None = None) -> int:
        """Sample every watched process once; return how many samples were stored."""
        if now_ms is None:
            now_ms = _now_ms()
        with self._lock:
            watched = list(self._procs.items())
        samples = []
        for agent_id, proc in watched:  # /proc outside the lock
            point = self._sample(agent_id, proc, now_ms)
            if point is not None:
                samples.append((agent_id, proc, point))
        stored = 0
        with self._lock:
            for agent_id, proc, point in samples:
                # Skip a sample whose agent was unwatched or re-pointed meanwhile.
                if self._procs.get(agent_id) is proc:
                    point = with_rates(self._last.get(agent_id), point)
                    self._last[agent_id] = point
                    self._histories[agent_id].append(point)
                    stored += 1
        hook = self.on_sample
        for agent_id, proc, point in samples if hook is not None else ():
            try:
                hook(agent_id, proc.pid, point)
            except Exception:  # noqa: BLE001 - a limit check's failure must not stop sampling
                log.exception("agent %s: limit check failed", agent_id)
        return stored

    def _sample(self, agent_id: str, proc: Watched, now_ms: int) -> DataPoint | None:
        """One process's sample, or None if it is gone (then stop watching that pid)."""
        try:
            return proctree.read_tree(proc, now_ms)
        except ProcessGone:
            log.debug("agent %s pid %d: gone; not sampling it", agent_id, proc.pid)
            with self._lock:
                if self._procs.get(agent_id) is proc:
                    del self._procs[agent_id]
                    self._last.pop(agent_id, None)
        except ProcessDenied:
            log.warning("agent %s pid %d: access denied while sampling", agent_id, proc.pid)
        return None

    def _history(self, agent_id: str) -> AgentHistory:
        """The agent's rings, created on first use; call with the lock held."""
        found = self._histories.get(agent_id)
        if found is None:
            found = self._histories[agent_id] = AgentHistory(self._capacity, self.interval)
        return found

    def _tick(self) -> None:
        """One run of the sampling thread: a sweep, the node's sample, and a save
        when one is due."""
        self.sample_once()
        if self.after_sweep is not None:
            try:
                self.after_sweep()
            except Exception:  # noqa: BLE001 - the agents' sampling must go on
                log.exception("node sample failed")
        if self._files is not None and time.monotonic() >= self._save_deadline:
            self._save_deadline = time.monotonic() + self._save_interval
            self.save()

    # ---- persistence ----

    def restore(self, agent_ids) -> None:
        """Load the saved history of each of ``agent_ids`` and delete the files of
        other agents (no longer configured). A file that cannot be used is logged and
        ignored: that agent's history starts afresh. Call before sampling starts."""
        if self._files is None:
            return
        wanted = set(agent_ids)
        for agent_id in self._files.agent_ids():
            if agent_id not in wanted:
                log.info("agent %s: no longer configured; deleting its metrics history", agent_id)
                self._files.delete(agent_id)
                continue
            saved = self._files.load(agent_id, COLUMNS, MINUTE_COLUMNS)
            if saved is not None:
                self._install(agent_id, saved)

    def _install(self, agent_id: str, saved: history.Saved) -> None:
        found = AgentHistory(self._capacity, self.interval)
        try:
            if not found.restore(saved):
                log.info("agent %s: saved samples were taken every %gs, not %gs; "
                         "keeping only their one-minute history",
                         agent_id, saved.interval, self.interval)
        except ValueError as exc:  # a well-formed file of another shape
            log.warning("agent %s: ignoring metrics history: %s", agent_id, exc)
            return
        with self._lock:
            self._histories[agent_id] = found

    def save(self) -> int:
        """Write every agent's history to history_dir; return how many were written.

        Each agent's rings are copied under the lock and written outside it."""
        if self._files is None:
            return 0
        written = 0
        with self._save_lock:
            with self._lock:
                agent_ids = list(self._histories)
            for agent_id in agent_ids:
                with self._lock:
                    found = self._histories.get(agent_id)
                    saved = found.saved() if found is not None else None
                if saved is not None:
                    written += self._files.write(agent_id, saved)
        return written

    def start(self) -> None:
        """Start the sampling thread; a second call while running does nothing."""
        self._periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampling thread at once, then save the histories (with a
        history_dir); safe to call twice or before start."""
        self._periodic.stop(timeout)
        self.save()


def _new_process(agent_id: str, pid: int) -> Watched | None:
    """A Watched for ``pid`` with its CPU reading taken, or None if it is gone."""
    try:
        return Watched(pid)
    except (ProcessGone, ProcessDenied, IndexError, ValueError) as exc:
        log.warning("agent %s pid %d: cannot watch (%s)", agent_id, pid, type(exc).__name__)
        return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
