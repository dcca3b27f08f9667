"""Policies end to end (issue 11, "Shown by"): a real manager and three real daemons with
`accept_policies = true`, two labelled role=edge and one role=core.

A policy for role=edge reaches the two edge nodes and not the third; a local agent
with the same id as one of the policy's wins on its node, and the conflict is
reported to the manager; the daemons keep the policy's agents while the manager is
down (a daemon restarted meanwhile runs them from its state_dir) and after it comes
back on the same database, without restarting them.

Needs both halves of the policies: the manager's (this branch) and the daemon's
(accept_policies, GetDesiredAgents, ReportPolicyStatus on the daemon).
"""
import psutil

from tests.helpers import wait_for
from tests.realfleet import AGENT, Api, DaemonStub, agents_toml, free_port

WAIT = 20          # seconds for a policy to reach the daemons (heartbeats every 0.5 s)
POLICY = "/api/v1/policies/edge"
# Lines that land in the [daemon] table: realfleet's template puts them right after
# its last [daemon] key.
DAEMON_KEYS = 'labels = {{ role = "{role}" }}\naccept_policies = true\n'
LOCAL = ["sleep", "3601"]          # the local agent `shared` on e1 (the policy's differs)


def policy_agent(agent_id, seconds):
    """A policy's agent table: a sleep, quick to start and stop."""
    return {"id": agent_id, "command": ["sleep", str(seconds)], "start_seconds": 0.2,
            "backoff_initial": 0.1, "backoff_max": 0.5, "stop_timeout": 2}


EDGE_POLICY = {"selector": {"labels": {"role": "edge"}},
               "agents": [policy_agent("edge-agent", 3602), policy_agent("shared", 3603)]}


def running(stub, *agent_ids):
    """{agent_id: pid} of those agents once all run on the daemon, else None."""
    agents = stub.agents()
    pids = {i: agents[i].pid for i in agent_ids if i in agents and agents[i].pid}
    return pids if len(pids) == len(agent_ids) else None


def daemon_config(cluster, node, grpc_port, role, local=""):
    keys = DAEMON_KEYS.format(role=role)
    return cluster.daemon_config(node, grpc_port, keys + local)


def start_fleet(cluster):
    """(manager config, manager, api, {node: (config, process)}) with e1, e2 (edge; e1
    with a local agent `shared`) and c1 (core) registered."""
    grpc_port, http_port = free_port(), free_port()
    config = cluster.manager_config(grpc_port, http_port)
    manager = cluster.run("manager", config)
    api = Api(manager.port("http"))
    local = AGENT.format(id="shared", command='["sleep", "3601"]')
    configs = {"e1": daemon_config(cluster, "e1", grpc_port, "edge", local),
               "e2": daemon_config(cluster, "e2", grpc_port, "edge"),
               "c1": daemon_config(cluster, "c1", grpc_port, "core", agents_toml(["core"]))}
    daemons = {node: (path, cluster.run("daemon", path)) for node, path in configs.items()}
    for node in daemons:
        wait_for(lambda: api.get(f"/api/v1/nodes/{node}")[0] == 200, timeout=WAIT)
    return config, manager, api, daemons


def policy_settled(api, current):
    """The policy's JSON once `current` nodes run its version and none is pending."""
    status, answer = api.get(POLICY)
    policy = answer.get("policy") if status == 200 else None
    if policy and policy["nodes"] == {"current": current, "pending": 0, "failed": 0}:
        return policy
    return None


def test_a_policy_reaches_the_matching_nodes_survives_a_manager_restart_and_loses_to_local(
        cluster):
    """role=edge agents run on e1 and e2 only; e1 keeps its local `shared` (reported as a
    conflict); with the manager down they keep running (a restarted daemon runs them from
    its state_dir), and the manager back on the same database changes nothing."""
    config, manager, api, daemons = start_fleet(cluster)
    stubs = {node: DaemonStub(proc.port("grpc")) for node, (_, proc) in daemons.items()}
    local_pid = wait_for(lambda: running(stubs["e1"], "shared"), timeout=WAIT)["shared"]

    status, answer = api.call("PUT", POLICY, EDGE_POLICY)
    assert status == 200 and answer["policy"]["version"] == 1, answer
    e1 = wait_for(lambda: running(stubs["e1"], "edge-agent", "shared"), timeout=WAIT)
    e2 = wait_for(lambda: running(stubs["e2"], "edge-agent", "shared"), timeout=WAIT)
    assert e1["shared"] == local_pid                   # the local agent won, untouched
    assert psutil.Process(local_pid).cmdline() == LOCAL
    assert psutil.Process(e2["shared"]).cmdline() == ["sleep", "3603"]   # the policy's
    assert set(stubs["c1"].agents()) == {"core"}       # c1 does not match
    policy = wait_for(lambda: policy_settled(api, 2), timeout=WAIT)
    assert policy["conflicts"] == [{"node_id": "e1", "agents": ["shared"]}]
    assert policy["failures"] == []

    assert manager.terminate() == 0                    # the manager goes away
    e2_config, e2_proc = daemons["e2"]
    assert e2_proc.terminate() == 0                    # e2 restarts while it is away
    restarted = cluster.run("daemon", e2_config)
    stubs["e2"].close()
    stubs["e2"] = DaemonStub(restarted.port("grpc"))
    e2 = wait_for(lambda: running(stubs["e2"], "edge-agent", "shared"), timeout=WAIT)
    assert running(stubs["e1"], "edge-agent", "shared") == e1
    assert set(stubs["c1"].agents()) == {"core"}

    cluster.run("manager", config).port("http")        # back, on the same database
    wait_for(lambda: policy_settled(api, 2), timeout=WAIT)
    wait_for(lambda: api.agents("e2").get("edge-agent", {}).get("pid") == e2["edge-agent"],
             timeout=WAIT)
    assert running(stubs["e1"], "edge-agent", "shared") == e1   # nothing restarted
    assert running(stubs["e2"], "edge-agent", "shared") == e2
    assert "edge-agent" not in api.agents("c1")
    for stub in stubs.values():
        stub.close()
