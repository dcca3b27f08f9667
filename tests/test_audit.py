"""The audit log: every operate, sync and node delete is stored and listed over HTTP."""
import glob
import http.client
import json
import time

import openapi_schema_validator
import pytest

from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.api import openapi
from fleet.manager.service import FleetService
from fleet.manager.audit import AuditLog
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.api.routes import make_app
from fleet.manager.store.models import AuditEntry
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.pool import DaemonClientPool
from fleet.manager.store.registry import Registry
from fleet.manager.tokens import ApiAuth
from fleet.manager.api.server import serve_http
from tests.fake_daemon import agent_info, serve_fake
from tests.pg import sqlite_only

API_TOKEN = "audit-api-token-0123456789abcdef"
OPS_TOKEN = "audit-ops-token-fedcba9876543210"
CLUSTER_TOKEN = "audit-cluster-token"
OP = {"operation": "stop"}


class Env:
    """An HTTP API over a database with an AuditLog, a fake daemon 'n1', a dead node."""

    def __init__(self, url):
        self.url = url
        self.now = time.time()
        self.db = open_database(url)
        migrate(self.db)
        self.store = NodeStore(self.db, Registry.load(self.db), offline_after=90,
                               clock=lambda: self.now)
        self.server, address, self.fake = serve_fake("n1", [agent_info("a1")],
                                                     token=CLUSTER_TOKEN)
        self.pool = DaemonClientPool(CLUSTER_TOKEN, timeout=1.0, operate_timeout=1.0)
        self.audit = AuditLog(self.db)
        service = FleetService(self.store, self.pool, self.audit)
        auth = ApiAuth([("default", API_TOKEN), ("ops-team", OPS_TOKEN)], CLUSTER_TOKEN)
        self.http = serve_http(make_app(service, auth), "127.0.0.1:0")
        self.http.start_background()
        self.add_node("n1", address)
        self.add_node("dead", "127.0.0.1:1")

    def add_node(self, node_id, address, age=0.0):
        saved, self.now = self.now, self.now - age
        self.store.register(NodeFacts(node_id, advertise_address=address))
        self.store.store_agent_infos(node_id, [agent_info("a1")])
        self.now = saved

    def call(self, method, path, body=None, token=API_TOKEN):
        """(status, parsed JSON) of one request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
        return response.status, payload

    def entries(self, query=""):
        status, payload = self.call("GET", "/api/v1/audit" + query)
        assert status == 200, payload
        return payload["entries"]

    def close(self):
        self.http.stop()
        self.pool.close_all()
        self.server.stop(None)
        close_database(self.db)


@pytest.fixture
def env(db_url):
    made = Env(db_url)
    yield made
    made.close()


def _check_schema(payload):
    doc = openapi.document()
    schema = dict(openapi.schemas()["AuditList"])
    schema["properties"] = {"entries": {"type": "array",
                                        "items": doc["components"]["schemas"]["AuditEntry"]},
                            "next_cursor": schema["properties"]["next_cursor"]}
    openapi_schema_validator.OAS30Validator(schema).validate(payload)


def test_operate_ok_and_failed_are_both_recorded_newest_first(env):
    """A 200 and a 503 operate are both audited with the token's name, newest first."""
    assert env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP, token=OPS_TOKEN)[0] == 200
    assert env.call("POST", "/api/v1/nodes/dead/agents/a1/operate", {"operation": "start"})[0] \
        == 503
    entries = env.entries()
    _check_schema({"entries": entries, "next_cursor": None})
    failed, done = entries
    assert (done["actor"], done["node_id"], done["agent_id"], done["operation"],
            done["result"], done["message"]) == ("ops-team", "n1", "a1", "stop", "ok", "")
    assert (failed["actor"], failed["node_id"], failed["operation"], failed["result"]) == \
        ("default", "dead", "start", "unavailable")
    assert failed["message"] and failed["id"] > done["id"]
    assert failed["time"] >= done["time"] and abs(done["time"] - time.time() * 1000) < 60_000
    assert all(e["duration_ms"] >= 0 for e in entries)


def test_sync_delete_and_not_found_are_recorded(env):
    """Sync and delete are node-level entries (agent_id null); an unknown agent is not_found."""
    env.add_node("old", "127.0.0.1:2", age=1000)
    assert env.call("POST", "/api/v1/nodes/n1/agents/sync")[0] == 200
    assert env.call("DELETE", "/api/v1/nodes/n1")[0] == 409
    assert env.call("DELETE", "/api/v1/nodes/old")[0] == 200
    assert env.call("POST", "/api/v1/nodes/n1/agents/zz/operate", OP)[0] == 404
    got = [(e["operation"], e["node_id"], e["agent_id"], e["result"]) for e in env.entries()]
    assert got == [("stop", "n1", "zz", "not_found"), ("delete", "old", None, "ok"),
                   ("delete", "n1", None, "conflict"), ("sync", "n1", None, "ok")]


def test_requests_that_are_not_operations_leave_no_entry(env):
    """401s, reads, malformed ids and bad operations are not audited."""
    env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP, token="wrong")
    env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP, token=None)
    env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", {"operation": "kill"})
    env.call("POST", "/api/v1/nodes/a..b/agents/a1/operate", OP)
    env.call("GET", "/api/v1/nodes/n1/agents/a1/logs")
    env.call("GET", "/api/v1/nodes")
    assert env.entries() == []
    assert env.fake.calls[-1][0] == "GetAgentLogs"


def test_node_filter(env):
    """?node= lists only that node's entries; a valid unknown node none; a malformed one 400."""
    env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP)
    env.call("POST", "/api/v1/nodes/dead/agents/a1/operate", OP)
    env.call("POST", "/api/v1/nodes/n1/agents/sync")
    assert [e["operation"] for e in env.entries("?node=n1")] == ["sync", "stop"]
    assert [e["node_id"] for e in env.entries("?node=dead")] == ["dead"]
    assert env.entries("?node=nobody") == []
    assert len(env.entries("?node=")) == 3
    for bad in ("a..b", "%2e%2e", "-x", "x" * 200, "a%00b", "a/b"):
        status, payload = env.call("GET", "/api/v1/audit?node=" + bad)
        assert (status, payload["error"]["code"]) == (400, "invalid_argument"), bad


def test_limit_bounds(env):
    """limit defaults to 500 and allows 1..5000; anything else is 400."""
    for n in range(505):
        env.audit.record("default", "n1", "a1", "start", "ok", time_ms=1_000 + n)
    assert len(env.entries()) == 500
    assert [e["time"] for e in env.entries("?limit=2")] == [1_504, 1_503]
    assert len(env.entries("?limit=5000")) == 505
    assert len(env.entries("?limit=1")) == 1
    for bad in ("0", "-1", "5001", "abc", "", "1.5", "99999999999999999999"):
        status, payload = env.call("GET", "/api/v1/audit?limit=" + bad)
        assert (status, payload["error"]["code"]) == (400, "invalid_argument"), bad


@sqlite_only
def test_audit_needs_the_api_token(env):
    """GET /api/v1/audit is 401 without a token or with the cluster token."""
    for token in (None, "wrong", CLUSTER_TOKEN):
        assert env.call("GET", "/api/v1/audit", token=token)[0] == 401


@sqlite_only
def test_the_token_never_reaches_the_database_file(env):
    """The database files hold the token's name but never the token itself."""
    env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP, token=OPS_TOKEN)
    env.call("POST", "/api/v1/nodes/dead/agents/sync", token=OPS_TOKEN)
    env.call("POST", "/api/v1/nodes/n1/agents/sync", token=API_TOKEN)
    assert len(env.entries()) == 3
    path = env.url[len("sqlite:///"):]
    stored = b"".join(open(name, "rb").read() for name in glob.glob(f"{path}*"))
    assert b"ops-team" in stored
    assert OPS_TOKEN.encode() not in stored and API_TOKEN.encode() not in stored


def test_a_failed_audit_write_does_not_fail_the_operation(env, caplog):
    """With the audit table gone the operation still succeeds and the failure is logged."""
    with env.db.connection_context():
        env.db.execute_sql("DROP TABLE audit")
    assert env.call("POST", "/api/v1/nodes/n1/agents/a1/operate", OP)[0] == 200
    assert "audit write failed" in caplog.text


def test_clock_and_duration_come_from_the_log(db_url):
    """An entry's time is the wall clock at the start; its duration the monotonic time spent."""
    db = open_database(db_url)
    migrate(db)
    ticks = iter([10.0, 10.25])
    audit = AuditLog(db, clock=lambda: 1_700_000_000.5, monotonic=lambda: next(ticks))
    with pytest.raises(KeyError):
        with audit.timed("ops", "n1", "a1", "restart"):
            raise KeyError("bug")
    (entry,), _ = audit.list()
    assert (entry["time"], entry["duration_ms"], entry["result"], entry["message"]) == \
        (1_700_000_000_500, 250, "internal", "internal error")
    close_database(db)


def test_migration_2_adds_the_audit_table_to_a_version_1_database(db_url, monkeypatch):
    """A database at version 1 is migrated to the newest at start (2 adds audit), keeping
    its rows."""
    url = db_url
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    db = open_database(url)
    assert migrate(db) == 1
    with db.connection_context():   # a node row as version 1 wrote it
        db.execute_sql("INSERT INTO node (node_id, registered_at) VALUES ('n1', 1)")
    monkeypatch.undo()
    assert migrate(open_database(url)) == migrations.MIGRATIONS[-1][0]
    with db.connection_context():
        columns = {c.name for c in db.get_columns("audit")}
        assert db.execute_sql("SELECT COUNT(*) FROM node").fetchone()[0] == 1
    assert columns == set(AuditEntry._meta.columns)
    close_database(db)
