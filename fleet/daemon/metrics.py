"""Resource samples of running agents, kept in fixed-size rings.

One thread ``fleet-metrics`` samples every watched agent each ``interval`` seconds
and appends the figures to that agent's ``Ring``. A sample is of the agent's whole
process tree (the agent and its descendants: shell wrappers and workers count),
summed, with the number of processes. It reads /proc/<pid>/stat, /proc/<pid>/io,
/proc/<pid>/fd and the tree's /proc/<pid>/task/<tid>/children directly: the same
figures psutil gives, at a tenth of its cost (50 agents: ~2 ms a sweep instead of
~20 ms, which at a 10 s interval was most of an idle daemon's CPU). A ring is
preallocated: a column of numbers per figure (``array.array``), not a list of
objects, so a sample costs 54 bytes and 50 agents hold an hour at 10 s in
50 * 362 * 54 B = 0.93 MiB.
"""

from __future__ import annotations

import array
import errno
import logging
import math
import os
import threading
import time
from typing import Callable, NamedTuple, Optional

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


class ProcessGone(Exception):
    """The watched process exited (a zombie counts) or its pid now names another."""


class ProcessDenied(Exception):
    """The OS refuses the process's core figures."""


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Watched:
    """One watched agent: its leader's pid and start time (to tell a reused pid
    apart), and its tree's CPU reading that the next sample is measured from."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        fields = _stat_fields(pid)
        self.start_ticks = fields[19]              # field 22: starttime, clock ticks
        self.cpu_ticks = sum(_cpu_ticks(f) for _, f in _tree_stats(pid, fields))
        self.read_at = time.monotonic()


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat fields after the command name; index 0 is field 3 (state).

    ProcessGone if there is no such process, ProcessDenied if it may not be read.
    """
    try:
        data = _read_file(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    except PermissionError as exc:
        raise ProcessDenied(pid) from exc
    if not data:
        raise ProcessGone(pid)
    return data[data.rindex(b")") + 2:].split()  # the name may hold spaces and ')'


def _cpu_ticks(fields: list[bytes]) -> int:
    """utime + stime + cutime + cstime: a process's CPU and that of the children it
    reaped, so a tree's total only grows while its members reap each other."""
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


def _children(pid: int) -> list[int]:
    """The pids of a process's children (every thread's), [] if it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        return [int(c) for tid in tids
                for c in _read_file(f"/proc/{pid}/task/{tid}/children").split()]
    except OSError:
        return []


def _tree_stats(pid: int, leader: list[bytes]) -> list[tuple[int, list[bytes]]]:
    """(pid, stat fields) of the leader (given) and of each live descendant."""
    stats, pending = [(pid, leader)], _children(pid)
    while pending:
        child = pending.pop()
        try:
            fields = _stat_fields(child)
        except (ProcessGone, ProcessDenied):
            continue   # gone meanwhile, or not ours to read: left out
        if fields[0] != b"Z":
            stats.append((child, fields))
        pending.extend(_children(child))
    return stats


def _io_bytes(pid: int) -> tuple[int, int]:
    """(read_bytes, write_bytes) from /proc/<pid>/io; (0, 0) where the OS refuses."""
    try:
        data = _read_file(f"/proc/{pid}/io")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH):
            raise ProcessGone(pid) from exc
        return 0, 0   # another user's process: no io figures
    figures = dict(line.split(b": ") for line in data.splitlines() if b": " in line)
    return int(figures.get(b"read_bytes", 0)), int(figures.get(b"write_bytes", 0))


def _open_fds(pid: int) -> int:
    """Open file descriptors; 0 where the OS refuses."""
    path = f"/proc/{pid}/fd"
    try:
        count = os.stat(path).st_size   # the count itself since Linux 6.2
        return count if count > 0 else len(os.listdir(path))
    except OSError:
        return 0


def _read_process(proc: Watched, now_ms: int) -> DataPoint:
    """Sample an agent's whole process tree: the figures of the leader and its
    descendants summed, cpu since the previous sample, and the process count.
    ProcessGone and ProcessDenied of the leader's core figures propagate; a
    descendant gone meanwhile is left out; optional figures refused count as 0."""
    leader = _stat_fields(proc.pid)
    if leader[0] == b"Z" or leader[19] != proc.start_ticks:  # exited, or pid reused
        raise ProcessGone(proc.pid)
    tree = _tree_stats(proc.pid, leader)
    now = time.monotonic()
    ticks = sum(_cpu_ticks(fields) for _, fields in tree)
    elapsed = now - proc.read_at
    cpu = 100.0 * (ticks - proc.cpu_ticks) / _TICKS / elapsed if elapsed > 0 else 0.0
    proc.cpu_ticks, proc.read_at = ticks, now
    rss = vms = read = write = fds = threads = 0
    for pid, fields in tree:
        try:
            r, w = _io_bytes(pid)
        except ProcessGone:
            if pid == proc.pid:
                raise
            r = w = 0   # a descendant gone meanwhile
        rss, vms = rss + int(fields[21]) * _PAGE, vms + int(fields[20])
        read, write, threads = read + r, write + w, threads + int(fields[17])
        fds += _open_fds(pid)
    return DataPoint(now_ms, max(cpu, 0.0), rss, vms, read, write, _clamp_i32(fds),
                     _clamp_i32(threads), min(len(tree), 2**15 - 1))


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
        self._procs: dict[str, Watched] = {}           # agent id -> watched leader process
        # Called with (agent id, pid, whole-tree sample) after each sweep, outside the
        # lock, in this thread: the resource limits' check (fleet.daemon.health).
        self.on_sample: Optional[Callable[[str, int, DataPoint], None]] = None
        # The first sweep runs at once, then one every interval.
        self._periodic = Periodic("fleet-metrics", interval, lambda: self.sample_once(),
                                  first_delay=0.0)

    def watch(self, agent_id: str, pid: int) -> None:
        """Start sampling ``pid`` for ``agent_id`` (replacing any previous pid)."""
        proc = _new_process(agent_id, pid)  # /proc before taking the lock
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
        for agent_id, proc in watched:  # /proc outside the lock
            point = self._sample(agent_id, proc, now_ms)
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

    def _sample(self, agent_id: str, proc: Watched, now_ms: int) -> DataPoint | None:
        """One process's sample, or None if it is gone (then stop watching that pid)."""
        try:
            return _read_process(proc, now_ms)
        except ProcessGone:
            log.debug("agent %s pid %d: gone; not sampling it", agent_id, proc.pid)
            with self._lock:
                if self._procs.get(agent_id) is proc:
                    del self._procs[agent_id]
        except ProcessDenied:
            log.warning("agent %s pid %d: access denied while sampling", agent_id, proc.pid)
        return None

    def start(self) -> None:
        """Start the sampling thread; a second call while running does nothing."""
        self._periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampling thread at once; safe to call twice or before start."""
        self._periodic.stop(timeout)


def _new_process(agent_id: str, pid: int) -> Watched | None:
    """A Watched for ``pid`` with its CPU reading taken, or None if it is gone."""
    try:
        return Watched(pid)
    except (ProcessGone, ProcessDenied, IndexError, ValueError) as exc:
        log.warning("agent %s pid %d: cannot watch (%s)", agent_id, pid, type(exc).__name__)
        return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
