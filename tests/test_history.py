"""Metrics history: one-minute rollups, disk I/O rates, and history kept across restarts."""
import logging
import os

import grpc
import pytest

from fleet.daemon import history, proctree, samples
from fleet.daemon.metrics import Sampler
from fleet.daemon.samples import DataPoint, with_rates
from fleet.daemon.rollups import MINUTE_COLUMNS, MINUTE_MS, MinuteRing
from fleet.v1 import fleet_pb2 as pb
from tests.daemon_harness import agent, running_daemon
from tests.helpers import wait_for

T0 = 1_700_000_040_000 // MINUTE_MS * MINUTE_MS   # a minute's start, Unix ms


def sample(ts, cpu=0.0, rss=0, read=0, write=0, fds=3, threads=1, procs=1,
           read_rate=0.0, write_rate=0.0):
    return DataPoint(ts, cpu, rss, 2 * rss, read, write, fds, threads, procs,
                     read_rate, write_rate)


def fed(readings):
    """A fake _read_process giving ``readings`` (cumulative read, write) in turn."""
    left = list(readings)

    def read(proc, now_ms):
        r, w = left.pop(0)
        return sample(now_ms, read=r, write=w)
    return read


# ---------------------------------------------------------------- rollups (pure)

def test_minute_holds_mean_and_max():
    """A minute's point is the mean and the max of its samples; counts are its maximum."""
    ring = MinuteRing()
    ring.add(sample(T0 + 0, cpu=10.0, rss=1000 * 4096, fds=3, read_rate=100.0))
    ring.add(sample(T0 + 20_000, cpu=50.0, rss=3000 * 4096, fds=9, threads=4, procs=3))
    ring.add(sample(T0 + 40_000, cpu=30.0, rss=2000 * 4096, read_rate=200.0, write_rate=30.0))
    ring.add(sample(T0 + 60_000, cpu=99.0, rss=1))  # the next minute
    [p] = ring.points(T0, T0 + MINUTE_MS, DataPoint)
    assert (p.timestamp, p.resolution_seconds) == (T0, 60.0)
    assert (p.cpu, p.cpu_max) == (30.0, 50.0)
    assert (p.memory_rss, p.memory_rss_max) == (2000 * 4096, 3000 * 4096)
    assert p.memory_vms == 0  # not kept per minute
    assert (p.disk_read_rate, p.disk_write_rate) == (100.0, 10.0)
    assert (p.open_files, p.threads, p.process_count) == (9, 4, 3)
    assert (p.disk_read_bytes, p.disk_write_bytes) == (0, 0)


def test_minute_points_end_by_until_and_skip_empty_minutes():
    """points() gives whole minutes from since to until, oldest first, none for empty minutes."""
    ring = MinuteRing()
    for minute in (0, 1, 3, 4):
        ring.add(sample(T0 + minute * MINUTE_MS + 5_000, cpu=minute))
    got = ring.points(T0, T0 + 4 * MINUTE_MS, DataPoint)
    assert [p.timestamp for p in got] == [T0, T0 + MINUTE_MS, T0 + 3 * MINUTE_MS]
    assert [p.cpu for p in ring.points(T0 + 1, T0 + 9 * MINUTE_MS, DataPoint)] == [1.0, 3.0, 4.0]


def test_minute_ring_keeps_a_day_and_overwrites_the_oldest():
    """A day later the oldest minutes are gone; a skipped stretch leaves no stale minute."""
    ring = MinuteRing(slots=1440)
    ring.add(sample(T0, cpu=1.0))
    ring.add(sample(T0 + 10 * MINUTE_MS, cpu=2.0))
    ring.add(sample(T0 + 1440 * MINUTE_MS, cpu=3.0))  # a day after the first
    got = ring.points(T0 - MINUTE_MS, T0 + 1441 * MINUTE_MS, DataPoint)
    assert [p.cpu for p in got] == [2.0, 3.0]
    ring.add(sample(T0 + 3000 * MINUTE_MS, cpu=4.0))  # more than a day without samples
    assert [p.cpu for p in ring.points(0, T0 + 4000 * MINUTE_MS, DataPoint)] == [4.0]


def test_minute_goes_on_after_restore():
    """A restored minute keeps accumulating: its mean counts the samples before the save."""
    ring = MinuteRing()
    ring.add(sample(T0, cpu=10.0))
    ring.add(sample(T0 + 10_000, cpu=20.0))
    again = MinuteRing()
    again.restore(*ring.export())
    again.add(sample(T0 + 20_000, cpu=60.0))
    [p] = again.points(T0, T0 + MINUTE_MS, DataPoint)
    assert (p.cpu, p.cpu_max) == (30.0, 60.0)


def test_sample_older_than_the_day_is_dropped():
    """A wall clock stepped back more than a day: the sample is dropped, not misfiled."""
    ring = MinuteRing(slots=10)
    ring.add(sample(T0 + 100 * MINUTE_MS, cpu=1.0))
    ring.add(sample(T0, cpu=9.0))
    assert [p.cpu for p in ring.points(0, T0 + 200 * MINUTE_MS, DataPoint)] == [1.0]


# ---------------------------------------------------------------- rates

def test_rates_are_bytes_per_second_between_samples():
    """Rates are the counters' growth over the seconds between two samples; none without a
    previous sample; a counter that went down counts as no I/O."""
    first = sample(10_000, read=1000, write=5000)
    assert with_rates(None, first)[9:11] == (0.0, 0.0)
    later = with_rates(first, sample(12_000, read=5000, write=5000))
    assert (later.disk_read_rate, later.disk_write_rate) == (2000.0, 0.0)
    shrunk = with_rates(first, sample(14_000, read=10, write=9000))
    assert (shrunk.disk_read_rate, shrunk.disk_write_rate) == (0.0, 1000.0)
    assert with_rates(first, sample(10_000, read=9999))[9] == 0.0  # no time passed


def test_sampler_rates_follow_the_watched_process(monkeypatch):
    """The sampler stores rates between its samples of one process, across a change
    published again for it; a new pid starts over."""
    monkeypatch.setattr(proctree, "read_tree",
                        fed([(0, 0), (10_000, 2_000), (30_000, 2_000), (50, 0)]))
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    for t in (0, 10_000):
        sampler.sample_once(now_ms=T0 + t)
    sampler.watch("me", os.getpid())  # STARTING -> RUNNING: the same process again
    sampler.sample_once(now_ms=T0 + 20_000)
    sampler.watch("me", os.getppid())  # the agent restarted: its counters begin again
    sampler.sample_once(now_ms=T0 + 30_000)
    got = sampler.points("me", 60, now_ms=T0 + 30_000)
    assert [(p.disk_read_rate, p.disk_write_rate) for p in got] == \
        [(0.0, 0.0), (1000.0, 200.0), (2000.0, 0.0), (0.0, 0.0)]


# ---------------------------------------------------------------- both resolutions

def test_a_day_answers_samples_then_minutes(monkeypatch):
    """duration 86400: the last hour's samples oldest first, then (coarsest last) the
    one-minute points before them, oldest first, each saying its resolution."""
    monkeypatch.setattr(proctree, "read_tree", lambda proc, now_ms: sample(now_ms, cpu=1.0))
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    day = 86_400_000
    for t in range(0, day, 10_000):
        sampler.sample_once(now_ms=T0 + t)
    now = T0 + day - 10_000
    got = sampler.points("me", 86400, now_ms=now)
    fine = [p for p in got if p.resolution_seconds == 10.0]
    coarse = [p for p in got if p.resolution_seconds == 60.0]
    assert got == fine + coarse and len(fine) + len(coarse) == len(got)
    assert len(fine) == 361 and fine[0].timestamp == now - 3_600_000
    assert [p.timestamp for p in fine] == sorted(p.timestamp for p in fine)
    assert [p.timestamp for p in coarse] == sorted(p.timestamp for p in coarse)
    assert coarse[-1].timestamp + MINUTE_MS <= fine[0].timestamp
    assert coarse[0].timestamp >= now - day and len(coarse) >= 1370
    assert len(sampler.points("me", 7200, now_ms=now)) == 361 + 59


def test_minutes_fill_in_when_the_hour_has_no_samples(monkeypatch):
    """An agent stopped two hours ago: its minutes answer, up to now."""
    monkeypatch.setattr(proctree, "read_tree", lambda proc, now_ms: sample(now_ms, cpu=1.0))
    sampler = Sampler(interval=10)
    sampler.watch("me", os.getpid())
    for t in range(0, 600_000, 10_000):
        sampler.sample_once(now_ms=T0 + t)
    got = sampler.points("me", 86400, now_ms=T0 + 3 * 3_600_000)
    assert [p.resolution_seconds for p in got] == [60.0] * 10


# ---------------------------------------------------------------- persistence

def saved_sampler(folder, monkeypatch, interval=10):
    monkeypatch.setattr(proctree, "read_tree",
                        lambda proc, now_ms: sample(now_ms, cpu=now_ms % 7, rss=4096))
    sampler = Sampler(interval=interval, history_dir=str(folder))
    sampler.watch("a", os.getpid())
    for t in range(0, 1_200_000, interval * 1000):
        sampler.sample_once(now_ms=T0 + t)
    assert sampler.save() == 1
    return sampler


def test_saved_history_is_restored_whole(tmp_path, monkeypatch):
    """A restored sampler answers the same samples and minutes as the one that saved."""
    before = saved_sampler(tmp_path, monkeypatch).points("a", 86400, now_ms=T0 + 1_200_000)
    again = Sampler(interval=10, history_dir=str(tmp_path))
    again.restore(["a"])
    assert again.points("a", 86400, now_ms=T0 + 1_200_000) == before
    assert {p.resolution_seconds for p in before} == {10.0}
    assert len(again.points("a", 86400, now_ms=T0 + 2 * 3_600_000)) == 20  # minutes


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "layout", "slots"])
def test_bad_history_file_is_ignored_with_a_warning(tmp_path, monkeypatch, caplog, damage):
    """A truncated, corrupt, empty, foreign-layout or foreign-size file is logged and
    ignored, not fatal."""
    saved_sampler(tmp_path, monkeypatch)
    path = tmp_path / "a.metrics"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data = data[:500] + bytes([data[500] ^ 0xFF]) + data[501:]
    elif damage == "empty":
        data = b""
    elif damage == "slots":  # whole and checksummed, but a ring of 10 minutes
        saved = history.decode(data, samples.COLUMNS, MINUTE_COLUMNS)
        data = history.encode(saved._replace(minutes=[c[:10] for c in saved.minutes]))
    else:
        cols = [samples.array.array("d", [1.0])]
        data = history.encode(history.Saved(10.0, cols, -1, cols))
    path.write_bytes(data)
    again = Sampler(interval=10, history_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        again.restore(["a"])
    assert again.points("a", 86400, now_ms=T0 + 1_200_000) == []
    assert "agent a: ignoring metrics history" in caplog.text


def test_other_interval_keeps_only_the_minutes(tmp_path, monkeypatch):
    """Samples saved at another metrics_interval are dropped (their resolution would lie);
    their minutes stay."""
    saved_sampler(tmp_path, monkeypatch, interval=10)
    again = Sampler(interval=5, history_dir=str(tmp_path))
    again.restore(["a"])
    got = again.points("a", 86400, now_ms=T0 + 1_200_000)
    assert len(got) == 20 and {p.resolution_seconds for p in got} == {60.0}


def test_restore_deletes_histories_of_agents_no_longer_configured(tmp_path, monkeypatch):
    """An agent gone from the config loses its history file at the next start."""
    saved_sampler(tmp_path, monkeypatch)
    Sampler(interval=10, history_dir=str(tmp_path)).restore(["b"])
    assert not (tmp_path / "a.metrics").exists()


def test_thread_saves_every_save_interval(tmp_path):
    """The sampling thread writes the history when a save is due, atomically."""
    sampler = Sampler(interval=1, history_dir=str(tmp_path), save_interval=0)
    sampler.watch("me", os.getpid())
    sampler.start()
    try:
        wait_for(lambda: (tmp_path / "me.metrics").exists(), timeout=5)
    finally:
        sampler.stop()
    assert [p.name for p in tmp_path.iterdir()] == ["me.metrics"]  # no temp file left


# ---------------------------------------------------------------- a real daemon

def metric_stamps(stub):
    answer = stub.GetAgentMetrics(pb.GetAgentMetricsRequest(agent_id="a", duration_seconds=86400))
    return [p.timestamp for p in answer.data_points]


def test_history_survives_a_daemon_restart(tmp_path):
    """A daemon stopped cleanly and started again on its state_dir still returns the
    points of before, each with its resolution and process count."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        before = wait_for(lambda: metric_stamps(stub)[:2] if len(metric_stamps(stub)) >= 2
                          else None, timeout=10)
    assert (tmp_path / "state" / "metrics" / "a.metrics").exists()
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        assert set(before) <= set(metric_stamps(stub))
        point = stub.GetAgentMetrics(pb.GetAgentMetricsRequest(agent_id="a")).data_points[0]
        assert point.resolution_seconds == 1.0 and point.process_count >= 1


def test_daemon_starts_with_a_corrupt_history(tmp_path):
    """Garbage in state_dir/metrics/<id>.metrics: the daemon starts, samples and serves."""
    folder = tmp_path / "state" / "metrics"
    folder.mkdir(parents=True)
    (folder / "a.metrics").write_bytes(b"FLMH\x01garbage")
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        wait_for(lambda: metric_stamps(stub), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetAgentMetrics(pb.GetAgentMetricsRequest(agent_id="a", duration_seconds=86401))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
