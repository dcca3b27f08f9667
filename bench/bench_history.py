"""Metrics history benchmark: what a day of one-minute rollups costs the daemon.

Prints the rings' bytes for 50 agents (Sampler.memory_bytes), the time to save and
to restore their history files (medians), and the RSS of a real daemon with 50
agents (/bin/sleep, metrics_interval 10) started again on a state_dir holding a
full day of history, median of --runs starts. With --base DIR (a checkout of
another commit, e.g. `git archive <commit> | tar -x -C DIR`) it measures that
daemon's RSS the same way, alternating, and prints the difference.

    python bench/bench_history.py [--agents 50] [--runs 5] [--base /tmp/fleet-base]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import psutil  # noqa: E402

from fleet.daemon import proctree  # noqa: E402
from fleet.daemon.metrics import Sampler  # noqa: E402
from fleet.daemon.samples import DataPoint  # noqa: E402

DAY_MS, STEP_MS = 86_400_000, 10_000


def full_day(folder: str, agents: int) -> Sampler:
    """A sampler with a day of samples for each agent, saved in ``folder``."""
    real = proctree.read_tree
    proctree.read_tree = lambda proc, now_ms: DataPoint(
        now_ms, 1.5, 20 << 20, 40 << 20, now_ms, now_ms // 2, 8, 4)
    try:
        sampler = Sampler(10, history_dir=folder)
        for i in range(agents):
            sampler.watch(f"sleep-{i}", os.getpid())
        start = time.time_ns() // 1_000_000 - DAY_MS
        for t in range(0, DAY_MS, STEP_MS):
            sampler.sample_once(now_ms=start + t)
    finally:
        proctree.read_tree = real
    return sampler


def timed(action, runs: int) -> float:
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def write_config(folder: str, agents: int) -> str:
    sleep = shutil.which("sleep") or "/bin/sleep"
    parts = ['[daemon]\nlisten = "127.0.0.1:0"\nmanager = "127.0.0.1:1"\n'
             f'state_dir = "{folder}/state"\nmetrics_interval = 10\n']
    for i in range(agents):
        parts.append(f'[[agents]]\nid = "sleep-{i}"\ncommand = ["{sleep}", "100000"]\n'
                     'start_seconds = 0.1\nstop_timeout = 2\n')
    path = os.path.join(folder, "fleet.toml")
    with open(path, "w") as handle:
        handle.write("\n".join(parts))
    return path


def daemon_rss(repo: str, folder: str, agents: int) -> float:
    """MiB of RSS of a daemon from ``repo`` with ``agents`` running, 3 s after they started."""
    log_path = os.path.join(folder, "daemon.log")
    with open(log_path, "wb") as log:
        popen = subprocess.Popen([sys.executable, "-B", os.path.join(repo, "fleet.py"),
                                  "--role", "daemon", "--config", write_config(folder, agents)],
                                 stderr=log, cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while len(psutil.Process(popen.pid).children()) < agents:
            if time.monotonic() > deadline or popen.poll() is not None:
                raise SystemExit(f"daemon did not start its agents: {open(log_path).read()}")
            time.sleep(0.05)
        time.sleep(3)  # the first sweeps: every ring is allocated and touched
        return psutil.Process(popen.pid).memory_info().rss / 2**20
    finally:
        popen.send_signal(signal.SIGTERM)
        popen.wait(60)
        if re.search(r"Traceback", open(log_path).read()):
            raise SystemExit(f"daemon failed: {open(log_path).read()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base", help="a checkout of the commit to compare RSS with")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="fleet-bench-history-")
    history_dir = os.path.join(folder, "state", "metrics")
    sampler = full_day(history_dir, args.agents)
    ids = [f"sleep-{i}" for i in range(args.agents)]
    save = timed(sampler.save, args.runs)
    restore = timed(lambda: Sampler(10, history_dir=history_dir).restore(ids), args.runs)
    size = sum(os.path.getsize(os.path.join(history_dir, n)) for n in os.listdir(history_dir))
    print(f"agents                      {args.agents}")
    print(f"rings (memory_bytes)        {sampler.memory_bytes() / 2**20:.2f} MiB "
          "(an hour of samples at 10 s and a day of minutes)")
    print(f"history files               {size / 2**20:.2f} MiB on disk")
    print(f"save all                    median {1000 * save:.1f} ms ({args.runs} runs)")
    print(f"restore all                 median {1000 * restore:.1f} ms ({args.runs} runs)")
    del sampler
    mine, base = [], []
    for _ in range(args.runs):  # alternate, so load beside the bench weighs on both alike
        mine.append(daemon_rss(REPO, folder, args.agents))
        if args.base:
            base.append(daemon_rss(args.base, folder, args.agents))
    print(f"daemon RSS, a day restored  median {statistics.median(mine):.1f} MiB "
          f"(min {min(mine):.1f}, max {max(mine):.1f}; {args.runs} starts)")
    if base:
        print(f"daemon RSS, base            median {statistics.median(base):.1f} MiB "
              f"(min {min(base):.1f}, max {max(base):.1f})")
        print(f"difference                  {statistics.median(mine) - statistics.median(base):+.1f} MiB")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
