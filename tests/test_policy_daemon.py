"""The daemon's side of policies, against a small in-test ManagerService (real gRPC on
port 0) that answers heartbeats with a policy version and GetDesiredAgents with
policies; the daemon is a real `fleet.py --role daemon` process."""
import json
import os
import signal
import threading

import pytest

from fleet.rpc import create_server
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.helpers import wait_for
from tests.procs import FleetProcess, alive, kill_recorded_agents
from tests.realfleet import DaemonStub

NODE = "p1"
CONFIG = """
log_level = "debug"

[daemon]
listen = "127.0.0.1:0"
manager = "127.0.0.1:{port}"
state_dir = "{state}"
node_id = "{node}"
sync_interval = 0.5
heartbeat_interval = 0.2
metrics_interval = 1
accept_policies = true

[[agents]]
id = "local"
command = ["sleep", "3600"]
start_seconds = 0.2
stop_timeout = 2
"""


def agent(agent_id, seconds="3600", **extra):
    return {"id": agent_id, "command": ["sleep", seconds], "start_seconds": 0.2,
            "stop_timeout": 2, **extra}


class FakeManager(pb_grpc.ManagerServiceServicer):
    """Answers a daemon as a manager with policies would; keeps what it was told."""

    def __init__(self):
        self.lock = threading.Lock()
        self.policies = []          # [(name, version, [tables] or raw JSON text)]
        self.reports = []           # ReportPolicyStatusRequest, in order
        self.beats = []             # HeartbeatRequest, in order
        self.server, self.port = create_server("127.0.0.1:0", [
            lambda s: pb_grpc.add_ManagerServiceServicer_to_server(self, s)])
        self.server.start()

    def set(self, *policies):
        with self.lock:
            self.policies = list(policies)

    def version(self):
        return ",".join(sorted(f"{name}:{version}" for name, version, _ in self.policies))

    def RegisterNode(self, request, context):
        return pb.RegisterNodeResponse()

    def Heartbeat(self, request, context):
        with self.lock:
            self.beats.append(request)
            return pb.HeartbeatResponse(policy_version=self.version())

    def SyncAgentStates(self, request, context):
        return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states))

    def ReportNodeMetrics(self, request, context):
        return pb.ReportNodeMetricsResponse(accepted=len(request.samples))

    def GetDesiredAgents(self, request, context):
        with self.lock:
            return pb.GetDesiredAgentsResponse(policy_version=self.version(), policies=[
                pb.PolicyAgents(name=name, version=version, agents_json=tables if isinstance(
                    tables, str) else json.dumps(tables))
                for name, version, tables in self.policies])

    def ReportPolicyStatus(self, request, context):
        with self.lock:
            self.reports.append(request)
        return pb.ReportPolicyStatusResponse()

    def report(self, version):
        """{name: PolicyResult} of the first report of `version`, once it came."""
        def found():
            with self.lock:
                return next(({r.name: r for r in report.results} for report in self.reports
                             if report.policy_version == version), None)
        return wait_for(found, timeout=15)

    def close(self):
        self.server.stop(None)


class Node:
    """A daemon process reporting to a FakeManager, restartable on the same state_dir."""

    def __init__(self, tmp_path, manager):
        self.tmp, self.state = tmp_path, tmp_path / "state"
        self.path = tmp_path / "daemon.toml"
        self.path.write_text(CONFIG.format(port=manager.port, state=self.state, node=NODE))
        self.proc = self.stub = None
        self.start()

    def start(self):
        self.proc = FleetProcess("--role", "daemon", "--config", str(self.path),
                                 log_dir=self.tmp)
        self.stub = DaemonStub(self.proc.port("grpc"))

    def stop(self):
        self.stub.close()
        assert self.proc.terminate(timeout=30) == 0

    def running(self, *ids):
        """{agent id: pid} once every one of ids runs with a pid."""
        def check():
            agents = {i: a.pid for i, a in self.stub.agents().items()
                      if a.status == pb.AGENT_STATUS_RUNNING}
            return agents if all(agents.get(i) for i in ids) else None
        return wait_for(check, timeout=15)

    def events(self, agent_id):
        lines = (self.state / "events" / f"{agent_id}.jsonl").read_text().splitlines()
        return [(e["kind"], e["message"]) for e in map(json.loads, lines)]


@pytest.fixture
def fleet(tmp_path):
    """(FakeManager, Node); everything stopped and every agent gone at the end."""
    manager = FakeManager()
    node = Node(tmp_path, manager)
    yield manager, node
    node.stub.close()
    if node.proc.popen.poll() is None:
        node.proc.terminate(timeout=30)
    manager.close()
    kill_recorded_agents(node.state)


def test_a_policy_agent_starts_and_is_reported(fleet):
    """The daemon sends accept_policies, fetches the policy the heartbeat names, starts
    its agent beside the local one, reports it applied, then echoes its version."""
    manager, node = fleet
    manager.set(("web", 1, [agent("web")]))
    pids = node.running("local", "web")
    results = manager.report("web:1")
    assert results["web"].applied and results["web"].version == 1
    assert list(results["web"].conflicts) == [] and results["web"].reason == ""
    wait_for(lambda: any(b.policy_version == "web:1" for b in manager.beats))
    assert all(b.accept_policies for b in manager.beats)
    assert ("reload", "added by policy web v1") in node.events("web")
    os.kill(node.proc.pid, signal.SIGHUP)    # a reload keeps the policy's agents
    wait_for(lambda: "reload applied: 0 change(s)" in node.proc.read(), timeout=10)
    assert node.running("local", "web") == pids and alive(pids["web"])
    assert not any(kind == "reload" and "removed" in message
                   for kind, message in node.events("web"))


def test_a_local_agent_wins_and_the_conflict_is_reported(fleet):
    """A policy agent with a local agent's id is not run (the local one keeps its pid
    and command), and between two policies the first by name wins; both conflicts
    are in the report."""
    manager, node = fleet
    local = node.running("local")["local"]
    manager.set(("a", 1, [agent("local", "3602"), agent("dup", "3603")]),
                ("b", 2, [agent("dup", "3604"), agent("bonly")]))
    pids = node.running("local", "dup", "bonly")
    results = manager.report("a:1,b:2")
    assert list(results["a"].conflicts) == ["local"] and results["a"].applied
    assert list(results["b"].conflicts) == ["dup"] and results["b"].applied
    assert pids["local"] == local
    import psutil
    assert psutil.Process(pids["dup"]).cmdline() == ["sleep", "3603"]


def test_an_invalid_policy_is_reported_and_changes_nothing(fleet):
    """A new version whose agents are invalid is not applied: its reason names the key,
    and the previous version's agent keeps running with the same pid."""
    manager, node = fleet
    manager.set(("web", 1, [agent("web")]))
    before = node.running("local", "web")
    manager.report("web:1")
    manager.set(("web", 2, [agent("web", colour="red")]))
    results = manager.report("web:2")
    assert not results["web"].applied
    assert "[agents.web] colour: unknown key" in results["web"].reason
    manager.set(("web", 3, "not json ["))
    assert "not JSON" in manager.report("web:3")["web"].reason
    assert node.running("local", "web") == before


def test_policy_agents_survive_a_daemon_restart_without_the_manager(fleet):
    """The applied policies are kept in state_dir: a daemon restarted while the manager
    is gone runs the policy's agent again."""
    manager, node = fleet
    manager.set(("web", 1, [agent("web")]))
    node.running("local", "web")
    manager.report("web:1")
    kept = json.loads((node.state / "policies.json").read_text())
    assert kept["policy_version"] == "web:1" and kept["policies"][0]["name"] == "web"
    node.stop()
    manager.close()
    node.start()
    pids = node.running("local", "web")
    assert alive(pids["web"])
    assert "policies from state_dir: web v1" in node.proc.read()


def test_a_new_version_replaces_the_agent(fleet):
    """Version 2 with another command restarts the agent (a restart event naming the
    policy) and removes the agent version 2 no longer defines."""
    manager, node = fleet
    manager.set(("web", 1, [agent("web"), agent("old")]))
    before = node.running("local", "web", "old")
    manager.report("web:1")
    manager.set(("web", 2, [agent("web", "3605")]))
    manager.report("web:2")
    after = wait_for(lambda: (p := node.running("local", "web")).get("web") != before["web"]
                     and "old" not in p and p, timeout=15)
    assert after["local"] == before["local"] and not alive(before["old"])
    assert ("reload", "changed by policy web v2: restarting") in node.events("web")
    assert ("restart", "cause=policy: policy web v2") in node.events("web")
    assert ("reload", "removed by policy web v2") in node.events("old")


def test_merge_local_first_then_policies_by_name():
    """merge(): local agents win, then the first policy by name; the losers are listed."""
    from fleet.config import AgentConfig
    from fleet.daemon.policies import Policy, merge
    local = AgentConfig("x", ("true",))
    b = Policy("b", 1, [], (AgentConfig("y", ("b",)),))
    a = Policy("a", 1, [], (AgentConfig("x", ("a",)), AgentConfig("y", ("a",))))
    agents, conflicts = merge((local,), [b, a])
    assert [(c.id, c.command) for c in agents] == [("x", ("true",)), ("y", ("a",))]
    assert conflicts == {"a": ["x"], "b": ["y"]}
