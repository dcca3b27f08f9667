"""gRPC health and reflection on both roles: the standard grpc.health.v1 service
answers without the cluster token and turns NOT_SERVING before the server stops;
reflection needs the token and describes the API well enough to call it with no
generated code."""
import grpc
import psutil
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from fleet.manager.app import Manager
from tests.daemon_harness import agent, running_daemon
from tests.helpers import wait_for
from tests.procs import FleetProcess
from tests.realfleet import API_TOKEN, CLUSTER_TOKEN, MANAGER, agents_toml
from tests.test_syncer import CLUSTER, manager_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DAEMON_SERVICE = "fleet.v1.DaemonService"
MANAGER_SERVICE = "fleet.v1.ManagerService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

ALL_DAEMON = """
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
node_id = "n1"
sync_interval = 0.5
"""


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def check(port, service=""):
    """The health status of `service` on 127.0.0.1:port, asked with no credentials."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


class _StreamToken(grpc.StreamStreamClientInterceptor):
    """Adds the token to stream-stream calls (the reflection client's only kind)."""

    def __init__(self, token):
        self.metadata = bearer(token)

    def intercept_stream_stream(self, continuation, call_details, request_iterator):
        details = call_details._replace(metadata=list(call_details.metadata or ()) + list(self.metadata))
        return continuation(details, request_iterator)


def reflection_channel(port, token):
    """A channel whose reflection calls carry `token` (none if empty)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return grpc.intercept_channel(channel, _StreamToken(token)) if token else channel


@pytest.fixture
def daemon(tmp_path):
    """An in-process daemon with the cluster token and two real agents."""
    with running_daemon(tmp_path, [agent("a1"), agent("a2")], token=CLUSTER) as (node, _):
        yield node


@pytest.fixture
def manager(tmp_path):
    """An in-process manager, shut down the way `--role manager` does it."""
    made = Manager(manager_config(tmp_path))
    made.start()
    yield made
    made.stop_http()
    made.close()


def stop_watching_health(server, port, service, seen):
    """Make server.stop() first record what health says of `service` at that moment."""
    real_stop = server.stop

    def stop(grace):
        if not seen:
            seen.append(check(port, service))
        return real_stop(grace)

    server.stop = stop


def test_the_daemon_is_serving_to_a_probe_without_token(daemon):
    """Health Check with no token: SERVING for "" and fleet.v1.DaemonService."""
    assert check(daemon.port) == SERVING
    assert check(daemon.port, DAEMON_SERVICE) == SERVING


def test_the_manager_is_serving_to_a_probe_without_token(manager):
    """Health Check with no token: SERVING for "" and fleet.v1.ManagerService."""
    assert check(manager.grpc_port) == SERVING
    assert check(manager.grpc_port, MANAGER_SERVICE) == SERVING


def test_an_unknown_service_is_not_found(daemon):
    """Health Check of a service the server does not have: NOT_FOUND."""
    with pytest.raises(grpc.RpcError) as failed:
        check(daemon.port, "no.such.Service")
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_api_still_needs_the_token(daemon):
    """Only health is open: a DaemonService call with no token is UNAUTHENTICATED."""
    with grpc.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
        call = channel.unary_unary(f"/{DAEMON_SERVICE}/ListAgents")
        with pytest.raises(grpc.RpcError) as failed:
            call(b"", timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_watchers_hold_no_worker_thread(daemon):
    """40 open Watch streams (the daemon has 16 gRPC workers) are all answered and leave
    calls answered: an unauthenticated watcher costs memory, not a worker."""
    with grpc.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(40)]
        assert all(next(watch).status == SERVING for watch in watches)
        assert check(daemon.port, DAEMON_SERVICE) == SERVING
        for watch in watches:
            watch.cancel()


def test_the_daemon_says_not_serving_before_its_server_stops(tmp_path):
    """Daemon.stop(): when the gRPC server is told to stop, health already says NOT_SERVING."""
    seen = []
    with running_daemon(tmp_path, [agent("a1")], token=CLUSTER) as (node, _):
        stop_watching_health(node._server, node.port, DAEMON_SERVICE, seen)
    assert seen == [NOT_SERVING]


def test_the_manager_says_not_serving_before_its_server_stops(tmp_path):
    """Manager shutdown: when the gRPC server is told to stop, health already says NOT_SERVING."""
    seen = []
    made = Manager(manager_config(tmp_path))
    made.start()
    try:
        stop_watching_health(made._grpc, made.grpc_port, MANAGER_SERVICE, seen)
    finally:
        made.stop_http()
        made.close()
    assert seen == [NOT_SERVING]


def test_role_all_serves_health_on_both_servers_and_watchers_see_the_shutdown(tmp_path):
    """`--role all`: both gRPC servers answer SERVING; on SIGTERM a Watch on each sees
    NOT_SERVING, and the process still exits 0."""
    path = tmp_path / "all.toml"
    path.write_text(MANAGER.format(http=0, grpc=0, db=tmp_path / "fleet.db", offline_after=3,
                                   api=API_TOKEN, cluster=CLUSTER_TOKEN, extra="")
                    + ALL_DAEMON.format(state=tmp_path / "state") + agents_toml(["a1"]))
    proc = FleetProcess("--role", "all", "--config", str(path), log_dir=tmp_path)
    channels = []
    try:
        ports = {MANAGER_SERVICE: proc.port("grpc"), DAEMON_SERVICE: proc.port("daemon-grpc")}
        watches = {}
        for service, port in ports.items():
            assert check(port) == SERVING and check(port, service) == SERVING
            channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
            watches[service] = health_pb2_grpc.HealthStub(channels[-1]).Watch(
                health_pb2.HealthCheckRequest(service=service), timeout=60)
            assert next(watches[service]).status == SERVING
        proc.popen.terminate()
        for service, watch in watches.items():
            assert next(watch).status == NOT_SERVING, service
    finally:
        for channel in channels:
            channel.close()
        assert proc.terminate() == 0, proc.read()
    assert "NOT_SERVING (shutting down)" in proc.read()


@pytest.mark.parametrize("role", ["daemon", "manager"])
def test_reflection_lists_the_services(request, role):
    """With the token, reflection lists the role's service, health and reflection."""
    server = request.getfixturevalue(role)
    port = server.port if role == "daemon" else server.grpc_port
    own = DAEMON_SERVICE if role == "daemon" else MANAGER_SERVICE
    with reflection_channel(port, CLUSTER) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert sorted(services) == sorted([own, HEALTH, REFLECTION])


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_reflection_without_the_token_is_unauthenticated(daemon, token):
    """Reflection with no token or a wrong one: UNAUTHENTICATED, nothing revealed."""
    with reflection_channel(daemon.port, token) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            ProtoReflectionDescriptorDatabase(channel).get_services()
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_list_agents_called_from_reflection_alone(daemon):
    """ListAgents called with classes built from reflection's descriptors (no generated
    code) returns the daemon's real, running agents."""
    with reflection_channel(daemon.port, CLUSTER) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(DAEMON_SERVICE).methods_by_name["ListAgents"]
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(f"/{DAEMON_SERVICE}/ListAgents",
                                   request_serializer=request_class.SerializeToString,
                                   response_deserializer=reply_class.FromString)
        status = reply_class.DESCRIPTOR.fields_by_name["agents"].message_type \
            .fields_by_name["status"].enum_type

        def running():
            agents = call(request_class(), metadata=bearer(CLUSTER), timeout=5).agents
            states = {a.agent_id: (status.values_by_number[a.status].name, a.pid) for a in agents}
            return states if all(s == "AGENT_STATUS_RUNNING" for s, _ in states.values()) else None

        agents = wait_for(running, timeout=15)
    assert sorted(agents) == ["a1", "a2"]
    for _, pid in agents.values():
        assert "hello from agent" in " ".join(psutil.Process(pid).cmdline())


def test_status_changes_never_wait_on_watchers_going_away():
    """Watchers hanging up while the status flips (a shutdown under probes) never block
    set(): a closing watcher's callback and a status change do not wait on each other."""
    import threading
    from concurrent import futures

    from fleet.serving import HealthService
    health = HealthService()
    health.set("", SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            streams = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(30)]
            for stream in streams:
                assert next(stream).status in (SERVING, NOT_SERVING)

            def flip():
                for i in range(200):
                    health.set("", NOT_SERVING if i % 2 else SERVING)

            flipper = threading.Thread(target=flip)
            flipper.start()
            for stream in streams:
                stream.cancel()
            flipper.join(20)
            assert not flipper.is_alive(), "set() blocked on a watcher going away"
        last = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        health.freeze(NOT_SERVING)
        health.set("", SERVING)                 # frozen: ignored
        assert wait_for(lambda: next(last).status == NOT_SERVING, timeout=10)
        last.cancel()
    finally:
        channel.close()
        server.stop(None)
