"""Benchmark of fleet.pyz start-up: launch to the exit of ``--version``.

Builds fleet.pyz into a temporary directory (or uses --pyz PATH), then prints
the median wall time over RUNS runs cold (a fresh, empty FLEET_CACHE_DIR each
run: unpack and compile) and warm (the cache already filled), plus the pyz
size. Run from the repo root:

    python bench/bench_start.py [--pyz fleet.pyz] [--runs 7]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(path):
    """Build fleet.pyz at ``path`` with build_zipapp.py."""
    cmd = [sys.executable, os.path.join(REPO, "build_zipapp.py"), "-o", path]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def time_start(pyz, cache_dir):
    """Return the seconds from launch to exit of ``pyz --version``."""
    env = dict(os.environ, FLEET_CACHE_DIR=cache_dir)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, pyz, "--version"], env=env, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise SystemExit("fleet.pyz --version failed: %s" % done.stderr.decode())
    return elapsed


def measure(pyz, workdir, runs):
    """Return (cold times, warm times) over ``runs`` runs each."""
    cold = [time_start(pyz, os.path.join(workdir, "cold-%d" % i)) for i in range(runs)]
    warm_dir = os.path.join(workdir, "warm")
    time_start(pyz, warm_dir)  # fill the cache; not counted
    warm = [time_start(pyz, warm_dir) for _ in range(runs)]
    return cold, warm


def report(label, times):
    """Print the median and range of ``times``."""
    print("%-5s median %.3f s  (min %.3f, max %.3f, %d runs)"
          % (label, statistics.median(times), min(times), max(times), len(times)))


def main():
    """Build or take a pyz, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyz", help="measure this pyz instead of building one")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as workdir:
        pyz = os.path.abspath(args.pyz) if args.pyz else os.path.join(workdir, "fleet.pyz")
        if not args.pyz:
            build(pyz)
        cold, warm = measure(pyz, workdir, args.runs)
        print("fleet.pyz %.1f MB (%s)" % (os.path.getsize(pyz) / 1e6, pyz if args.pyz else "fresh build"))
        report("cold", cold)
        report("warm", warm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
