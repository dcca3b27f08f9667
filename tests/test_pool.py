"""The daemon client pool: one live channel per node, deadlines, errors, eviction."""
import random
import threading

import grpc
import pytest

from fleet import errors
from fleet.manager.pool import DaemonClientPool, connectivity
from fleet.rpc import open_channel
from fleet.rwlock import RWLock
from fleet.v1 import fleet_pb2
from tests.fake_daemon import agent_info, serve_fake
from tests.helpers import wait_for


class CountingChannel(grpc.Channel):
    """A real channel that tells its factory when it is closed."""

    def __init__(self, channel, factory, address):
        self._channel = channel      # the name connectivity() looks for
        self._factory = factory
        self.address = address
        self.closed = False

    def subscribe(self, callback, try_to_connect=False):
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        self._channel.unsubscribe(callback)

    def unary_unary(self, *args, **kwargs):
        return self._channel.unary_unary(*args, **kwargs)

    def unary_stream(self, *args, **kwargs):
        return self._channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args, **kwargs):
        return self._channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args, **kwargs):
        return self._channel.stream_stream(*args, **kwargs)

    def close(self):
        with self._factory.lock:
            assert not self.closed, "channel closed twice"
            self.closed = True
            self._factory.open.discard(self)
        self._channel.close()


class CountingFactory:
    """The pool's channel factory, counting channels created and still open."""

    def __init__(self):
        self.lock = threading.Lock()
        self.created = 0
        self.open: set[CountingChannel] = set()

    def __call__(self, address, token, tls):
        channel = CountingChannel(open_channel(address, token, tls), self, address)
        with self.lock:
            self.created += 1
            self.open.add(channel)
        return channel

    def close_leftovers(self):
        for channel in list(self.open):
            channel.close()


@pytest.fixture
def factory():
    made = CountingFactory()
    yield made
    made.close_leftovers()


@pytest.fixture
def daemon():
    server, address, fake = serve_fake("n1", [agent_info("a1"), agent_info("a2")])
    yield address, fake
    fake.hold.set()
    server.stop(None)


def _channel_of(pool, node_id):
    """The channel the pool holds for node_id (test-only peek)."""
    return pool._entries[node_id].channel


def test_calls_carry_node_id_and_return_protos(daemon, factory):
    """Each call reaches the daemon with the expected node_id and returns its answer."""
    address, fake = daemon
    pool = DaemonClientPool(channel_factory=factory)
    with pool.client("n1", address) as client:
        assert [a.agent_id for a in client.list_agents()] == ["a1", "a2"]
        assert client.operate("a1", "stop").status == fleet_pb2.AGENT_STATUS_STOPPED
        assert len(client.metrics("a1", 60)) == 6
        assert client.logs("a1", 2, "") == (["line 299", "line 300"], False, 300)
        assert client.logs("a1", 5, "line 1") [0][-1] == "line 199"
    assert {request.node_id for _, request in fake.calls} == {"n1"}
    assert factory.created == 1 and len(pool) == 1
    pool.close_all()
    assert factory.open == set()


@pytest.mark.parametrize("code, kind", [
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.Conflict),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    (grpc.StatusCode.UNAUTHENTICATED, errors.DaemonError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.DaemonError),
    (grpc.StatusCode.INTERNAL, errors.DaemonError),
    (grpc.StatusCode.PERMISSION_DENIED, errors.DaemonError),
])
def test_daemon_status_codes_become_fleet_errors(daemon, factory, code, kind):
    """A daemon's status code becomes the FleetError kind of DESIGN.md's table."""
    address, fake = daemon
    fake.fail = (code, "told to fail")
    pool = DaemonClientPool(channel_factory=factory)
    with pool.client("n1", address) as client, pytest.raises(kind) as caught:
        client.list_agents()
    assert type(caught.value) is kind
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    pool.close_all()


def test_node_id_mismatch_is_a_conflict(daemon, factory):
    """An address reused by another node answers FAILED_PRECONDITION: Conflict."""
    address, _ = daemon
    pool = DaemonClientPool(channel_factory=factory)
    with pool.client("other-node", address) as client, pytest.raises(errors.Conflict):
        client.operate("a1", "start")
    pool.close_all()


def test_deadline_exceeded(daemon, factory):
    """A daemon slower than the deadline gives DeadlineExceeded, operate its own deadline."""
    address, fake = daemon
    fake.holding = True
    pool = DaemonClientPool(channel_factory=factory, timeout=0.2, operate_timeout=0.3)
    with pool.client("n1", address) as client:
        with pytest.raises(errors.DeadlineExceeded):
            client.logs("a1", 10)
        with pytest.raises(errors.DeadlineExceeded):
            client.operate("a1", "start")
    fake.hold.set()
    pool.close_all()


def test_wrong_cluster_token_is_a_daemon_error(factory):
    """UNAUTHENTICATED from the daemon is the daemon's problem (502), not the caller's."""
    server, address, _ = serve_fake("n1", [agent_info("a1")], token="right")
    try:
        good = DaemonClientPool("right", channel_factory=factory)
        with good.client("n1", address) as client:
            assert len(client.list_agents()) == 1
        bad = DaemonClientPool("wrong", channel_factory=factory)
        with bad.client("n1", address) as client, pytest.raises(errors.DaemonError):
            client.list_agents()
        good.close_all()
        bad.close_all()
    finally:
        server.stop(None)


def test_unreachable_daemon_is_unavailable_and_rebuilt(factory):
    """A refused connection gives Unavailable, and the next lookup builds a fresh channel."""
    pool = DaemonClientPool(channel_factory=factory, timeout=2)
    with pool.client("n1", "127.0.0.1:1") as client, pytest.raises(errors.Unavailable):
        client.list_agents()
    with pool.client("n1", "127.0.0.1:1"):
        pass
    assert factory.created == 2 and len(factory.open) == 1
    pool.close_all()


def test_transient_failure_channel_is_rebuilt(factory):
    """A channel gRPC reports in TRANSIENT_FAILURE is replaced at the next lookup."""
    pool = DaemonClientPool(channel_factory=factory)
    with pool.client("n1", "127.0.0.1:1"):
        pass
    channel = _channel_of(pool, "n1")
    channel._channel._channel.check_connectivity_state(True)   # make it try, and fail
    wait_for(lambda: connectivity(channel) == grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    with pool.client("n1", "127.0.0.1:1"):
        pass
    assert _channel_of(pool, "n1") is not channel and channel.closed
    pool.close_all()


def test_address_change_replaces_after_calls_in_flight(factory):
    """A new address builds a new channel; the old one closes when its last lease ends."""
    pool = DaemonClientPool(channel_factory=factory)
    with pool.client("n1", "127.0.0.1:7001") as old_client:
        with pool.client("n1", "127.0.0.1:7002") as new_client:
            assert new_client is not old_client and new_client.address == "127.0.0.1:7002"
        old_channel = next(c for c in factory.open if c.address == "127.0.0.1:7001")
        assert not old_channel.closed          # still in use by old_client
    assert old_channel.closed
    assert [c.address for c in factory.open] == ["127.0.0.1:7002"]
    pool.close_all()


def test_lru_eviction_keeps_recent_and_waits_for_leases(factory):
    """At capacity the least recently used client goes; a leased one closes on release."""
    pool = DaemonClientPool(channel_factory=factory, capacity=3)
    for n in (1, 2, 3):
        with pool.client(f"n{n}", f"127.0.0.1:{7000 + n}"):
            pass
    with pool.client("n1", "127.0.0.1:7001"):
        pass                                   # n2 is now the least recently used
    lease = pool.client("n2", "127.0.0.1:7002")
    lease.__enter__()                          # n2 becomes recent...
    with pool.client("n3", "127.0.0.1:7003"):
        pass
    with pool.client("n1", "127.0.0.1:7001"):
        pass                                   # ...but n2 is least recent again, and leased
    with pool.client("n4", "127.0.0.1:7004"):
        pass
    assert sorted(pool._entries) == ["n1", "n3", "n4"]
    assert "127.0.0.1:7002" in {c.address for c in factory.open}   # leased: still open
    lease.__exit__(None, None, None)
    assert sorted(c.address for c in factory.open) == ["127.0.0.1:7001", "127.0.0.1:7003",
                                                      "127.0.0.1:7004"]
    pool.close_all()
    assert factory.open == set()


def test_close_one_node_and_close_all(factory):
    """close(node) drops one client, close_all() every one; both wait for leases."""
    pool = DaemonClientPool(channel_factory=factory)
    for n in range(3):
        with pool.client(f"n{n}", f"127.0.0.1:{7000 + n}"):
            pass
    pool.close("n0")
    pool.close("missing")                      # no such node: nothing to do
    assert len(pool) == 2 and len(factory.open) == 2
    with pool.client("n1", "127.0.0.1:7001"):
        pool.close_all()
        assert len(pool) == 0 and len(factory.open) == 1
    assert factory.open == set()


def test_concurrent_lookups_build_one_channel_per_node(factory):
    """32 threads x 1000 lookups on 100 nodes build exactly 100 channels."""
    pool = DaemonClientPool(channel_factory=factory)
    failures = []
    start = threading.Barrier(32, timeout=30)

    def worker(seed):
        rng = random.Random(seed)
        start.wait()   # all threads race for the same first nodes, in the same order
        try:
            for i in range(1000):
                n = i if i < 100 else rng.randrange(100)
                with pool.client(f"n{n}", f"127.0.0.1:{20000 + n}") as client:
                    assert client.node_id == f"n{n}"
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    _run_threads(worker, 32)
    assert failures == []
    assert factory.created == 100 and len(factory.open) == 100 == len(pool)
    pool.close_all()
    assert factory.open == set()


class RendezvousLock(RWLock):
    """Holds every writer until `parties` threads have missed the fast path."""

    def __init__(self, parties):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.armed = True

    def acquire_write(self):
        if self.armed:
            self.barrier.wait()
        super().acquire_write()


def test_racing_misses_build_one_channel(factory):
    """Threads that all missed the fast path queue as writers; only the first builds."""
    pool = DaemonClientPool(channel_factory=factory)
    pool._lock = RendezvousLock(8)
    clients = []
    _run_threads(lambda n: clients.append(_lookup(pool, "n0", "127.0.0.1:7000")), 8)
    assert factory.created == 1 and len({id(c) for c in clients}) == 1
    pool._lock.armed = False
    pool.close_all()


def _lookup(pool, node_id, address):
    with pool.client(node_id, address) as client:
        return client


@pytest.mark.parametrize("capacity", [1024, 40])
def test_lookups_with_address_changes_and_closes(factory, capacity):
    """Under concurrent address changes, closes and eviction: no error, no leak,
    no channel closed while leased, at most one open channel per node at rest."""
    pool = DaemonClientPool(channel_factory=factory, capacity=capacity)
    versions = [0] * 100
    done = threading.Event()
    failures = []

    def address(n):
        return f"127.0.0.1:{20000 + n * 10 + versions[n] % 10}"

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(1000):
                n = rng.randrange(100)
                wanted = address(n)
                with pool.client(f"n{n}", wanted) as client:
                    assert client.address == wanted and client.node_id == f"n{n}"
                    assert not client._channel.closed
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    chaos = threading.Thread(target=_mutate, args=(pool, versions, done), daemon=True)
    chaos.start()
    _run_threads(worker, 32)
    done.set()
    chaos.join(10)
    assert failures == []
    nodes = [_node_of(c.address) for c in factory.open]
    assert len(nodes) == len(set(nodes)), "two open channels for one node"
    assert len(factory.open) == len(pool) <= capacity
    assert factory.created > 100                  # the mutator forced rebuilds
    pool.close_all()
    assert factory.open == set()


def _mutate(pool, versions, done):
    """Until `done`: move nodes to new addresses and close their clients, at random."""
    rng = random.Random(99)
    while not done.is_set():
        n = rng.randrange(100)
        if rng.random() < 0.5:
            versions[n] += 1
        else:
            pool.close(f"n{n}")


def _node_of(address):
    return (int(address.rsplit(":", 1)[1]) - 20000) // 10


def _run_threads(target, count):
    threads = [threading.Thread(target=target, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
