"""Absurd gRPC requests against a real in-process daemon and a real in-process manager.

Every one fails with a clear status (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED) or is answered normally; none writes
anything (the manager's database and the daemon's files are checked), none
reads a file outside state_dir, none leaves the server broken.
"""
import contextlib
import http.client
import json
import os

import grpc
import pytest

from fleet.manager.app import Manager
from fleet.manager.store.models import Agent, Node
from fleet.rpc import open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.daemon_harness import agent, running_daemon
from tests.test_syncer import CLUSTER, manager_config, started

MIB = 1024 * 1024
HOSTILE_IDS = ["", "/", "..", "../../etc/passwd", "a1/../a1", "/etc/passwd", "a1\x00",
               "\x00", "a1\n", "é", "a" * 65, "%2e%2e", "x" * 1_000_000]
BAD_NODE_IDS = ["", "/", "..", "a/b", "../n1", "n1/..", "n1\x00", "n1\n", "x" * 129, "é",
                "-n1", ".n1", "n1 ", "x" * 3 * MIB]
CLIENT_LIMITS = [("grpc.max_receive_message_length", 16 * MIB)]


def code_of(call, *args, **kwargs):
    """The status code of a call that must fail (its details kept short and clean)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    details = caught.value.details() or ""
    assert len(details) < 4096 and "root:" not in details, details[:200]
    return caught.value.code()


def files_under(root):
    """Every file below root, relative (the daemon may be renaming one meanwhile)."""
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root) for name in names}


# ---- the daemon ----

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """(daemon, stub, tmp) with one running agent a1 and state_dir tmp/state."""
    tmp = tmp_path_factory.mktemp("hostile-daemon")
    with running_daemon(tmp, [agent("a1")], node_id="d1") as (node, _):
        channel = grpc.insecure_channel(f"127.0.0.1:{node.port}", options=CLIENT_LIMITS)
        yield node, pb_grpc.DaemonServiceStub(channel), tmp
        channel.close()


@pytest.mark.parametrize("lines", [-1, -2**63, 1001, 2**31, 2**63 - 1])
def test_logs_lines_out_of_range(daemon, lines):
    """GetAgentLogs with a negative or huge `lines` is INVALID_ARGUMENT."""
    _, stub, _ = daemon
    request = pb.GetAgentLogsRequest(agent_id="a1", lines=lines)
    assert code_of(stub.GetAgentLogs, request) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("duration", [-1, -2**63, 86401, 2**31, 2**63 - 1])
def test_metrics_duration_out_of_range(daemon, duration):
    """GetAgentMetrics with a negative or huge duration is INVALID_ARGUMENT."""
    _, stub, _ = daemon
    request = pb.GetAgentMetricsRequest(agent_id="a1", duration_seconds=duration)
    assert code_of(stub.GetAgentMetrics, request) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("grep", ["\x00", "a\x00b", "x" * 1025])
def test_logs_bad_grep(daemon, grep):
    """A grep with NUL or over 1024 characters is INVALID_ARGUMENT."""
    _, stub, _ = daemon
    request = pb.GetAgentLogsRequest(agent_id="a1", grep=grep)
    assert code_of(stub.GetAgentLogs, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_hostile_agent_ids_touch_no_file(daemon):
    """Ids with '/', '..', NUL or megabytes are NOT_FOUND and create no file outside state."""
    node, stub, tmp = daemon
    before = files_under(tmp)
    calls = [(stub.GetAgentLogs, lambda i: pb.GetAgentLogsRequest(agent_id=i, lines=5)),
             (stub.GetAgentMetrics, lambda i: pb.GetAgentMetricsRequest(agent_id=i)),
             (stub.OperateAgent, lambda i: pb.OperateAgentRequest(agent_id=i, operation="stop"))]
    for agent_id in HOSTILE_IDS:
        for call, build in calls:
            assert code_of(call, build(agent_id)) in (grpc.StatusCode.NOT_FOUND,
                                                      grpc.StatusCode.INVALID_ARGUMENT)
    new = files_under(tmp) - before
    assert all(path.startswith("state" + os.sep) for path in new), new
    markers = ("passwd", "..", "\x00", "\n", "é", "%", "aaaaaaaaaa", "xxxxxxxxxx")
    assert not [path for path in new if any(m in path for m in markers)], new
    assert node.supervisor.runner("a1").snapshot().pid


@pytest.mark.parametrize("operation", ["", "START", "kill", "start\x00", "stop ", "x" * MIB],
                         ids=["empty", "upper", "kill", "nul", "space", "huge"])
def test_hostile_operations(daemon, operation):
    """An unknown operation is INVALID_ARGUMENT and leaves the agent as it was."""
    node, stub, _ = daemon
    pid = node.supervisor.runner("a1").snapshot().pid
    request = pb.OperateAgentRequest(agent_id="a1", operation=operation)
    assert code_of(stub.OperateAgent, request) == grpc.StatusCode.INVALID_ARGUMENT
    assert node.supervisor.runner("a1").snapshot().pid == pid


@pytest.mark.parametrize("node_id", ["d2", "../d1", "d1\x00", "d1/", "x" * MIB],
                         ids=["other", "dotdot", "nul", "slash", "huge"])
def test_another_node_id_is_refused(daemon, node_id):
    """A request naming another node is FAILED_PRECONDITION, whatever that name is."""
    _, stub, _ = daemon
    request = pb.OperateAgentRequest(node_id=node_id, agent_id="a1", operation="stop")
    assert code_of(stub.OperateAgent, request) == grpc.StatusCode.FAILED_PRECONDITION


def test_oversized_request_to_the_daemon(daemon):
    """A request over 4 MiB is RESOURCE_EXHAUSTED, and the daemon keeps serving."""
    _, stub, _ = daemon
    request = pb.GetAgentLogsRequest(agent_id="a1", grep="x" * (5 * MIB))
    assert code_of(stub.GetAgentLogs, request) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ListAgents(pb.ListAgentsRequest(), timeout=10).agents[0].agent_id == "a1"


# ---- the manager ----

class ManagerEnd:
    """A real manager, a ManagerService stub with the cluster token, and its database."""

    def __init__(self, manager):
        self.manager = manager
        self.channel = open_channel(f"127.0.0.1:{manager.grpc_port}", CLUSTER)
        self.stub = pb_grpc.ManagerServiceStub(self.channel)
        self.db = manager.parts.db

    def register(self, node_id="n1", **facts):
        self.stub.RegisterNode(pb.RegisterNodeRequest(node_id=node_id, boot_id=1, **facts),
                               timeout=10)

    def sync(self, states, node_id="n1", seq=1, full=False, timeout=30):
        request = pb.SyncAgentStatesRequest(node_id=node_id, boot_id=1, seq=seq, full=full,
                                            states=states)
        return self.stub.SyncAgentStates(request, timeout=timeout)

    def counts(self):
        """(nodes, agents) rows in the database."""
        with self.db.connection_context():
            return Node.select().count(self.db), Agent.select().count(self.db)


@pytest.fixture
def manager(tmp_path):
    with started(Manager(manager_config(tmp_path))) as made:
        end = ManagerEnd(made)
        yield end
        end.channel.close()


def running(agent_id, **fields):
    """A RUNNING state with a pid, fields overridden."""
    values = {"status": pb.AGENT_STATUS_RUNNING, "pid": 100, **fields}
    return pb.AgentState(agent_id=agent_id, **values)


def test_malformed_node_ids_fail_whole_requests_and_write_nothing(manager):
    """Register, Heartbeat and SyncAgentStates with a malformed node_id: INVALID_ARGUMENT."""
    for node_id in BAD_NODE_IDS:
        assert code_of(manager.stub.RegisterNode, pb.RegisterNodeRequest(node_id=node_id)) \
            == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(manager.stub.Heartbeat, pb.HeartbeatRequest(node_id=node_id)) \
            == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(manager.sync, [running("a1")], node_id=node_id) \
            == grpc.StatusCode.INVALID_ARGUMENT
    assert manager.counts() == (0, 0)


def test_unregistered_node_is_not_found(manager):
    """A report from a node never registered is NOT_FOUND and writes nothing."""
    assert code_of(manager.sync, [running("a1")], node_id="ghost") == grpc.StatusCode.NOT_FOUND
    assert manager.counts() == (0, 0)


def test_more_than_5000_states_fail_the_whole_report(manager):
    """5,001 states: INVALID_ARGUMENT and no row; 5,000 are all stored."""
    manager.register()
    too_many = [running(f"a{i}") for i in range(5001)]
    assert code_of(manager.sync, too_many) == grpc.StatusCode.INVALID_ARGUMENT
    assert manager.counts() == (1, 0)
    assert manager.sync(too_many[:5000]).accepted == 5000
    assert manager.counts() == (1, 5000)


def test_an_oversized_report_is_resource_exhausted(manager):
    """A report over 4 MiB fails as a whole with RESOURCE_EXHAUSTED and writes nothing."""
    manager.register()
    huge = [running(f"a{i}", type="t" * 1000) for i in range(4500)]
    assert code_of(manager.sync, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert manager.counts() == (1, 0)
    assert manager.sync([running("a1")]).accepted == 1


def test_bad_states_are_rejected_one_by_one(manager):
    """Each bad state of a report is named in errors; the good ones are stored."""
    manager.register()
    states = [running("ok1"), running("a/b"), running(".."), running("a1\x00"), running(""),
              pb.AgentState(agent_id="nostatus", pid=1), running("neg", pid=-1),
              running("sick", health="bogus"), running("nul", type="x\x00"),
              running("x" * 100_000), running("ok2"), running("dup"), running("dup")]
    reply = manager.sync(states)
    assert (reply.accepted, reply.rejected, reply.success) == (2, 11, False)
    assert [e.agent_id for e in reply.errors] == \
        ["a/b", "..", "a1\x00", "", "nostatus", "neg", "sick", "nul", "x" * 128, "dup", "dup"]
    assert all(e.reason for e in reply.errors)
    assert {a["agent_id"] for a in manager.manager.parts.nodes.list_agents("n1")} == \
        {"ok1", "ok2"}


def test_invalid_utf8_in_a_request_writes_nothing(manager):
    """A request whose string is not UTF-8 fails (it cannot be parsed) and writes nothing."""
    raw = pb.SyncAgentStatesRequest(node_id="n1", boot_id=1, seq=1,
                                    states=[running("a1")]).SerializeToString()
    broken = raw.replace(b"a1", b"\xff\xfe")
    manager.register()
    call = manager.channel.unary_unary("/fleet.v1.ManagerService/SyncAgentStates",
                                       request_serializer=None, response_deserializer=None)
    assert code_of(call, broken) in (grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.INTERNAL)
    assert manager.counts() == (1, 0)


@pytest.mark.parametrize("address", ["", "a\x00b:1", "nohost", "[::1", "dns:///x:99999",
                                     "unix:/etc/passwd", "x" * 2000 + ":1"])
def test_an_absurd_advertise_address_is_unavailable_not_a_crash(manager, address):
    """A node with an absurd address: HTTP sync is 502/503/504, never an internal error."""
    manager.register(advertise_address=address)
    manager.sync([running("a1")])
    conn = http.client.HTTPConnection("127.0.0.1", manager.manager.http_port, timeout=30)
    conn.request("POST", "/api/v1/nodes/n1/agents/sync",
                 headers={"Authorization": "Bearer api-token-syncer-tests"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert (response.status, payload["error"]["code"]) in \
        ((503, "unavailable"), (502, "daemon_error"), (504, "deadline_exceeded"))


def test_the_manager_keeps_serving_after_all_that(manager):
    """After absurd requests a normal registration and report still work."""
    with contextlib.suppress(grpc.RpcError):
        manager.sync([running("a1")] * 6000, node_id="x" * MIB)
    manager.register()
    assert manager.sync([running("a1")]).success
