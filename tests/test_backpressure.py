"""Backpressure: a manager whose write queue is past its bound refuses reports with
RESOURCE_EXHAUSTED and a `retry-after-ms` hint, writes nothing of them, and the
daemons obey the hint with jitter; a burst far above capacity ends with every
report stored."""
import logging
import re
import sqlite3
import threading
import time

import grpc
import pytest

from fleet import errors
from fleet.daemon.app import Daemon
from fleet.manager.store.backlog import HINT_CAP, HINT_FLOOR, Backlog
from fleet.rpc import RETRY_AFTER_KEY, create_server
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.burst import PeakRss, run_burst
from tests.daemon_harness import agent, daemon_config, started
from tests.helpers import wait_for
from tests.realfleet import API_TOKEN, CLUSTER_TOKEN, Api

BOUND = 100                 # states: five reports of 20 agents


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# ---- the bound and the hint ---------------------------------------------------

def test_a_full_queue_refuses_with_a_hint_and_an_empty_one_takes_any_report():
    """Past the bound a report is refused with a hint; an empty queue admits any report."""
    backlog = Backlog(max_rows=100, clock=Clock())
    big = backlog.admit(500)
    with pytest.raises(errors.Overloaded) as refused:
        backlog.admit(1)
    assert refused.value.retry_after_ms >= HINT_FLOOR * 1000
    backlog.release(big, committed=True)
    costs = [backlog.admit(20) for _ in range(5)]
    with pytest.raises(errors.Overloaded):
        backlog.admit(20)
    assert backlog.stats()["high_water_rows"] == 500 and backlog.refused == 2
    for cost in costs:
        backlog.release(cost, committed=False)
    assert backlog.rows == 0 and backlog.reports == 0


def test_the_hint_grows_with_the_queue_and_the_refused_crowd_up_to_the_cap():
    """Hints grow with the queue and each earlier refusal at the measured rate, up to the cap."""
    clock = Clock()
    backlog = Backlog(max_rows=1000, clock=clock)
    admitted = [backlog.admit(100) for _ in range(10)]       # full and saturated
    clock.now += 1.0
    for cost in admitted:                                    # 1000 rows in 1 s measured
        backlog.release(cost, committed=True)
    assert 500 <= backlog.rate <= 20_000
    backlog.rate = 1000.0                                    # rows/s, for round numbers
    for _ in range(10):
        backlog.admit(100)
    hints = []
    for _ in range(300):
        with pytest.raises(errors.Overloaded) as refused:
            backlog.admit(100)
        hints.append(refused.value.retry_after_ms)
    assert hints[0] == 1100                  # the queue (1 s) and its own rows (0.1 s)
    assert hints[1] == 1200 and hints == sorted(hints)
    assert hints[-1] == HINT_CAP * 1000


# ---- a burst against a real manager process --------------------------------------

def metric(api, name):
    status, text = api.get("/metrics")
    assert status == 200, text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_a_burst_far_above_capacity_ends_with_every_report_stored(cluster):
    # 120 nodes x 20 agents on 24 channels, 3 full reports each, all at once; the
    # database must end with every node's last acknowledged report.
    """A burst into a 100-state queue: refusals with hints, queue bounded, every report stored."""
    manager = cluster.run("manager", cluster.manager_config(extra=f"ingest_queue = {BOUND}"))
    port, api = manager.port("grpc"), Api(manager.port("http"))
    rss = PeakRss(manager.pid)
    burst = run_burst(f"127.0.0.1:{port}", CLUSTER_TOKEN, nodes=120, agents=20, rounds=3,
                      threads=24)
    peak = rss.stop()
    assert burst.reports == 360 and len(burst.acked) == 120
    assert burst.hints and min(burst.hints) >= HINT_FLOOR * 1000, burst.errors
    assert metric(api, "fleet_reports_refused") == len(burst.hints)
    assert metric(api, "fleet_ingest_queued_states_high_water") <= BOUND
    assert peak - rss.start_rss < 100 * 2 ** 20, (rss.start_rss, peak)
    with sqlite3.connect(cluster.db_path) as db:
        seqs = dict(db.execute("SELECT node_id, seq FROM node WHERE node_id LIKE 'burst-%'"))
        pids = {}
        for node, agent_id, pid, seq in db.execute(
                "SELECT node_id, agent_id, pid, seq FROM agent WHERE node_id LIKE 'burst-%'"):
            pids.setdefault(node, {})[agent_id] = pid
            assert seq == burst.acked[node][0]
    assert seqs == {node: seq for node, (seq, _) in burst.acked.items()}
    assert pids == {node: agents for node, (_, agents) in burst.acked.items()}


# ---- the daemon's side ----------------------------------------------------------

class BusyManager:
    """A ManagerService that refuses the first `refusals` reports with RESOURCE_EXHAUSTED
    and `retry-after-ms` = hint_ms (or no hint), then takes them; it records when each
    report and heartbeat arrived."""

    def __init__(self, refusals, hint_ms):
        self.reports, self.heartbeats, self.registrations = [], [], []
        busy = self

        class Servicer(pb_grpc.ManagerServiceServicer):
            def RegisterNode(self, request, context):
                busy.registrations.append(time.monotonic())
                return pb.RegisterNodeResponse()

            def Heartbeat(self, request, context):
                busy.heartbeats.append(time.monotonic())
                return pb.HeartbeatResponse()

            def SyncAgentStates(self, request, context):
                busy.reports.append((time.monotonic(), request.seq))
                if len(busy.reports) <= refusals:
                    if hint_ms is not None:
                        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(hint_ms)),))
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
                return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states))

            def ReportNodeMetrics(self, request, context):
                return pb.ReportNodeMetricsResponse(accepted=len(request.samples))

        self.server, port = create_server("127.0.0.1:0", [
            lambda s: pb_grpc.add_ManagerServiceServicer_to_server(Servicer(), s)],
            token=CLUSTER_TOKEN)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def close(self):
        self.server.stop(None)


@pytest.fixture
def managers():
    made = []
    yield lambda refusals, hint_ms: made.append(BusyManager(refusals, hint_ms)) or made[-1]
    for m in made:
        m.close()


def busy_daemon(tmp_path, busy, spare):
    return Daemon(daemon_config(tmp_path, [agent("a")], manager=f"{busy.address},{spare.address}",
                                cluster_token=CLUSTER_TOKEN, node_id="n1", sync_interval=30,
                                heartbeat_interval=0.2))


def test_a_real_daemon_waits_the_hint_plus_jitter_and_keeps_heartbeating(
        tmp_path, managers, caplog):
    # Four refusals, then acceptance; the spare manager must see nothing (no failover),
    # the retried report keeps its seq, and the four refusals are one warning.
    """Refused with a 700 ms hint, the daemon retries after 0.7-1.05 s, jittered, heartbeating."""
    busy, spare = managers(4, 700), managers(0, None)
    caplog.set_level(logging.WARNING, logger="fleet.daemon.syncer")
    with started(busy_daemon(tmp_path, busy, spare)) as daemon:
        wait_for(lambda: daemon.syncer.reports_sent >= 1, timeout=15)
        heartbeats = [t for t in busy.heartbeats if busy.reports[0][0] < t < busy.reports[4][0]]
    times = [t for t, _ in busy.reports[:5]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.7 <= g <= 0.7 * 1.5 + 1.5 for g in gaps), gaps
    assert max(gaps) - min(gaps) > 0.005, gaps             # jittered, not in lockstep
    assert {seq for _, seq in busy.reports[:5]} == {1}      # the same report, retried whole
    assert len(heartbeats) >= 5, heartbeats
    assert not spare.reports and not spare.registrations
    busy_lines = [r for r in caplog.records if "busy" in r.getMessage()]
    assert len(busy_lines) == 1, [r.getMessage() for r in busy_lines]


def test_an_older_daemon_without_hints_backs_off_and_loses_nothing(
        tmp_path, managers, monkeypatch):
    """A daemon ignoring hints (previous release) backs off and resends the same seq."""
    import fleet.rpc
    monkeypatch.setattr(fleet.rpc, "_retry_after_ms", lambda exc: None)
    busy, spare = managers(2, 700), managers(0, None)
    with started(busy_daemon(tmp_path, busy, spare)) as daemon:
        wait_for(lambda: daemon.syncer.reports_sent >= 1, timeout=15)
        assert daemon.syncer.refusals == 0
    assert [seq for _, seq in busy.reports[:3]] == [1, 1, 1]
    assert not spare.reports and not spare.registrations


def test_heartbeats_are_never_refused_by_a_full_queue(tmp_path):
    """With the queue full, a heartbeat still passes (it only touches its node)."""
    from fleet.manager.ingest import ReportService
    from fleet.manager.nodes import NodeFacts, NodeStore
    from fleet.manager.store.db import open_database
    from fleet.manager.store.migrations import migrate
    from fleet.manager.store.registry import Registry
    from fleet.manager.store.writer import IngestWriter
    db = open_database(f"sqlite:///{tmp_path}/h.db")
    migrate(db)
    registry = Registry.load(db)
    NodeStore(db, registry).register(NodeFacts("n1", boot_id=1))
    writer = IngestWriter(db, backlog=Backlog(max_rows=10))
    writer.start()
    try:
        cost = writer.admit(10)                     # a report filling the queue
        service = ReportService(registry, writer)
        with pytest.raises(errors.Overloaded):
            service.sync("n1", 1, 1, True, [])
        assert service.heartbeat("n1", 1) is False
        writer.backlog.release(cost, committed=False)
    finally:
        writer.stop()
        db.close()


class _Client:
    address = "127.0.0.1:1"
    deadline = 5.0


def syncer_at_zero():
    from fleet.daemon.syncer import StateSyncer
    return StateSyncer(_Client(), None, lambda: [], sync_interval=30, heartbeat_interval=10,
                       clock=lambda: 0.0)


def test_retries_after_an_outage_spread_over_half_the_delay_and_refusals_over_half_the_hint():
    """Daemons failing together retry over [0.5, 1] x delay; refused ones over [1, 1.5] x hint."""
    syncer = syncer_at_zero()
    retries, turns = [], []
    for _ in range(300):
        syncer._failures = 10                       # the delay is at its 30 s cap
        syncer._failed(errors.Unavailable("down"))
        retries.append(syncer._retry_at)
        syncer._refused(errors.Overloaded("busy", 2000))
        turns.append(syncer._reports_at)
    assert 15 <= min(retries) < 17 and 28 < max(retries) <= 30, (min(retries), max(retries))
    assert 2 <= min(turns) < 2.1 and 2.9 < max(turns) <= 3, (min(turns), max(turns))
    assert syncer._failures == 0 and syncer._retry_at == 0.0    # a busy manager is up
