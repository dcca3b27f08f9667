"""What a daemon tells its manager, with real `python fleet.py` processes, real agents and
sockets: every agent field in its reports, its clean stop, and a refused cluster token."""
import re
import time

from tests.helpers import wait_for
from tests.realfleet import CLUSTER_TOKEN, Api, agents_toml

QUICK_EXIT = """
[[agents]]
id = "quick"
command = ["false"]
start_seconds = 0.2
backoff_initial = 30
backoff_max = 30
"""


def node_status(api, node):
    status, body = api.get(f"/api/v1/nodes/{node}")
    return body["node"]["status"] if status == 200 else None


def test_an_agent_in_backoff_shows_its_error_and_retry_time_on_a_plain_get(cluster):
    """An agent whose command exits at once reads backoff, with a non-empty last_error and a
    future next_retry_time, from a plain GET of the node's agents (nobody calls sync)."""
    manager = cluster.run("manager", cluster.manager_config())
    api = Api(manager.port("http"))
    cluster.run("daemon", cluster.daemon_config("n1", manager.port("grpc"), QUICK_EXIT)).port()
    agent = wait_for(lambda: (lambda a: a if a.get("status") == "backoff" else None)(
        api.agents("n1").get("quick", {})), timeout=15)
    now_ms = time.time() * 1000
    assert "s after start with code 1" in agent["last_error"], agent
    assert agent["next_retry_time"] > now_ms + 20_000, agent       # backoff_initial is 30 s
    assert agent["changed_at"] <= now_ms and agent["config_changed"] is False, agent


def test_a_daemon_stopped_cleanly_reads_offline_at_once_and_online_when_back(cluster):
    """After SIGTERM the daemon's node reads offline within 2 s although offline_after is
    60 s; the restarted daemon makes it online again."""
    manager = cluster.run("manager", cluster.manager_config(offline_after=60))
    api, grpc_port = Api(manager.port("http")), manager.port("grpc")
    config = cluster.daemon_config("n1", grpc_port, agents_toml(("a",)))
    daemon = cluster.run("daemon", config)
    daemon.port()
    wait_for(lambda: api.agents("n1").get("a", {}).get("status") == "running", timeout=15)
    assert node_status(api, "n1") == "online"
    assert daemon.terminate() == 0
    wait_for(lambda: node_status(api, "n1") == "offline", timeout=2)
    _, body = api.get("/api/v1/nodes?status=offline")
    assert [n["node_id"] for n in body["nodes"]] == ["n1"]
    assert "n1 stopped cleanly" in manager.read()
    cluster.run("daemon", config).port()
    wait_for(lambda: node_status(api, "n1") == "online", timeout=10)


def test_a_refused_cluster_token_is_an_error_at_every_retry_and_logged_by_the_manager(cluster):
    """A daemon with the wrong cluster token logs an ERROR naming the manager at every
    (backoff-limited) retry; the manager logs the refused calls with the peer's address, one
    line per peer per minute; neither logs a token."""
    manager = cluster.run("manager", cluster.manager_config())
    grpc_port = manager.port("grpc")
    config = cluster.daemon_config("n1", grpc_port, "")
    wrong = "wrong-cluster-token-for-tests-000000"
    config.write_text(config.read_text().replace(CLUSTER_TOKEN, wrong))
    daemon = cluster.run("daemon", config)
    refused = re.compile(rf" ERROR fleet\.daemon\.syncer: manager 127\.0\.0\.1:{grpc_port} "
                         r"refused the cluster token \(RegisterNode\)")
    wait_for(lambda: len(refused.findall(daemon.read())) >= 3, timeout=15)
    lines = [line for line in manager.read().splitlines() if "refused call" in line]
    assert len(lines) == 1, lines
    assert re.search(r" WARNING fleet\.rpc: refused call '/fleet\.v1\.ManagerService/"
                     r"RegisterNode' from 127\.0\.0\.1:\d+: wrong cluster token$", lines[0])
    for proc in (daemon, manager):
        assert wrong not in proc.read() and CLUSTER_TOKEN not in proc.read()
