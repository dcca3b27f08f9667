"""The daemon's state syncer against a real in-process manager over gRPC."""
import dataclasses
import threading

import grpc
import pytest

from fleet import config as configuration
from fleet.daemon.app import Daemon
from fleet.daemon.manager_client import ManagerClient, local_ip_towards
from fleet.errors import DeadlineExceeded
from fleet.manager.app import Manager
from fleet.rpc import create_server
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from fleet.states import State
from tests.daemon_harness import agent, daemon_config, started
from tests.helpers import wait_for

CLUSTER = "cluster-token-syncer-tests"


def manager_config(tmp_path, grpc="127.0.0.1:0"):
    problems = []
    config = configuration.parse("manager", {"manager": {
        "http": "127.0.0.1:0", "grpc": grpc, "db": f"sqlite:///{tmp_path}/m.db",
        "api_token": "api-token-syncer-tests", "cluster_token": CLUSTER, "offline_after": 3}},
        problems)
    assert not problems, problems
    return config.manager


def daemon_for(tmp_path, manager_port, agents, **daemon):
    config = daemon_config(tmp_path, agents, manager=f"127.0.0.1:{manager_port}",
                           cluster_token=CLUSTER, node_id="n1", **daemon)
    return Daemon(config)


def stored(manager, agent_id):
    try:
        agents = {a["agent_id"]: a for a in manager.parts.nodes.list_agents("n1")}
    except Exception:  # noqa: BLE001 - the node is not registered yet
        return None
    return agents.get(agent_id)


def test_register_then_full_report(tmp_path):
    """At start the daemon registers and its agents appear in the manager's database."""
    with started(Manager(manager_config(tmp_path))) as manager, \
            started(daemon_for(tmp_path, manager.grpc_port, [agent("a"), agent("b")])):
        assert wait_for(lambda: (stored(manager, "a") or {}).get("status") == "running")
        assert wait_for(lambda: (stored(manager, "b") or {}).get("pid"))


def test_a_change_is_reported_promptly_between_full_reports(tmp_path):
    """With a 60 s sync interval, a stop still reaches the manager within a second."""
    with started(Manager(manager_config(tmp_path))) as manager, \
            started(daemon_for(tmp_path, manager.grpc_port, [agent("a")], sync_interval=60,
                               heartbeat_interval=60)) as daemon:
        wait_for(lambda: (stored(manager, "a") or {}).get("status") == "running")
        daemon.supervisor.operate("a", "stop")
        wait_for(lambda: stored(manager, "a")["status"] == "stopped", timeout=1.0)


def test_a_manager_that_forgot_the_node_gets_a_registration_and_a_full_report(tmp_path):
    """After the node is deleted on the manager, the daemon registers again and reports all."""
    with started(Manager(manager_config(tmp_path))) as manager, \
            started(daemon_for(tmp_path, manager.grpc_port, [agent("a")])) as daemon:
        wait_for(lambda: stored(manager, "a"))
        manager.parts.nodes.delete_node("n1", force=True)
        daemon.supervisor.operate("a", "restart")
        wait_for(lambda: stored(manager, "a") and stored(manager, "a")["status"] == "running",
                 timeout=5)


def test_manager_down_then_back_converges_and_pending_stays_bounded(tmp_path):
    """With the manager down, agents keep running and pending holds one entry per agent;
    once the manager is back its database matches the node within two sync intervals."""
    first = Manager(manager_config(tmp_path))
    first.start()
    port = first.grpc_port
    first.close()
    agents = [agent("a"), agent("b", autostart=False)]
    with started(daemon_for(tmp_path, port, agents)) as daemon:
        for _ in range(3):
            daemon.supervisor.operate("a", "restart")
        daemon.supervisor.operate("b", "start")
        assert daemon.syncer.pending_count() <= 2
        assert daemon.supervisor.runner("a").snapshot().state in (State.STARTING, State.RUNNING)
        config = dataclasses.replace(manager_config(tmp_path), grpc=f"127.0.0.1:{port}")
        with started(Manager(config)) as manager:
            truth = {s.agent_id: s.pid for s in daemon.supervisor.snapshots()}
            wait_for(lambda: all((stored(manager, i) or {}).get("pid") == pid
                                 for i, pid in truth.items()), timeout=2 * 0.5 + 1.0)  # two sync intervals, and slack


def test_manager_refuses_calls_without_the_cluster_token(tmp_path):
    """ManagerService answers UNAUTHENTICATED to no token or a wrong one, and stores nothing."""
    with started(Manager(manager_config(tmp_path))) as manager:
        channel = grpc.insecure_channel(f"127.0.0.1:{manager.grpc_port}")
        stub = pb_grpc.ManagerServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer not-the-token"),),
                         (("authorization", "Bearer api-token-syncer-tests"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.RegisterNode(pb.RegisterNodeRequest(node_id="intruder"), metadata=metadata,
                                  timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        assert manager.parts.nodes.list_nodes() == []


class HungManager:
    """A ManagerService on 127.0.0.1 whose every call blocks until close(): a manager that
    accepts calls and never answers."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0
        hung = self

        class Servicer(pb_grpc.ManagerServiceServicer):
            def RegisterNode(self, request, context):
                hung.calls += 1
                hung.release.wait(30)
                context.abort(grpc.StatusCode.UNAVAILABLE, "released")

        self.server, port = create_server("127.0.0.1:0", [
            lambda s: pb_grpc.add_ManagerServiceServicer_to_server(Servicer(), s)], token=CLUSTER)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def close(self):
        self.release.set()
        self.server.stop(None)


def test_a_manager_that_never_answers_fails_over_to_the_next_on_deadline_exceeded(tmp_path):
    """A call that meets its deadline (DEADLINE_EXCEEDED) moves the client to the next
    manager address, as UNAVAILABLE does; the next call reaches the answering manager."""
    hung = HungManager()
    try:
        with started(Manager(manager_config(tmp_path))) as manager:
            live = f"127.0.0.1:{manager.grpc_port}"
            client = ManagerClient((hung.address, live), CLUSTER, deadline=0.5)
            request = pb.RegisterNodeRequest(node_id="n1", boot_id=1)
            with pytest.raises(DeadlineExceeded):
                client.register(request)
            assert hung.calls == 1 and client.address == live
            client.register(request)
            assert [n["node_id"] for n in manager.parts.nodes.list_nodes()] == ["n1"]
            client.close()
    finally:
        hung.close()


def test_registration_facts_are_computed_for_the_manager_registered_with(tmp_path):
    """After failing over from an unreachable first manager, the daemon registers with the
    IP (and advertised address) routed towards the manager it reached, not the first."""
    from tests.realfleet import free_port

    outside = local_ip_towards("192.0.2.1:9")    # the interface a non-loopback route uses
    if outside.startswith("127."):
        pytest.skip("no non-loopback interface to tell the managers apart")
    config = dataclasses.replace(manager_config(tmp_path), grpc="0.0.0.0:0")
    with started(Manager(config)) as manager:
        dead = f"127.0.0.1:{free_port()}"
        daemon = Daemon(daemon_config(
            tmp_path, [agent("a")], manager=f"{dead},{outside}:{manager.grpc_port}",
            cluster_token=CLUSTER, node_id="n1", listen="0.0.0.0:0"))
        with started(daemon):
            node = wait_for(lambda: manager.parts.nodes.list_nodes(), timeout=10)[0]
            assert node["ip"] == outside
            assert node["advertise_address"] == f"{outside}:{daemon.port}"
