"""Agents' events end to end with real `python fleet.py` processes and real agents: a crash
loop's events reach the manager once each across a manager outage, a daemon killed and a
resend; an operator's restart names its cause; a retried report stores nothing twice."""
import collections
import os

from fleet.v1 import fleet_pb2 as pb
from tests.helpers import wait_for
from tests.realfleet import AUTH, Api, DaemonStub, agents_toml, free_port, manager_stub

CRASH = """
[[agents]]
id = "crash"
command = ["sh", "-c", "exit 3"]
autostart = false
start_seconds = 0.5
start_retries = 2
backoff_initial = 0.1
backoff_max = 0.2
"""
CRASH_LOOP = {"started": 3, "exited": 3, "backoff": 2, "fatal": 1}


def agent_events(api, agent):
    """The agent's events on node n1 as the manager serves them, oldest first."""
    status, body = api.get(f"/api/v1/nodes/n1/agents/{agent}/events?limit=5000")
    return list(reversed(body["events"])) if status == 200 else []


def crash_loop_counts(api):
    counts = collections.Counter(e["kind"] for e in agent_events(api, "crash"))
    return {kind: counts[kind] for kind in CRASH_LOOP}


def test_a_crash_loop_reaches_the_manager_once_each_across_outages_and_restarts(cluster):
    """With the manager down, an agent crash-loops to FATAL and its daemon is SIGKILLed; once
    both are back its 3 starts, 3 exits (code 3), 2 backoffs and the fatal are stored once
    each, and a daemon that forgot what was acknowledged resends them without duplicates."""
    grpc_port, http_port = free_port(), free_port()
    manager_config = cluster.manager_config(grpc_port, http_port)
    manager = cluster.run("manager", manager_config)
    manager.port("http")
    api = Api(http_port)
    daemon_config = cluster.daemon_config("n1", grpc_port, agents_toml(("steady",)) + CRASH)
    daemon = cluster.run("daemon", daemon_config)
    daemon_port = daemon.port()
    wait_for(lambda: api.agents("n1").get("crash", {}).get("status") == "stopped", timeout=15)
    assert manager.terminate() == 0

    stub = DaemonStub(daemon_port)
    stub.operate("crash", "start")
    wait_for(lambda: stub.agents()["crash"].status == pb.AGENT_STATUS_FATAL, timeout=15)
    stub.close()
    daemon.kill()                       # the outage's events are only in its state_dir now
    daemon = cluster.run("daemon", daemon_config)
    daemon.port()
    cluster.run("manager", manager_config).port("http")
    wait_for(lambda: crash_loop_counts(api) == CRASH_LOOP, timeout=20)
    exits = [e for e in agent_events(api, "crash") if e["kind"] == "exited"]
    assert [(e["exit_code"], e["exit_signal"]) for e in exits] == [(3, 0)] * 3
    assert all(e["pid"] > 0 for e in exits) and "with code 3" in exits[0]["message"]
    stored = agent_events(api, "crash")

    assert daemon.terminate() == 0
    os.unlink(cluster.state_dirs[0] / "events" / "acked.json")
    cluster.run("daemon", daemon_config).port()
    wait_for(lambda: len(agent_events(api, "crash")) > len(stored), timeout=20)  # its new stop
    again = agent_events(api, "crash")
    assert again[:len(stored)] == stored and crash_loop_counts(api) == CRASH_LOOP


def test_an_operator_restart_is_a_restart_event_with_cause_operator(cluster):
    """A restart through the HTTP API shows as `restart` (cause=operator) followed by the
    stop and the new start, with the old and new pids."""
    manager = cluster.run("manager", cluster.manager_config())
    api = Api(manager.port("http"))
    cluster.run("daemon", cluster.daemon_config("n1", manager.port("grpc"),
                                                agents_toml(("steady",)))).port()
    old = wait_for(lambda: api.agents("n1").get("steady", {}).get("pid"), timeout=15)
    status, body = api.post("/api/v1/nodes/n1/agents/steady/operate", {"operation": "restart"})
    assert status == 200, body
    new = body["agent"]["pid"]

    def after_restart():
        kinds = [(e["kind"], e["pid"]) for e in agent_events(api, "steady")]
        return kinds[kinds.index(("restart", old)):] if ("restart", old) in kinds else None
    tail = wait_for(lambda: (lambda t: t if t and len(t) >= 5 else None)(after_restart()),
                    timeout=10)
    assert tail[:5] == [("restart", old), ("stopping", old), ("stopped", old), ("started", new),
                        ("running", new)]
    restart = next(e for e in agent_events(api, "steady") if e["kind"] == "restart")
    assert restart["message"] == "cause=operator"


def test_a_retried_report_stores_its_events_once(cluster):
    """The same SyncAgentStates (same boot and seq) sent twice to a real manager stores its
    events once; the fleet-wide endpoint filters them by node and kind."""
    manager = cluster.run("manager", cluster.manager_config())
    api = Api(manager.port("http"))
    channel, stub = manager_stub(manager.port("grpc"))
    stub.RegisterNode(pb.RegisterNodeRequest(node_id="n9", boot_id=1), metadata=AUTH, timeout=5)
    events = [pb.AgentEvent(agent_id="a", seq=n, time=1_700_000_000_000 + n, kind=kind,
                            message=kind, exit_code=1 if kind == "exited" else -1)
              for n, kind in enumerate(("started", "exited", "backoff"), start=1)]
    request = pb.SyncAgentStatesRequest(node_id="n9", boot_id=1, seq=1, events=events)
    for _ in range(2):
        reply = stub.SyncAgentStates(request, metadata=AUTH, timeout=5)
        assert reply.success, reply
    channel.close()
    _, body = api.get("/api/v1/events?node=n9")
    assert [e["kind"] for e in body["events"]] == ["backoff", "exited", "started"]
    _, body = api.get("/api/v1/events?node=n9&kind=exited")
    assert [(e["agent_id"], e["exit_code"]) for e in body["events"]] == [("a", 1)]
