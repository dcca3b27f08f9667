"""Tests of fleet.daemon.metrics: the Ring and the /proc Sampler."""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from fleet.daemon import proctree
from fleet.daemon.metrics import Sampler
from fleet.daemon.samples import DataPoint, Ring, ring_capacity
from fleet.errors import InvalidArgument
from tests.helpers import wait_for

MB = 1_000_000


def point(ts, n=0):
    return DataPoint(ts, 1.5, 100 + n, 200 + n, 300 + n, 400 + n, 5, 6)


def as_read(p, resolution=0.0):
    """``p`` as a ring gives it back: its own cpu and rss as the maxima, and its resolution."""
    return p._replace(cpu_max=p.cpu, memory_rss_max=p.memory_rss, resolution_seconds=resolution)


@pytest.fixture
def spawn():
    """Start real child processes, each leading its own group; kill each whole group
    (grandchildren too, whatever the test's outcome) and reap them after the test."""
    children = []

    def start(code):
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        children.append(child)
        wait_for(lambda: _has_run(child.pid))
        return child

    yield start
    for child in children:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait(timeout=10)


def _has_run(pid):
    """True once ``pid`` runs its new image (it has memory mapped) or has exited:
    right after exec a process has no page yet, and the sampler rightly skips it."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return fields[0] == b"Z" or int(fields[21]) > 0


def sample_until(sampler, agent_id, predicate, timeout=10.0):
    """Sample repeatedly until the newest point of ``agent_id`` satisfies ``predicate``."""
    newest = []

    def check():
        sampler.sample_once()
        pts = sampler.points(agent_id, 3600)
        newest[:] = pts[-1:]
        return bool(pts) and predicate(pts[-1])

    wait_for(check, timeout)
    return newest[0]


# ---------------------------------------------------------------- Ring

def test_ring_capacity_holds_an_hour():
    """The capacity covers an hour at the interval, plus spare slots."""
    assert ring_capacity(10) >= 361
    assert ring_capacity(1) >= 3601
    assert ring_capacity(7) >= 3600 / 7 + 1


def test_ring_keeps_order_before_wrapping():
    """since() returns samples oldest first."""
    ring = Ring(10)
    for ts in (1, 2, 3):
        ring.append(point(ts))
    assert [p.timestamp for p in ring.since(0)] == [1, 2, 3]
    assert len(ring) == 3


def test_ring_wrap_keeps_newest():
    """A full ring overwrites its oldest samples and keeps the newest."""
    ring = Ring(5)
    for ts in range(12):
        ring.append(point(ts, ts))
    got = ring.since(0)
    assert [p.timestamp for p in got] == [7, 8, 9, 10, 11]
    assert got[-1] == as_read(DataPoint(11, 1.5, 111, 211, 311, 411, 5, 6))
    assert len(ring) == 5


def test_ring_since_filters_by_time():
    """since(ts) keeps samples at or after ts."""
    ring = Ring(8)
    for ts in range(0, 100, 10):
        ring.append(point(ts))
    assert [p.timestamp for p in ring.since(65)] == [70, 80, 90]
    assert ring.since(1000) == []


def test_ring_is_column_arrays():
    """A ring stores numbers in preallocated arrays, not per-sample objects."""
    ring = Ring(100)
    before = ring.nbytes
    ring.append(point(1))
    assert ring.nbytes == before == 100 * 64
    assert all(type(col).__name__ == "array" for col in ring._cols)


def test_ring_preserves_large_values():
    """64-bit counters, fractional cpu and rates, and the process count survive storage."""
    ring = Ring(2, resolution=10.0)
    big = DataPoint(1_700_000_000_000, 250.25, 2**40, 2**45, 2**50, 2**51, 100_000, 3000,
                    process_count=7, disk_read_rate=1234.5, disk_write_rate=0.5)
    ring.append(big)
    assert ring.since(0) == [as_read(big, 10.0)]


def test_ring_rejects_zero_capacity():
    """A ring needs at least one slot."""
    with pytest.raises(InvalidArgument):
        Ring(0)


# ---------------------------------------------------------------- Sampler

def test_sampler_rejects_short_interval():
    """An interval under 1 s is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        Sampler(interval=0.5)


def test_memory_for_50_agents_is_within_budget():
    """50 agents at 10 s hold an hour of samples and a day of minutes in < 3 MiB
    (an hour alone held 0.9 MiB; the budget is 3 MiB more)."""
    sampler = Sampler(interval=10)
    for i in range(50):
        sampler.watch(f"a{i}", 2**22 + 12345)  # a pid that does not exist: ring only
    assert sampler.memory_bytes() < 3 * 1024 * 1024
    found = sampler._histories.values()
    assert all(h.samples.capacity * 10 >= 3600 and h.minutes.slots >= 1440 for h in found)


def test_real_child_is_sampled(spawn):
    """A real child holding 20 MB shows rss > 10 MB, threads >= 1, open files."""
    child = spawn("import time; x = bytearray(20_000_000); time.sleep(60)")
    sampler = Sampler(interval=10)
    sampler.watch("mem", child.pid)
    p = sample_until(sampler, "mem", lambda p: p.memory_rss > 10 * MB)
    assert p.threads >= 1
    assert p.memory_vms >= p.memory_rss
    assert p.open_files >= 3  # stdin, stdout, stderr
    assert p.disk_read_bytes >= 0 and p.disk_write_bytes >= 0
    assert abs(p.timestamp - time.time() * 1000) < 60_000


def test_cpu_is_percent_of_one_core(spawn):
    """A busy child shows cpu near 100 percent of one core."""
    child = spawn("while True: pass")
    sampler = Sampler(interval=1)
    sampler.watch("busy", child.pid)
    sample_until(sampler, "busy", lambda p: p.cpu > 50)


def test_vanished_pid_does_not_crash(spawn):
    """A pid that exits is skipped; its history stays and sampling goes on."""
    child = spawn("import time; time.sleep(60)")
    sampler = Sampler(interval=10)
    sampler.watch("gone", child.pid)
    sampler.watch("self", os.getpid())
    assert sampler.sample_once(now_ms=1000) == 2
    child.kill()
    child.wait(timeout=10)
    assert sampler.sample_once(now_ms=2000) == 1
    assert sampler.sample_once(now_ms=3000) == 1
    assert [p.timestamp for p in sampler.points("gone", 10, now_ms=3000)] == [1000]
    assert len(sampler.points("self", 10, now_ms=3000)) == 3


def test_zombie_is_not_sampled(spawn):
    """An exited but unreaped child (zombie) gives no sample."""
    child = spawn("pass")
    sampler = Sampler(interval=10)
    sampler.watch("z", child.pid)
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
    assert sampler.sample_once(now_ms=5) == 0
    assert sampler.points("z", 10, now_ms=5) == []


def test_watch_missing_pid_is_harmless():
    """Watching a pid that does not exist keeps a ring but samples nothing."""
    sampler = Sampler(interval=10)
    sampler.watch("ghost", 2**22 + 12345)
    assert sampler.sample_once() == 0
    assert sampler.points("ghost", 3600) == []


def test_points_filters_by_duration():
    """points(duration) returns the samples of the last `duration` seconds, oldest first."""
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    for t in range(0, 100_000, 10_000):
        sampler.sample_once(now_ms=t)
    got = sampler.points("me", 25, now_ms=90_000)
    assert [p.timestamp for p in got] == [70_000, 80_000, 90_000]
    assert len(sampler.points("me", 3600, now_ms=90_000)) == 10


def test_unknown_agent_gives_no_points():
    """An agent never watched gives an empty list (existence is the supervisor's call)."""
    assert Sampler(interval=10).points("nobody", 60) == []


def test_history_survives_restart_and_forget_drops_it(spawn):
    """unwatch keeps the ring, watch of a new pid appends to it, forget drops it."""
    first = spawn("import time; time.sleep(60)")
    second = spawn("import time; time.sleep(60)")
    sampler = Sampler(interval=10)
    sampler.watch("a", first.pid)
    sampler.sample_once(now_ms=1000)
    sampler.unwatch("a")
    assert sampler.sample_once(now_ms=2000) == 0
    sampler.watch("a", second.pid)
    sampler.sample_once(now_ms=3000)
    assert [p.timestamp for p in sampler.points("a", 60, now_ms=3000)] == [1000, 3000]
    sampler.forget("a")
    assert sampler.points("a", 60, now_ms=3000) == []
    assert sampler.sample_once(now_ms=4000) == 0


def test_proc_is_never_read_under_the_lock(monkeypatch):
    """Sampling runs outside the lock; an unwatch racing a sample discards the sample."""
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    real = proctree.read_tree

    def checked(proc, now_ms):
        assert not sampler._lock.locked()
        sampler.unwatch("me")  # the agent stops while we sample it
        return real(proc, now_ms)

    monkeypatch.setattr(proctree, "read_tree", checked)
    assert sampler.sample_once(now_ms=1) == 0
    assert sampler.points("me", 10, now_ms=1) == []


def test_a_leader_with_no_memory_mapped_is_no_sample(monkeypatch):
    """A reading taken inside an exec (or while exiting: rss 0, no memory mapped) is not
    stored as a zero sample; the agent stays watched and the next reading counts."""
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    real = proctree.stat_fields

    def mid_exec(pid):
        fields = list(real(pid))
        fields[21] = b"0"
        return fields

    monkeypatch.setattr(proctree, "stat_fields", mid_exec)
    assert sampler.sample_once(now_ms=1000) == 0
    monkeypatch.setattr(proctree, "stat_fields", real)
    assert sampler.sample_once(now_ms=2000) == 1
    assert [p.memory_rss > 0 for p in sampler.points("me", 10, now_ms=2000)] == [True]


def test_access_denied_optional_figures_are_zero(monkeypatch):
    """/proc/PID/io or /proc/PID/fd refused by the OS count as 0, the sample is kept."""
    real_read, real_stat = proctree.read_file, os.stat

    def read_file(path):
        if path.endswith("/io"):
            raise PermissionError(13, "denied", path)
        return real_read(path)

    def stat(path, *args, **kwargs):
        if str(path).endswith("/fd"):
            raise PermissionError(13, "denied", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(proctree, "read_file", read_file)
    monkeypatch.setattr(proctree.os, "stat", stat)
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    assert sampler.sample_once(now_ms=1) == 1
    p = sampler.points("me", 10, now_ms=1)[0]
    assert (p.disk_read_bytes, p.disk_write_bytes, p.open_files) == (0, 0, 0)
    assert p.memory_rss > 0


def test_figures_match_psutil(spawn, tmp_path):
    """The figures read from /proc are psutil's: rss, vms, threads, open files, io."""
    ready = tmp_path / "ready"   # touched once the child has allocated: its figures hold still
    child = spawn("import pathlib, time; x = bytearray(20_000_000); "
                  f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    wait_for(ready.exists)
    sampler = Sampler(interval=10)
    sampler.watch("c", child.pid)
    assert sampler.sample_once(now_ms=1) == 1
    got = sampler.points("c", 10, now_ms=1)[0]
    proc = psutil.Process(child.pid)
    mem, io = proc.memory_info(), proc.io_counters()
    assert abs(got.memory_rss - mem.rss) < MB and got.memory_vms == mem.vms
    assert (got.threads, got.open_files) == (proc.num_threads(), proc.num_fds())
    assert (got.disk_read_bytes, got.disk_write_bytes) == (io.read_bytes, io.write_bytes)


def test_reused_pid_is_not_sampled():
    """A pid whose start time changed since watch names another process: no sample."""
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    sampler._procs["me"].start_ticks = b"1"   # as if our pid had been reused
    assert sampler.sample_once(now_ms=1) == 0
    assert "me" not in sampler._procs


def test_thread_samples_and_stops_at_once():
    """The fleet-metrics thread samples at once; start/stop are idempotent, stop is prompt."""
    sampler = Sampler(interval=1)
    sampler.watch("me", os.getpid())
    sampler.start()
    sampler.start()
    try:
        assert [t.name for t in threading.enumerate()].count("fleet-metrics") == 1
        wait_for(lambda: len(sampler.points("me", 3600)) >= 2, timeout=5)
    finally:
        began = time.monotonic()
        sampler.stop()
        sampler.stop()
    assert time.monotonic() - began < 0.5
    assert "fleet-metrics" not in [t.name for t in threading.enumerate()]


def test_thread_survives_sweep_errors(monkeypatch):
    """An unexpected error in a sweep is logged and the thread keeps sampling."""
    sampler = Sampler(interval=1)
    calls = []
    real = sampler.sample_once

    def flaky(now_ms=None):
        calls.append(now_ms)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(now_ms)

    monkeypatch.setattr(sampler, "sample_once", flaky)
    sampler.start()
    try:
        wait_for(lambda: len(calls) >= 2, timeout=5)
    finally:
        sampler.stop()


def test_a_sample_sums_the_whole_process_tree(spawn):
    """The agent's descendants count: a wrapper whose grandchild holds 60 MB and burns
    CPU shows rss > 50 MB, cpu > 30 % and 3 processes, and the hook sees the sample."""
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import subprocess, sys; subprocess.run([sys.executable, \"-c\", "
            "\"x = bytearray(60_000_000)\\\\nwhile True: pass\"])'])")
    wrapper = spawn(code)
    sampler = Sampler(interval=10)
    seen = []
    sampler.on_sample = lambda agent_id, pid, point: seen.append((agent_id, pid, point))
    sampler.watch("tree", wrapper.pid)
    p = sample_until(sampler, "tree", lambda p: p.memory_rss > 50 * MB and p.cpu > 30
                     and p.process_count == 3)
    assert seen[-1][:2] == ("tree", wrapper.pid)
    hooked = seen[-1][2]   # the raw sample; the ring rounds cpu and adds rates and maxima
    assert (hooked.timestamp, hooked.memory_rss, hooked.process_count) == (
        p.timestamp, p.memory_rss, p.process_count)
    os.killpg(wrapper.pid, 9)
