"""Policy rollouts end to end: a real manager and three real role=edge daemons with
`accept_policies = true`. A held policy version is moved to the pinned nodes in waves
by releasing their pins; a broken version stops the rollout at its first node and the
others keep running the old version's agent (same pid); a good one reaches them all.
"""
import psutil

from tests.helpers import wait_for
from tests.realfleet import Api, DaemonStub, free_port

WAIT = 60          # generous: the machine may be loaded
POLICY = "/api/v1/policies/edge"
DAEMON_KEYS = 'labels = { role = "edge" }\naccept_policies = true\n'
NODES = ("e1", "e2", "e3")


def version(command, **extra):
    """A policy body for role=edge with one agent `web` running `command`."""
    agent = {"id": "web", "command": command, "start_seconds": 0.5, "start_retries": 2,
             "backoff_initial": 0.1, "backoff_max": 0.3, "stop_timeout": 2}
    return {"selector": {"labels": {"role": "edge"}}, "agents": [agent], **extra}


def web_pid(stub, cmd):
    """The pid of `web` when it runs `cmd` on the daemon, else None."""
    agent = stub.agents().get("web")
    if agent is None or not agent.pid:
        return None
    try:
        return agent.pid if psutil.Process(agent.pid).cmdline() == cmd else None
    except psutil.Error:
        return None


def start_fleet(cluster):
    """(api, {node: DaemonStub}) with three role=edge daemons registered."""
    grpc_port, http_port = free_port(), free_port()
    manager = cluster.run("manager", cluster.manager_config(grpc_port, http_port))
    api = Api(manager.port("http"))
    stubs = {}
    for node in NODES:
        proc = cluster.run("daemon", cluster.daemon_config(node, grpc_port, DAEMON_KEYS))
        stubs[node] = DaemonStub(proc.port("grpc"))
    for node in NODES:
        wait_for(lambda: api.get(f"/api/v1/nodes/{node}")[0] == 200, timeout=WAIT)
    return api, stubs


def rollout_ended(api, rollout_id):
    """The rollout once it has ended, else None."""
    status, answer = api.get(f"/api/v1/rollouts/{rollout_id}")
    rollout = answer["rollout"]
    return rollout if rollout["status"] not in ("pending", "running") else None


def test_a_broken_policy_version_stops_its_rollout_and_a_good_one_reaches_every_node(cluster):
    """v2 (its agent exits at once) held and rolled out one node at a time: e1 fails, e2
    and e3 are skipped and keep v1's agent with the same pid; v3 held and rolled out:
    all three succeed and run it."""
    api, stubs = start_fleet(cluster)
    v1 = ["sleep", "3611"]
    assert api.call("PUT", POLICY, version(v1))[0] == 200
    pids = {n: wait_for(lambda: web_pid(stubs[n], v1), timeout=WAIT) for n in NODES}

    status, answer = api.call("POST", "/api/v1/rollouts", {"policy": "edge"})
    assert status == 409, answer                       # nothing pinned yet
    assert api.call("POST", "/api/v1/rollouts", {"policy": "nope"})[0] == 404
    status, answer = api.call("POST", "/api/v1/rollouts", {"policy": "edge",
                                                           "agent_id": "web"})
    assert status == 400 and "agent_id" in answer["error"]["message"], answer

    broken = ["sh", "-c", "exit 3"]
    status, answer = api.call("PUT", POLICY, version(broken, hold=True))
    assert status == 200 and answer["policy"]["version"] == 2, answer
    status, answer = api.call("POST", "/api/v1/rollouts", {
        "policy": "edge", "max_parallel": 1, "max_failures": 0, "wait_seconds": 45})
    assert status == 202, answer
    created = answer["rollout"]
    assert created["policy"] == "edge" and created["operation"] is None
    assert [n["node_id"] for n in created["nodes"]] == list(NODES)
    rollout = wait_for(lambda: rollout_ended(api, created["id"]), timeout=WAIT * 2)
    assert rollout["status"] == "failed", rollout
    nodes = {n["node_id"]: n for n in rollout["nodes"]}
    assert nodes["e1"]["status"] == "failed", nodes
    assert "web" in nodes["e1"]["message"], nodes
    assert [nodes[n]["status"] for n in ("e2", "e3")] == ["skipped", "skipped"]
    for node in ("e2", "e3"):                          # pinned: still v1, same process
        assert web_pid(stubs[node], v1) == pids[node]

    v3 = ["sleep", "3613"]
    status, answer = api.call("PUT", POLICY, version(v3, hold=True))
    assert status == 200 and answer["policy"]["version"] == 3, answer
    status, answer = api.call("POST", "/api/v1/rollouts", {
        "policy": "edge", "max_parallel": 2, "max_failures": 0, "wait_seconds": 45})
    assert status == 202, answer
    # The held PUT pinned e1 at v2 (e2, e3 kept their v1 pins): all three move to v3.
    assert [n["node_id"] for n in answer["rollout"]["nodes"]] == list(NODES)
    rollout = wait_for(lambda: rollout_ended(api, answer["rollout"]["id"]), timeout=WAIT * 2)
    assert rollout["status"] == "succeeded", rollout["nodes"]
    for node in NODES:
        wait_for(lambda: web_pid(stubs[node], v3), timeout=WAIT)
    status, answer = api.get(POLICY)
    assert answer["policy"]["nodes"]["current"] == 3, answer
    for stub in stubs.values():
        stub.close()


def test_a_node_reporting_the_version_not_applied_fails_with_its_reason(tmp_path):
    """With stand-in daemons (heartbeats over gRPC): the rollout releases e1's pin (its
    heartbeat is told v2 at once), e1 reports v2 not applied, the rollout fails naming
    the reason; e2 keeps its pin (still told v1) and a second release is harmless."""
    from tests.test_policies import PolicyManager, body, web
    fleet = PolicyManager(tmp_path)
    try:
        for node in ("e1", "e2"):
            fleet.register(node, role="edge")
        assert fleet.put()[0] == 200
        assert fleet.put(payload=body([web(cwd="/nowhere")], hold=True))[0] == 200
        assert fleet.beat("e1") == fleet.beat("e2") == "edge:1"
        status, answer = fleet.api.call("POST", "/api/v1/rollouts", {
            "policy": "edge", "max_parallel": 1, "wait_seconds": 30})
        assert status == 202, answer
        rollout_id = answer["rollout"]["id"]
        wait_for(lambda: fleet.beat("e1") == "edge:2", timeout=WAIT)
        fleet.report("e1", {"name": "edge", "version": 2, "applied": False,
                            "reason": "web: cwd /nowhere does not exist"}, version="edge:2")
        rollout = wait_for(lambda: rollout_ended(fleet.api, rollout_id), timeout=WAIT)
        nodes = {n["node_id"]: n for n in rollout["nodes"]}
        assert rollout["status"] == "failed", rollout
        assert nodes["e1"]["message"] == ("policy edge v2 not applied: "
                                          "web: cwd /nowhere does not exist"), nodes
        assert nodes["e2"]["status"] == "skipped"
        assert fleet.beat("e2") == "edge:1"            # still pinned
        pins = fleet.manager.rollouts._pins            # a resumed release: harmless
        assert pins.release("e1", "edge") == 0 and pins.pinned("edge", 2) == ["e2"]
    finally:
        fleet.close()
