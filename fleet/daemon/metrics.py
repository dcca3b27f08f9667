"""Resource samples of running agents, kept in fixed-size rings.

One thread ``fleet-metrics`` samples every watched agent each ``interval`` seconds
with psutil and appends the figures to that agent's ``Ring``. A sample is of the
agent's whole process tree (the agent and its descendants: shell wrappers and
workers count), summed, with the number of processes. A ring is
preallocated: a column of numbers per figure (``array.array``), not a list of
objects, so a sample costs 54 bytes and 50 agents hold an hour at 10 s in
50 * 362 * 54 B = 0.93 MiB.
"""

from __future__ import annotations

import array
import logging
import math
import threading
import time
from typing import Callable, NamedTuple, Optional

import psutil

from fleet.daemon.periodic import Periodic
from fleet.errors import InvalidArgument

log = logging.getLogger(__name__)

HORIZON_SECONDS = 3600      # every ring holds at least this much history
MIN_INTERVAL_SECONDS = 1.0
_SPARE_SLOTS = 2            # a late sample must not push the oldest of the hour out


class DataPoint(NamedTuple):
    """One sample; field names follow the wire's ResourceDataPoint."""

    timestamp: int          # Unix ms
    cpu: float              # percent of one core; may exceed 100
    memory_rss: int         # bytes
    memory_vms: int         # bytes
    disk_read_bytes: int    # cumulative since the process started
    disk_write_bytes: int
    open_files: int         # open file descriptors
    threads: int
    processes: int = 1      # processes in the agent's tree


# Column type codes, in DataPoint order. cpu is float32 and the counts int32 to
# keep a sample at 54 bytes (float64 and int64 would make 72: over 1 MiB for 50
# agents), the process count int16; float32 keeps cpu to about 7 significant
# digits, rounded to 2 decimals.
_COLUMNS = ("q", "f", "q", "q", "q", "q", "i", "i", "h")
_CPU_DECIMALS = 2


def ring_capacity(interval: float, horizon: float = HORIZON_SECONDS) -> int:
    """Slots needed to hold ``horizon`` seconds of samples taken every ``interval``."""
    return math.ceil(horizon / interval) + _SPARE_SLOTS


class Ring:
    """A preallocated ring of DataPoints stored column-wise; the oldest is overwritten.

    Not thread-safe: the Sampler guards its rings with its lock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidArgument(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # One column per DataPoint field, allocated once at full size.
        self._cols = tuple(array.array(code, bytes(array.array(code).itemsize * capacity))
                           for code in _COLUMNS)
        self._next = 0    # slot the next sample goes into
        self._count = 0   # slots filled, up to capacity

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of sample data held (the columns, not the Python object headers)."""
        return sum(col.itemsize * len(col) for col in self._cols)

    def append(self, point: DataPoint) -> None:
        """Store ``point``, overwriting the oldest sample once full."""
        i = self._next
        for col, value in zip(self._cols, point):
            col[i] = value
        self._next = (i + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def since(self, ts_ms: int) -> list[DataPoint]:
        """Samples with timestamp >= ``ts_ms``, oldest first."""
        start = (self._next - self._count) % self.capacity
        stamps = self._cols[0]
        out = []
        for k in range(self._count):
            i = (start + k) % self.capacity
            # A filter, not a search: a wall-clock step back may leave stamps unordered.
            if stamps[i] >= ts_ms:
                out.append(self._point(i))
        return out

    def _point(self, i: int) -> DataPoint:
        ts, cpu, *rest = (col[i] for col in self._cols)
        return DataPoint(ts, round(cpu, _CPU_DECIMALS), *rest)


def _clamp_i32(n: int) -> int:
    return min(n, 2**31 - 1)


class TreeProcess(psutil.Process):
    """An agent's leader process, remembering its tree's CPU time at the last sample."""

    def prime(self, children_of: Optional[dict[int, list[int]]] = None) -> None:
        """Set the CPU baseline: the next sample's cpu is measured from now."""
        self.cpu_seconds = sum(_cpu_seconds(p) for p in _tree(self, children_of))
        self.cpu_at = time.monotonic()


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids of every process now: one pass over the process table
    per sweep, however many agents are sampled."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    return children


def _tree(leader: psutil.Process,
          children_of: Optional[dict[int, list[int]]] = None) -> list[psutil.Process]:
    """The leader and its live descendants (from `children_of`, else asked of psutil)."""
    if children_of is None:
        try:
            return [leader] + leader.children(recursive=True)
        except psutil.NoSuchProcess:
            return [leader]
    tree, pending = [leader], list(children_of.get(leader.pid, ()))
    while pending:
        pid = pending.pop()
        try:
            tree.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
        pending.extend(children_of.get(pid, ()))
    return tree


def _cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of proc and of the children it reaped (so a tree's total only grows
    while its members reap each other); 0 for a member gone meanwhile."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def _read_process(proc: TreeProcess, now_ms: int,
                  children_of: Optional[dict[int, list[int]]] = None) -> DataPoint:
    """Sample an agent's whole process tree: the figures of the leader and its
    descendants summed, cpu since the previous sample, and the process count.
    NoSuchProcess/ZombieProcess/AccessDenied of the leader propagate; a
    descendant gone meanwhile is left out; optional figures refused count as 0."""
    if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: no figures
        raise psutil.ZombieProcess(proc.pid)
    tree = _tree(proc, children_of)
    total = [0, 0, 0, 0, 0, 0]   # rss, vms, read, write, fds, threads
    counted, cpu_seconds = 0, 0.0
    for member in tree:
        figures = _read_member(member, strict=member is proc)
        if figures is None:
            continue
        counted += 1
        cpu_seconds += figures[0]
        total = [a + b for a, b in zip(total, figures[1:])]
    now = time.monotonic()
    elapsed = now - getattr(proc, "cpu_at", now)
    cpu = max(0.0, (cpu_seconds - getattr(proc, "cpu_seconds", cpu_seconds)) / elapsed * 100) \
        if elapsed > 0 else 0.0
    proc.cpu_seconds, proc.cpu_at = cpu_seconds, now
    rss, vms, read, write, fds, threads = total
    return DataPoint(now_ms, cpu, rss, vms, read, write, _clamp_i32(fds), _clamp_i32(threads),
                     min(counted, 2**15 - 1))


def _read_member(proc: psutil.Process, strict: bool) -> Optional[tuple]:
    """(cpu seconds, rss, vms, read, write, fds, threads) of one process; None for a
    descendant gone meanwhile (the leader's errors propagate when strict)."""
    try:
        with proc.oneshot():
            mem = proc.memory_info()
            threads = proc.num_threads()
            cpu_seconds = _cpu_seconds(proc)
            try:
                io = proc.io_counters()
                read, write = io.read_bytes, io.write_bytes
            except (psutil.AccessDenied, AttributeError, NotImplementedError):
                read = write = 0  # another user's process, or no io counters on this OS
            try:
                fds = proc.num_fds()
            except (psutil.AccessDenied, AttributeError):
                fds = 0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        if strict:
            raise
        return None
    return cpu_seconds, mem.rss, mem.vms, read, write, fds, threads


class Sampler:
    """Samples watched agents' processes into per-agent rings.

    ``watch``/``unwatch`` follow pids; a ring outlives its pid, so an agent's
    history spans its restarts until ``forget``.
    """

    def __init__(self, interval: float = 10.0, horizon: float = HORIZON_SECONDS) -> None:
        if interval < MIN_INTERVAL_SECONDS:
            raise InvalidArgument(f"metrics interval must be >= {MIN_INTERVAL_SECONDS}s, "
                                  f"got {interval}")
        self.interval = interval                       # seconds between sweeps
        self._capacity = ring_capacity(interval, horizon)
        self._lock = threading.Lock()                  # guards _rings and _procs
        self._rings: dict[str, Ring] = {}              # agent id -> history
        self._procs: dict[str, TreeProcess] = {}       # agent id -> watched leader process
        # Called with (agent id, pid, whole-tree sample) after each sweep, outside the
        # lock, in this thread: the resource limits' check (fleet.daemon.health).
        self.on_sample: Optional[Callable[[str, int, DataPoint], None]] = None
        # The first sweep runs at once, then one every interval.
        self._periodic = Periodic("fleet-metrics", interval, lambda: self.sample_once(),
                                  first_delay=0.0)

    def watch(self, agent_id: str, pid: int) -> None:
        """Start sampling ``pid`` for ``agent_id`` (replacing any previous pid)."""
        proc = _new_process(agent_id, pid)  # psutil before taking the lock
        with self._lock:
            if agent_id not in self._rings:
                self._rings[agent_id] = Ring(self._capacity)
            if proc is None:
                self._procs.pop(agent_id, None)
            else:
                self._procs[agent_id] = proc

    def unwatch(self, agent_id: str) -> None:
        """Stop sampling ``agent_id`` (its process is gone); its history stays."""
        with self._lock:
            self._procs.pop(agent_id, None)

    def forget(self, agent_id: str) -> None:
        """Drop ``agent_id`` and its history (the agent left the config)."""
        with self._lock:
            self._procs.pop(agent_id, None)
            self._rings.pop(agent_id, None)

    def points(self, agent_id: str, duration_seconds: float,
               now_ms: int | None = None) -> list[DataPoint]:
        """Samples of the last ``duration_seconds`` before ``now_ms``, oldest first.

        An agent never watched gives [] like one without samples: whether the agent
        exists is the supervisor's question.
        """
        if now_ms is None:
            now_ms = _now_ms()
        cutoff = now_ms - int(duration_seconds * 1000)
        with self._lock:
            ring = self._rings.get(agent_id)
            return ring.since(cutoff) if ring is not None else []

    def memory_bytes(self) -> int:
        """Bytes of sample data held by all rings."""
        with self._lock:
            return sum(ring.nbytes for ring in self._rings.values())

    def sample_once(self, now_ms: int | None = None) -> int:
        """Sample every watched process once; return how many samples were stored."""
        if now_ms is None:
            now_ms = _now_ms()
        with self._lock:
            watched = list(self._procs.items())
        samples = []
        children_of = children_map() if watched else {}
        for agent_id, proc in watched:  # psutil outside the lock
            point = self._sample(agent_id, proc, now_ms, children_of)
            if point is not None:
                samples.append((agent_id, proc, point))
        stored = 0
        with self._lock:
            for agent_id, proc, point in samples:
                # Skip a sample whose agent was unwatched or re-pointed meanwhile.
                if self._procs.get(agent_id) is proc:
                    self._rings[agent_id].append(point)
                    stored += 1
        hook = self.on_sample
        for agent_id, proc, point in samples if hook is not None else ():
            try:
                hook(agent_id, proc.pid, point)
            except Exception:  # noqa: BLE001 - a limit check's failure must not stop sampling
                log.exception("agent %s: limit check failed", agent_id)
        return stored

    def _sample(self, agent_id: str, proc: TreeProcess, now_ms: int,
                children_of: Optional[dict[int, list[int]]] = None) -> DataPoint | None:
        """One agent's tree sample, or None if its leader is gone (then stop watching it)."""
        try:
            return _read_process(proc, now_ms, children_of)
        except (psutil.NoSuchProcess, psutil.ZombieProcess) as exc:
            # ZombieProcess subclasses NoSuchProcess: the pid is dead either way.
            log.debug("agent %s pid %d: gone (%s); not sampling it", agent_id, proc.pid, exc)
            with self._lock:
                if self._procs.get(agent_id) is proc:
                    del self._procs[agent_id]
        except psutil.AccessDenied:
            log.warning("agent %s pid %d: access denied while sampling", agent_id, proc.pid)
        return None

    def start(self) -> None:
        """Start the sampling thread; a second call while running does nothing."""
        self._periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampling thread at once; safe to call twice or before start."""
        self._periodic.stop(timeout)


def _new_process(agent_id: str, pid: int) -> TreeProcess | None:
    """A TreeProcess for ``pid`` with its tree's cpu baseline set, or None if gone."""
    try:
        proc = TreeProcess(pid)
        proc.prime()
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
        log.warning("agent %s pid %d: cannot watch (%s)", agent_id, pid, exc)
        return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
