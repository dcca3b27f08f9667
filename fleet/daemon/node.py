"""Samples of the daemon's machine: cpu, load, memory, swap, disks, disk and network I/O.

`NodeSampler.sample()` runs on the agents' sampling thread (`fleet-metrics`,
fleet/daemon/metrics.py) each sweep. It reads /proc/stat, /proc/loadavg,
/proc/meminfo, /proc/mounts (then os.statvfs of each real mount), /proc/diskstats
and /proc/net/dev directly, as metrics.py reads /proc: no psutil on this path,
whose import and objects would cost an idle daemon more than the reading itself.
Counters (cpu ticks, disk sectors, network bytes) become percent and bytes/s since
the previous sample. Samples wait in a bounded buffer until the manager has them
(fleet/daemon/syncer.py sends them); when it is away for long the oldest go first.

The parsers are pure functions of the files' text, so tests feed them samples.
"""
from __future__ import annotations

import array
import logging
import os
import threading
import time
from typing import NamedTuple, Optional

log = logging.getLogger(__name__)

MAX_UNSENT = 720            # samples kept for the manager: 2 h at 10 s, 12 min at 1 s
DISKS_REFRESH_SECONDS = 300.0   # how often the list of whole disks is read again
SECTOR = 512                # /proc/diskstats counts 512-byte sectors whatever the disk
# Filesystems that hold no disk space of their own (or only RAM, or a read-only image).
PSEUDO_FS = frozenset((
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "proc", "pstore",
    "ramfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs",
    "tracefs", "fuse.gvfsd-fuse", "fuse.portal", "fuse.lxcfs", "nfsd", "iso9660"))
# Network filesystems are left out too: statvfs of a hung server would block the
# sampling thread, and with it every agent's samples and limits.
NETWORK_FS = frozenset(("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs",
                        "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "afs"))
SKIPPED_FS = PSEUDO_FS | NETWORK_FS
LAYERED_FS = frozenset(("overlay", "aufs"))   # counted only as the root (a container's)
MAX_DISKS = 64              # mounts in a sample (the manager refuses more)
MAX_MOUNT = 1024            # characters of a mount point (the manager refuses longer)
VIRTUAL_DISKS = ("loop", "ram", "zram", "dm-", "md", "nbd", "sr")


class Disk(NamedTuple):
    mount: str
    used: int       # bytes
    total: int


class NodeSample(NamedTuple):
    """One sample of the machine; field names follow the wire's NodeMetricsSample."""

    time: int                   # Unix ms
    cpu: float                  # percent of the whole machine, 0..100
    load1: float
    load5: float
    load15: float
    memory_used: int            # bytes: MemTotal - MemAvailable
    memory_total: int
    swap_used: int
    swap_total: int
    disk_used: int              # summed over `disks`
    disk_total: int
    disks: tuple                # Disk per real mount, one per device
    disk_read_rate: float       # bytes/s, whole disks
    disk_write_rate: float
    net_rx_rate: float          # bytes/s, every interface but lo
    net_tx_rate: float


# ---- parsers: text of a /proc file in, figures out ----

def parse_cpu(text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine from /proc/stat's `cpu` line.

    Idle time is idle + iowait; guest time is already inside user and nice."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(f) for f in line.split()[1:9]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return sum(ticks) - idle, sum(ticks)
    raise ValueError("no cpu line in /proc/stat")


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages from /proc/loadavg."""
    one, five, fifteen = text.split()[:3]
    return float(one), float(five), float(fifteen)


_MEMINFO_KEYS = frozenset(("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached",
                           "SwapTotal", "SwapFree"))


def parse_meminfo(text: str) -> tuple[int, int, int, int]:
    """(memory used, memory total, swap used, swap total) in bytes from /proc/meminfo.

    Used is MemTotal - MemAvailable (what programs cannot get back without
    swapping); a kernel before 3.14 has no MemAvailable: free + buffers + cached."""
    kib = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in _MEMINFO_KEYS:
            kib[name] = int(rest.split()[0])
    total = kib.get("MemTotal", 0)
    available = kib.get("MemAvailable")
    if available is None:
        available = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
    swap_total = kib.get("SwapTotal", 0)
    swap_used = swap_total - kib.get("SwapFree", swap_total)
    return (max(0, total - available) * 1024, total * 1024, max(0, swap_used) * 1024,
            swap_total * 1024)


def _unescape(field: str) -> str:
    r"""/proc/mounts writes space, tab, newline and backslash as \040, \011, \012, \134."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(device, mount point) of each real filesystem in /proc/mounts, in its order:
    pseudo filesystems (proc, tmpfs, cgroup, squashfs images...), network ones, and
    overlays but a container's root, left out."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] in SKIPPED_FS:
            continue
        mount = _unescape(fields[1])
        # A container's root is an overlay; on a host, each container's overlay
        # would count the disk beneath it again.
        if fields[2] in LAYERED_FS and mount != "/":
            continue
        found.append((_unescape(fields[0]), mount))
    return found


def parse_diskstats(text: str, disks: frozenset[str]) -> tuple[int, int]:
    """(bytes read, bytes written) since boot, summed over the whole disks named
    in `disks` (a partition's I/O is already its disk's)."""
    read = written = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[2] in disks:
            read += int(fields[5]) * SECTOR
            written += int(fields[9]) * SECTOR
    return read, written


def parse_net_dev(text: str) -> tuple[int, int]:
    """(bytes received, bytes sent) since boot over every interface but lo."""
    rx = tx = 0
    for line in text.splitlines()[2:]:   # two header lines
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and name.strip() != "lo" and len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def whole_disks(sys_block: str = "/sys/block") -> frozenset[str]:
    """The kernel's names of the machine's whole disks: entries of /sys/block backed
    by a device (loop, ram, device-mapper and md are not; their I/O is a disk's)."""
    try:
        names = os.listdir(sys_block)
    except OSError:
        return frozenset()
    backed = frozenset(n for n in names if os.path.exists(f"{sys_block}/{n}/device"))
    return backed or frozenset(n for n in names if not n.startswith(VIRTUAL_DISKS))


def disk_usage(mounts: list[tuple[str, str]]) -> tuple[Disk, ...]:
    """Used and total bytes of each mount, one per device (a bind mount or a second
    mount of the same filesystem counts once, under its shortest mount point); at
    most MAX_DISKS, the shortest mount points first."""
    seen, disks = set(), []
    for device, mount in sorted(mounts, key=lambda m: (len(m[1]), m[1])):
        if len(disks) == MAX_DISKS or len(mount) > MAX_MOUNT:
            break
        try:
            st_dev = os.stat(mount).st_dev
            fs = os.statvfs(mount)
        except OSError:
            continue   # gone, or not ours to look at
        if fs.f_blocks == 0 or st_dev in seen or device in seen:
            continue
        seen.update((st_dev, device))
        total = fs.f_blocks * fs.f_frsize
        disks.append(Disk(mount, total - fs.f_bfree * fs.f_frsize, total))
    return tuple(disks)


def _read(path: str) -> str:
    """A whole /proc file as text: os.read in a loop, a third of open().read()'s cost."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


class _Counters(NamedTuple):
    """The machine's cumulative counters at one moment."""

    at: float          # time.monotonic()
    cpu_busy: int
    cpu_total: int
    disk_read: int
    disk_write: int
    net_rx: int
    net_tx: int


def _rate(new: int, old: int, seconds: float) -> float:
    """Bytes/s between two readings of a counter; a counter that went back (a
    device removed, a wrap) counts as nothing."""
    return max(0, new - old) / seconds if seconds > 0 else 0.0


_NUMBERS = tuple(f for f in NodeSample._fields if f != "disks")   # the ring's columns
_DISKS_AT = NodeSample._fields.index("disks")
_INTS = frozenset(("time", "memory_used", "memory_total", "swap_used", "swap_total",
                   "disk_used", "disk_total"))


class SampleRing:
    """The unsent samples, numbered by seq, in one preallocated array of doubles
    (15 a sample: 120 bytes, where a NodeSample object costs ~800); once full the
    oldest is overwritten. Disks are not kept: only the latest sample's matter.
    Not thread-safe: NodeSampler guards it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        width = len(_NUMBERS)
        self._values = array.array("d", bytes(8 * width * capacity))
        self._next = 1          # seq of the next sample
        self._count = 0         # samples held: seqs _next - _count .. _next - 1

    def __len__(self) -> int:
        return self._count

    def append(self, sample: NodeSample) -> int:
        """Store the sample's figures; its seq."""
        width, seq = len(_NUMBERS), self._next
        at = (seq % self.capacity) * width
        self._values[at:at + width] = array.array(
            "d", (v for i, v in enumerate(sample) if i != _DISKS_AT))
        self._next += 1
        self._count = min(self._count + 1, self.capacity)
        return seq

    def oldest(self, limit: int) -> list[tuple[int, NodeSample]]:
        """Up to `limit` (seq, sample) from the oldest, disks empty."""
        width, found = len(_NUMBERS), []
        first = self._next - self._count
        for seq in range(first, min(self._next, first + limit)):
            at = (seq % self.capacity) * width
            values = dict(zip(_NUMBERS, self._values[at:at + width]))
            for name in _INTS:
                values[name] = int(values[name])
            found.append((seq, NodeSample(disks=(), **values)))
        return found

    def drop_through(self, seq: int) -> None:
        """Forget every sample up to `seq`."""
        self._count = max(0, min(self._count, self._next - 1 - seq))


class NodeSampler:
    """Samples the machine and keeps the samples not yet sent, at most `max_unsent`.

    `proc` and `sys_block` point elsewhere in tests. `sample()` runs on the
    sampling thread; `unsent()`/`acknowledge()` on the syncer's; `latest` anywhere.
    """

    def __init__(self, proc: str = "/proc", sys_block: str = "/sys/block",
                 max_unsent: int = MAX_UNSENT) -> None:
        self._proc = proc
        self._sys_block = sys_block
        self._lock = threading.Lock()      # guards _unsent and latest
        self._unsent = SampleRing(max_unsent)
        self.latest: Optional[NodeSample] = None
        self._previous: Optional[_Counters] = None   # the reading rates are measured from
        self._disks: frozenset[str] = frozenset()     # whole disks, read again now and then
        self._disks_at = -DISKS_REFRESH_SECONDS       # time.monotonic() of that reading
        self._warned = False

    def _counters(self) -> _Counters:
        now = time.monotonic()
        if now - self._disks_at >= DISKS_REFRESH_SECONDS:
            self._disks, self._disks_at = whole_disks(self._sys_block), now
        busy, total = parse_cpu(_read(f"{self._proc}/stat"))
        read, write = parse_diskstats(_read(f"{self._proc}/diskstats"), self._disks)
        rx, tx = parse_net_dev(_read(f"{self._proc}/net/dev"))
        return _Counters(now, busy, total, read, write, rx, tx)

    def sample(self, now_ms: Optional[int] = None) -> Optional[NodeSample]:
        """Read the machine once and buffer the sample; None for the very first call
        (it only takes the counters that rates are measured from) or when /proc
        cannot be read (logged once)."""
        try:
            point = self._read_sample(now_ms if now_ms is not None else time.time_ns() // 10**6)
        except (OSError, ValueError, IndexError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot sample this node's resources: %s", exc)
            return None
        if point is not None:
            with self._lock:
                self._unsent.append(point)
                self.latest = point
        return point

    def _read_sample(self, now_ms: int) -> Optional[NodeSample]:
        new, old = self._counters(), self._previous
        self._previous = new
        if old is None:
            return None
        seconds = new.at - old.at
        ticks = new.cpu_total - old.cpu_total
        cpu = 100.0 * max(0, new.cpu_busy - old.cpu_busy) / ticks if ticks > 0 else 0.0
        load = parse_loadavg(_read(f"{self._proc}/loadavg"))
        memory = parse_meminfo(_read(f"{self._proc}/meminfo"))
        disks = disk_usage(parse_mounts(_read(f"{self._proc}/mounts")))
        return NodeSample(
            now_ms, round(min(cpu, 100.0), 2), *load, *memory,
            sum(d.used for d in disks), sum(d.total for d in disks), disks,
            round(_rate(new.disk_read, old.disk_read, seconds), 1),
            round(_rate(new.disk_write, old.disk_write, seconds), 1),
            round(_rate(new.net_rx, old.net_rx, seconds), 1),
            round(_rate(new.net_tx, old.net_tx, seconds), 1))

    def unsent(self, limit: int) -> list[tuple[int, NodeSample]]:
        """The oldest `limit` samples not yet acknowledged, as (seq, sample); only the
        last carries disks: the latest sample's (the manager keeps only a latest's)."""
        with self._lock:
            found = self._unsent.oldest(limit)
            if found:   # the newest of a batch carries the latest disks (the manager's latest)
                seq, sample = found[-1]
                found[-1] = (seq, sample._replace(disks=self.latest.disks))
            return found

    def acknowledge(self, seq: int) -> None:
        """The manager has every sample up to `seq`: forget them."""
        with self._lock:
            self._unsent.drop_through(seq)

    def unsent_count(self) -> int:
        """How many samples wait for the manager."""
        with self._lock:
            return len(self._unsent)
