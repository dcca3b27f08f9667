"""fleet's own CPU per report in a manager worker: SyncAgentStates without gRPC.

    python3 bench/bench_handler.py [--agents 20] [--reports 2000] [--rounds 8]

One thread parses a serialized report (protobuf), calls the servicer's
SyncAgentStates (the checks, the registry, the queue's admission, the rows, the
/metrics counters) and serializes the answer, --reports times a round. The
writer answers at once: what a report waits for, and the database's work, are
not in the figure. bench_scale.py's `null-1` and `null-wait-1` give the other
side: what grpcio's server costs a report on this machine, alone and with each
report waiting for a commit. Prints CPU µs per report and per state, median of
the rounds.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_ingest import node_states  # noqa: E402
from fleet.manager.api.metrics import ManagerMetrics  # noqa: E402
from fleet.manager.nodes import NodeFacts  # noqa: E402
from fleet.manager.parts import build_manager  # noqa: E402
from fleet.manager.store.db import close_database, open_database  # noqa: E402
from fleet.manager.store.migrations import migrate  # noqa: E402
from fleet.v1 import fleet_pb2 as pb  # noqa: E402


class AtOnce:
    """The writer's place: admits as the real one does, 'commits' at once."""

    def __init__(self, backlog):
        self.backlog = backlog

    def admit(self, rows: int) -> int:
        return self.backlog.admit(rows)

    def submit(self, report, timeout: float = 0.0, cost: int = 0) -> None:
        self.backlog.release(cost, committed=True)


class Context:
    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/fleet.db")
        migrate(db)
        parts = build_manager(db)
        parts.nodes.register(NodeFacts(node_id="n1", hostname="h", ip="", advertise_address="",
                                       os="", arch="", labels={}, daemon_version="", boot_id=1))
        parts.reports._writer = AtOnce(parts.writer.backlog)
        parts.servicer.on_report = ManagerMetrics(db, 90).report_received
        states = node_states(args.agents)
        total = args.reports * args.rounds
        bodies = [pb.SyncAgentStatesRequest(node_id="n1", boot_id=1, seq=seq, states=states)
                  .SerializeToString() for seq in range(1, total + 1)]
        context, rounds = Context(), []
        for r in range(args.rounds):
            began = time.process_time()
            for body in bodies[r * args.reports:(r + 1) * args.reports]:
                request = pb.SyncAgentStatesRequest.FromString(body)
                parts.servicer.SyncAgentStates(request, context).SerializeToString()
            rounds.append((time.process_time() - began) / args.reports * 1e6)
        close_database(db)
    median = statistics.median(rounds)
    print("rounds, µs per report: " + ", ".join(f"{x:.0f}" for x in rounds))
    print(f"median: {median:.0f} µs per report of {args.agents} states, "
          f"{median / args.agents:.1f} µs per state")


if __name__ == "__main__":
    main()
