"""The directory the workers count /metrics in (fleet.manager.api.sharedmetrics): made
per parent, removed by it, and removed by the next parent if the last one was killed."""
import os
import subprocess
import sys

from fleet.manager.api.sharedmetrics import ENV, SharedDir


def dead_pid():
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_new_parent_removes_the_directories_of_parents_that_are_gone(tmp_path):
    gone = tmp_path / f"fleet-metrics-{dead_pid()}-abc123"
    living = tmp_path / f"fleet-metrics-{os.getpid()}-def456"     # a running parent's
    other = tmp_path / "fleet-metrics-notapid"                    # not ours to judge
    for path in (gone, living, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"x")
    shared = SharedDir(str(tmp_path))
    try:
        assert not gone.exists()
        assert living.exists() and other.exists()
        assert os.path.basename(shared.path).startswith(f"fleet-metrics-{os.getpid()}-")
        assert oct(os.stat(shared.path).st_mode & 0o777) == "0o700"
        assert shared.env()[ENV] == shared.path
    finally:
        shared.remove()
    assert not os.path.exists(shared.path)


def test_a_dead_workers_live_gauges_stop_counting_but_its_counters_stay(tmp_path):
    shared = SharedDir(str(tmp_path))
    try:
        for name in ("counter_4242.db", "gauge_livesum_4242.db", "gauge_max_4242.db",
                     "gauge_livesum_4343.db"):
            (tmp_path / os.path.basename(shared.path) / name).write_bytes(b"")
        shared.process_dead(4242)
        assert sorted(os.listdir(shared.path)) == ["counter_4242.db", "gauge_livesum_4343.db",
                                                   "gauge_max_4242.db"]
    finally:
        shared.remove()
