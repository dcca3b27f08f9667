"""fleet ctl as the operator runs it: `python fleet.py ctl ...` as a subprocess against a
real manager and daemon (and, for endpoints of later issues, a small stdlib HTTP server
that speaks DESIGN.md's contract)."""
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers import wait_for
from tests.procs import FLEET_PY
from tests.realfleet import API_TOKEN, Api, Cluster, agents_toml, free_port

NODE = "n1"
PRINTER = [sys.executable, "-c",
           "import time\nfor i in range(1, 21): print('line', i, flush=True)\ntime.sleep(3600)"]


def ctl(*args, url=None, token=API_TOKEN, cwd=None, timeout=60):
    """Run `python fleet.py ctl ARGS`; the CompletedProcess (text)."""
    env = {**os.environ, "FLEET_API_TOKEN": token}
    env.pop("FLEET_TOKEN_FILE", None)
    if url:
        env["FLEET_URL"] = url
    return subprocess.run(FLEET_PY + ["ctl", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def assert_clean(result):
    """Whatever the exit status, no traceback reached the user."""
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A real manager and one daemon (node n1: agents a, b and c printing 20 lines each;
    the follow test appends to c's log)."""
    cluster = Cluster(tmp_path_factory.mktemp("ctl"))
    try:
        manager = cluster.run("manager", cluster.manager_config())
        grpc_port, http_port = manager.port("grpc"), manager.port("http")
        cluster.run("daemon", cluster.daemon_config(NODE, grpc_port,
                                                    agents_toml(("a", "b", "c"), PRINTER)))
        api = Api(http_port)
        # One read for both checks: with two, an empty list (all() is true) then three
        # agents still starting passed, and the first test read "starting".
        wait_for(lambda: [a["status"] for a in api.agents(NODE).values()] == ["running"] * 3,
                 timeout=20)
        cluster.url, cluster.api = f"http://127.0.0.1:{http_port}", api
        cluster.log_path = cluster.tmp / NODE / "logs" / "c.log"
        wait_for(lambda: "line 20" in cluster.log_path.read_text())
        yield cluster
    finally:
        cluster.close()


def rows(output):
    """The table's lines split on runs of two or more spaces, header first."""
    import re
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


# ---- what ctl is ----

def test_ctl_is_a_stdlib_client_of_the_api_only():
    """fleet/ctl imports only the standard library and itself, and `fleet ctl` loads
    neither role, gRPC nor protobuf."""
    import ast
    import pathlib
    package = pathlib.Path(__file__).resolve().parent.parent / "fleet" / "ctl"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("fleet.ctl") or top in sys.stdlib_module_names \
                    or top == "__future__", (source.name, name)
    code = ("import sys; from fleet.cli import main; main(['ctl', '--url', 'http://127.0.0.1:1',"
            " 'nodes']); print(sorted(m for m in sys.modules if m.startswith(('grpc', 'google',"
            " 'fleet.daemon', 'fleet.manager', 'psutil'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=package.parent.parent, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stderr


# ---- against the real fleet ----

def test_nodes_lists_the_node_online(fleet):
    """`ctl nodes` prints an aligned table with the node online."""
    result = ctl("nodes", url=fleet.url)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0][:3] == ["NODE", "STATUS", "HOSTNAME"]
    assert table[1][:2] == [NODE, "online"]
    lines = result.stdout.splitlines()
    assert lines[0].index("STATUS") == lines[1].index("online")   # columns line up


def test_agents_of_a_node(fleet):
    """`ctl agents n1` lists every agent running, with their pids right-aligned."""
    result = ctl("agents", NODE, url=fleet.url)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0][:6] == ["AGENT", "TYPE", "STATUS", "HEALTH", "PID", "RESTARTS"]
    stored = fleet.api.agents(NODE)
    for line in table[1:]:
        assert line[2] == "running" and int(line[4]) == stored[line[0]]["pid"]
    header, first = result.stdout.splitlines()[:2]
    pid_end = header.index("PID") + len("PID")                     # numbers right-aligned
    assert first[:pid_end].endswith(" " + rows(result.stdout)[1][4])
    only = ctl("agents", NODE, "--status", "stopped", url=fleet.url)
    assert only.returncode == 0 and only.stdout.strip() == "no agents"
    typed = ctl("agents", NODE, "--type", "nosuchtype", url=fleet.url)
    assert typed.returncode == 0 and typed.stdout.strip() == "no agents"
    labelled = ctl("agents", NODE, "--label", "role=x", url=fleet.url)
    assert labelled.returncode == 2 and "agents NODE takes no --label" in labelled.stderr


def test_restart_changes_the_pid(fleet):
    """`ctl restart n1 b` exits 0 and the agent runs under a new pid."""
    before = fleet.api.agents(NODE)["b"]["pid"]
    result = ctl("restart", NODE, "b", url=fleet.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{NODE} b: restart done, ")
    after = wait_for(lambda: (a := fleet.api.agents(NODE)["b"])["status"] == "running"
                     and a["pid"] != before and a["pid"])
    assert after != before


def test_logs_last_n_lines(fleet):
    """`ctl logs n1 a -n 3` prints the last three lines; --grep filters."""
    result = ctl("logs", NODE, "a", "-n", "3", url=fleet.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-3:] == ["line 18", "line 19", "line 20"]
    grep = ctl("logs", NODE, "a", "--grep", "line 1", "-n", "2", url=fleet.url)
    assert grep.stdout.splitlines() == ["line 18", "line 19"]


def test_json_prints_the_apis_json(fleet):
    """--json prints exactly what the API answers."""
    result = ctl("--json", "logs", NODE, "a", "-n", "5", url=fleet.url)
    assert result.returncode == 0, result.stderr
    status, body = fleet.api.get(f"/api/v1/nodes/{NODE}/agents/a/logs?lines=5")
    assert status == 200 and json.loads(result.stdout) == body
    assert set(body) == {"lines", "truncated", "next_offset"}
    nodes = json.loads(ctl("nodes", "--json", url=fleet.url).stdout)
    assert [n["node_id"] for n in nodes["nodes"]] == [NODE]
    assert set(nodes["nodes"][0]) == set(fleet.api.get("/api/v1/nodes")[1]["nodes"][0])


def test_logs_follow_prints_new_lines_and_ends_with_0_on_ctrl_c(fleet):
    """`ctl logs -f` prints a line appended after it started, then SIGINT ends it with exit 0."""
    env = {**os.environ, "FLEET_API_TOKEN": API_TOKEN, "FLEET_URL": fleet.url}
    follower = subprocess.Popen(FLEET_PY + ["ctl", "logs", NODE, "c", "-n", "1", "-f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: seen, timeout=20)
        with open(fleet.log_path, "a") as log:
            log.write("appended while following\n")
        wait_for(lambda: "appended while following\n" in seen, timeout=10)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    reader.join(5)
    assert seen.count("appended while following\n") == 1
    assert "Traceback" not in follower.stderr.read()


def test_unknown_node_exits_1_with_the_servers_message(fleet):
    """An API error exits 1 and prints the server's error.message on stderr."""
    result = ctl("agents", "nope", url=fleet.url)
    assert result.returncode == 1
    assert result.stderr.strip() == "fleet ctl: node 'nope' not found"
    assert result.stdout == ""
    assert_clean(ctl("logs", NODE, "ghost", url=fleet.url))


def test_wrong_token_exits_1(fleet, tmp_path):
    """A wrong token exits 1 with the 401's message and where the token came from."""
    token_file = tmp_path / "wrong.token"
    token_file.write_text("not-the-token\n")
    result = ctl("--token-file", str(token_file), "nodes", url=fleet.url)
    assert result.returncode == 1 and f"token from {token_file}" in result.stderr
    assert_clean(result)
    missing = ctl("nodes", "--token-file", str(tmp_path / "absent"), url=fleet.url)
    assert missing.returncode == 1 and "cannot read token file" in missing.stderr


def test_token_from_the_default_file(fleet, tmp_path):
    """With no flag or variable, ./fleet-api.token is read."""
    (tmp_path / "fleet-api.token").write_text(API_TOKEN + "\n")
    env_free = ctl("nodes", url=fleet.url, token="", cwd=tmp_path)
    assert env_free.returncode == 0, env_free.stderr


@pytest.mark.parametrize("args", [["logs", NODE], ["agents", "--status", "sleeping"],
                                  ["logs", NODE, "a", "-n", "0"], ["bogus"], [],
                                  ["rollout", "restart", "a"], ["nodes", "--label", "nolabel"],
                                  ["rollout", "policy", "edge", "--label", "role=edge"]])
def test_bad_usage_exits_2(args):
    """Bad usage exits 2 with argparse's message, before any request."""
    result = ctl(*args, url="http://127.0.0.1:1")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert_clean(result)


def test_connection_refused_is_one_line_naming_the_url():
    """No manager at the URL: exit 1 and one line naming it."""
    url = f"http://127.0.0.1:{free_port()}"
    result = ctl("nodes", url=url)
    assert result.returncode == 1
    assert result.stderr == f"fleet ctl: cannot reach the manager at {url}: connection refused\n"
    bad = ctl("nodes", url="ftp://somewhere")
    assert bad.returncode == 2 and "bad URL" in bad.stderr


SECRET = "s3cret-part"


@pytest.mark.parametrize("env, args, says", [
    ({"FLEET_URL": "http://[::1"}, [], "bad URL 'http://[::1'"),
    ({"FLEET_URL": "http://127.0.0.1:port"}, [], "bad URL"),
    ({"FLEET_TIMEOUT": "abc"}, [], "FLEET_TIMEOUT: not a number of seconds: 'abc'"),
    ({"FLEET_TIMEOUT": "-5"}, [], "FLEET_TIMEOUT: must be more than 0"),
    ({"FLEET_URL": "https://127.0.0.1:1"}, ["--ca-file", "/nonexistent/ca.pem"],
     "cannot use CA file '/nonexistent/ca.pem'"),
    ({"FLEET_URL": "https://127.0.0.1:1"}, ["--ca-file", "/etc/hostname"],
     "cannot use CA file '/etc/hostname'"),
    ({"FLEET_API_TOKEN": f"{SECRET}\nmore"}, [], "the token in FLEET_API_TOKEN has a space"),
    ({"FLEET_API_TOKEN": f"{SECRET}\u20ac"}, [], "the token in FLEET_API_TOKEN has a space"),
])
def test_settings_that_cannot_work_exit_2_in_one_line_without_the_token(env, args, says):
    """A URL, FLEET_TIMEOUT, CA file or token that cannot work is one line and exit 2
    (they were tracebacks, and a token with a line break was printed whole)."""
    full = {**os.environ, "FLEET_URL": "http://127.0.0.1:1", **env}
    full.pop("FLEET_TOKEN_FILE", None)
    result = subprocess.run(FLEET_PY + ["ctl", "nodes", *args], capture_output=True,
                            text=True, env=full, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fleet ctl: " + says) and result.stderr.count("\n") == 1
    assert SECRET not in result.stderr + result.stdout
    assert_clean(result)


def test_a_token_file_with_two_lines_is_refused_unshown(tmp_path):
    """A token file holding more than one word is exit 2 naming the file, not the token."""
    token_file = tmp_path / "two.token"
    token_file.write_text(f"{SECRET}\nsecond-line\n")
    result = ctl("--token-file", str(token_file), "nodes", url="http://127.0.0.1:1", token="")
    assert result.returncode == 2 and f"the token in {token_file}" in result.stderr
    assert SECRET not in result.stderr and "second-line" not in result.stderr


def test_metrics_events_and_audit_tables(fleet):
    """metrics, events and audit print their tables from the real API."""
    metrics = wait_for(lambda: (r := ctl("metrics", NODE, "a", url=fleet.url)).returncode == 0
                       and "RSS" in r.stdout and r, timeout=15)
    assert rows(metrics.stdout)[0][:3] == ["TIME", "CPU%", "RSS"]
    events = ctl("events", NODE, "a", url=fleet.url)
    assert events.returncode == 0 and rows(events.stdout)[0][:4] == ["TIME", "NODE", "AGENT",
                                                                     "KIND"]
    ctl("restart", NODE, "a", url=fleet.url)
    audit = ctl("audit", "-n", "5", url=fleet.url)
    assert audit.returncode == 0 and "restart" in audit.stdout


# ---- endpoints of the views helper (pass once merged with its branch) ----

def test_status_shows_the_overview(fleet):
    """`ctl status` prints nodes and agents by status from GET /api/v1/overview (once
    the agents that tests before restarted are running again)."""
    result = wait_for(lambda: (r := ctl("status", url=fleet.url)).returncode == 0
                      and "agents  3 total: 3 running" in r.stdout and r, timeout=15)
    assert result.stdout.startswith("nodes   1 total: 1 online, 0 offline\n")


def test_fleet_wide_agents(fleet):
    """`ctl agents` with no node lists every node's agents, NODE first; filters pass."""
    result = ctl("agents", url=fleet.url)
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0][:2] == ["NODE", "AGENT"]
    assert [line[:2] for line in table[1:]] == [[NODE, "a"], [NODE, "b"], [NODE, "c"]]
    none = ctl("agents", "--status", "fatal", url=fleet.url)
    assert none.returncode == 0 and none.stdout.strip() == "no agents"


# ---- against a small server speaking the contract (paging, rollouts, policies) ----

class FakeApi(ThreadingHTTPServer):
    """Answers GET/POST with `routes[(method, path)](query, body) -> (status, json)`;
    records every request."""

    daemon_threads = True

    def __init__(self, routes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.requests = []          # (method, path, query)
        self.largest = 0            # bytes of the largest answer

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, method):
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((method, parts.path, query))
        handler = self.server.routes.get((method, parts.path))
        status, payload = handler(query, body) if handler else \
            (404, {"error": {"code": "not_found", "message": f"no such endpoint: {parts.path}"}})
        data = json.dumps(payload).encode()
        self.server.largest = max(self.server.largest, len(data))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")


@pytest.fixture
def fake_api():
    servers = []

    def start(routes):
        server = FakeApi(routes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _agent(i):
    return {"node_id": f"node-{i // 100:04d}", "agent_id": f"agent-{i % 100:02d}",
            "type": "exporter", "version": "1", "status": "running", "pid": 1000 + i,
            "start_time": None, "restart_count": i % 7, "last_exit_code": -1,
            "last_exit_signal": 0, "last_error": "", "next_retry_time": None,
            "health": "healthy", "health_message": "", "changed_at": None,
            "config_changed": False, "last_heartbeat": None, "last_sync_time": None}


def test_agents_pages_through_100000_agents(fake_api):
    """A fleet of 100,000 agents comes page by page through next_cursor into one table."""
    total = 100_000

    def agents(query, _):
        start, limit = int(query.get("cursor") or 0), int(query["limit"])
        assert 1 <= limit <= 5000
        end = min(total, start + limit)
        return 200, {"agents": [_agent(i) for i in range(start, end)],
                     "next_cursor": str(end) if end < total else None}
    server = fake_api({("GET", "/api/v1/agents"): agents})
    result = ctl("agents", url=server.url, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == total + 1 and lines[0].startswith("NODE")
    assert lines[-1].split()[:2] == ["node-0999", "agent-99"]
    assert len(server.requests) == total // 1000
    assert server.largest < 1024 * 1024


def test_rollout_polls_until_it_ends_and_prints_each_node(fake_api):
    """`ctl rollout restart` posts the rollout, prints progress until it ends, then a
    per-node summary; a failed rollout exits 1."""
    states = iter(["running", "running", "succeeded"])
    posted = []

    def create(_, body):
        posted.append(body)
        return 202, {"rollout": rollout(7, "pending", "pending")}

    def get(*_):
        status = next(states)
        return 200, {"rollout": rollout(7, status, "succeeded" if status != "pending" else "")}

    def rollout(rid, status, node_status):
        return {"id": rid, "operation": "restart", "agent_id": "web", "policy": None,
                "selector": {"labels": {"role": "edge"}}, "max_parallel": 2, "max_failures": 1,
                "wait_seconds": 60, "status": status, "created_at": 1, "finished_at": None,
                "nodes": [{"node_id": "e1", "status": node_status or "pending", "message": ""},
                          {"node_id": "e2", "status": "pending" if status == "running"
                           else node_status or "pending", "message": ""}]}
    server = fake_api({("POST", "/api/v1/rollouts"): create,
                       ("GET", "/api/v1/rollouts/7"): get})
    result = ctl("rollout", "restart", "web", "--label", "role=edge", "--max-parallel", "2",
                 url=server.url)
    assert result.returncode == 0, result.stderr
    assert posted == [{"operation": "restart", "agent_id": "web",
                       "selector": {"labels": {"role": "edge"}}, "max_parallel": 2,
                       "max_failures": 1}]
    out = result.stdout.splitlines()
    assert out[0] == "rollout 7: restart web on nodes with role=edge"
    assert "running: 1/2 nodes done (1 succeeded, 0 failed), 0 running, 1 pending" in out
    assert "succeeded: 2/2 nodes done (2 succeeded, 0 failed), 0 running, 0 pending" in out
    assert rows("\n".join(out[-3:])) == [["NODE", "STATUS", "MESSAGE"], ["e1", "succeeded"],
                                         ["e2", "succeeded"]]

    states = iter(["failed"])
    failed = ctl("rollout", "restart", "web", "--label", "role=edge", url=server.url)
    assert failed.returncode == 1 and "rollout 7 failed" in failed.stderr

    states, posted[:] = iter(["succeeded"]), []
    policy = ctl("rollout", "policy", "edge", "--max-parallel", "1", "--max-failures", "0",
                 url=server.url)
    assert policy.returncode == 0, policy.stderr
    assert posted == [{"policy": "edge", "max_parallel": 1, "max_failures": 0}]
    assert policy.stdout.splitlines()[0] == "rollout 7: policy edge on its 2 pinned nodes"


def test_reload_and_policies_follow_the_contract(fake_api):
    """`ctl reload NODE` posts to /nodes/<n>/reload and shows the agents; `ctl policies`
    lists policies; a 400 (an invalid config) exits 1 with its message."""
    policy = {"name": "edge", "version": 3, "selector": {"labels": {"role": "edge"}},
              "agents": [{"id": "web"}], "updated_at": None,
              "nodes": {"current": 4, "pending": 1, "failed": 0}, "failures": []}
    server = fake_api({
        ("POST", "/api/v1/nodes/n1/reload"): lambda *_: (200, {"agents": [_agent(5)]}),
        ("POST", "/api/v1/nodes/bad/reload"): lambda *_: (400, {"error": {
            "code": "invalid_argument", "message": "[agents.0] command: must not be empty"}}),
        ("GET", "/api/v1/policies"): lambda *_: (200, {"policies": [policy],
                                                        "next_cursor": None})})
    reload = ctl("reload", "n1", url=server.url)
    assert reload.returncode == 0 and reload.stdout.startswith("n1: config reloaded\n")
    assert rows(reload.stdout)[2][:3] == ["agent-05", "exporter", "running"]
    bad = ctl("reload", "bad", url=server.url)
    assert bad.returncode == 1
    assert bad.stderr == "fleet ctl: [agents.0] command: must not be empty\n"
    policies = ctl("policies", url=server.url)
    assert rows(policies.stdout)[1][:7] == ["edge", "3", "role=edge", "web", "4", "1", "0"]


def test_pyz_runs_ctl(pyz):
    """`python fleet.pyz ctl` is the same command."""
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, str(pyz), "ctl", "--url", url, "nodes"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "connection refused" in result.stderr


def test_https_with_a_private_ca(cluster, tmp_path):
    """Over HTTPS ctl trusts a private CA given by --ca-file or FLEET_CA_FILE, and without
    it fails in one line that says so."""
    from tests.tls_certs import issue, make_ca
    ca = make_ca(tmp_path, "ctl-ca")
    leaf = issue(tmp_path, ca, "manager")
    manager = cluster.run("manager", cluster.manager_config(
        extra=f'[manager.tls]\ncert = "{leaf.cert}"\nkey = "{leaf.key}"\n'))
    url = f"https://127.0.0.1:{manager.port('http')}"
    trusted = ctl("--ca-file", ca.cert, "nodes", url=url)
    assert trusted.returncode == 0 and trusted.stdout == "no nodes\n", trusted.stderr
    by_env = subprocess.run(FLEET_PY + ["ctl", "nodes"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "FLEET_URL": url,
                                             "FLEET_CA_FILE": ca.cert,
                                             "FLEET_API_TOKEN": API_TOKEN})
    assert by_env.returncode == 0, by_env.stderr
    untrusted = ctl("nodes", url=url)
    assert untrusted.returncode == 1 and "TLS certificate not trusted" in untrusted.stderr
    assert untrusted.stderr.count("\n") == 1


def test_logs_follow_passes_offsets_and_grep_and_waits_out_a_503(fake_api):
    """The follower asks from each next_offset with the same grep; a 503 is noted once on
    stderr and polling goes on; Ctrl-C ends it with 0."""
    answers = iter([(503, {"error": {"code": "unavailable", "message": "daemon down"}}),
                    (200, {"lines": ["new ERROR"], "truncated": False, "next_offset": 25})])

    def logs(query, _):
        if "offset" not in query:
            return 200, {"lines": ["old ERROR"], "truncated": False, "next_offset": 10}
        return next(answers, (200, {"lines": [], "truncated": False, "next_offset": 25}))
    server = fake_api({("GET", "/api/v1/nodes/n1/agents/a/logs"): logs})
    env = {**os.environ, "FLEET_API_TOKEN": "t", "FLEET_URL": server.url}
    follower = subprocess.Popen(FLEET_PY + ["ctl", "logs", "n1", "a", "--grep", "ERROR", "-f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    try:
        wait_for(lambda: [q.get("offset") for _, _, q in server.requests][-1:] == ["25"],
                 timeout=20)
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    assert follower.returncode == 0
    assert out == "old ERROR\nnew ERROR\n"
    assert err == "fleet ctl: daemon down (retrying)\n"
    offsets = [q.get("offset") for _, _, q in server.requests]
    assert offsets[:4] == [None, "10", "10", "25"]
    assert {q["grep"] for _, _, q in server.requests} == {"ERROR"}
    assert {q["lines"] for _, _, q in server.requests[1:]} == {"1000"}


def test_logs_says_on_stderr_when_the_daemon_left_older_lines_out(fake_api):
    """A truncated tail prints its lines, then one stderr line saying so, and exits 0."""
    server = fake_api({("GET", "/api/v1/nodes/n1/agents/a/logs"): lambda query, _: (
        200, {"lines": ["newest"], "truncated": True, "next_offset": 7})})
    result = ctl("logs", "n1", "a", "-n", "1000", url=server.url, token="t")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "newest\n"
    assert result.stderr == ("fleet ctl: older lines were left out: the answer reached the "
                             "daemon's size limit; ask for fewer with -n, or narrow with "
                             "--grep\n")
    shown = ctl("logs", "n1", "a", "--json", url=server.url, token="t")   # the flag is there
    assert json.loads(shown.stdout)["truncated"] is True and shown.stderr == ""

def test_output_helpers():
    """Times read relative when recent and ISO when old; sizes in binary units."""
    from fleet.ctl import output
    now = 1_800_000_000.0
    assert output.ago(int((now - 12) * 1000), now) == "12s ago"
    assert output.ago(int((now - 312) * 1000), now) == "5m12s ago"
    assert output.ago(int((now + 3) * 1000), now) == "in 3s"
    assert output.ago(int((now - 3 * 86400) * 1000), now)[:2] == "20"   # ISO date
    assert output.ago(None) == "-"
    assert [output.size(v) for v in (512, 13_700_000, None)] == ["512B", "13.1MiB", "-"]
    assert output.labels({"b": "2", "a": "1"}) == "a=1,b=2"
