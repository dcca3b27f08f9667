"""What one resource sample of an agent is, and the ring that stores many.

A ``DataPoint`` is one sample of an agent's process tree (fleet/daemon/proctree.py
reads it, fleet/daemon/metrics.py keeps it). A ``Ring`` is preallocated: a column
of numbers per figure (``array.array``), not a list of objects, so a sample costs
64 bytes, and the oldest is overwritten once it is full.
"""

from __future__ import annotations

import array
import math
from typing import NamedTuple

from fleet.errors import InvalidArgument

HORIZON_SECONDS = 3600      # every ring holds at least this much history
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
COLUMNS = ("q", "f", "q", "q", "q", "q", "i", "i", "i", "f", "f")
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
                           for code in COLUMNS)
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
        if [c.typecode for c in columns] != list(COLUMNS):
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
