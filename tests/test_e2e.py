"""End to end with the built fleet.pyz: one manager and two daemons as real processes,
once on SQLite and once on PostgreSQL."""
import os
import signal
import sys
import time

import pytest

from tests.helpers import wait_for
from tests.httpapi import Api
from tests.pg import ENGINES
from tests.procs import FleetProcess, alive, kill_recorded_agents

API_TOKEN = "api-token-for-tests-0123456789"
CLUSTER_TOKEN = "cluster-token-for-tests-9876543210"

MANAGER = """
[manager]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
db = "{db}"
offline_after = 3
api_token = "{api}"
cluster_token = "{cluster}"
"""

DAEMON = """
[daemon]
listen = "127.0.0.1:0"
manager = "127.0.0.1:{grpc}"
state_dir = "{tmp}/{node}"
node_id = "{node}"
cluster_token = "{cluster}"
sync_interval = 0.5
heartbeat_interval = 0.5
metrics_interval = 1

[[agents]]
id = "talker"
type = "demo"
version = "1.0"
command = ["{python}", "-u", "-c", "import time\\nprint('talker up', flush=True)\\ntime.sleep(3600)"]
start_seconds = 0.2
stop_timeout = 2

[[agents]]
id = "sleeper"
command = ["sleep", "3600"]
start_seconds = 0.2
stop_timeout = 2
"""


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tmp_path_factory):
    """(database URL, command running fleet.pyz) of one engine. PostgreSQL runs the pyz
    built --with-postgres under `python -S` (no site-packages): only its own driver serves."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/fleet.db"
        return db, [sys.executable, str(request.getfixturevalue("pyz"))]
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return server.url(name), [sys.executable, "-S", str(request.getfixturevalue("pg_pyz"))]


@pytest.fixture(scope="module")
def cluster(engine, tmp_path_factory):
    """A manager and daemons n1, n2 from the pyz; yields (api, processes by name)."""
    tmp = tmp_path_factory.mktemp("cluster")
    db, entry = engine
    env = {"FLEET_CACHE_DIR": str(tmp / "cache")}
    (tmp / "manager.toml").write_text(MANAGER.format(db=db, api=API_TOKEN, cluster=CLUSTER_TOKEN))
    manager = FleetProcess("--role", "manager", "--config", str(tmp / "manager.toml"),
                           entry=entry, log_dir=tmp, env=env)
    procs = {"manager": manager}
    try:
        grpc_port, http_port = manager.port("grpc"), manager.port("http")
        for node in ("n1", "n2"):
            path = tmp / f"{node}.toml"
            path.write_text(DAEMON.format(tmp=tmp, node=node, grpc=grpc_port,
                                          cluster=CLUSTER_TOKEN, python=sys.executable))
            procs[node] = FleetProcess("--role", "daemon", "--config", str(path),
                                       entry=entry, log_dir=tmp, env=env)
            procs[node].port("grpc")
        yield Api(http_port, API_TOKEN), procs
    finally:
        for proc in procs.values():
            proc.terminate()
        for node in ("n1", "n2"):
            kill_recorded_agents(tmp / node)   # a test SIGKILLs a daemon: its agents live on


def agents_of(api, node):
    return api.agents(node)


def running(api, node, agent, other_than=None):
    found = agents_of(api, node).get(agent)
    if found and found["status"] == "running" and found["pid"] and found["pid"] != other_than:
        return found
    return None


def test_nodes_come_online_with_their_agents(cluster):
    """Both daemons register; the API lists them online with running agents and pids."""
    api, _ = cluster
    nodes = wait_for(lambda: (lambda b: b if len(b["nodes"]) == 2 else None)(api.get("/api/v1/nodes")[1]))
    assert {n["node_id"]: n["status"] for n in nodes["nodes"]} == {"n1": "online", "n2": "online"}
    for node in ("n1", "n2"):
        for agent in ("talker", "sleeper"):
            assert wait_for(lambda: running(api, node, agent))["pid"] > 0
    node = api.get("/api/v1/nodes/n1")[1]["node"]
    assert node["advertise_address"].startswith("127.0.0.1:") and node["os"] == "linux"
    talker = agents_of(api, "n1")["talker"]
    assert talker["type"] == "demo" and talker["health"] == "healthy"


def test_restart_over_http_changes_the_pid(cluster):
    """POST operate restart: a new pid, the old process is gone, the manager shows it."""
    api, _ = cluster
    old = wait_for(lambda: running(api, "n1", "talker"))["pid"]
    status, body = api.post("/api/v1/nodes/n1/agents/talker/operate", {"operation": "restart"})
    assert status == 200, body
    assert body["agent"]["pid"] not in (0, old)
    assert not alive(old)
    assert agents_of(api, "n1")["talker"]["pid"] == body["agent"]["pid"]


def test_stop_shows_stopped_and_start_brings_it_back(cluster):
    """stop: the API shows `stopped` at once; start brings a new pid."""
    api, _ = cluster
    wait_for(lambda: running(api, "n2", "sleeper"))
    status, body = api.post("/api/v1/nodes/n2/agents/sleeper/operate",
                            b'{"operation":"stop"}')   # no Content-Type, like curl -d
    assert status == 200 and body["agent"]["status"] == "stopped"
    assert agents_of(api, "n2")["sleeper"]["status"] == "stopped"
    status, body = api.post("/api/v1/nodes/n2/agents/sleeper/operate", {"operation": "start"})
    assert status == 200 and body["agent"]["pid"] > 0


def test_a_crash_reaches_the_manager_within_one_sync_interval(cluster):
    """An agent killed behind fleet's back shows its new pid in the API within 0.5 s (+ slack)."""
    api, _ = cluster
    old = wait_for(lambda: running(api, "n2", "talker"))["pid"]
    began = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: running(api, "n2", "talker", other_than=old), timeout=5)
    assert time.monotonic() - began < 0.5 + 1.0


def test_logs_and_metrics_through_the_manager(cluster):
    """Logs return what the agent printed; metrics return points with rss."""
    api, _ = cluster
    status, body = wait_for(lambda: (lambda r: r if "talker up" in r[1].get("lines", []) else None)(
        api.get("/api/v1/nodes/n1/agents/talker/logs?lines=5")))
    assert status == 200 and body["truncated"] is False
    points = wait_for(lambda: api.get("/api/v1/nodes/n1/agents/sleeper/metrics?duration=60")[1]["points"],
                      timeout=10)
    assert points[-1]["memory_rss"] > 0


def test_bad_requests_get_clear_errors(cluster):
    """Unknown node or agent 404, bad operation 400, bad lines 400, no token 401."""
    api, _ = cluster
    cases = [
        (api.get("/api/v1/nodes/nope/agents"), 404, "not_found"),
        (api.post("/api/v1/nodes/n1/agents/nope/operate", {"operation": "start"}), 404, "not_found"),
        (api.post("/api/v1/nodes/n1/agents/talker/operate", {"operation": "explode"}), 400,
         "invalid_argument"),
        (api.get("/api/v1/nodes/n1/agents/talker/logs?lines=5000"), 400, "invalid_argument"),
        (api.get("/api/v1/nodes", token="wrong"), 401, "unauthenticated"),
        (api.get("/api/v1/nodes", token=CLUSTER_TOKEN), 401, "unauthenticated"),
        (api.call("GET", "/api/v1/nodes", token=""), 401, "unauthenticated"),
    ]
    for (status, body), want_status, want_code in cases:
        assert status == want_status, body
        assert body["error"]["code"] == want_code and body["error"]["message"]


def test_killed_daemon_answers_503_and_goes_offline_alone(cluster):
    """A SIGKILLed daemon: operate fails 503/504 within the deadline; only it goes offline."""
    api, procs = cluster
    wait_for(lambda: running(api, "n2", "talker"))
    procs["n2"].kill()
    began = time.monotonic()
    status, body = api.post("/api/v1/nodes/n2/agents/talker/operate", {"operation": "restart"})
    assert status in (503, 504), body
    assert time.monotonic() - began < 31
    wait_for(lambda: api.get("/api/v1/nodes/n2")[1]["node"]["status"] == "offline", timeout=10)
    assert api.get("/api/v1/nodes/n1")[1]["node"]["status"] == "online"
    status, body = api.call("DELETE", "/api/v1/nodes/n1")
    assert status == 409, body
