"""Burst benchmark: every simulated daemon sends its full report at once, as after a
manager restart, to a real manager (`fleet.py --role manager`, SQLite).

    python bench/bench_burst.py [--nodes 2000] [--agents 20] [--procs 4] [--threads 32]
                                [--bounds 200,20000]

For each `ingest_queue` bound in --bounds, a fresh manager takes the burst from
--procs simulator processes (tests/burst.py: one gRPC channel per thread; a
refused report waits its retry-after-ms hint plus up to half again, as the real
daemon does). Prints, per bound: reports, refusals and their hints, other
failures, time until the last report was acknowledged, the manager's peak RSS
(sampled every 50 ms) and its queue's high-water mark, and whether the database
holds every report.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.burst import PeakRss, prepare_burst  # noqa: E402
from tests.httpapi import Api  # noqa: E402
from tests.realfleet import API_TOKEN, CLUSTER_TOKEN, Cluster  # noqa: E402


def simulator(address: str, first: int, count: int, agents: int, threads: int) -> None:
    """A child process: register its nodes, wait for a line on stdin, burst, print JSON."""
    go = prepare_burst(address, CLUSTER_TOKEN, count, agents, 1, threads, first)
    print("ready", flush=True)
    sys.stdin.readline()
    burst = go()
    print(json.dumps({"reports": burst.reports, "hints": burst.hints, "errors": burst.errors,
                      "seconds": burst.seconds}), flush=True)


def one_burst(bound: int, args) -> dict:
    """A fresh manager with `bound`, the burst, its figures."""
    with tempfile.TemporaryDirectory(prefix="fleet-burst-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        children: list[subprocess.Popen] = []
        try:
            manager = cluster.run("manager", cluster.manager_config(
                extra=f"ingest_queue = {bound}", offline_after=600))
            address = f"127.0.0.1:{manager.port('grpc')}"
            api = Api(manager.port("http"), API_TOKEN)
            per = args.nodes // args.procs
            children += [subprocess.Popen(
                [sys.executable, __file__, "--simulator", address, "--first", str(p * per),
                 "--count", str(per), "--agents", str(args.agents), "--threads",
                 str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=ROOT) for p in range(args.procs)]
            for child in children:
                assert child.stdout.readline().strip() == "ready", "a simulator failed"
            rss = PeakRss(manager.pid)
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            results = [json.loads(child.stdout.readline()) for child in children]
            peak = rss.stop()
            for child in children:
                child.wait(30)
            _, text = api.get("/metrics")
            high_water = float(re.search(r"^fleet_ingest_queued_states_high_water (\S+)$",
                                         text, re.M).group(1))
            with sqlite3.connect(cluster.db_path) as db:
                stored = db.execute("SELECT COUNT(*) FROM agent WHERE seq = 1").fetchone()[0]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            cluster.close()
    hints = [h for r in results for h in r["hints"]]
    return {"bound": bound, "reports": sum(r["reports"] for r in results),
            "refusals": len(hints), "hints": hints,
            "errors": [e for r in results for e in r["errors"]],
            "seconds": max(r["seconds"] for r in results), "start_rss": rss.start_rss,
            "peak_rss": peak, "high_water": high_water, "stored": stored,
            "expected": per * args.procs * args.agents}


def show(figures: dict) -> None:
    """One line per figure of a run."""
    hints = sorted(figures["hints"])
    hint_text = (f"hints ms min {hints[0]} median {statistics.median(hints):.0f} "
                 f"max {hints[-1]}") if hints else "no hints"
    mib = 2 ** 20
    print(f"ingest_queue={figures['bound']}: reports {figures['reports']}, refusals "
          f"{figures['refusals']} ({hint_text}), other failures {len(figures['errors'])} "
          f"{sorted(set(figures['errors']))[:3]}")
    print(f"  drained in {figures['seconds']:.1f} s; manager RSS {figures['start_rss'] / mib:.1f}"
          f" -> peak {figures['peak_rss'] / mib:.1f} MiB; queue high water "
          f"{figures['high_water']:.0f} states; agent rows stored {figures['stored']} "
          f"(expected {figures['expected']})")


def main() -> None:
    """Run the bursts, or the simulator child role (--simulator)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--bounds", default="200,20000")
    parser.add_argument("--simulator", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulator:
        simulator(args.simulator, args.first, args.count, args.agents, args.threads)
        return
    print(f"burst: {args.nodes} nodes x {args.agents} agents, one full report each, from "
          f"{args.procs} processes x {args.threads} channels, all at once")
    for bound in (int(b) for b in args.bounds.split(",")):
        show(one_burst(bound, args))


if __name__ == "__main__":
    main()
