"""Reload with real processes: a manager and a daemon started from config files;
the file is rewritten and the daemon told to reread it (HTTP, gRPC, SIGHUP, ctl)."""
import json
import os
import signal

import grpc
import pytest

from fleet.v1 import fleet_pb2 as pb
from tests.helpers import wait_for
from tests.procs import alive
from tests.realfleet import AUTH, Api, DaemonStub, agents_toml
from tests.test_ctl import ctl

NODE = "n1"


def write_config(cluster, manager_port, agents):
    """(Re)write n1's config file; its path."""
    return cluster.daemon_config(NODE, manager_port, agents)


@pytest.fixture
def node(cluster):
    """A manager and daemon n1 running keep, gone and change (sleep 3600 each)."""
    manager = cluster.run("manager", cluster.manager_config())
    grpc_port, http_port = manager.port("grpc"), manager.port("http")
    path = write_config(cluster, grpc_port, agents_toml(("keep", "gone", "change")))
    daemon = cluster.run("daemon", path)
    stub = DaemonStub(daemon.port("grpc"))
    api = Api(http_port)
    wait_for(lambda: {i: s for i, (s, _) in api.stored(NODE).items()} ==
             {"keep": "running", "gone": "running", "change": "running"}, timeout=20)
    cluster.grpc_port, cluster.daemon, cluster.stub, cluster.api = grpc_port, daemon, stub, api
    cluster.url = f"http://127.0.0.1:{http_port}"
    yield cluster
    stub.close()


def pids(cluster):
    return {i: a.pid for i, a in cluster.stub.agents().items()}


def reload_grpc(cluster):
    return cluster.stub.stub.Reload(pb.ReloadRequest(node_id=NODE), metadata=AUTH, timeout=30)


def test_reload_adds_removes_and_changes_leaving_the_others_alone(node):
    """A reload starts the new agent, stops and forgets the removed one (record and
    manager row gone), restarts the changed one, and leaves the unchanged pid alone;
    each change is a `reload` event and the reload is audited."""
    before = pids(node)
    write_config(node, node.grpc_port, agents_toml(("keep",)) + agents_toml(
        ("change",), ("sleep", "3601")) + agents_toml(("new",)))
    status, body = node.api.post(f"/api/v1/nodes/{NODE}/reload")
    assert status == 200, body
    assert sorted((c["agent_id"], c["change"]) for c in body["changes"]) == [
        ("change", "changed"), ("gone", "removed"), ("new", "added")]
    assert sorted(a["agent_id"] for a in body["agents"]) == ["change", "keep", "new"]
    after = wait_for(lambda: (p := pids(node)) and all(p.values()) and p)
    assert after["keep"] == before["keep"] and alive(before["keep"])
    assert after["change"] != before["change"] and alive(after["change"])
    assert not alive(before["change"]) and not alive(before["gone"])
    assert "gone" not in after and alive(after["new"])
    assert not os.path.exists(node.tmp / NODE / "agents" / "gone.json")
    wait_for(lambda: sorted(node.api.stored(NODE)) == ["change", "keep", "new"], timeout=10)
    wait_for(lambda: len(node.api.get("/api/v1/events?kind=reload")[1]["events"]) == 3,
             timeout=10)
    events = {e["agent_id"]: e["message"] for e in node.api.get(
        "/api/v1/events?kind=reload")[1]["events"]}
    assert events == {"gone": "removed by reload", "new": "added by reload",
                      "change": "changed by reload: restarting"}
    entries = node.api.get(f"/api/v1/audit?node={NODE}")[1]["entries"]
    assert [(e["operation"], e["result"]) for e in entries][0] == ("reload", "ok")


def test_restart_on_change_false_only_flags(node):
    """With restart_on_change = false a changed agent keeps its process and shows
    config_changed; a reload with nothing new changes nothing."""
    before = pids(node)
    write_config(node, node.grpc_port, agents_toml(("keep", "gone")) + agents_toml(
        ("change",), ("sleep", "3601")).replace(
        'id = "change"', 'id = "change"\nrestart_on_change = false'))
    answer = reload_grpc(node)
    assert [(c.agent_id, c.change) for c in answer.changes] == [("change", "flagged")]
    agents = node.stub.agents()
    assert {i: a.pid for i, a in agents.items()} == before
    assert agents["change"].config_changed and not agents["keep"].config_changed
    assert list(reload_grpc(node).changes) == []
    wait_for(lambda: node.api.agents(NODE)["change"]["config_changed"], timeout=10)


def test_invalid_config_changes_nothing_and_names_every_problem(node):
    """An invalid file changes nothing: gRPC INVALID_ARGUMENT and HTTP 400 carry every
    problem, the daemon logs them, and the audit records the failure."""
    before = pids(node)
    write_config(node, node.grpc_port, agents_toml(("keep",)) + agents_toml(("new",)).replace(
        'id = "new"', 'id = "new"\nrestart = "sometimes"\ncolour = "red"'))
    with pytest.raises(grpc.RpcError) as caught:
        reload_grpc(node)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for problem in ("[agents.new] restart", "[agents.new] colour: unknown key"):
        assert problem in caught.value.details()
    status, body = node.api.post(f"/api/v1/nodes/{NODE}/reload")
    assert status == 400, body
    assert "[agents.new] restart" in body["error"]["message"]
    assert "[agents.new] colour: unknown key" in body["error"]["message"]
    assert pids(node) == before and all(alive(p) for p in before.values())
    assert "reload: config error: [agents.new] colour: unknown key" in node.daemon.read()
    entries = node.api.get(f"/api/v1/audit?node={NODE}")[1]["entries"]
    assert (entries[0]["operation"], entries[0]["result"]) == ("reload", "invalid_argument")


def test_sighup_reloads_and_warns_of_keys_needing_a_restart(node):
    """SIGHUP rereads the file: the new agent starts, new labels reach the manager; a
    changed key that needs a restart is logged and ignored."""
    before = pids(node)
    path = write_config(node, node.grpc_port, agents_toml(("keep", "gone", "change", "new")))
    path.write_text(path.read_text().replace(
        "metrics_interval = 1", 'metrics_interval = 2\nlabels = { role = "edge" }'))
    os.kill(node.daemon.pid, signal.SIGHUP)
    after = wait_for(lambda: (p := pids(node)).get("new") and p, timeout=10)
    assert {i: after[i] for i in before} == before
    assert node.daemon.popen.poll() is None
    assert "[daemon] metrics_interval changed: needs a restart" in node.daemon.read()
    wait_for(lambda: node.api.get(f"/api/v1/nodes/{NODE}")[1]["node"]["labels"] ==
             {"role": "edge"}, timeout=10)   # new labels: registered again


def test_ctl_reload_prints_the_changes(node):
    """`fleet ctl reload n1` prints each change, then the agents."""
    write_config(node, node.grpc_port, agents_toml(("keep", "change", "new")))
    result = ctl("reload", NODE, url=node.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["n1: config reloaded", "  removed  gone", "  added    new"]
    assert sorted(line.split()[0] for line in lines[4:]) == ["change", "keep", "new"]
    shown = json.loads(ctl("reload", NODE, "--json", url=node.url).stdout)
    assert shown["changes"] == [] and len(shown["agents"]) == 3


# ---- the pure parts ----

def test_plan_sorts_agents_into_removed_added_and_changed():
    """plan() compares definitions: removed, added, changed (any key); equal ones stay."""
    from fleet.config import AgentConfig
    from fleet.daemon.reconcile import plan
    keep, gone = AgentConfig("keep", ("sleep", "1")), AgentConfig("gone", ("sleep", "1"))
    old = AgentConfig("tuned", ("sleep", "1"))
    new = AgentConfig("tuned", ("sleep", "1"), start_retries=9)
    added = AgentConfig("added", ("sleep", "1"))
    assert plan((keep, gone, old), (keep, new, added)) == (["gone"], [added], [new])


def test_restart_on_change_and_accept_policies_are_checked_booleans():
    """restart_on_change (per agent) and accept_policies ([daemon]) must be booleans (as flags take them: "yes", "off"...)."""
    from fleet import config as configuration
    problems = []
    data = {"daemon": {"accept_policies": "maybe"},
            "agents": [{"id": "a", "command": ["true"], "restart_on_change": 2}]}
    configuration.parse("daemon", data, problems)
    assert any(p.startswith("[daemon] accept_policies:") for p in problems)
    assert any(p.startswith("[agents.a] restart_on_change:") for p in problems)
    good = configuration.parse("daemon", {"daemon": {"accept_policies": True}, "agents": [
        {"id": "a", "command": ["true"], "restart_on_change": False}]}, [])
    assert good.daemon.accept_policies and not good.agents[0].restart_on_change


def test_a_reload_is_refused_once_shutdown_begins(tmp_path):
    """Reload applies the file's agents in-process too; once the daemon's shutdown has
    begun (its reloader closed first), Reload is FAILED_PRECONDITION; so is a daemon
    with no config to reread."""
    from fleet import config as configuration
    from fleet.daemon.app import Daemon
    from fleet.v1 import fleet_pb2_grpc as pb_grpc
    from tests.daemon_harness import SLEEPER, agent, daemon_config
    path = tmp_path / "daemon.toml"
    path.write_text(f'[daemon]\nlisten = "127.0.0.1:0"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'manager = "127.0.0.1:1"\n[[agents]]\nid = "b"\n'
                    f'command = {json.dumps(SLEEPER)}\n')
    config = daemon_config(tmp_path, [agent("a")])
    node = Daemon(config, reload_config=lambda: configuration.load("daemon", str(path)))
    node.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{node.port}")
    stub = pb_grpc.DaemonServiceStub(channel)
    try:
        answer = stub.Reload(pb.ReloadRequest(), timeout=30)
        assert sorted((c.agent_id, c.change) for c in answer.changes) == [
            ("a", "removed"), ("b", "added")]
        node.reloader.close()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Reload(pb.ReloadRequest(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        channel.close()
        node.stop()
    bare = Daemon(daemon_config(tmp_path / "bare", []))
    bare.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{bare.port}")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.DaemonServiceStub(channel).Reload(pb.ReloadRequest(), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no config to reread" in caught.value.details()
    finally:
        channel.close()
        bare.stop()


def test_a_reload_applies_new_log_limits_to_the_running_agent(tmp_path):
    """New log_max_bytes and log_backups rotate the running agent's log at once, its pid kept."""
    from fleet.daemon import reconcile
    from fleet.daemon.logs import LogKeeper
    from fleet.daemon.metrics import Sampler
    from fleet.daemon.statedir import StateDir
    from fleet.daemon.supervisor import Supervisor
    from fleet.states import State
    from tests.daemon_harness import agent, daemon_config
    old = daemon_config(tmp_path, [agent("a", log_max_bytes=300_000, log_backups=3)]).agents
    new = daemon_config(tmp_path, [agent("a", log_max_bytes=5_000_000, log_backups=0)]).agents
    statedir = StateDir(str(tmp_path / "state"))
    statedir.open()
    keeper = LogKeeper(statedir.logs_dir)    # not started: the test runs each check
    supervisor = Supervisor(old, statedir, keeper, Sampler(10))
    supervisor.start()
    try:
        pid = wait_for(lambda: (s := supervisor.runner("a").snapshot()).state is State.RUNNING
                       and s.pid)
        assert reconcile.apply(supervisor, new, "reload") == [reconcile.Change("a", "changed")]
        path = keeper.path_for("a")
        with open(path, "ab") as log:
            log.write(b"x" * 399_999 + b"\n")
        assert keeper.rotate_all() == []                # past the old limit, not the new
        with open(path, "ab") as log:
            log.write(b"y" * 4_999_999 + b"\n")
        assert keeper.rotate_all() == ["a"]
        assert os.path.getsize(path) == 0 and not os.path.exists(path + ".1")  # backups = 0
        assert supervisor.runner("a").snapshot().pid == pid
    finally:
        supervisor.stop_all()
        supervisor.close()
        statedir.close()
