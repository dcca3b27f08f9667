"""One-minute rollups of an agent's samples: 24 hours in a preallocated ring.

A ``MinuteRing`` has one slot per minute of the day (1440), stored column-wise
like the sampler's ``Ring``: a minute costs 27 bytes, so 50 agents hold 24 hours
in 50 * 1440 * 27 B = 1.85 MiB. To stay that small a minute keeps cpu in tenths of
a percent (up to 6553.5 %), and no memory_vms nor cumulative disk counters (a
minute's point carries 0 there; its disk I/O is in the rates). Slot ``m % 1440`` holds Unix minute ``m``; the
ring remembers its newest minute (``head``), so a slot needs no timestamp, and a
slot whose sample count is 0 is empty.

Each sample updates its minute's slot at once (running mean and max), so the ring
is always current: a save or a query never waits for a minute to close, and a
restored minute goes on accumulating where it stopped (its count seeds the mean).
"""
from __future__ import annotations

import array
import math

from fleet.errors import InvalidArgument

MINUTE_MS = 60_000
DAY_MINUTES = 1440
MINUTE_SECONDS = 60.0

# count, cpu mean, cpu max (tenths of a percent), rss mean, rss max, read rate, write
# rate (means), open files, threads, process count (maxima). float32 keeps byte
# figures to about 7 significant digits (a page-multiple rss exactly up to 64 GiB)
# in half of an int64.
MINUTE_COLUMNS = ("B", "H", "H", "f", "f", "f", "f", "H", "H", "H")
_COUNT, _CPU, _CPU_MAX, _RSS, _RSS_MAX, _READ, _WRITE, _FDS, _THREADS, _PROCS = range(10)
_MAX_COUNT, _MAX_SMALL = 255, 65535
_CPU_SCALE = 10   # stored cpu = percent * 10


class _Minute:
    """The running sums and maxima of the minute being filled."""

    __slots__ = ("minute", "n", "cpu", "cpu_max", "rss", "rss_max", "read", "write",
                 "fds", "threads", "procs")

    def __init__(self, minute: int) -> None:
        self.minute = minute      # Unix minute (timestamp // 60000)
        self.n = 0                # samples summed
        self.cpu = self.rss = self.read = self.write = 0.0              # sums
        self.cpu_max = self.rss_max = 0.0
        self.fds = self.threads = self.procs = 0                        # maxima

    def add(self, p) -> None:
        self.n += 1
        self.cpu += p.cpu
        self.rss += p.memory_rss
        self.read += p.disk_read_rate
        self.write += p.disk_write_rate
        self.cpu_max = max(self.cpu_max, p.cpu)
        self.rss_max = max(self.rss_max, p.memory_rss)
        self.fds = max(self.fds, p.open_files)
        self.threads = max(self.threads, p.threads)
        self.procs = max(self.procs, p.process_count)


class MinuteRing:
    """A day of one-minute means and maxima, preallocated; the oldest minute is overwritten.

    Not thread-safe: the Sampler guards it with its lock. ``add`` takes each
    sample's own timestamp, so tests drive it with explicit times.
    """

    def __init__(self, slots: int = DAY_MINUTES) -> None:
        if slots < 1:
            raise InvalidArgument(f"minute ring slots must be >= 1, got {slots}")
        self.slots = slots
        self._cols = tuple(array.array(code, bytes(array.array(code).itemsize * slots))
                           for code in MINUTE_COLUMNS)
        self.head: int | None = None          # newest Unix minute held; None while empty
        self._open: _Minute | None = None     # the minute samples are going into

    @property
    def nbytes(self) -> int:
        return sum(col.itemsize * len(col) for col in self._cols)

    def add(self, point) -> None:
        """Fold a sample (a samples.DataPoint) into the minute of its timestamp.

        A sample older than the ring (a wall clock stepped far back) is dropped.
        """
        minute = point.timestamp // MINUTE_MS
        if self._open is None or self._open.minute != minute:
            self._open = self._begin(minute)
            if self._open is None:
                return
        self._open.add(point)
        self._store(self._open)

    def _begin(self, minute: int) -> _Minute | None:
        """Start filling ``minute``: clear the slots skipped since the head, or go on
        from what the slot already holds (a restored or revisited minute)."""
        if self.head is None or minute > self.head:
            if self.head is not None:   # an empty ring is all zero counts already
                for m in range(max(self.head + 1, minute - self.slots + 1), minute + 1):
                    self._cols[_COUNT][m % self.slots] = 0
            self.head = minute
            return _Minute(minute)
        if minute <= self.head - self.slots:
            return None
        acc = _Minute(minute)
        i = minute % self.slots
        n = self._cols[_COUNT][i]
        if n:
            c = self._cols
            acc.n = n
            acc.cpu, acc.cpu_max = c[_CPU][i] / _CPU_SCALE * n, c[_CPU_MAX][i] / _CPU_SCALE
            acc.rss, acc.rss_max = c[_RSS][i] * n, c[_RSS_MAX][i]
            acc.read, acc.write = c[_READ][i] * n, c[_WRITE][i] * n
            acc.fds, acc.threads, acc.procs = c[_FDS][i], c[_THREADS][i], c[_PROCS][i]
        return acc

    def _store(self, acc: _Minute) -> None:
        i, n, c = acc.minute % self.slots, acc.n, self._cols
        c[_COUNT][i] = min(n, _MAX_COUNT)
        c[_CPU][i] = _tenths(acc.cpu / n)
        c[_CPU_MAX][i] = _tenths(acc.cpu_max)
        c[_RSS][i], c[_RSS_MAX][i] = acc.rss / n, acc.rss_max
        c[_READ][i], c[_WRITE][i] = acc.read / n, acc.write / n
        c[_FDS][i] = min(acc.fds, _MAX_SMALL)
        c[_THREADS][i] = min(acc.threads, _MAX_SMALL)
        c[_PROCS][i] = min(acc.procs, _MAX_SMALL)

    def points(self, since_ms: int, until_ms: int, make) -> list:
        """The minutes starting at or after ``since_ms`` and ending by ``until_ms``,
        oldest first, each built by ``make(**fields)`` (a DataPoint)."""
        if self.head is None:
            return []
        first = max(self.head - self.slots + 1, math.ceil(since_ms / MINUTE_MS))
        last = min(self.head, until_ms // MINUTE_MS - 1)
        out = []
        for m in range(first, last + 1):
            i = m % self.slots
            if self._cols[_COUNT][i]:
                out.append(make(**self._fields(m, i)))
        return out

    def _fields(self, minute: int, i: int) -> dict:
        c = self._cols
        return dict(
            timestamp=minute * MINUTE_MS, cpu=c[_CPU][i] / _CPU_SCALE,
            memory_rss=round(c[_RSS][i]), memory_vms=0,  # not kept: see the module's doc
            disk_read_bytes=0, disk_write_bytes=0,       # a counter has no mean: see the rates
            open_files=c[_FDS][i], threads=c[_THREADS][i], process_count=c[_PROCS][i],
            disk_read_rate=round(c[_READ][i], 1), disk_write_rate=round(c[_WRITE][i], 1),
            cpu_max=c[_CPU_MAX][i] / _CPU_SCALE, memory_rss_max=round(c[_RSS_MAX][i]),
            resolution_seconds=MINUTE_SECONDS)

    def export(self) -> tuple[int, list[array.array]]:
        """(head, copies of the columns in slot order) for saving; head -1 when empty."""
        return (-1 if self.head is None else self.head), [col[:] for col in self._cols]

    def restore(self, head: int, columns: list[array.array]) -> None:
        """Take back what export() gave; ValueError unless slots and layout match."""
        if [(c.typecode, len(c)) for c in columns] != [(c.typecode, self.slots) for c in self._cols]:
            raise ValueError("minute columns do not match this ring")
        for mine, saved in zip(self._cols, columns):
            mine[:] = saved
        self.head = None if head < 0 else head
        self._open = None


def _tenths(percent: float) -> int:
    return min(round(percent * _CPU_SCALE), _MAX_SMALL)
