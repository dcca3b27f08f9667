"""Node metrics: the daemon's /proc parsing and buffer, ReportNodeMetrics, storage,
resolution, retention (the manager's side on SQLite and PostgreSQL), the HTTP endpoint
and Node `resources`, old peers on either side."""
import logging
import math
import threading

import grpc
import pytest

from fleet.daemon import node as nodemod
from fleet.daemon.node import NodeSampler
from fleet.daemon.nodereport import node_sample
from fleet.manager.nodemetrics import MAX_POINTS, NodeMetricsStore, bucket_seconds
from fleet.manager.parts import build_manager
from fleet.manager.pool import DaemonClientPool
from fleet.manager.servicer import ManagerServicer
from fleet.manager.service import FleetService
from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.store.backends import backend_of
from fleet.manager.store.registry import Registry
from fleet.rpc import create_server, open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc
from fleet import errors
from tests.daemon_harness import agent, running_daemon
from tests.helpers import wait_for
from tests.realfleet import Api, agents_toml

DEADLINE = 5.0
NOW = 1_800_000_000.0          # seconds; a fixed clock for the stores
RESOURCE_KEYS = {"time", "cpu", "load1", "load5", "load15", "memory_used", "memory_total",
                 "swap_used", "swap_total", "disk_used", "disk_total", "disks",
                 "disk_read_rate", "disk_write_rate", "net_rx_rate", "net_tx_rate"}
POINT_KEYS = RESOURCE_KEYS - {"disks"} | {"cpu_max", "resolution_seconds"}

STAT = """cpu  100 5 50 800 40 0 5 0 7 0
cpu0 50 2 25 400 20 0 3 0 0 0
intr 12345
"""
MEMINFO = """MemTotal:       16000000 kB
MemFree:         1000000 kB
MemAvailable:   12000000 kB
Buffers:          500000 kB
Cached:          3000000 kB
SwapTotal:       2000000 kB
SwapFree:        1500000 kB
"""
MOUNTS = """proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
/dev/vdb1 /srv/my\\040data xfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
/dev/loop3 /snap/core/1 squashfs ro 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
"""
DISKSTATS = """   8       0 sda 100 0 2000 0 50 0 4000 0 0 0 0
   8       1 sda1 90 0 1800 0 45 0 3900 0 0 0 0
   7       0 loop0 10 0 999 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 0 8 0 2 0 16 0 0 0 0
"""
NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5000 10 0 0 0 0 0 0 5000 10 0 0 0 0 0 0
  eth0: 1000 7 0 0 0 0 0 0 300 3 0 0 0 0 0 0
  wlan0: 24 1 0 0 0 0 0 0 76 1 0 0 0 0 0 0
"""


# ---- the daemon's parsing ------------------------------------------------------------

def test_parse_cpu_counts_iowait_as_idle():
    """/proc/stat's cpu line gives (busy, total) ticks, idle being idle + iowait."""
    assert nodemod.parse_cpu(STAT) == (160, 1000)


def test_parse_loadavg_and_meminfo():
    """Load averages; memory used is MemTotal - MemAvailable, swap used Total - Free, in bytes."""
    assert nodemod.parse_loadavg("0.52 1.50 2.00 1/234 5678\n") == (0.52, 1.5, 2.0)
    assert nodemod.parse_meminfo(MEMINFO) == (4_000_000 * 1024, 16_000_000 * 1024,
                                              500_000 * 1024, 2_000_000 * 1024)


def test_parse_meminfo_without_memavailable_uses_free_buffers_cached():
    """A kernel without MemAvailable: available is MemFree + Buffers + Cached."""
    text = "".join(line + "\n" for line in MEMINFO.splitlines() if "MemAvailable" not in line)
    assert nodemod.parse_meminfo(text)[0] == (16_000_000 - 4_500_000) * 1024


def test_parse_mounts_keeps_real_filesystems_only():
    """Pseudo, network and image filesystems, and overlays but the root, are left out;
    escaped spaces are decoded."""
    assert nodemod.parse_mounts(MOUNTS) == [("/dev/vda1", "/"), ("/dev/vdb1", "/srv/my data")]
    assert nodemod.parse_mounts("overlay / overlay rw 0 0\n") == [("overlay", "/")]


def test_parse_diskstats_counts_whole_disks_only():
    """Sectors of the named whole disks, as bytes; partitions and loop devices do not count."""
    assert nodemod.parse_diskstats(DISKSTATS, frozenset({"sda", "nvme0n1"})) == \
        ((2000 + 8) * 512, (4000 + 16) * 512)


def test_parse_net_dev_excludes_lo():
    """Received and sent bytes over every interface but lo."""
    assert nodemod.parse_net_dev(NET_DEV) == (1024, 376)


def test_disk_usage_dedupes_by_device(tmp_path):
    """Two mounts of one filesystem count once, under the shorter mount point."""
    (tmp_path / "sub").mkdir()
    disks = nodemod.disk_usage([("/dev/x", str(tmp_path / "sub")), ("/dev/x", str(tmp_path)),
                                ("/dev/y", str(tmp_path / "missing"))])
    assert [d.mount for d in disks] == [str(tmp_path)]
    assert 0 < disks[0].used <= disks[0].total


def fake_proc(root, cpu=(100, 900), disk=(0, 0), net=(0, 0)):
    """A /proc and /sys/block under `root` with the given counters (busy/idle ticks,
    sectors read/written of sda, bytes in/out of eth0)."""
    proc, block = root / "proc", root / "block"
    (proc / "net").mkdir(parents=True, exist_ok=True)
    (block / "sda" / "device").mkdir(parents=True, exist_ok=True)
    (block / "loop0").mkdir(exist_ok=True)
    (proc / "stat").write_text(f"cpu  {cpu[0]} 0 0 {cpu[1]} 0 0 0 0 0 0\n")
    (proc / "loadavg").write_text("0.50 0.40 0.30 1/100 42\n")
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "mounts").write_text(f"/dev/sda1 {root} ext4 rw 0 0\nproc /proc proc rw 0 0\n")
    (proc / "diskstats").write_text(f"8 0 sda 1 0 {disk[0]} 0 1 0 {disk[1]} 0 0 0 0\n"
                                    f"7 0 loop0 1 0 99999 0 0 0 0 0 0 0 0\n")
    (proc / "net" / "dev").write_text(NET_DEV.replace(
        "eth0: 1000 7 0 0 0 0 0 0 300 3", f"eth0: {net[0]} 7 0 0 0 0 0 0 {net[1]} 3"))
    return str(proc), str(block)


def test_node_sampler_turns_counters_into_percent_and_rates(tmp_path):
    """The first call only takes counters; the next gives cpu % and bytes/s since then."""
    proc, block = fake_proc(tmp_path)
    sampler = NodeSampler(proc, block)
    assert sampler.sample(1000) is None and sampler.latest is None
    fake_proc(tmp_path, cpu=(400, 1500), disk=(2048, 4096), net=(11_000, 2_000))
    sample = sampler.sample(2000)
    assert sample.cpu == 33.33 and (sample.load1, sample.load15) == (0.5, 0.3)
    assert sample.memory_used == 4_000_000 * 1024 and sample.swap_total == 2_000_000 * 1024
    assert [d.mount for d in sample.disks] == [str(tmp_path)]
    assert sample.disk_total == sample.disks[0].total > 0
    assert sample.disk_read_rate > 0 and sample.disk_write_rate > sample.disk_read_rate
    assert sample.net_rx_rate > sample.net_tx_rate > 0
    assert sampler.latest is sample and sampler.unsent_count() == 1


def test_node_sampler_buffer_is_bounded_and_acknowledged(tmp_path):
    """Unsent samples are at most max_unsent (the oldest go); acknowledge drops those sent."""
    proc, block = fake_proc(tmp_path)
    sampler = NodeSampler(proc, block, max_unsent=3)
    for t in range(6):
        sampler.sample(1000 * t)
    batch = sampler.unsent(10)
    assert [s.time for _, s in batch] == [3000, 4000, 5000]
    assert batch[0][1].disks == () and batch[-1][1].disks == sampler.latest.disks != ()
    sampler.acknowledge(batch[1][0])
    assert [s.time for _, s in sampler.unsent(10)] == [5000]


def test_node_sampler_on_this_machine():
    """The real /proc gives a plausible sample: cpu within 0..100, memory within total."""
    sampler = NodeSampler()
    sampler.sample()
    sample = wait_for(sampler.sample, timeout=5)
    assert 0 <= sample.cpu <= 100 and 0 < sample.memory_used <= sample.memory_total
    assert sample.disk_total > 0 and sample.disks


# ---- the manager: ReportNodeMetrics over real gRPC --------------------------------------

@pytest.fixture
def manager(db_url):
    """(parts, stub) of a manager serving ManagerService on 127.0.0.1:0, on each engine."""
    db = dbmod.open_database(db_url)
    migrations.migrate(db)
    parts = build_manager(db)
    parts.start()
    server, port = create_server("127.0.0.1:0", [parts.servicer.add_to])
    server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    yield parts, fleet_pb2_grpc.ManagerServiceStub(channel)
    channel.close()
    server.stop(grace=None).wait()
    parts.stop()


def wire_sample(time_ms, cpu=10.0, **overrides):
    fields = dict(time=time_ms, cpu=cpu, load1=0.5, load5=0.4, load15=0.3, memory_used=1000,
                  memory_total=4000, swap_used=0, swap_total=0, disk_used=10, disk_total=100,
                  disks=[pb.NodeDisk(mount="/", used=10, total=100)], disk_read_rate=1.0,
                  disk_write_rate=2.0, net_rx_rate=3.0, net_tx_rate=4.0)
    fields.update(overrides)
    return pb.NodeMetricsSample(**fields)


def report(stub, samples, node_id="n1", boot_id=1):
    return stub.ReportNodeMetrics(pb.ReportNodeMetricsRequest(
        node_id=node_id, boot_id=boot_id, samples=samples, interval_seconds=1.0),
        timeout=DEADLINE)


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_report_stores_samples_and_latest(manager):
    """Samples become raw points and the node's latest sample; a resent batch counts
    once; a deleted node's are forgotten."""
    parts, stub = manager
    stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=1), timeout=DEADLINE)
    now = int(dbmod.now_ms())
    batch = [wire_sample(now - 2000, cpu=10.0), wire_sample(now - 1000, cpu=30.0)]
    assert report(stub, batch).accepted == 2
    assert report(stub, batch).accepted == 2          # a retry: stored once
    points = parts.node_metrics.points("n1", 60)
    assert [p["cpu"] for p in points] == [10.0, 30.0]
    assert set(points[0]) == POINT_KEYS and points[0]["resolution_seconds"] == 1.0
    latest = parts.node_metrics.latest(["n1", "n2"])
    assert set(latest) == {"n1"} and set(latest["n1"]) == RESOURCE_KEYS
    assert latest["n1"]["cpu"] == 30.0 and latest["n1"]["disks"] == [
        {"mount": "/", "used": 10, "total": 100}]
    with parts.db.connection_context():
        rows = parts.db.execute_sql("SELECT SUM(samples) FROM node_metric_minute").fetchone()
    assert rows[0] == 2
    parts.node_metrics.forget("n1")                   # the node was deleted
    assert parts.node_metrics.latest(["n1"]) == {} and parts.node_metrics.points("n1", 60) == []


@pytest.mark.parametrize("bad", [
    {"memory_used": -1}, {"cpu": -0.5}, {"cpu": 100.5}, {"cpu": math.nan},
    {"net_rx_rate": math.inf}, {"time": 0},
    {"disks": [pb.NodeDisk(mount="/", used=-1, total=1)]},
    {"disks": [pb.NodeDisk(mount="", used=1, total=1)]},
    {"disks": [pb.NodeDisk(mount=f"/m{i}", used=1, total=1) for i in range(65)]},
])
def test_bad_samples_fail_the_whole_request(manager, bad):
    """A negative, non-finite or oversized figure is INVALID_ARGUMENT and nothing is stored."""
    parts, stub = manager
    stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=1), timeout=DEADLINE)
    now = int(dbmod.now_ms())
    call = lambda: report(stub, [wire_sample(now), wire_sample(now + 1, **bad)])  # noqa: E731
    assert code_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert parts.node_metrics.latest(["n1"]) == {}


def test_unregistered_old_boot_and_oversized_requests_refused(manager):
    """An unknown node is NOT_FOUND, an older boot FAILED_PRECONDITION, 1,001 samples
    INVALID_ARGUMENT, a bad node_id INVALID_ARGUMENT."""
    parts, stub = manager
    now = int(dbmod.now_ms())
    assert code_of(lambda: report(stub, [wire_sample(now)])) == grpc.StatusCode.NOT_FOUND
    stub.RegisterNode(pb.RegisterNodeRequest(node_id="n1", boot_id=5), timeout=DEADLINE)
    assert code_of(lambda: report(stub, [wire_sample(now)], boot_id=4)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    many = [wire_sample(now - i) for i in range(1001)]
    assert code_of(lambda: report(stub, many, boot_id=5)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: report(stub, [], node_id="../x")) == grpc.StatusCode.INVALID_ARGUMENT


# ---- storage: resolution and retention --------------------------------------------------

@pytest.fixture
def store(db_url):
    """A NodeMetricsStore for node n1 on each engine, with a clock the test moves."""
    db = dbmod.open_database(db_url)
    migrations.migrate(db)
    clock = [NOW]
    found = NodeMetricsStore(db, Registry({"n1": (1, 0)}), retention=86400,
                             clock=lambda: clock[0])
    found.clock = clock
    yield found
    dbmod.close_database(db)


def fill(store, first_ms, count, step_ms):
    """Report `count` samples every `step_ms` from `first_ms`, in batches of 1,000."""
    samples = [wire_sample(first_ms + i * step_ms, cpu=float(i % 50)) for i in range(count)]
    for start in range(0, count, 1000):
        store.report("n1", 1, samples[start:start + 1000], step_ms / 1000)


def test_an_hour_at_ten_seconds_is_answered_raw(store):
    """360 samples within the hour come back as they are, oldest first, at their interval."""
    now = int(NOW * 1000)
    fill(store, now - 3_590_000, 360, 10_000)
    points = store.points("n1", 3600)
    assert len(points) == 360 and points[0]["resolution_seconds"] == 10.0
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)


def test_too_many_raw_samples_fall_back_to_minutes(store):
    """An hour at one second (3,600 samples) is answered in one-minute means and peaks."""
    now = int(NOW * 1000)
    fill(store, now - 3_599_000, 3600, 1000)
    points = store.points("n1", 3600)
    assert 60 <= len(points) <= 61 and {p["resolution_seconds"] for p in points} == {60.0}
    full = points[1]
    first = now - 3_599_000
    inside = [i % 50 for i in range(3600) if 0 <= first + i * 1000 - full["time"] < 60_000]
    assert len(inside) == 60 and full["cpu"] == pytest.approx(sum(inside) / 60, abs=0.01)
    assert full["cpu_max"] == max(inside) and full["memory_used"] == 1000


def test_seven_days_of_minutes_come_in_at_most_1000_points(db_url):
    """A week of one-minute rows is answered in buckets of whole minutes, <= 1,000 points,
    oldest first, with sample-weighted means and the peak cpu."""
    db = dbmod.open_database(db_url)
    migrations.migrate(db)
    store = NodeMetricsStore(db, Registry({"n1": (1, 0)}), retention=604800,
                             clock=lambda: NOW)
    first = int(NOW * 1000) // 60_000 * 60_000 - 7 * 86400 * 1000
    rows = [("n1", first + i * 60_000, float(i % 7), 2, 5.0, 0.1, 0.1, 0.1, 1.0, 1.0, 1.0,
             1.0, 100.0, 200.0, 0.0, 0.0, 10.0, 20.0) for i in range(7 * 1440 + 1)]
    backend = backend_of(db)
    with db.connection_context(), db.atomic():
        backend.execute_many(db.cursor(), backend.sql(
            "INSERT INTO node_metric_minute (node_id, minute, cpu_max, samples, cpu, load1, "
            "load5, load15, disk_read_rate, disk_write_rate, net_rx_rate, net_tx_rate, "
            "memory_used, memory_total, swap_used, swap_total, disk_used, disk_total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), rows)
    points = store.points("n1", 604800)
    width = bucket_seconds(604800)
    assert width == 660 and 900 <= len(points) <= MAX_POINTS
    assert {p["resolution_seconds"] for p in points} == {660.0}
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)
    assert all(p["cpu"] == 5.0 and p["cpu_max"] == 6.0 and p["memory_used"] == 100
               for p in points[1:-1])
    dbmod.close_database(db)


def test_bucket_width_keeps_every_duration_within_1000_points():
    """For every duration the bucket is whole minutes and the answer at most 1,000 points."""
    for duration in (1, 3600, 3601, 59_940, 59_941, 86400, 604800, 31_536_000):
        width = bucket_seconds(duration)
        assert width % 60 == 0 and math.ceil(duration / width) + 1 <= MAX_POINTS


def test_purge_keeps_raw_an_hour_and_minutes_the_retention(store):
    """Raw samples go after an hour, minute rollups after node_metrics_retention."""
    now = int(NOW * 1000)
    fill(store, now - 600_000, 60, 10_000)
    store.clock[0] = NOW + 3600 + 60
    assert store.purge() == 60
    points = store.points("n1", 7200)
    assert len(points) == 10 and points[0]["resolution_seconds"] == 60.0
    store.clock[0] = NOW + 86400 + 60
    assert store.purge() == 10
    assert store.points("n1", 86400) == []
    assert store.latest(["n1"])["n1"]["time"] == now - 600_000 + 590_000


def test_samples_older_than_the_raw_hour_are_skipped(store):
    """A sample too old to recompute its minute is not stored (nor counted accepted)."""
    now = int(NOW * 1000)
    accepted = store.report("n1", 1, [wire_sample(now - 3_700_000), wire_sample(now)], 10)
    assert accepted == 1 and len(store.points("n1", 86400)) == 1


def test_concurrent_reports_of_one_node_in_any_order_all_succeed(store):
    """Two reports of one node's overlapping samples, one oldest first and one newest
    first, written at once round after round: both succeed (PostgreSQL locks the rows in
    key order, so they never deadlock) and each sample is stored once."""
    now = int(NOW * 1000)
    failures = []
    for round_ in range(3):
        first = now - 3_500_000 + round_ * 1_000_000
        samples = [wire_sample(first + i * 1000, cpu=float(i % 50)) for i in range(1000)]
        barrier = threading.Barrier(2)

        def send(batch):
            barrier.wait()
            try:
                store.report("n1", 1, batch, 1.0)
            except Exception as exc:  # noqa: BLE001 - the test reports any failure
                failures.append(exc)

        threads = [threading.Thread(target=send, args=(batch,))
                   for batch in (samples, samples[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert failures == []
    points = store.points("n1", 3600)
    assert {p["resolution_seconds"] for p in points} == {60.0}
    with store._db.connection_context():
        stored = store._db.execute_sql("SELECT COUNT(*), SUM(samples) FROM node_metric_minute")
        minutes, counted = stored.fetchone()
    assert counted == 3000 and minutes == len(points)


# ---- old peers ------------------------------------------------------------------------

def test_an_older_daemon_without_node_metrics_still_works(manager):
    """A daemon that never calls ReportNodeMetrics registers and reports as before; its
    node has resources null and no metric points."""
    parts, stub = manager
    stub.RegisterNode(pb.RegisterNodeRequest(node_id="old", boot_id=1,
                                             advertise_address="127.0.0.1:1"), timeout=DEADLINE)
    reply = stub.SyncAgentStates(pb.SyncAgentStatesRequest(
        node_id="old", boot_id=1, seq=1, full=True,
        states=[pb.AgentState(agent_id="a", status=pb.AGENT_STATUS_RUNNING, pid=5)]),
        timeout=DEADLINE)
    assert reply.success
    service = FleetService(parts.nodes, DaemonClientPool(""), node_metrics=parts.node_metrics)
    assert service.get_node("old")["resources"] is None
    assert [n["resources"] for n in service.list_nodes()[0]] == [None]
    assert service.node_metrics("old", 3600) == []
    with pytest.raises(errors.InvalidArgument):
        service.node_metrics("old", 604801)
    with pytest.raises(errors.NotFound):
        service.node_metrics("nope", 60)


def test_a_manager_without_the_method_does_not_break_the_daemon(tmp_path, caplog):
    """Against a manager answering UNIMPLEMENTED the daemon keeps reporting, logs it once
    and keeps its unsent samples bounded."""
    db = dbmod.open_database(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrations.migrate(db)
    parts = build_manager(db)
    parts.start()
    old = ManagerServicer(parts.nodes, parts.reports)     # no node metrics: UNIMPLEMENTED
    server, port = create_server("127.0.0.1:0", [old.add_to])
    server.start()
    caplog.set_level(logging.INFO, logger="fleet.daemon.nodereport")
    try:
        with running_daemon(tmp_path, [agent("a1")], manager=f"127.0.0.1:{port}",
                            sync_interval=0.3) as (daemon, _):
            wait_for(lambda: daemon.node_sampler.unsent_count() >= 2, timeout=15)
            sent = daemon.syncer.reports_sent
            wait_for(lambda: daemon.syncer.reports_sent >= sent + 5, timeout=15)
            assert parts.nodes.get_agent(daemon.node_id, "a1")["status"] == "running"
            assert daemon.syncer.node_metrics.samples_sent == 0
    finally:
        server.stop(grace=None).wait()
        parts.stop()
    told = [r for r in caplog.records if "does not serve ReportNodeMetrics" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in caplog.records]


def test_sender_converts_samples_to_the_wire(tmp_path):
    """A NodeSample becomes a NodeMetricsSample with every figure and disk."""
    proc, block = fake_proc(tmp_path)
    sampler = NodeSampler(proc, block)
    sampler.sample(1)
    sample = sampler.sample(2)
    wire = node_sample(sample)
    assert wire.time == 2 and wire.memory_total == sample.memory_total
    assert [(d.mount, d.total) for d in wire.disks] == [(d.mount, d.total) for d in sample.disks]


# ---- real processes ----------------------------------------------------------------------

def test_real_daemon_fills_resources_and_the_metrics_endpoint(cluster):
    """A real daemon (metrics_interval = 1) and manager: the node's resources appear in
    get and list, and /metrics returns its points; bad durations 400, unknown node 404."""
    manager = cluster.run("manager", cluster.manager_config(offline_after=30))
    api = Api(manager.port("http"))
    cluster.run("daemon", cluster.daemon_config("n1", manager.port("grpc"), agents_toml(["a"])))

    def resources():
        status, body = api.get("/api/v1/nodes/n1")
        return status == 200 and body["node"]["resources"]

    found = wait_for(resources, timeout=30)
    assert set(found) == RESOURCE_KEYS and 0 <= found["cpu"] <= 100
    assert 0 < found["memory_used"] <= found["memory_total"] and found["disks"]
    status, body = api.get("/api/v1/nodes")
    assert status == 200 and body["nodes"][0]["resources"]["time"] >= found["time"]

    def points():
        status, body = api.get("/api/v1/nodes/n1/metrics?duration=600")
        return status == 200 and len(body["points"]) >= 2 and body["points"]

    got = wait_for(points, timeout=30)
    assert set(got[0]) == POINT_KEYS and got[0]["resolution_seconds"] == 1.0
    assert got[0]["time"] < got[-1]["time"]
    for bad in ("0", "604801", "x"):
        status, body = api.get(f"/api/v1/nodes/n1/metrics?duration={bad}")
        assert status == 400 and "duration" in body["error"]["message"], body
    assert api.get("/api/v1/nodes/nope/metrics")[0] == 404


class _RefusingClient:
    """A ManagerClient double whose ReportNodeMetrics raises `error`."""

    def __init__(self, error):
        self.error = error
        self.calls = 0

    def report_node_metrics(self, request):
        self.calls += 1
        raise self.error


def test_sender_keeps_samples_when_unreachable_and_drops_a_refused_batch(tmp_path):
    """An unreachable manager keeps the batch for the next try; one refusing it as
    invalid drops it (resending would fail forever); UNIMPLEMENTED pauses sending."""
    from fleet.daemon.manager_client import Unimplemented
    from fleet.daemon.nodereport import NodeMetricsSender
    proc, block = fake_proc(tmp_path)
    sampler = NodeSampler(proc, block)
    for t in range(4):
        sampler.sample(t)
    node = pb.RegisterNodeRequest(node_id="n1", boot_id=1)
    clock = [0.0]
    down = NodeMetricsSender(_RefusingClient(errors.Unavailable("down")), sampler, 1.0,
                             clock=lambda: clock[0])
    assert down.send(node) == 0 and sampler.unsent_count() == 3
    old = _RefusingClient(Unimplemented("old manager"))
    paused = NodeMetricsSender(old, sampler, 1.0, clock=lambda: clock[0])
    paused.send(node)
    paused.send(node)
    assert old.calls == 1 and sampler.unsent_count() == 3
    clock[0] = 601.0
    paused.send(node)
    assert old.calls == 2
    NodeMetricsSender(_RefusingClient(errors.InvalidArgument("bad")), sampler, 1.0).send(node)
    assert sampler.unsent_count() == 0


def test_node_metrics_retention_is_read_and_checked():
    """[manager] node_metrics_retention defaults to a week; under an hour (the raw
    samples' span) is a config error naming the key."""
    from fleet.config import read_manager
    problems = []
    assert read_manager({}, problems).node_metrics_retention == 604800 and problems == []
    assert read_manager({"node_metrics_retention": 86400}, problems).node_metrics_retention \
        == 86400
    read_manager({"node_metrics_retention": 600}, problems)
    assert len(problems) == 1 and "node_metrics_retention" in problems[0], problems
