"""Scoped API tokens (DESIGN.md "Security"): read < operate < admin, enforced per route.

A real in-process Manager started from a TOML config (real HTTP, gRPC, file
SQLite) with one token of every form, and a fake daemon over real gRPC as node n1.
"""
import logging
import os
import re
import subprocess

import pytest

from fleet import config as configuration
from fleet import errors
from fleet.config import ApiToken
from fleet.errors import ConfigError
from fleet.manager.api import openapi
from fleet.manager.api import routes as routes_module
from fleet.manager.app import Manager
from fleet.manager.nodes import NodeFacts
from fleet.manager.store.models import Node
from fleet.manager.tokens import ApiAuth, Caller
from tests.fake_daemon import agent_info, serve_fake
from tests.httpapi import Api
from tests.procs import FLEET_PY

ADMIN, OPS, BOSS = "admin-token-0001", "ops-token-0002", "boss-token-0003"
VIEWER, LEGACY, CLUSTER = "viewer-token-0004", "legacy-token-0005", "cluster-token-0006"
# name -> (token, scope): every form of [manager.api_tokens], and api_token.
TOKENS = {"default": (ADMIN, "admin"), "viewer": (VIEWER, "read"), "ops": (OPS, "operate"),
          "boss": (BOSS, "admin"), "legacy": (LEGACY, "admin")}
SCOPES = ("read", "operate", "admin")
NODE = "/api/v1/nodes/n1"
AGENT = NODE + "/agents/a1"
STOP = {"operation": "stop"}

CONFIG = """
[manager]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
db = "sqlite:///{dir}/fleet.db"
api_token = "{admin}"
cluster_token = "{cluster}"

[manager.api_tokens]
viewer = {{ file = "{dir}/viewer.token", scope = "read" }}
ops = {{ token = "{ops}", scope = "operate" }}
boss = {{ token = "{boss}", scope = "admin" }}
legacy = "file:{dir}/legacy.token"
"""


def write_token(path, token):
    path.write_text(token + "\n")
    os.chmod(path, 0o600)


class ScopedManager:
    """A started Manager with every kind of token, node n1 (fake daemon, agent a1)
    online and node `gone` offline (deletable)."""

    def __init__(self, tmp_path):
        write_token(tmp_path / "viewer.token", VIEWER)
        write_token(tmp_path / "legacy.token", LEGACY)
        (tmp_path / "fleet.toml").write_text(CONFIG.format(
            dir=tmp_path, admin=ADMIN, cluster=CLUSTER, ops=OPS, boss=BOSS))
        config = configuration.load("manager", str(tmp_path / "fleet.toml"), environ={})
        self.manager = Manager(config.manager)
        self.manager.start()
        self.server, address, self.fake = serve_fake("n1", [agent_info("a1")], token=CLUSTER)
        nodes = self.manager.parts.nodes
        nodes.register(NodeFacts("n1", advertise_address=address))
        nodes.store_agent_infos("n1", [agent_info("a1")])
        self.add_offline("gone")
        self.api = Api(self.manager.http_port, ADMIN)

    def add_offline(self, node_id):
        """A registered node whose daemon stopped cleanly: offline, so it may be deleted."""
        self.manager.parts.nodes.register(NodeFacts(node_id, advertise_address="127.0.0.1:1"))
        db = self.manager.parts.db
        with db.connection_context():
            Node.update(stopped_at=1).where(Node.node_id == node_id).execute(db)

    def call(self, name, method, path, body=None):
        """(status, JSON) of one request with the token named `name`."""
        return self.api.call(method, path, body, token=TOKENS[name][0])

    def audit(self):
        status, body = self.api.get("/api/v1/audit")
        assert status == 200, body
        return body["entries"]

    def close(self):
        self.manager.close()
        self.fake.hold.set()
        self.server.stop(None)


@pytest.fixture
def fleet(tmp_path):
    made = ScopedManager(tmp_path)
    yield made
    made.close()


def denied(name, needed):
    """The 403 body a token named `name` gets on a route needing `needed`."""
    scope = TOKENS[name][1]
    return {"error": {"code": "permission_denied",
                      "message": f"token {name!r} has scope {scope}; this needs {needed}"}}


READS = ["/api/v1/nodes", NODE, NODE + "/agents", AGENT + "/logs", AGENT + "/metrics",
         AGENT + "/events", "/api/v1/events", "/api/v1/audit"]


# ---- what each scope may do ----

def test_read_token_reads_everything_and_operates_nothing(fleet):
    """A read token GETs nodes, agents, logs, events, audit; operate, sync, delete are 403."""
    for path in READS:
        status, body = fleet.call("viewer", "GET", path)
        assert status == 200, (path, body)
    assert fleet.call("viewer", "POST", AGENT + "/operate", STOP) == \
        (403, denied("viewer", "operate"))
    assert fleet.call("viewer", "POST", NODE + "/agents/sync", {}) == \
        (403, denied("viewer", "operate"))
    assert fleet.call("viewer", "DELETE", "/api/v1/nodes/gone") == (403, denied("viewer", "admin"))
    assert [name for name, _ in fleet.fake.calls] == ["GetAgentLogs", "GetAgentMetrics"]
    assert fleet.api.get("/api/v1/nodes/gone")[0] == 200


def test_operate_token_operates_and_syncs_but_cannot_delete(fleet):
    """An operate token stops an agent and syncs a node; deleting a node is 403."""
    status, body = fleet.call("ops", "POST", AGENT + "/operate", STOP)
    assert status == 200 and body["agent"]["status"] == "stopped", body
    status, body = fleet.call("ops", "POST", NODE + "/agents/sync", {})
    assert status == 200 and [a["agent_id"] for a in body["agents"]] == ["a1"]
    assert fleet.call("ops", "DELETE", "/api/v1/nodes/gone") == (403, denied("ops", "admin"))
    assert fleet.api.get("/api/v1/nodes/gone")[0] == 200


@pytest.mark.parametrize("name", ["default", "boss", "legacy"])
def test_admin_tokens_do_everything(fleet, name):
    """api_token, a scoped admin token and a plain `file:` entry (admin) read, operate,
    sync and delete."""
    assert fleet.call(name, "GET", NODE + "/agents")[0] == 200
    assert fleet.call(name, "POST", AGENT + "/operate", STOP)[0] == 200
    assert fleet.call(name, "POST", NODE + "/agents/sync", {})[0] == 200
    assert fleet.call(name, "DELETE", "/api/v1/nodes/gone") == \
        (200, {"node_id": "gone", "deleted": True})


def test_missing_or_bad_token_is_401_before_any_scope_check(fleet):
    """No token, a wrong one or the cluster token: 401 on reads and writes alike."""
    for token in ("", "not-a-token", CLUSTER):
        for method, path, body in (("GET", "/api/v1/nodes", None),
                                   ("POST", AGENT + "/operate", STOP),
                                   ("DELETE", "/api/v1/nodes/gone", None)):
            status, answer = fleet.api.call(method, path, body, token=token or "")
            assert (status, answer["error"]["code"]) == (401, "unauthenticated")


def test_unknown_routes_are_404_for_every_token(fleet):
    """An unknown path is 404 whatever the token's scope (and without one): no 403 leaks
    which paths exist."""
    for name in TOKENS:
        for method in ("GET", "POST", "DELETE"):
            status, body = fleet.call(name, method, "/api/v1/no-such-list",
                                      {} if method == "POST" else None)
            assert (status, body["error"]["code"]) == (404, "not_found")
    assert fleet.api.call("DELETE", "/api/v1/nope", token="")[0] == 404


# ---- the route table ----

def routes(fleet):
    """(method, rule, scope) of every route of the running manager's app."""
    app = fleet.manager.routes
    return [(r.method, r.rule, r.config.get("scope", "admin")) for r in app.routes]


def test_every_route_has_a_known_scope_and_writes_need_operate(fleet):
    """Each route's scope is one of the four; a GET needs at most read (DESIGN.md: read is
    every GET); a POST, PUT, PATCH or DELETE needs at least operate; only /, /health, the
    OpenAPI document and pages outside /api/ are public."""
    table = routes(fleet)
    assert len(table) >= 14
    for method, rule, scope in table:
        assert scope in ("public",) + SCOPES, (method, rule, scope)
        if method == "GET":
            assert scope in ("public", "read"), (method, rule, scope)
        else:
            assert scope in ("operate", "admin"), (method, rule, scope)
        if scope == "public":
            assert rule in ("/", "/health", "/api/v1/openapi.json") \
                or not rule.startswith("/api/"), (method, rule)
    assert ("DELETE", "/api/v1/nodes/<node_id>", "admin") in table


def concrete(rule):
    """A request path for a route rule: n1, a1, and the parameter's name for the rest."""
    def fill(match):
        name = match.group(1).split(":")[-1]
        return {"node_id": "n1", "agent_id": "a1"}.get(name, name)
    return re.sub(r"<([^>]+)>", fill, rule)


def test_every_route_refuses_exactly_the_tokens_below_its_scope(fleet):
    """Iterating the table: each token gets 403 permission_denied iff its scope is below
    the route's, never 401; a route added later with too low a scope shows up here."""
    for method, rule, scope in routes(fleet):
        if scope == "public":
            continue
        path = concrete(rule).replace("/nodes/n1", "/nodes/gone") if method == "DELETE" \
            else concrete(rule)
        for name in ("viewer", "ops", "boss"):
            fleet.add_offline("gone")
            status, body = fleet.call(name, method, path, None if method == "GET" else STOP)
            below = SCOPES.index(TOKENS[name][1]) < SCOPES.index(scope)
            assert (status == 403) == below, (name, method, rule, status, body)
            assert status != 401, (name, method, rule, body)
            if below:
                assert body == denied(name, scope)


def test_a_route_with_an_unknown_scope_fails_make_app(monkeypatch):
    """A typo in the table's scope column stops make_app instead of failing requests."""
    real = routes_module._Routes.table
    monkeypatch.setattr(routes_module._Routes, "table",
                        lambda self: real(self) + [("GET", "/x", self.health, "reader")])
    with pytest.raises(ValueError, match="reader"):
        routes_module.make_app(None, ApiAuth([]))


# ---- audit and logs ----

def test_audit_names_the_operate_token(fleet):
    """An operate by the operate token is audited with the token's name."""
    assert fleet.call("ops", "POST", AGENT + "/operate", STOP)[0] == 200
    entry = fleet.audit()[0]
    assert (entry["actor"], entry["node_id"], entry["agent_id"], entry["operation"],
            entry["result"]) == ("ops", "n1", "a1", "stop", "ok")


def test_refused_operations_are_audited_and_logged_without_the_token(fleet, caplog):
    """A 403 operate, sync or delete is an audit row with result permission_denied and a
    warning line naming the token, never showing it."""
    caplog.set_level(logging.INFO)
    fleet.call("viewer", "POST", AGENT + "/operate", {"operation": "restart"})
    fleet.call("viewer", "POST", NODE + "/agents/sync", {})
    fleet.call("ops", "DELETE", "/api/v1/nodes/gone")
    fleet.call("viewer", "POST", AGENT + "/operate", {"operation": "explode"})  # names none
    found = [(e["actor"], e["node_id"], e["agent_id"], e["operation"], e["result"], e["message"])
             for e in reversed(fleet.audit())]
    assert found == [
        ("viewer", "n1", "a1", "restart", "permission_denied",
         "token 'viewer' has scope read; this needs operate"),
        ("viewer", "n1", None, "sync", "permission_denied",
         "token 'viewer' has scope read; this needs operate"),
        ("ops", "gone", None, "delete", "permission_denied",
         "token 'ops' has scope operate; this needs admin")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "permission denied" in r.getMessage()]
    assert len(warnings) == 4 and "token=viewer scope=read needs=operate" in warnings[0]
    assert not any(token in caplog.text for token, _ in TOKENS.values())
    assert fleet.fake.calls == []


# ---- the document ----

def test_openapi_documents_403_on_every_operation_needing_a_token():
    """Every non-public operation lists 403 permission_denied; the bearer scheme explains
    the scopes."""
    doc = openapi.document()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            public = operation.get("security") == []
            assert ("403" in operation["responses"]) != public, (method, path)
    assert "permission_denied" in doc["components"]["schemas"]["Error"]["properties"][
        "error"]["properties"]["code"]["enum"]
    assert "`operate`" in doc["components"]["securitySchemes"]["bearer"]["description"]


# ---- ApiAuth ----

def test_check_returns_name_and_scope():
    """check() gives the token's Caller; (name, token) pairs are admin."""
    auth = ApiAuth([ApiToken("viewer", "v", "read"), ("old", "o")], cluster_token="c")
    assert auth.check("Bearer v") == Caller("viewer", "read")
    assert auth.check("Bearer o") == Caller("old", "admin")
    with pytest.raises(errors.PermissionDenied, match="has scope read; this needs operate"):
        auth.check("Bearer v").require("operate")
    Caller("old", "admin").require("operate")


@pytest.mark.parametrize("tokens", [[("a", "same"), ("b", "same")],
                                    [ApiToken("a", "x", "root")]])
def test_auth_refuses_ambiguous_tokens_and_unknown_scopes(tokens):
    """Two names for one token, or a scope that is not read/operate/admin: ValueError."""
    with pytest.raises(ValueError):
        ApiAuth(tokens)


# ---- config ----

def load(tmp_path, body):
    path = tmp_path / "fleet.toml"
    path.write_text('[manager]\ncluster_token = "cluster"\napi_token = "admin"\n'
                    "[manager.api_tokens]\n" + body)
    return configuration.load("manager", str(path), environ={})


def test_every_token_form_loads_with_its_scope(tmp_path):
    """Table entries carry their scope; api_token and plain strings are admin."""
    write_token(tmp_path / "v.token", "v-token")
    write_token(tmp_path / "o.token", "o-token")
    config = load(tmp_path, f'viewer = {{ file = "{tmp_path}/v.token", scope = "read" }}\n'
                            'ops = { token = "ops-inline", scope = "operate" }\n'
                            f'rotated = "file:{tmp_path}/o.token"\nci = "ci-inline"\n')
    assert set(config.manager.api_tokens) == {
        ("default", "admin", "admin"), ("viewer", "v-token", "read"),
        ("ops", "ops-inline", "operate"), ("rotated", "o-token", "admin"),
        ("ci", "ci-inline", "admin")}


@pytest.mark.parametrize("entry, problem", [
    ('viewer = { file = "F", scope = "reader" }',
     "[manager.api_tokens] viewer.scope: must be one of read, operate, admin: 'reader'"),
    ('viewer = { file = "F" }',
     "[manager.api_tokens] viewer.scope: required: one of read, operate, admin"),
    ('viewer = { file = "F", scope = "read", mode = "ro" }',
     "[manager.api_tokens] viewer.mode: unknown key"),
    ('viewer = { file = "F", token = "t", scope = "read" }',
     "[manager.api_tokens] viewer.file: set file or token, not both"),
    ('viewer = { scope = "read" }',
     "[manager.api_tokens] viewer.file: required (or token)"),
    ('viewer = { file = "/nonexistent/v.token", scope = "read" }',
     "[manager.api_tokens] viewer.file: cannot read /nonexistent/v.token"),
    ('viewer = { token = "", scope = "read" }',
     "[manager.api_tokens] viewer.token: must not be empty"),
    ('viewer = { token = "cluster", scope = "read" }',
     "[manager.api_tokens] viewer: must differ from cluster_token"),
    ('viewer = { token = "admin", scope = "read" }',
     "[manager.api_tokens] viewer: same token as default"),
    ('a = "x"\nb = { token = "x", scope = "operate" }', "[manager.api_tokens] b: same token as a"),
    ("viewer = 7", '[manager.api_tokens] viewer: must be a token, "file:/path", or'),
])
def test_bad_token_entries_are_config_errors_naming_the_key(tmp_path, entry, problem):
    """Unknown or missing scope, unknown keys, file and token both or neither, an unreadable
    file, a token shared with another or the cluster: a problem naming the entry's key."""
    write_token(tmp_path / "F", "file-token")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, entry.replace('"F"', f'"{tmp_path}/F"'))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_bad_scope_exits_2_from_the_command_line(tmp_path):
    """The manager refuses to start on a bad scope: exit 2, `config error:` naming the key."""
    path = tmp_path / "fleet.toml"
    path.write_text('[manager]\nhttp = "127.0.0.1:0"\ngrpc = "127.0.0.1:0"\n'
                    f'db = "sqlite:///{tmp_path}/fleet.db"\n[manager.api_tokens]\n'
                    'viewer = { token = "v-token", scope = "root" }\n')
    result = subprocess.run(FLEET_PY + ["--role", "manager", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "config error: [manager.api_tokens] viewer.scope: must be one of read, operate, " \
           "admin: 'root'" in result.stderr
    assert not (tmp_path / "fleet.db").exists()
