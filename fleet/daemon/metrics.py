"""Resource samples of running agents, kept in fixed-size rings.

One thread ``fleet-metrics`` samples every watched agent each ``interval`` seconds,
appends the figures to that agent's ``Ring`` and folds them into its ``MinuteRing``
(fleet/daemon/rollups.py). A sample is of the agent's whole process tree (the agent
and its descendants: shell wrappers and workers count), summed, with the number of
processes. It reads /proc/<pid>/stat, /proc/<pid>/io, /proc/<pid>/fd and the tree's
/proc/<pid>/task/<tid>/children directly: the same figures psutil gives, at a tenth
of its cost (50 agents: ~2 ms a sweep instead of ~20 ms, which at a 10 s interval
was most of an idle daemon's CPU). A ring is preallocated: a column of numbers per
figure (``array.array``), not a list of objects, so a sample costs 64 bytes and 50
agents hold an hour at 10 s in 50 * 362 * 64 B = 1.10 MiB, plus 1.85 MiB for a day
of minutes. With a history directory the rings are saved there
(fleet/daemon/history.py) every ``save_interval`` and at stop, and restored at
start, so history outlives the daemon.
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

from fleet.daemon import history
from fleet.daemon.periodic import Periodic
from fleet.daemon.rollups import MINUTE_COLUMNS, MinuteRing
from fleet.errors import InvalidArgument

log = logging.getLogger(__name__)

HORIZON_SECONDS = 3600      # every ring holds at least this much history
MIN_INTERVAL_SECONDS = 1.0
_SPARE_SLOTS = 2            # a late sample must not push the oldest of the hour out
SAVE_INTERVAL_SECONDS = 300  # history is written this often, and at stop


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
    process_count: int = 1          # processes in the agent's tree summed into this point
    disk_read_rate: float = 0.0     # bytes/s since the previous sample of the same process
    disk_write_rate: float = 0.0
    # Filled when a point is read out of a ring: a sample's own cpu and rss, or a
    # minute's maxima, and the seconds one point stands for.
    cpu_max: float = 0.0
    memory_rss_max: int = 0
    resolution_seconds: float = 0.0


# Column type codes of a stored sample, the first fields of DataPoint in order.
# cpu and the rates are float32 and the counts int32 to keep a sample at 64 bytes;
# float32 keeps about 7 significant digits: cpu is rounded to 2 decimals, rates to 1.
_COLUMNS = ("q", "f", "q", "q", "q", "q", "i", "i", "i", "f", "f")
_CPU_DECIMALS = 2
_RATE_DECIMALS = 1


def ring_capacity(interval: float, horizon: float = HORIZON_SECONDS) -> int:
    """Slots needed to hold ``horizon`` seconds of samples taken every ``interval``."""
    return math.ceil(horizon / interval) + _SPARE_SLOTS


class Ring:
    """A preallocated ring of DataPoints stored column-wise; the oldest is overwritten.

    Not thread-safe: the Sampler guards its rings with its lock.
    """

    def __init__(self, capacity: int, resolution: float = 0.0) -> None:
        if capacity < 1:
            raise InvalidArgument(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.resolution = resolution   # seconds between samples, told by each point
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
        """Store ``point`` (its stored fields), overwriting the oldest sample once full."""
        i = self._next
        for col, value in zip(self._cols, point):  # zip stops at the stored fields
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
        ts, cpu, rss, vms, read, write, fds, threads, procs, read_rate, write_rate = \
            (col[i] for col in self._cols)
        cpu = round(cpu, _CPU_DECIMALS)
        return DataPoint(ts, cpu, rss, vms, read, write, fds, threads, procs,
                         round(read_rate, _RATE_DECIMALS), round(write_rate, _RATE_DECIMALS),
                         cpu_max=cpu, memory_rss_max=rss, resolution_seconds=self.resolution)

    def export(self) -> list[array.array]:
        """Copies of the columns holding the samples, oldest first (for saving)."""
        start = (self._next - self._count) % self.capacity
        end = start + self._count
        if end <= self.capacity:
            return [col[start:end] for col in self._cols]
        return [col[start:] + col[:end - self.capacity] for col in self._cols]

    def extend(self, columns: list[array.array]) -> None:
        """Append saved samples (columns as export() gives them), oldest first."""
        if [c.typecode for c in columns] != list(_COLUMNS):
            raise ValueError("sample columns do not match this ring")
        if self._count:
            for row in zip(*columns):
                self.append(row)
            return
        n = len(columns[0])
        keep = min(n, self.capacity)   # an empty ring (a restore) takes the newest at once
        for mine, saved in zip(self._cols, columns):
            mine[:keep] = saved[n - keep:]
        self._next, self._count = keep % self.capacity, keep


def _clamp_i32(n: int) -> int:
    return min(n, 2**31 - 1)


def with_rates(previous: DataPoint | None, point: DataPoint) -> DataPoint:
    """``point`` with its disk I/O as bytes/s since ``previous`` (a sample of the same
    process). Without one, or when time did not move forward, the rates are 0; a
    counter that went down (a child left the tree) counts as no I/O."""
    if previous is None or point.timestamp <= previous.timestamp:
        return point._replace(disk_read_rate=0.0, disk_write_rate=0.0)
    seconds = (point.timestamp - previous.timestamp) / 1000
    return point._replace(
        disk_read_rate=max(0, point.disk_read_bytes - previous.disk_read_bytes) / seconds,
        disk_write_rate=max(0, point.disk_write_bytes - previous.disk_write_bytes) / seconds)


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

    def __eq__(self, other: object) -> bool:
        """The same process: the same pid and start time (as psutil.Process compares)."""
        return (isinstance(other, Watched) and other.pid == self.pid
                and other.start_ticks == self.start_ticks)

    def __hash__(self) -> int:
        return hash((self.pid, self.start_ticks))


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


def _read_process(proc: Watched, now_ms: int) -> DataPoint | None:
    """Sample an agent's whole process tree: the figures of the leader and its
    descendants summed, cpu since the previous sample, and the process count.
    ProcessGone and ProcessDenied of the leader's core figures propagate; a
    descendant gone meanwhile is left out; optional figures refused count as 0.
    None while the leader has no memory mapped (caught inside an exec, or
    exiting): such a reading is no sample of the agent, and the next one will be."""
    leader = _stat_fields(proc.pid)
    if leader[0] == b"Z" or leader[19] != proc.start_ticks:  # exited, or pid reused
        raise ProcessGone(proc.pid)
    if leader[21] == b"0":
        return None
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
            return _read_process(proc, now_ms)
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
            saved = self._files.load(agent_id, _COLUMNS, MINUTE_COLUMNS)
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
