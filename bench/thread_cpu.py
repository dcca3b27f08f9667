"""Where one process's CPU goes, thread by thread, over a window.

    python3 bench/thread_cpu.py PID [--seconds 8] [--per-state STATES_PER_S]

Reads each thread's user and system time from /proc/PID/task/*/stat at the start
and the end of the window and prints them as % of a core, busiest first. Python
does not name its threads for the OS (their `comm` is the program's), so when
py-spy is on PATH its `dump` supplies the Python names (fleet-ingest,
fleet-grpc_N, "Thread-1 (_serve)": grpcio's polling thread); a gRPC pool's
threads are summed as one line. gRPC core's own threads are named by the OS
(event_engine). `--per-state`: also print each line as µs of CPU a state at that
rate, to set beside bench_scale.py's cells (run it during one of its saturation
phases: bench_scale.py --duration 40 leaves the time).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import time

TICKS = os.sysconf("SC_CLK_TCK")


def python_names(pid: int) -> dict[str, str]:
    """{tid: Python thread name} from `py-spy dump`, or {} without py-spy."""
    if shutil.which("py-spy") is None:
        return {}
    try:
        dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
    except subprocess.TimeoutExpired:   # unnamed, then: the figures do not need names
        return {}
    found = re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump)
    return {m.group(1): m.group(2) for m in found}


def snapshot(pid: int) -> dict[str, tuple[str, int, int]]:
    """{tid: (comm, user ticks, system ticks)} of every thread alive now."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                out[tid] = (comm.read().strip(), int(fields[11]), int(fields[12]))
        except OSError:         # the thread ended meanwhile
            pass
    return out


def group(name: str) -> str:
    """A pool's numbered threads (fleet-grpc_12) as one line (fleet-grpc_*)."""
    return re.sub(r"_\d+$", "_*", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--per-state", type=float, default=0.0,
                        help="states/s over the window: also print µs of CPU a state")
    args = parser.parse_args()
    try:
        names = python_names(args.pid)
        before = snapshot(args.pid)
        time.sleep(args.seconds)
        after = snapshot(args.pid)
    except FileNotFoundError:
        raise SystemExit(f"thread_cpu: no process {args.pid} (it ended, or never was)")
    lines: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for tid, (comm, user, system) in after.items():
        _, user0, system0 = before.get(tid, (comm, 0, 0))
        line = lines[group(names.get(tid, comm))]
        line[0] += (user - user0) / TICKS / args.seconds * 100
        line[1] += (system - system0) / TICKS / args.seconds * 100
    total = sum(u + s for u, s in lines.values())
    for name, (user, system) in sorted(lines.items(), key=lambda kv: -sum(kv[1])):
        if user + system:
            extra = (f"  {(user + system) / 100 / args.per_state * 1e6:5.1f} µs a state"
                     if args.per_state else "")
            print(f"{name:24s} user {user:5.1f} %  sys {system:5.1f} %{extra}")
    extra = f"  {total / 100 / args.per_state * 1e6:5.1f} µs a state" if args.per_state else ""
    print(f"{'total':24s} {total:5.1f} % of a core{extra}")


if __name__ == "__main__":
    main()
