"""Rollouts with real processes: a manager (or two) on one SQLite file, real daemons
running real agents, the HTTP API driving and showing it."""
import json
import signal

from tests.helpers import wait_for
from tests.realfleet import Api, free_port

ROLLOUTS = "/api/v1/rollouts"
VIEWER = "viewer-token-for-rollout-tests-0123456789"
OPERATOR = "operator-token-for-rollout-tests-0123456789"
EXTRA = f"""lease_ttl = 3

[manager.api_tokens]
viewer = {{ token = "{VIEWER}", scope = "read" }}
operator = {{ token = "{OPERATOR}", scope = "operate" }}
"""

# `web` runs until its node's marker file exists; then it exits at once (a bad change).
AGENT = """
[[agents]]
id = "web"
command = {command}
start_seconds = {start}
start_retries = 1
backoff_initial = 0.1
backoff_max = 0.2
stop_timeout = 2
"""


def marker(cluster, node):
    return cluster.tmp / f"{node}.broken"


def start_fleet(cluster, edges, others=(), start_seconds=1.0, managers=1):
    """Managers on one database (their Apis) and a daemon per node, `edges` labelled
    role=edge; returns once every node's `web` is stored running and healthy."""
    grpc_port = free_port()
    apis = [Api(cluster.run("manager", cluster.manager_config(
        grpc_port if i == 0 else 0, extra=EXTRA)).port("http")) for i in range(managers)]
    for node in list(edges) + list(others):
        command = ["sh", "-c", f"test -e {marker(cluster, node)} && exit 3; exec sleep 3600"]
        role = "edge" if node in edges else "core"
        agents = f'labels = {{ role = "{role}" }}\n' + AGENT.format(
            command=json.dumps(command), start=start_seconds)
        cluster.run("daemon", cluster.daemon_config(node, grpc_port, agents))
    for node in list(edges) + list(others):
        wait_for(lambda: apis[0].agents(node).get("web", {}).get("health") == "healthy", 60)
    return apis


def pids(api, nodes):
    return {node: api.agents(node)["web"]["pid"] for node in nodes}


def create(api, **fields):
    body = {"operation": "restart", "agent_id": "web", "selector": {"labels": {"role": "edge"}},
            **fields}
    status, answer = api.post(ROLLOUTS, body)
    assert status == 202, answer
    return answer["rollout"]


def finished(api, rollout_id, timeout=90):
    """The rollout once it has ended."""
    def ended():
        status, body = api.get(f"{ROLLOUTS}/{rollout_id}")
        assert status == 200, body
        rollout = body["rollout"]
        return rollout if rollout["status"] not in ("pending", "running") else None
    return wait_for(ended, timeout, interval=0.2)


def node_status(api, rollout_id):
    return {n["node_id"]: n["status"] for n in api.get(f"{ROLLOUTS}/{rollout_id}")[1][
        "rollout"]["nodes"]}


def restart_events(api, node):
    status, body = api.get(f"/api/v1/nodes/{node}/agents/web/events")
    assert status == 200, body
    return [event for event in body["events"] if event["kind"] == "restart"]


def test_restart_rollout_goes_wave_by_wave_over_the_selected_nodes(cluster):
    """A restart over 4 edge nodes, 2 at a time: every edge agent gets a new pid, at most
    2 nodes are in flight at any moment and the second wave starts after the first has
    ended; the core node is not touched; the rollout is listed and audited."""
    edges = ["e1", "e2", "e3", "e4"]
    api, = start_fleet(cluster, edges, others=["c1"])
    before = pids(api, edges + ["c1"])
    rollout = create(api, max_parallel=2, wait_seconds=30)
    assert [n["node_id"] for n in rollout["nodes"]] == edges
    assert rollout["status"] == "pending" and rollout["policy"] is None
    done = finished(api, rollout["id"])
    assert done["status"] == "succeeded", done
    after = pids(api, edges + ["c1"])
    assert all(after[n] != before[n] for n in edges) and after["c1"] == before["c1"]
    spans = [(n["started_at"], n["finished_at"]) for n in done["nodes"]]
    assert min(s for s, _ in spans[2:]) >= max(f for _, f in spans[:2]), spans
    for started, _ in spans:
        assert sum(s <= started < f for s, f in spans) <= 2, spans
    for node in edges:
        wait_for(lambda: len(restart_events(api, node)) == 1, 20)
        assert restart_events(api, node)[0]["message"] == f"cause=rollout: rollout {rollout['id']}"
    status, page = api.get(ROLLOUTS + "?limit=1")
    assert status == 200 and page["rollouts"][0]["id"] == rollout["id"]
    entries = api.get("/api/v1/audit")[1]["entries"]
    assert any(e["operation"] == "rollout" and e["agent_id"] == "web" and
               f"rollout {rollout['id']}" in e["message"] for e in entries)


def test_a_broken_change_stops_after_max_failures_and_spares_the_rest(cluster):
    """Every edge agent is broken (exits at once); a rollout with max_parallel 1 and
    max_failures 1 fails two nodes, then stops: the other two are skipped and keep
    running their old pid."""
    edges = ["e1", "e2", "e3", "e4"]
    api, = start_fleet(cluster, edges)
    before = pids(api, edges)
    for node in edges:
        marker(cluster, node).write_text("")
    rollout = create(api, max_parallel=1, max_failures=1, wait_seconds=20)
    done = finished(api, rollout["id"])
    assert done["status"] == "failed"
    assert [n["status"] for n in done["nodes"]] == ["failed", "failed", "skipped", "skipped"]
    assert "exited" in done["nodes"][0]["message"] or "fatal" in done["nodes"][0]["message"]
    after = pids(api, ["e3", "e4"])
    assert after == {"e3": before["e3"], "e4": before["e4"]}
    assert all(api.agents(n)["web"]["status"] == "running" for n in ("e3", "e4"))


def test_cancel_skips_the_rest_and_the_node_in_flight_finishes(cluster):
    """Cancelling while the first node is in flight: the others are skipped, the first
    one still ends succeeded; a second cancel is 409; a read token cannot cancel."""
    edges = ["e1", "e2", "e3"]
    api, = start_fleet(cluster, edges, start_seconds=3)
    rollout = create(api, max_parallel=1, wait_seconds=30)
    wait_for(lambda: node_status(api, rollout["id"])["e1"] == "running", 20)
    assert api.post(f"{ROLLOUTS}/{rollout['id']}/cancel", token=VIEWER)[0] == 403
    status, body = api.post(f"{ROLLOUTS}/{rollout['id']}/cancel", token=OPERATOR)
    assert status == 200 and body["rollout"]["status"] == "cancelled", body
    assert [n["status"] for n in body["rollout"]["nodes"]] == ["running", "skipped", "skipped"]
    wait_for(lambda: node_status(api, rollout["id"])["e1"] == "succeeded", 30)
    assert api.post(f"{ROLLOUTS}/{rollout['id']}/cancel")[0] == 409
    entries = api.get("/api/v1/audit")[1]["entries"]
    assert any(e["operation"] == "rollout-cancel" and e["actor"] == "operator" and
               e["result"] == "ok" for e in entries)


def test_a_manager_killed_mid_rollout_is_resumed_by_its_successor(cluster):
    """SIGKILL the manager while a wave waits for health; a new manager on the same
    database takes the lease once it expires and ends the rollout: every node restarted
    exactly once."""
    edges = ["e1", "e2", "e3"]
    http_port = free_port()
    grpc_port = free_port()
    config = cluster.manager_config(grpc_port, http_port, extra=EXTRA)
    manager = cluster.run("manager", config)
    api = Api(manager.port("http"))
    for node in edges:
        command = ["sleep", "3600"]
        agents = 'labels = { role = "edge" }\n' + AGENT.format(command=json.dumps(command),
                                                               start=5)
        cluster.run("daemon", cluster.daemon_config(node, grpc_port, agents))
    for node in edges:
        wait_for(lambda: api.agents(node).get("web", {}).get("health") == "healthy", 60)
    before = pids(api, edges)
    rollout = create(api, max_parallel=1, wait_seconds=60)
    wait_for(lambda: node_status(api, rollout["id"])["e1"] == "running", 20)
    wait_for(lambda: pids(api, ["e1"])["e1"] != before["e1"], 20)   # operated, not healthy yet
    assert node_status(api, rollout["id"])["e1"] == "running"
    manager.popen.send_signal(signal.SIGKILL)
    manager.popen.wait(10)
    api = Api(cluster.run("manager", config).port("http"))
    done = finished(api, rollout["id"], timeout=120)
    assert done["status"] == "succeeded", done["nodes"]
    after = pids(api, edges)
    assert all(after[n] != before[n] for n in edges)
    for node in edges:
        wait_for(lambda: len(restart_events(api, node)) >= 1, 20)
        assert len(restart_events(api, node)) == 1, node


def test_two_managers_on_one_database_only_one_drives(cluster):
    """Two managers share the SQLite file; a rollout created through the second is
    driven by exactly one of them: each node restarted once, one lease holder."""
    edges = ["e1", "e2", "e3"]
    first, second = start_fleet(cluster, edges, managers=2)
    rollout = create(second, max_parallel=3, wait_seconds=30)
    done = finished(first, rollout["id"])
    assert done["status"] == "succeeded", done
    for node in edges:
        wait_for(lambda: len(restart_events(first, node)) >= 1, 20)
        assert len(restart_events(first, node)) == 1, node
    logs = [proc.read() for role, proc in cluster.procs if role == "manager"]
    operated = [log.count("rollout %d: operated" % rollout["id"]) for log in logs]
    assert sorted(operated) == [0, 3], operated


def test_bad_requests_are_400_naming_the_key_and_need_operate(cluster):
    """Validation 400s name the key; a selector matching no node with the agent is a 404
    naming the selector; a read token gets 403; unknown rollouts 404; pages follow next_cursor."""
    api, = start_fleet(cluster, ["e1"])
    for body, key in [({"operation": "reboot", "agent_id": "web"}, "operation"),
                      ({"operation": "restart"}, "agent_id"),
                      ({"operation": "restart", "agent_id": "web", "max_parallel": 0},
                       "max_parallel"),
                      ({"operation": "restart", "agent_id": "web", "max_failures": 100001},
                       "max_failures"),
                      ({"operation": "restart", "agent_id": "web", "wait_seconds": 3601},
                       "wait_seconds"),
                      ]:
        status, answer = api.post(ROLLOUTS, body)
        assert status == 400 and key in answer["error"]["message"], (body, answer)
    for body in ({"operation": "restart", "agent_id": "web",
                  "selector": {"labels": {"role": "nowhere"}}},
                 {"operation": "restart", "agent_id": "nosuch"}):
        status, answer = api.post(ROLLOUTS, body)
        assert status == 404 and "selector" in answer["error"]["message"], (body, answer)
    status, answer = api.post(ROLLOUTS, {"operation": "restart", "agent_id": "web"},
                              token=VIEWER)
    assert status == 403, answer
    assert api.get(ROLLOUTS, token=VIEWER)[0] == 200
    assert api.get(ROLLOUTS + "/999")[0] == 404 and api.get(ROLLOUTS + "/x")[0] == 404
    assert api.get(ROLLOUTS + "?cursor=x")[0] == 400
    ids = [create(api, max_parallel=1, wait_seconds=30)["id"] for _ in range(2)]
    status, page = api.get(ROLLOUTS + "?limit=1")
    assert [r["id"] for r in page["rollouts"]] == [ids[1]] and page["next_cursor"]
    status, page = api.get(f"{ROLLOUTS}?limit=1&cursor={page['next_cursor']}")
    assert [r["id"] for r in page["rollouts"]] == [ids[0]]
