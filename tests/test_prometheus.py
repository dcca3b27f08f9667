"""Prometheus metrics: the manager's GET /metrics and the daemon's metrics_listen, checked
by promtool and scraped by a real Prometheus server (Debian's prometheus package)."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet import config as fleet_config
from fleet.manager.app import Manager
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.api.metrics import ManagerMetrics
from fleet.states import State
from tests.helpers import wait_for
from tests.procs import REPO, FleetProcess
from tests.realfleet import API_TOKEN, CLUSTER_TOKEN, Api, agents_toml, free_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


# ---- helpers ----

def scrape(port, token=None, path="/metrics"):
    """(status, Content-Type, body text) of one GET."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text):
    """{(name, ((label, value), ...)): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text, name, **labels):
    """The value of one series in an exposition (0.0 when absent)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text):
    """`promtool check metrics` on an exposition: (exit status, its output)."""
    assert os.path.exists(PROMTOOL), f"{PROMTOOL} is missing: apt-get install prometheus"
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def manager_config(tmp_path, **fields):
    return fleet_config.ManagerConfig(
        http="127.0.0.1:0", grpc="127.0.0.1:0", db=f"sqlite:///{tmp_path}/fleet.db",
        api_tokens=(("default", API_TOKEN),), cluster_token=CLUSTER_TOKEN, **fields)


@pytest.fixture
def manager(tmp_path):
    """A real Manager in this process (HTTP and gRPC on port 0, SQLite file)."""
    made = Manager(manager_config(tmp_path))
    made.start()
    yield made
    made.close()


def start_fleet(cluster, agents=("a1", "a2"), metrics_listen="127.0.0.1:0"):
    """A real manager and one daemon (node n1) serving metrics; (http port, metrics port)."""
    manager = cluster.run("manager", cluster.manager_config(offline_after=30))
    grpc_port, http_port = manager.port("grpc"), manager.port("http")
    path = cluster.daemon_config("n1", grpc_port, agents_toml(agents))
    path.write_text(path.read_text().replace(
        "[daemon]\n", f'[daemon]\nmetrics_listen = "{metrics_listen}"\n'))
    daemon = cluster.run("daemon", path)
    metrics_port = daemon.port("metrics")
    api = Api(http_port)
    wait_for(lambda: [a["status"] for a in api.agents("n1").values()] == ["running"] * len(agents),
             timeout=30)
    return http_port, metrics_port


# ---- the manager ----

def test_manager_metrics_need_a_token(manager):
    """GET /metrics without a token is 401; with one it is the text format 0.0.4."""
    status, content_type, body = scrape(manager.http_port)
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthenticated"
    status, content_type, body = scrape(manager.http_port, API_TOKEN)
    assert status == 200 and content_type == TEXT_FORMAT
    assert value(body, "fleet_nodes", status="online") == 0
    assert "fleet_agents" in body and "fleet_http_requests_total" in body


def test_metrics_public_opens_metrics_without_a_token(tmp_path):
    """With [manager] metrics_public = true, /metrics answers 200 without a token; the API still needs one."""
    made = Manager(manager_config(tmp_path, metrics_public=True))
    made.start()
    try:
        assert scrape(made.http_port)[0] == 200
        assert scrape(made.http_port, path="/api/v1/nodes")[0] == 401
    finally:
        made.close()


def test_http_requests_are_counted_by_route_pattern_not_path(manager):
    """Requests count under their route pattern and code; an unknown path is `unmatched`, never itself."""
    for node in ("ghost-1", "ghost-2"):
        scrape(manager.http_port, API_TOKEN, f"/api/v1/nodes/{node}")
    scrape(manager.http_port, API_TOKEN, "/no/such/path-123")
    body = scrape(manager.http_port, API_TOKEN)[2]
    assert value(body, "fleet_http_requests_total", route="/api/v1/nodes/<node_id>",
                 method="GET", code="404") == 2
    assert value(body, "fleet_http_requests_total", route="unmatched", method="",
                 code="404") == 1
    assert "ghost" not in body and "path-123" not in body


def test_two_managers_in_one_process_keep_their_own_counters(tmp_path):
    """Each Manager has its own registry: two in one process start, and count apart."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Manager(manager_config(tmp_path / "a")), Manager(manager_config(tmp_path / "b"))
    first.start()
    try:
        second.start()
        try:
            for _ in range(3):
                scrape(first.http_port, API_TOKEN, "/health")
            body = scrape(second.http_port, API_TOKEN)[2]
            assert value(body, "fleet_http_requests_total", route="/health", method="GET",
                         code="200") == 0
        finally:
            second.close()
    finally:
        first.close()


def test_fleet_gauges_over_10000_agents(db_url):
    """With 10,000 agents stored (SQLite and PostgreSQL), one exposition counts them by
    status and health and has an up and a restarts series per agent, in well under a few
    seconds."""
    db = open_database(db_url)
    migrate(db)
    sql = backend_of(db).sql
    states = [int(s) for s in State if s is not State.UNSPECIFIED]
    rows = [(f"n{i % 50}", f"a{i}", states[i % len(states)], i % 4,
             ("healthy", "unhealthy", "unknown")[i % 3]) for i in range(10000)]
    now = int(time.time() * 1000)
    with db.atomic():
        for n in range(50):
            db.execute_sql(sql("INSERT INTO node (node_id, registered_at, last_seen, labels) "
                               "VALUES (?, ?, ?, '{}')"), (f"n{n}", now, now if n < 30 else now - 10**6))
        for start in range(0, len(rows), 500):
            chunk = rows[start:start + 500]
            db.execute_sql(sql("INSERT INTO agent (node_id, agent_id, status, restart_count, "
                               "health) VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * len(chunk))),
                           [v for row in chunk for v in row])
    try:
        metrics = ManagerMetrics(db, offline_after=90)
        began = time.monotonic()
        body, content_type = metrics.exposition()
        took = time.monotonic() - began
    finally:
        close_database(db)
    text = body.decode()
    assert took < 5, took
    parsed = samples(text)                # once: 20,000 series take seconds to parse
    series = lambda name, **labels: parsed.get(  # noqa: E731 - value() on the parsed text
        (name, tuple(sorted(labels.items()))), 0.0)
    assert series("fleet_nodes", status="online") == 30
    assert series("fleet_nodes", status="offline") == 20
    for state in State:
        if state is not State.UNSPECIFIED:
            expected = sum(1 for row in rows if row[2] == int(state))
            assert series("fleet_agents", status=state.api_name) == expected, state
    assert series("fleet_agents_by_health", health="unhealthy") == 3333
    assert text.count("\nfleet_agent_up{") == 10000
    assert series("fleet_agent_restarts", node="n7", agent="a57") == 57 % 4
    assert series("fleet_agent_up", node="n2", agent="a2") == (states[2] == State.RUNNING)
    assert promtool_check(text)[0] == 0


# ---- configuration ----

def test_metrics_config_keys_are_checked():
    """metrics_public must be a boolean and metrics_listen HOST:PORT; both are accepted."""
    good = fleet_config.parse("all", {"manager": {"metrics_public": True},
                                      "daemon": {"metrics_listen": "127.0.0.1:0"}}, [])
    assert good.manager.metrics_public and good.daemon.metrics_listen == "127.0.0.1:0"
    problems = []
    fleet_config.parse("all", {"manager": {"metrics_public": "sometimes"},
                               "daemon": {"metrics_listen": "9100"}}, problems)
    text = "\n".join(problems)
    assert "[manager] metrics_public: not a boolean" in text
    assert "[daemon] metrics_listen: not HOST:PORT" in text


def test_a_daemon_without_metrics_listen_never_loads_prometheus_client(tmp_path):
    """A running daemon without metrics_listen has not imported prometheus_client; with it, it has."""
    code = """
import sys, os
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
from fleet import config
from fleet.daemon.app import Daemon
listen = sys.argv[2]
cfg = config.parse("daemon", {"daemon": {"state_dir": sys.argv[1], "manager": "127.0.0.1:1",
                                         "listen": "127.0.0.1:0", "metrics_listen": listen}}, [])
daemon = Daemon(cfg)
daemon.start()
loaded = "prometheus_client" in sys.modules
daemon.stop()
print(loaded)
"""
    for listen, expected in (("", "False"), ("127.0.0.1:0", "True")):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"state{expected}"),
                              listen], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected, listen


def test_a_metrics_port_in_use_is_one_line_and_exit_1(tmp_path):
    """A daemon whose metrics_listen port is taken exits 1 with `cannot listen metrics=...`."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "daemon.toml"
        path.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:0"\n'
                        f'manager = "127.0.0.1:1"\nmetrics_listen = "127.0.0.1:{port}"\n')
        proc = FleetProcess("--role", "daemon", "--config", str(path), log_dir=tmp_path)
        assert proc.popen.wait(30) == 1
    assert f"cannot listen metrics=127.0.0.1:{port}: address already in use" in proc.read()
    assert "Traceback" not in proc.read()
    assert not (tmp_path / "state").exists()


# ---- both roles, real processes ----

def test_both_roles_pass_promtool_and_counters_move(cluster):
    """Both expositions pass `promtool check metrics`; an operate and a report move the counters."""
    http_port, metrics_port = start_fleet(cluster)
    manager_text = scrape(http_port, API_TOKEN)[2]
    status, content_type, daemon_text = scrape(metrics_port)
    assert status == 200 and content_type.startswith("text/plain")
    assert scrape(metrics_port, path="/")[0] == 404
    assert promtool_check(manager_text) == (0, "")
    assert promtool_check(daemon_text) == (0, "")

    assert value(manager_text, "fleet_agents", status="running") == 2
    assert value(manager_text, "fleet_agent_up", node="n1", agent="a1") == 1
    assert value(daemon_text, "fleet_daemon_info", node="n1", version=_version()) == 1
    assert value(daemon_text, "fleet_daemon_agent_state", agent="a1", state="running") == 1
    assert value(daemon_text, "fleet_daemon_agent_state", agent="a1", state="stopped") == 0
    assert value(daemon_text, "fleet_daemon_agent_health", agent="a1", health="healthy") == 1
    assert value(daemon_text, "fleet_daemon_last_report_timestamp_seconds") > time.time() - 60
    wait_for(lambda: value(scrape(metrics_port)[2], "fleet_daemon_agent_rss_bytes",
                           agent="a2") > 0, timeout=10)

    reports = value(manager_text, "fleet_reports_received_total")
    wait_for(lambda: value(scrape(http_port, API_TOKEN)[2], "fleet_reports_received_total")
             > reports, timeout=10)
    status, _ = Api(http_port).post("/api/v1/nodes/n1/agents/a1/operate",
                                    {"operation": "restart"})
    assert status == 200
    after = scrape(http_port, API_TOKEN)[2]
    assert value(after, "fleet_operations_total", operation="restart", result="ok") == 1
    assert value(after, "fleet_http_requests_total", method="POST", code="200",
                 route="/api/v1/nodes/<node_id>/agents/<agent_id>/operate") == 1
    assert value(after, "fleet_states_received_total") > value(manager_text,
                                                               "fleet_states_received_total")
    assert value(after, "fleet_report_duration_seconds_count") >= reports + 1
    wait_for(lambda: value(scrape(metrics_port)[2], "fleet_daemon_agent_restarts",
                           agent="a1") == 1, timeout=10)


def test_a_prometheus_server_scrapes_both_roles(cluster, tmp_path):
    """A real Prometheus scrapes the manager (with the token) and the daemon, and its query
    API answers the fleet's numbers."""
    assert os.path.exists(PROMETHEUS), f"{PROMETHEUS} is missing: apt-get install prometheus"
    http_port, metrics_port = start_fleet(cluster)
    token_file = tmp_path / "prometheus.token"
    token_file.write_text(API_TOKEN + "\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(token_file=token_file, manager=http_port,
                                               daemon=metrics_port))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        targets = wait_for(lambda: _targets_up(port, server), timeout=60, interval=0.5)
        assert targets == {"fleet-manager": "up", "fleet-daemon": "up"}
        running = wait_for(lambda: _query(port, 'fleet_agents{status="running"}'),
                           timeout=30, interval=0.5)
        assert running == [("fleet-manager", "2")]
        states = wait_for(lambda: _query(port, 'sum(fleet_daemon_agent_state{state="running"})'),
                          timeout=30, interval=0.5)
        assert states == [("", "2")]
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: fleet-manager
    authorization:
      credentials_file: {token_file}
    static_configs:
      - targets: ["127.0.0.1:{manager}"]
  - job_name: fleet-daemon
    static_configs:
      - targets: ["127.0.0.1:{daemon}"]
"""


def _api(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def _targets_up(port, server):
    """{job: health} once every target has been scraped; None before (or while starting)."""
    if server.poll() is not None:
        raise AssertionError(f"prometheus exited {server.returncode}")
    try:
        active = _api(port, "/api/v1/targets")["data"]["activeTargets"]
    except (OSError, ValueError):
        return None
    health = {t["labels"]["job"]: t["health"] for t in active}
    return health if len(health) == 2 and "unknown" not in health.values() else None


def _query(port, promql):
    """[(job, value)] of an instant query; None while it has no result."""
    try:
        found = _api(port, "/api/v1/query?query=" + urllib.parse.quote(promql))
    except (OSError, ValueError):
        return None
    result = found["data"]["result"]
    return [(r["metric"].get("job", ""), r["value"][1]) for r in result] or None


def _version():
    import fleet
    return fleet.__version__
