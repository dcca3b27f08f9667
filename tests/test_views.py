"""Fleet-wide views and paging: GET /api/v1/agents and /api/v1/overview, and limit/cursor/
next_cursor on every list, over a real HTTP server on SQLite and PostgreSQL; the page
queries' plans read from each engine; a crash-looping agent of a real daemon tops the
restarts."""
import contextlib
import itertools
import json
import re
import sqlite3
import urllib.parse

import pytest

from fleet.manager.api.routes import make_app
from fleet.manager.api.server import serve_http
from fleet.manager.audit import AuditLog
from fleet.manager.nodes import NodeStore
from fleet.manager.pool import DaemonClientPool
from fleet.manager.service import FleetService
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.store.registry import Registry
from fleet.manager.tokens import ApiAuth
from fleet.manager.views import FleetViews
from fleet.states import State
from tests.helpers import wait_for
from tests.httpapi import Api
from tests.pg import postgresql_only, sqlite_only
from tests.realfleet import API_TOKEN, agents_toml

TOKEN = "views-api-token-0123456789abcdef"
NOW = 1_800_000_000.0           # the tests' clock, Unix seconds
NOW_MS = int(NOW * 1000)
HOUR_MS = 3_600_000
STATUSES = (State.RUNNING, State.RUNNING, State.RUNNING, State.BACKOFF, State.FATAL,
            State.STOPPED, State.EXITED)
ZONES = ("a", "b", "c")


class Env:
    """The HTTP API over a database (`url`), with fleet-wide views and the audit log."""

    def __init__(self, url):
        self.url = url
        self.path = url[len("sqlite:///"):]     # SQLite's file, for its query plans
        self.db = open_database(url)
        migrate(self.db)
        self.now = NOW
        clock = lambda: self.now  # noqa: E731 - the tests move it
        self.store = NodeStore(self.db, Registry.load(self.db), offline_after=90, clock=clock)
        self.views = FleetViews(self.db, offline_after=90, clock=clock)
        self.audit = AuditLog(self.db, clock=clock)
        self.pool = DaemonClientPool("views-cluster-token-0123456789")
        self.service = FleetService(self.store, self.pool, self.audit, self.views)
        self.http = serve_http(make_app(self.service, ApiAuth([("default", TOKEN)])),
                               "127.0.0.1:0")
        self.http.start_background()
        self.api = Api(self.http.port, TOKEN)

    def get(self, path, **query):
        """The 200 answer to GET path?query (lists are repeated parameters)."""
        status, body = self.api.get(path + _query(query))
        assert status == 200, body
        return body

    def execute(self, sql, rows):
        """Run `sql` (with ? placeholders) for every row, in one transaction."""
        backend = backend_of(self.db)
        with self.db.connection_context(), self.db.atomic():
            backend.execute_many(self.db.cursor(), backend.sql(sql), rows)

    def close(self):
        self.http.stop()
        self.pool.close_all()
        close_database(self.db)


@pytest.fixture
def env(db_url):
    """An Env on each engine (a test about HTTP alone narrows it with @sqlite_only)."""
    made = Env(db_url)
    yield made
    made.close()


def _query(params):
    pairs = [(k, v) for k, values in params.items()
             for v in (values if isinstance(values, list) else [values]) if v is not None]
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def fill(env, nodes=20, per_node=10, offline_every=0):
    """Insert nodes n000.. and their agents a0000.. straight into the database; the
    agents as [(node_id, agent_id, status name, health, type, node labels)]."""
    node_rows, agent_rows, agents = [], [], []
    for n in range(nodes):
        node_id = f"n{n:03d}"
        labels = {"zone": ZONES[n % 3], "role": "edge" if n % 2 else "core"}
        last_seen = NOW_MS - 1_000_000 if offline_every and n % offline_every == 0 else NOW_MS
        node_rows.append((node_id, json.dumps(labels, sort_keys=True), NOW_MS, last_seen))
        for a in range(per_node):
            state = STATUSES[(n + a) % len(STATUSES)]
            health = {State.RUNNING: "healthy", State.STOPPED: "unknown"}.get(state, "unhealthy")
            kind = f"t{a % 3}"
            agent_rows.append((node_id, f"a{a:04d}", kind, int(state), health))
            agents.append((node_id, f"a{a:04d}", state.api_name, health, kind, labels))
    env.execute("INSERT INTO node (node_id, labels, registered_at, last_seen) "
                "VALUES (?, ?, ?, ?)", node_rows)
    env.execute("INSERT INTO agent (node_id, agent_id, type, status, health) "
                "VALUES (?, ?, ?, ?, ?)", agent_rows)
    return agents


def expected(agents, status=None, health=None, type=None, node=None, label=()):
    """[(node_id, agent_id)] of `agents` (fill's) matching the filters, in API order."""
    wanted = [tuple(text.split("=", 1)) for text in label]
    return sorted((n, a) for n, a, s, h, t, labels in agents
                  if status in (None, s) and health in (None, h) and type in (None, t)
                  and node in (None, n) and all(labels.get(k) == v for k, v in wanted))


def walk(env, path, key, id_of, **query):
    """Every item of a list endpoint, following next_cursor page by page; and the pages."""
    items, pages, cursor = [], 0, None
    while True:
        body = env.get(path, **query, cursor=cursor)
        items += [id_of(item) for item in body[key]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert len(body[key]) == query.get("limit", 500)


def agent_key(agent):
    return agent["node_id"], agent["agent_id"]


# ---- GET /api/v1/agents ----

FILTERS = [{}, {"status": "running"}, {"health": "unhealthy"}, {"type": "t1"},
           {"node": "n004"}, {"label": ["zone=b"]}, {"label": ["zone=b", "role=core"]},
           {"status": "fatal", "health": "unhealthy"}, {"status": "running", "type": "t2"},
           {"status": "backoff", "label": ["role=edge"]}, {"node": "n004", "label": ["zone=b"]},
           {"node": "n005", "label": ["zone=b"]}, {"node": "n005", "health": "unknown"},
           {"status": "stopped", "health": "unknown", "type": "t0", "label": ["zone=c"]},
           {"node": "nobody"}, {"type": "none such"}]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: _query(f) or "none")
def test_agents_across_nodes_match_every_filter_in_node_and_agent_order(env, filters):
    """GET /api/v1/agents returns exactly the agents matching every filter given (labels of
    their node), ordered by (node_id, agent_id), whole when under the limit."""
    agents = fill(env)
    body = env.get("/api/v1/agents", **filters)
    assert [agent_key(a) for a in body["agents"]] == expected(agents, **filters)
    assert body["next_cursor"] is None
    if body["agents"]:
        assert set(body["agents"][0]) >= {"status", "health", "health_message", "restart_count"}


@pytest.mark.parametrize("filters", FILTERS[:12], ids=lambda f: _query(f) or "none")
def test_agent_pages_follow_next_cursor_each_agent_once(env, filters):
    """Small pages with any filters, followed by next_cursor, give every matching agent
    exactly once in order, full pages but the last, and a null cursor at the end."""
    agents = fill(env)
    items, pages = walk(env, "/api/v1/agents", "agents", agent_key, limit=7, **filters)
    want = expected(agents, **filters)
    assert items == want and pages == max(1, -(-len(want) // 7))


def test_twenty_thousand_agents_page_through_each_exactly_once(env):
    """20,000 agents of 200 nodes, inserted into the database, come back over HTTP in 20
    pages of 1,000, each agent once, in order; filtered walks also match, and no
    request without a limit ever gets more than 500."""
    agents = fill(env, nodes=200, per_node=100)
    items, pages = walk(env, "/api/v1/agents", "agents", agent_key, limit=1000)
    assert pages == 20 and items == expected(agents) and len(set(items)) == 20_000
    for filters in ({"status": "fatal"}, {"label": ["zone=c"], "health": "healthy"}):
        items, _ = walk(env, "/api/v1/agents", "agents", agent_key, limit=997, **filters)
        assert items == expected(agents, **filters)
    first = env.get("/api/v1/agents")
    assert len(first["agents"]) == 500 and first["next_cursor"] == "n004/a0099"


def test_a_page_survives_inserts_and_deletes_before_its_cursor(env):
    """Keyset pages: an agent inserted or deleted before the cursor neither repeats nor
    hides another on the next page."""
    fill(env, nodes=3, per_node=10)
    body = env.get("/api/v1/agents", limit=15)
    assert body["next_cursor"] == "n001/a0004"
    env.execute("DELETE FROM agent WHERE node_id = ? AND agent_id = ?", [("n000", "a0001")])
    env.execute("INSERT INTO agent (node_id, agent_id, status) VALUES (?, ?, 3)",
                [("n000", "a0000x")])
    rest = env.get("/api/v1/agents", limit=15, cursor=body["next_cursor"])["agents"]
    assert [agent_key(a) for a in rest][:2] == [("n001", "a0005"), ("n001", "a0006")]
    assert len(rest) == 15


# ---- the plans: no page scans the agent table ----

@contextlib.contextmanager
def recorded_statements(db):
    """Every (sql, params) the database executes inside the block."""
    seen = []
    original = db.execute_sql

    def record(sql, params=None, *args, **kwargs):
        seen.append((sql, tuple(params or ())))
        return original(sql, params, *args, **kwargs)

    db.execute_sql = record
    try:
        yield seen
    finally:
        del db.execute_sql


def plan(path, sql, params):
    """SQLite's EXPLAIN QUERY PLAN of one statement, a line per step."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def reads_agent_by_index(steps):
    """True when no step scans the agent table without an index or sorts its rows."""
    for step in steps:
        if "TEMP B-TREE" in step:
            return False
        if re.match(r"SCAN (agent|t1)\b", step) and "USING" not in step:
            return False
    return True


@sqlite_only
def test_every_page_query_reads_an_index_never_the_agent_table(env):
    """For every combination of filters, first page or from a cursor, each query the
    fleet-wide list runs on the agent table is an index search in page order (no
    `SCAN agent` without an index, no sort); so are the node's-agents pages, and the
    overview counts read covering indexes."""
    fill(env, nodes=50, per_node=40)
    options = [("status", "running"), ("health", "unhealthy"), ("type", "t1"),
               ("node", "n007"), ("label", ["zone=b"])]
    checked = 0
    for chosen in itertools.product((False, True), repeat=len(options) + 1):
        filters = {name: value for (name, value), on in zip(options, chosen) if on}
        with recorded_statements(env.db) as seen:
            env.service.fleet_agents(**filters, limit=30,
                                     cursor="n007/a0011" if chosen[-1] else None)
        for sql, params in seen:
            if '"agent"' in sql:
                steps = plan(env.path, sql, params)
                assert reads_agent_by_index(steps), (filters, sql, steps)
                if filters or chosen[-1]:
                    assert steps[0].startswith("SEARCH"), (filters, sql, steps)
                checked += 1
    assert checked >= 64
    for health, cursor in itertools.product((None, "unhealthy"), (None, "a0005")):
        with recorded_statements(env.db) as seen:
            env.service.list_agents("n003", health, 10, cursor)
        steps = plan(env.path, *seen[-1])
        assert reads_agent_by_index(steps) and steps[0].startswith("SEARCH"), steps
    with recorded_statements(env.db) as seen:
        env.service.overview()
    for sql, params in seen:
        if "FROM agent" in sql:
            assert plan(env.path, sql, params) == [
                f"SCAN agent USING COVERING INDEX agent_{sql.split()[1].rstrip(',')}_key"]


def pg_plan(env, sql, params):
    """PostgreSQL's EXPLAIN (FORMAT JSON) of one statement: every node of its plan tree."""
    with env.db.connection_context():
        found = env.db.execute_sql("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
    nodes, todo = [], [found[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo += node.get("Plans", [])
    return nodes


def scans_agent_table(nodes):
    """True when a plan reads the agent table in full (a Seq Scan on agent)."""
    return any(n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "agent"
               for n in nodes)


@postgresql_only
def test_every_filtered_page_reads_an_index_on_postgresql(env):
    """PostgreSQL, after ANALYZE, with its default planner settings: every filtered page
    of the fleet-wide list, first or from a cursor, and every node's-agents page reads
    the agent table through an index, never a Seq Scan; a page filtered by status,
    health or type alone reads it in page order (no Sort). (Pages of named nodes may
    bitmap-read those nodes' agents and sort them: the planner's choice on 40 a node.)"""
    fill(env, nodes=50, per_node=40)
    with env.db.connection_context():
        env.db.execute_sql("ANALYZE")
    options = [("status", "running"), ("health", "unhealthy"), ("type", "t1"),
               ("node", "n007"), ("label", ["zone=b"])]
    checked = 0
    for chosen in itertools.product((False, True), repeat=len(options) + 1):
        filters = {name: value for (name, value), on in zip(options, chosen) if on}
        if not (filters or chosen[-1]):
            continue                      # the whole table, unfiltered: not a filtered page
        with recorded_statements(env.db) as seen:
            env.service.fleet_agents(**filters, limit=30,
                                     cursor="n007/a0011" if chosen[-1] else None)
        for sql, params in seen:
            if '"agent"' in sql:
                nodes = pg_plan(env, sql, params)
                assert not scans_agent_table(nodes), (filters, sql, nodes)
                assert any("Index" in n["Node Type"] for n in nodes), (filters, sql, nodes)
                if not ({"node", "label"} & set(filters)):
                    assert all(n["Node Type"] != "Sort" for n in nodes), (filters, sql, nodes)
                checked += 1
    assert checked >= 60
    for health, cursor in itertools.product((None, "unhealthy"), (None, "a0005")):
        with recorded_statements(env.db) as seen:
            env.service.list_agents("n003", health, 10, cursor)
        assert not scans_agent_table(pg_plan(env, *seen[-1])), seen[-1]


# ---- bad parameters ----

@pytest.mark.parametrize("path, query, words", [
    ("/api/v1/agents", "status=sleeping", "status must be one of stopped, starting"),
    ("/api/v1/agents", "health=sick", "health must be one of healthy, unhealthy, unknown"),
    ("/api/v1/agents", "type=a%00b", "type must be text"),
    ("/api/v1/agents", "type=" + "x" * 1025, "type must be text of at most 1024"),
    ("/api/v1/agents", "node=..%2Fx", "node '../x' is not a valid node id"),
    ("/api/v1/agents", "label=novalue", "label filter must be KEY=VALUE"),
    ("/api/v1/agents", "label=role=edge&label==x", "label filter must be KEY=VALUE"),
    ("/api/v1/agents", "cursor=zzz", "cursor is not one this server gave"),
    ("/api/v1/agents", "cursor=n1/a/b", "cursor is not one this server gave"),
    ("/api/v1/agents", "limit=0", "limit must be an integer from 1 to 5000"),
    ("/api/v1/agents", "limit=5001", "limit must be an integer from 1 to 5000"),
    ("/api/v1/agents", "limit=ten", "limit must be an integer"),
    ("/api/v1/nodes", "limit=5001", "limit must be an integer from 1 to 5000"),
    ("/api/v1/nodes", "cursor=a..b", "cursor is not one this server gave"),
    ("/api/v1/nodes/n000/agents", "limit=-1", "limit must be an integer from 1 to 5000"),
    ("/api/v1/nodes/n000/agents", "cursor=n1/a", "cursor is not one this server gave"),
    ("/api/v1/audit", "limit=5001", "limit must be an integer from 1 to 5000"),
    ("/api/v1/audit", "cursor=12", "cursor is not one this server gave"),
])
@sqlite_only
def test_bad_parameters_are_400_naming_the_parameter(env, path, query, words):
    """A bad filter, limit or cursor answers 400 invalid_argument whose message names it."""
    fill(env, nodes=1, per_node=1)
    status, body = env.api.get(f"{path}?{query}")
    assert (status, body["error"]["code"]) == (400, "invalid_argument"), body
    assert words in body["error"]["message"], body


# ---- paging of the other lists ----

def test_nodes_page_by_default_at_500_and_follow_the_cursor(env):
    """501 nodes: a request without a limit gets 500 and a cursor, then the last one;
    status and label filters page too, each node once."""
    fill(env, nodes=501, per_node=0, offline_every=4)
    first = env.get("/api/v1/nodes")
    assert len(first["nodes"]) == 500 and first["next_cursor"] == "n499"
    last = env.get("/api/v1/nodes", cursor=first["next_cursor"])
    assert [n["node_id"] for n in last["nodes"]] == ["n500"] and last["next_cursor"] is None
    node_id = lambda node: node["node_id"]  # noqa: E731
    online, _ = walk(env, "/api/v1/nodes", "nodes", node_id, limit=50, status="online")
    assert online == [f"n{n:03d}" for n in range(501) if n % 4]
    edge_b, _ = walk(env, "/api/v1/nodes", "nodes", node_id, limit=9,
                     label=["zone=b", "role=edge"])
    assert edge_b == [f"n{n:03d}" for n in range(501) if n % 3 == 1 and n % 2]


def test_a_nodes_agents_page_with_the_cursor(env):
    """/nodes/<id>/agents pages by agent_id, with the health filter too."""
    agents = fill(env, nodes=2, per_node=50)
    agent_id = lambda agent: ("n001", agent["agent_id"])  # noqa: E731
    items, pages = walk(env, "/api/v1/nodes/n001/agents", "agents", agent_id, limit=20)
    assert items == expected(agents, node="n001") and pages == 3
    items, _ = walk(env, "/api/v1/nodes/n001/agents", "agents", agent_id, limit=3,
                    health="unhealthy")
    assert items == expected(agents, node="n001", health="unhealthy")
    assert env.api.get("/api/v1/nodes/n404/agents?limit=3")[0] == 404


def test_the_audit_pages_newest_first_with_the_cursor(env):
    """Audit entries page newest first by (time, id), ties included, node filter too."""
    for n in range(11):
        env.audit.record("ops", f"n{n % 2}", "a", "restart", "ok", time_ms=1_000 + n // 3)
    entry = lambda e: (e["time"], e["id"])  # noqa: E731
    items, pages = walk(env, "/api/v1/audit", "entries", entry, limit=4)
    assert pages == 3 and items == sorted(items, reverse=True) and len(set(items)) == 11
    items, _ = walk(env, "/api/v1/audit", "entries", entry, limit=2, node="n1")
    assert len(items) == 5 and items == sorted(items, reverse=True)


# ---- GET /api/v1/overview ----

def test_an_empty_overview_has_every_key_at_zero(env):
    """Every node status, agent status and health key is present with 0; no restarts."""
    assert env.get("/api/v1/overview") == {
        "nodes": {"total": 0, "online": 0, "offline": 0},
        "agents": {"total": 0, "status": {s.api_name: 0 for s in State
                                          if s is not State.UNSPECIFIED},
                   "health": {"healthy": 0, "unhealthy": 0, "unknown": 0}},
        "top_restarts": []}


def test_the_overview_counts_nodes_by_status_and_agents_by_status_and_health(env):
    """Counts match the stored rows; a node goes offline as the clock passes offline_after."""
    agents = fill(env, nodes=12, per_node=7, offline_every=4)
    body = env.get("/api/v1/overview")
    assert body["nodes"] == {"total": 12, "online": 9, "offline": 3}
    statuses = [s for _, _, s, _, _, _ in agents]
    assert body["agents"]["total"] == 84
    assert body["agents"]["status"] == {s.api_name: statuses.count(s.api_name) for s in State
                                        if s is not State.UNSPECIFIED}
    assert body["agents"]["health"] == {h: [a[3] for a in agents].count(h)
                                        for h in ("healthy", "unhealthy", "unknown")}
    env.now += 91
    assert env.get("/api/v1/overview")["nodes"] == {"total": 12, "online": 0, "offline": 12}


# Each history: [(minutes before now, kind)], oldest first; and its restarts in the last hour.
HISTORIES = {
    "first-start": ([(10, "started"), (10, "running")], 0),
    "crash-loop": ([(30, "started"), (30, "exited"), (30, "backoff"), (29, "started"),
                    (29, "exited"), (29, "backoff"), (28, "started"), (28, "exited"),
                    (28, "fatal")], 2),
    "before-the-hour": ([(200, "started"), (120, "exited"), (120, "started"),
                         (6, "exited"), (5, "started")], 1),
    "stop-then-start": ([(200, "started"), (50, "stopping"), (50, "stopped"), (40, "started")],
                        0),
    "operator-restart": ([(200, "started"), (20, "restart"), (20, "stopping"),
                          (20, "stopped"), (20, "started")], 1),
    "restart-from-fatal": ([(200, "started"), (200, "fatal"), (20, "restart"),
                            (20, "started")], 1),
    "health-restarts": ([(90, "started"), (15, "restart"), (15, "stopping"), (15, "stopped"),
                         (15, "started"), (3, "restart"), (3, "stopping"), (3, "stopped"),
                         (3, "started")], 2),
    "history-purged": ([(5, "exited"), (5, "started")], 1),
    "running-crashes": ([(59, "started"), (58, "running")] +
                        [(m, kind) for m in range(50, 45, -1) for kind in ("exited", "started")],
                        5),
}


def insert_events(env, node_id, agent_id, history):
    rows = [(node_id, agent_id, seq, NOW_MS - minutes * 60_000, kind, NOW_MS)
            for seq, (minutes, kind) in enumerate(history, 1)]
    env.execute("INSERT INTO event (node_id, agent_id, seq, time, kind, received) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)


def test_top_restarts_count_crashes_and_restarts_of_the_last_hour(env):
    """Restarts in the last hour: `restart` events, and starts that follow neither a stop
    nor a restart; an agent's first start, a start after a stop and anything older than
    an hour do not count. Most first, ties by (node_id, agent_id)."""
    for agent_id, (history, _) in HISTORIES.items():
        insert_events(env, "n1", agent_id, history)
    want = sorted(((agent_id, restarts) for agent_id, (_, restarts) in HISTORIES.items()
                   if restarts), key=lambda item: (-item[1], item[0]))
    top = env.get("/api/v1/overview")["top_restarts"]
    assert [(t["agent_id"], t["restarts"]) for t in top] == want
    assert {t["node_id"] for t in top} == {"n1"}


def test_top_restarts_are_at_most_ten_most_first(env):
    """Twelve crash-looping agents: the ten with the most restarts, most first."""
    for n in range(12):
        loop = [(40, "started")] + [(39, kind) for _ in range(n) for kind in ("exited", "started")]
        insert_events(env, f"n{n % 2}", f"loop{n:02d}", loop)
    top = env.get("/api/v1/overview")["top_restarts"]
    assert [(t["agent_id"], t["restarts"]) for t in top] == \
        [(f"loop{n:02d}", n) for n in range(11, 1, -1)]


# ---- end to end ----

CRASH = """
[[agents]]
id = "crash"
command = ["sh", "-c", "exit 3"]
autostart = false
start_seconds = 0.5
start_retries = 3
backoff_initial = 0.1
backoff_max = 0.2
"""


def test_a_real_crash_looping_agent_tops_the_restarts(cluster):
    """A real daemon: an agent started by the operator crash-loops to FATAL (3 retries) and
    a steady one is restarted once by the operator; the overview lists them with the
    restart_count their daemon reports, and the fleet-wide list filters them by status."""
    manager = cluster.run("manager", cluster.manager_config())
    api = Api(manager.port("http"), API_TOKEN)
    cluster.run("daemon", cluster.daemon_config("n1", manager.port("grpc"),
                                                agents_toml(("steady",)) + CRASH))
    wait_for(lambda: api.agents("n1").get("crash", {}).get("status") == "stopped", timeout=20)
    for agent_id, operation in (("crash", "start"), ("steady", "restart")):
        status, body = api.post(f"/api/v1/nodes/n1/agents/{agent_id}/operate",
                                {"operation": operation})
        assert status == 200, body
    wait_for(lambda: api.agents("n1")["crash"]["status"] == "fatal", timeout=20)

    def top():
        status, body = api.get("/api/v1/overview")
        return body["top_restarts"] if status == 200 else None

    wanted = [{"node_id": "n1", "agent_id": "crash", "restarts": 3},
              {"node_id": "n1", "agent_id": "steady", "restarts": 1}]
    wait_for(lambda: top() == wanted, timeout=20)
    agents = api.agents("n1")
    assert (agents["crash"]["restart_count"], agents["steady"]["restart_count"]) == (3, 1)
    status, body = api.get("/api/v1/agents?status=fatal&node=n1")
    assert status == 200 and [a["agent_id"] for a in body["agents"]] == ["crash"]
    overview = api.get("/api/v1/overview")[1]
    assert overview["nodes"] == {"total": 1, "online": 1, "offline": 0}
    assert (overview["agents"]["status"]["fatal"], overview["agents"]["status"]["running"]) \
        == (1, 1)
