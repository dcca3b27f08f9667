"""The HTTP API end to end: real HTTP server (fleet.manager.api.server), a real database, fake daemon over real gRPC."""
import http.client
import json
import socket
import ssl
import subprocess
import time

import grpc
import pytest

from fleet.config import TLSConfig
from fleet.manager.api import openapi
from fleet.manager.service import FleetService
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.api.routes import make_app
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.pool import DaemonClientPool
from fleet.manager.store.registry import Registry
from fleet.manager.tokens import ApiAuth
from fleet.manager.api.server import serve_http
from fleet.v1 import fleet_pb2
from tests.fake_daemon import agent_info, serve_fake
from tests.pg import both_engines, database_url

API_TOKEN, OPS_TOKEN, CLUSTER_TOKEN = "api-token-1", "ops-token-2", "cluster-token-3"
NODE = "/api/v1/nodes/n1"
A1 = NODE + "/agents/a1"


class Manager:
    """The pieces a test pokes: HTTP port, store, fake daemon, clock."""

    def __init__(self, url):
        self.now = time.time()
        self.db = open_database(url)
        migrate(self.db)
        self.store = NodeStore(self.db, Registry.load(self.db), offline_after=90,
                               clock=lambda: self.now)
        self.server, address, self.fake = serve_fake(
            "n1", [agent_info("a1"), agent_info("a2")], token=CLUSTER_TOKEN)
        self.pool = DaemonClientPool(CLUSTER_TOKEN, timeout=1.0, operate_timeout=1.0)
        self.service = FleetService(self.store, self.pool)
        auth = ApiAuth([("default", API_TOKEN), ("ops", OPS_TOKEN)], CLUSTER_TOKEN)
        self.http = serve_http(make_app(self.service, auth), "127.0.0.1:0")
        self.http.start_background()
        self.add_node("n1", address, {"role": "edge"}, ["a1", "a2"])
        self.add_node("dead", "127.0.0.1:1", {"role": "core"}, ["a1"])

    def add_node(self, node_id, address, labels, agents, age=0.0):
        saved, self.now = self.now, self.now - age
        self.store.register(NodeFacts(node_id, hostname=node_id + ".local", ip="127.0.0.1",
                                      advertise_address=address, labels=labels))
        self.store.store_agent_infos(node_id, [agent_info(a) for a in agents])
        self.now = saved

    def close(self):
        self.http.stop()
        self.pool.close_all()
        self.fake.hold.set()
        self.server.stop(None)
        close_database(self.db)


@pytest.fixture
def db_url(request, tmp_path):
    """SQLite: HTTP behaves alike on both engines; tests of what is stored are @both_engines."""
    return database_url(request, tmp_path, getattr(request, "param", "sqlite"))


@pytest.fixture
def manager(db_url):
    made = Manager(db_url)
    yield made
    made.close()


def call(manager, method, path, body=None, token=API_TOKEN, headers=None):
    """(status, headers, parsed JSON) of one request; checks what every response must be."""
    conn = http.client.HTTPConnection("127.0.0.1", manager.http.port, timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent.setdefault("Authorization", f"Bearer {token}")
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    assert b"Traceback" not in raw and b"<html" not in raw.lower()
    assert response.getheader("Content-Type") == "application/json"
    payload = json.loads(raw)
    if response.status >= 400:
        assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
    return response.status, response, payload


def error_code(manager, method, path, **kwargs):
    status, _, payload = call(manager, method, path, **kwargs)
    return status, payload["error"]["code"]


# ---- public endpoints and the document ----

def test_public_endpoints_need_no_token(manager):
    """/health, / and the OpenAPI document answer without a token."""
    assert call(manager, "GET", "/health", token=None)[2] == {"status": "ok"}
    assert call(manager, "GET", "/", token=None)[2]["openapi"] == "/api/v1/openapi.json"
    status, _, doc = call(manager, "GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.0")


def test_openapi_describes_exactly_the_routes(manager):
    """Every route of the app is in the document, and nothing else is."""
    app = make_app(manager.service, ApiAuth([("default", API_TOKEN)]))
    routes = {(r.rule.replace("<", "{").replace(">", "}"), r.method.lower()) for r in app.routes}
    documented = {(path, method) for path, ops in openapi.document()["paths"].items()
                  for method in ops}
    assert routes == documented


def test_openapi_document_is_valid():
    """The document passes an OpenAPI 3.0 validator."""
    import openapi_spec_validator as validator
    validator.validate(openapi.document())


def _resolve(schema, doc):
    """schema with every $ref replaced by what it names (for jsonschema)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            _, _, kind, name = schema["$ref"].split("/")
            return _resolve(doc["components"][kind][name], doc)
        return {key: _resolve(value, doc) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_resolve(item, doc) for item in schema]
    return schema


def _check_schema(payload, name):
    import openapi_schema_validator as validators
    doc = openapi.document()
    validators.OAS30Validator(_resolve(openapi.schemas()[name], doc)).validate(payload)


# ---- nodes ----

@both_engines
def test_list_nodes_with_filters(manager):
    """Nodes list in id order, filtered by status and by label."""
    manager.add_node("old", "127.0.0.1:2", {"role": "edge"}, [], age=1000)
    _, _, payload = call(manager, "GET", "/api/v1/nodes")
    assert [n["node_id"] for n in payload["nodes"]] == ["dead", "n1", "old"]
    _check_schema(payload, "NodeList")
    online = call(manager, "GET", "/api/v1/nodes?status=online")[2]["nodes"]
    assert [n["node_id"] for n in online] == ["dead", "n1"]
    offline = call(manager, "GET", "/api/v1/nodes?status=offline")[2]["nodes"]
    assert [(n["node_id"], n["status"]) for n in offline] == [("old", "offline")]
    edge = call(manager, "GET", "/api/v1/nodes?label=role=edge&status=online")[2]["nodes"]
    assert [n["node_id"] for n in edge] == ["n1"]
    assert error_code(manager, "GET", "/api/v1/nodes?status=gone") == (400, "invalid_argument")
    assert error_code(manager, "GET", "/api/v1/nodes?label=novalue") == (400, "invalid_argument")


@both_engines
def test_get_node_and_unknown_node(manager):
    """A node is returned with every field; unknown or malformed ids are 404."""
    status, _, payload = call(manager, "GET", NODE)
    assert status == 200 and payload["node"]["labels"] == {"role": "edge"}
    _check_schema(payload, "NodeResponse")
    for path in ("/api/v1/nodes/nope", "/api/v1/nodes/a..b", "/api/v1/nodes/%2e%2e",
                 "/api/v1/nodes/" + "x" * 200):
        status, _, payload = call(manager, "GET", path)
        assert (status, payload["error"]["code"]) == (404, "not_found")
    assert call(manager, "GET", "/api/v1/nodes/nope")[2]["error"]["message"] == \
        "node 'nope' not found"


@both_engines
def test_delete_node(manager):
    """An online node cannot be deleted (409); an offline one can, then is gone."""
    assert error_code(manager, "DELETE", NODE) == (409, "conflict")
    manager.add_node("old", "127.0.0.1:2", {}, ["a1"], age=1000)
    status, _, payload = call(manager, "DELETE", "/api/v1/nodes/old")
    assert status == 200 and payload == {"node_id": "old", "deleted": True}
    _check_schema(payload, "Deleted")
    assert error_code(manager, "GET", "/api/v1/nodes/old") == (404, "not_found")
    assert error_code(manager, "DELETE", "/api/v1/nodes/old") == (404, "not_found")


# ---- agents ----

@both_engines
def test_list_agents(manager):
    """A node's stored agents, status in lower case; unknown node 404."""
    _, _, payload = call(manager, "GET", NODE + "/agents")
    assert [(a["agent_id"], a["status"]) for a in payload["agents"]] == \
        [("a1", "running"), ("a2", "running")]
    _check_schema(payload, "AgentPage")
    assert error_code(manager, "GET", "/api/v1/nodes/nope/agents") == (404, "not_found")


@both_engines
def test_list_agents_filters_by_health(manager):
    """?health= keeps the agents of that health, each with its health_message; any
    other value is 400."""
    manager.store.store_agent_infos("n1", [
        agent_info("a1", health="unhealthy", health_message="connect 127.0.0.1:9100: refused"),
        agent_info("a2")])
    _, _, payload = call(manager, "GET", NODE + "/agents?health=unhealthy")
    assert [(a["agent_id"], a["health_message"]) for a in payload["agents"]] == \
        [("a1", "connect 127.0.0.1:9100: refused")]
    _check_schema(payload, "AgentPage")
    healthy = call(manager, "GET", NODE + "/agents?health=healthy")[2]["agents"]
    assert [(a["agent_id"], a["health_message"]) for a in healthy] == [("a2", "")]
    assert call(manager, "GET", NODE + "/agents?health=unknown")[2]["agents"] == []
    assert len(call(manager, "GET", NODE + "/agents?health=")[2]["agents"]) == 2
    assert error_code(manager, "GET", NODE + "/agents?health=sick") == (400, "invalid_argument")


@both_engines
def test_list_agents_filters_by_status_and_type(manager):
    """?status= and ?type= keep a node's agents of that status and type, as the
    fleet-wide list does; an unknown status is 400 naming it, and so is a type
    with NUL."""
    manager.store.store_agent_infos("n1", [    # a1 and a2 were stored as "exporter"
        agent_info("a1", status=fleet_pb2.AGENT_STATUS_BACKOFF), agent_info("a2"),
        agent_info("a3", type="shipper")])
    ids = lambda query: [a["agent_id"] for a in  # noqa: E731
                         call(manager, "GET", NODE + "/agents?" + query)[2]["agents"]]
    assert ids("status=running") == ["a2", "a3"]
    assert ids("status=backoff") == ["a1"]
    assert ids("status=stopped") == []
    assert ids("type=shipper") == ["a3"]
    assert ids("type=exporter&status=running&health=healthy") == ["a2"]
    assert ids("status=&type=") == ["a1", "a2", "a3"]
    assert ids("status=running&limit=1") == ["a2"]
    status, _, payload = call(manager, "GET", NODE + "/agents?status=bogus")
    assert (status, payload["error"]["code"]) == (400, "invalid_argument")
    assert "status must be one of" in payload["error"]["message"]
    assert error_code(manager, "GET", NODE + "/agents?type=a%00b") == (400, "invalid_argument")


@both_engines
def test_sync_pulls_from_the_daemon_and_stores(manager):
    """sync replaces the node's stored agents with the daemon's list."""
    manager.fake.agents.pop("a2")
    manager.fake.agents["a3"] = agent_info("a3", status=fleet_pb2.AGENT_STATUS_BACKOFF)
    status, _, payload = call(manager, "POST", NODE + "/agents/sync")
    assert status == 200
    assert [(a["agent_id"], a["status"]) for a in payload["agents"]] == \
        [("a1", "running"), ("a3", "backoff")]
    stored = call(manager, "GET", NODE + "/agents")[2]["agents"]
    assert [a["agent_id"] for a in stored] == ["a1", "a3"]
    assert manager.fake.calls[-1][1].node_id == "n1"


@both_engines
def test_operate_stores_the_result(manager):
    """operate calls the daemon with the node id and stores the agent it returns."""
    status, _, payload = call(manager, "POST", A1 + "/operate", {"operation": "stop"})
    assert status == 200 and payload["agent"]["status"] == "stopped"
    assert payload["agent"]["pid"] == 0 and payload["agent"]["last_sync_time"] is not None
    _check_schema(payload, "AgentResponse")
    stored = call(manager, "GET", NODE + "/agents")[2]["agents"][0]
    assert stored["status"] == "stopped"
    name, request = manager.fake.calls[-1]
    assert (name, request.node_id, request.agent_id, request.operation) == \
        ("OperateAgent", "n1", "a1", "stop")


def test_operate_body_is_json_whatever_its_content_type(manager):
    """`curl -d '{"operation":"restart"}'` (form content type) works."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, payload = call(manager, "POST", A1 + "/operate", '{"operation":"restart"}',
                              headers=form)
    assert status == 200 and payload["agent"]["status"] == "starting"


@pytest.mark.parametrize("body", [
    {"operation": "START"}, {"operation": "kill"}, {"operation": ""}, {"operation": 5},
    {"op": "start"}, {}, ["start"], "not json", "", '{"operation": "start"', b"\xff\xfe\x00",
    "[" * 30000 + "]" * 30000,   # nested deeper than the parser recurses, under 64 KiB
])
def test_operate_bad_bodies_are_400(manager, body):
    """Bad operation, bad JSON, missing or non-string operation: 400, no daemon call."""
    before = len(manager.fake.calls)
    assert error_code(manager, "POST", A1 + "/operate", body=body) == (400, "invalid_argument")
    assert len(manager.fake.calls) == before


@both_engines
def test_operate_unknown_node_or_agent_is_404_without_daemon_call(manager):
    """Existence is checked in the database before any daemon is dialled."""
    op = {"operation": "start"}
    for path in ("/api/v1/nodes/nope/agents/a1/operate", NODE + "/agents/zz/operate",
                 NODE + "/agents/bad%20id/operate"):
        assert error_code(manager, "POST", path, body=op) == (404, "not_found")
    assert manager.fake.calls == []


def test_big_body_is_413(manager):
    """A body over 64 KiB is refused, declared or chunked."""
    big = json.dumps({"operation": "start", "pad": "x" * 70000})
    assert error_code(manager, "POST", A1 + "/operate", body=big) == (413, "payload_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", manager.http.port, timeout=10)
    conn.request("POST", A1 + "/operate", body=iter([big.encode()[:40000], big.encode()[40000:]]),
                 headers={"Authorization": f"Bearer {API_TOKEN}"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and b"payload_too_large" in response.read()
    conn.close()


def test_logs(manager):
    """Logs pass lines and grep to the daemon; default 100 lines."""
    status, _, payload = call(manager, "GET", A1 + "/logs?lines=2")
    assert status == 200 and payload == {"lines": ["line 299", "line 300"], "truncated": False,
                                         "next_offset": 300}
    _check_schema(payload, "Logs")
    assert len(call(manager, "GET", A1 + "/logs")[2]["lines"]) == 100
    grep = call(manager, "GET", A1 + "/logs?lines=1000&grep=line%2029")[2]["lines"]
    assert grep == ["line 29"] + [f"line {n}" for n in range(290, 300)]


def test_logs_offset_is_passed_to_the_daemon(manager):
    """offset reaches the daemon as a set field (0 too); next_offset comes back."""
    status, _, payload = call(manager, "GET", A1 + "/logs?offset=298&lines=5")
    assert status == 200 and payload == {"lines": ["line 299", "line 300"], "truncated": False,
                                         "next_offset": 300}
    _check_schema(payload, "Logs")
    call(manager, "GET", A1 + "/logs?offset=0&lines=1")
    sent = [request for name, request in manager.fake.calls if name == "GetAgentLogs"]
    assert sent[-1].HasField("offset") and sent[-1].offset == 0
    call(manager, "GET", A1 + "/logs?lines=1")
    assert not manager.fake.calls[-1][1].HasField("offset")


@pytest.mark.parametrize("query", ["lines=0", "lines=1001", "lines=abc", "lines=", "lines=1.5",
                                   "lines=-3", "lines=99999999999999999999", "grep=%ff",
                                   "offset=-1", "offset=", "offset=abc", "offset=1.5",
                                   "offset=99999999999999999999"])
def test_logs_bad_parameters_are_400(manager, query):
    """lines outside 1..1000, offset negative or not an integer, or grep not UTF-8: 400."""
    assert error_code(manager, "GET", A1 + "/logs?" + query) == (400, "invalid_argument")


def test_metrics(manager):
    """Metrics come back as points with every field, rates and rollup fields too; default one hour."""
    status, _, payload = call(manager, "GET", A1 + "/metrics?duration=60")
    assert status == 200 and len(payload["points"]) == 6
    assert set(payload["points"][1]) == {"timestamp", "cpu", "memory_rss", "memory_vms",
                                         "disk_read_bytes", "disk_write_bytes", "open_files",
                                         "threads", "process_count", "disk_read_rate",
                                         "disk_write_rate", "cpu_max", "memory_rss_max",
                                         "resolution_seconds"}
    assert payload["points"][2]["disk_read_rate"] == 1.0
    assert payload["points"][2]["process_count"] == 2
    assert payload["points"][2]["resolution_seconds"] == 10
    _check_schema(payload, "Metrics")
    assert manager.fake.calls[-1][1].duration_seconds == 60
    assert len(call(manager, "GET", A1 + "/metrics")[2]["points"]) == 360


@pytest.mark.parametrize("query", ["duration=0", "duration=86401", "duration=x", "duration=-1"])
def test_metrics_bad_duration_is_400(manager, query):
    """duration outside 1..86400 or not an integer: 400."""
    assert error_code(manager, "GET", A1 + "/metrics?" + query) == (400, "invalid_argument")


# ---- auth ----

PROTECTED = [("GET", "/api/v1/nodes"), ("GET", NODE), ("DELETE", NODE),
             ("GET", NODE + "/agents"), ("POST", NODE + "/agents/sync"),
             ("POST", A1 + "/operate"), ("GET", A1 + "/logs"), ("GET", A1 + "/metrics")]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("token", [None, "wrong", CLUSTER_TOKEN, ""])
def test_protected_endpoints_need_the_api_token(manager, method, path, token):
    """No token, a wrong one, or the cluster token: 401 with a Bearer challenge."""
    status, response, payload = call(manager, method, path, body={"operation": "stop"},
                                     token=token)
    assert (status, payload["error"]["code"]) == (401, "unauthenticated")
    assert response.getheader("WWW-Authenticate").startswith("Bearer")
    assert manager.fake.calls == []


def test_other_auth_schemes_and_named_tokens(manager):
    """Basic auth is refused; every named API token is accepted."""
    basic = {"Authorization": "Basic " + API_TOKEN}
    assert error_code(manager, "GET", "/api/v1/nodes", token=None, headers=basic)[0] == 401
    assert call(manager, "GET", "/api/v1/nodes", token=OPS_TOKEN)[0] == 200
    lower = {"Authorization": "bearer " + OPS_TOKEN}
    assert call(manager, "GET", "/api/v1/nodes", token=None, headers=lower)[0] == 200


# ---- routing errors ----

def test_unknown_route_is_404_and_wrong_method_405(manager):
    """Unknown paths are 404, wrong methods 405 with Allow, both as JSON envelopes."""
    assert error_code(manager, "GET", "/nope") == (404, "not_found")
    assert error_code(manager, "GET", "/api/v1/nodes/n1/agents/a1/nope") == (404, "not_found")
    for method, path in (("POST", "/api/v1/nodes"), ("GET", A1 + "/operate"),
                         ("PUT", "/health"), ("GET", NODE + "/agents/sync")):
        status, response, payload = call(manager, method, path)
        assert (status, payload["error"]["code"]) == (405, "method_not_allowed")
        assert response.getheader("Allow")


# ---- daemon failures ----

@both_engines
def test_unreachable_daemon_is_503(manager):
    """A node whose daemon does not answer: 503 unavailable."""
    path = "/api/v1/nodes/dead/agents/a1/operate"
    assert error_code(manager, "POST", path, body={"operation": "start"}) == (503, "unavailable")
    assert error_code(manager, "POST", "/api/v1/nodes/dead/agents/sync") == (503, "unavailable")


def test_slow_daemon_is_504(manager):
    """A daemon that misses the deadline: 504 deadline_exceeded."""
    manager.fake.holding = True
    assert error_code(manager, "GET", A1 + "/logs") == (504, "deadline_exceeded")
    manager.fake.hold.set()


@pytest.mark.parametrize("code, status, name", [
    (grpc.StatusCode.UNAUTHENTICATED, 502, "daemon_error"),
    (grpc.StatusCode.INTERNAL, 502, "daemon_error"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 502, "daemon_error"),
    (grpc.StatusCode.NOT_FOUND, 404, "not_found"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument"),
    (grpc.StatusCode.FAILED_PRECONDITION, 409, "conflict"),
    (grpc.StatusCode.UNAVAILABLE, 503, "unavailable"),
])
def test_daemon_errors_map_to_statuses(manager, code, status, name):
    """A daemon's status code becomes DESIGN.md's HTTP status."""
    manager.fake.fail = (code, "told to fail")
    assert error_code(manager, "POST", A1 + "/operate", body={"operation": "start"}) == \
        (status, name)


def test_wrong_cluster_token_toward_the_daemon_is_502(manager):
    """The daemon refusing the manager's cluster token is a 502, not a 401."""
    manager.pool._token = "not-the-cluster-token"
    manager.pool.close_all()
    assert error_code(manager, "GET", A1 + "/metrics") == (502, "daemon_error")


def test_a_bug_is_500_without_details(manager, monkeypatch, caplog):
    """An unexpected exception is logged with its traceback and shown as 'internal error'."""
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(manager.service, "list_nodes", broken)
    status, _, payload = call(manager, "GET", "/api/v1/nodes")
    assert (status, payload) == (500, {"error": {"code": "internal", "message": "internal error"}})
    assert "secret detail" in caplog.text and "Traceback" in caplog.text


# ---- the server ----

def test_keep_alive_serves_several_requests_on_one_connection(manager):
    """One connection carries several requests (HTTP/1.1 keep-alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", manager.http.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    conn.close()


def test_port_in_use_is_an_oserror(manager):
    """Binding a taken port fails at once with OSError."""
    with pytest.raises(OSError):
        serve_http(make_app(manager.service, ApiAuth([])), f"127.0.0.1:{manager.http.port}")


def test_stop_closes_the_port(manager):
    """After stop() the port refuses connections; stop() twice is fine."""
    manager.http.stop()
    manager.http.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", manager.http.port), timeout=2)


def test_tls(manager, tmp_path):
    """With a certificate and key the server speaks HTTPS only."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=fleet",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    server = serve_http(make_app(manager.service, ApiAuth([("default", API_TOKEN)])),
                        "127.0.0.1:0", tls=TLSConfig(cert=str(cert), key=str(key)))
    server.start_background()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        conn.request("GET", "/api/v1/nodes", headers={"Authorization": f"Bearer {API_TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["nodes"]) == 2
        conn.close()
    finally:
        server.stop()
