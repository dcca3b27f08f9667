"""Simulated daemons for the backpressure test and bench/bench_burst.py: many nodes,
all sending full reports at once over real gRPC, each obeying RESOURCE_EXHAUSTED's
`retry-after-ms` hint with jitter as the real daemon does, and remembering what
the manager acknowledged (to check the database against)."""
import dataclasses
import random
import threading
import time

import grpc
import psutil

from fleet.rpc import RETRY_AFTER_KEY, open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc

DEADLINE = 5.0
RETRY_OTHER = 0.5       # seconds before retrying after any other failure


@dataclasses.dataclass
class Burst:
    """What the simulated daemons saw."""

    acked: dict           # node_id -> (seq, {agent_id: pid}) of its last acknowledged report
    hints: list           # retry-after-ms of every refusal
    errors: list          # other failures (status names)
    reports: int          # acknowledged reports
    seconds: float        # from the go to the last acknowledgement


def states(agents, round_):
    """A node's full report in round `round_`: every agent running, its pid telling the round."""
    return [pb.AgentState(agent_id=f"agent-{a:03d}", type="exporter", version="1",
                          status=pb.AGENT_STATUS_RUNNING, pid=round_ * 1000 + a,
                          health="healthy") for a in range(agents)]


def hint_of(error):
    """The retry-after-ms of a RESOURCE_EXHAUSTED, or None."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            return int(value)
    return None


class _Sender:
    """One thread's nodes over one channel: each round, a full report per node, retried
    until acknowledged."""

    def __init__(self, address, token, nodes, agents, rounds, burst):
        self.channel = open_channel(address, token)
        self.stub = pb_grpc.ManagerServiceStub(self.channel)
        self.nodes, self.agents, self.rounds, self.burst = nodes, agents, rounds, burst
        self.lock = threading.Lock()

    def register(self):
        for node in self.nodes:
            self.stub.RegisterNode(pb.RegisterNodeRequest(node_id=node, boot_id=1),
                                   timeout=DEADLINE)

    def run(self, go):
        go.wait()
        for round_ in range(1, self.rounds + 1):
            for node in self.nodes:
                request = pb.SyncAgentStatesRequest(node_id=node, boot_id=1, seq=round_,
                                                    full=True, states=states(self.agents, round_))
                self.send(request)
        self.channel.close()

    def send(self, request):
        burst = self.burst
        while True:
            try:
                self.stub.SyncAgentStates(request, timeout=DEADLINE)
            except grpc.RpcError as error:
                hint = hint_of(error) if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED \
                    else None
                with self.lock:
                    (burst.hints if hint is not None else burst.errors).append(
                        hint if hint is not None else error.code().name)
                # The daemon's rule (fleet/daemon/syncer.py): the hint plus up to half again.
                time.sleep(hint / 1000 * (1 + random.uniform(0, 0.5)) if hint is not None
                           else RETRY_OTHER)
                continue
            with self.lock:
                burst.acked[request.node_id] = (request.seq, {s.agent_id: s.pid
                                                              for s in request.states})
                burst.reports += 1
            return


def run_burst(address, token, nodes, agents=20, rounds=1, threads=32, first=0):
    """Register `nodes` nodes, then send every report at once from `threads` threads (one
    channel each); returns when every report was acknowledged."""
    return prepare_burst(address, token, nodes, agents, rounds, threads, first)()


def prepare_burst(address, token, nodes, agents=20, rounds=1, threads=32, first=0):
    """Register the nodes burst-FIRST.. and start the threads; returns `go`, which sends
    every report at once and returns the Burst when every one was acknowledged."""
    burst = Burst({}, [], [], 0, 0.0)
    names = [f"burst-{i:05d}" for i in range(first, first + nodes)]
    senders = [_Sender(address, token, names[t::threads], agents, rounds, burst)
               for t in range(threads)]
    for sender in senders:
        sender.register()
    start = threading.Event()
    workers = [threading.Thread(target=s.run, args=(start,), name=f"burst-{i}")
               for i, s in enumerate(senders)]
    for w in workers:
        w.start()

    def go():
        began = time.monotonic()
        start.set()
        for w in workers:
            w.join()
        burst.seconds = time.monotonic() - began
        return burst

    return go


class PeakRss:
    """Samples a process's RSS every `interval` seconds in a thread until stopped."""

    def __init__(self, pid, interval=0.05):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self.start_rss = self.peak
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="burst-rss", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self):
        self.stopping.set()
        self.thread.join()
        return self.peak
