"""Policies on the manager (DESIGN.md "Changing the fleet"): the HTTP API, versions, pins,
the audit's diffs, and what daemons get over gRPC.

A real in-process Manager started from a TOML config (real HTTP, real gRPC, file
SQLite) with admin, operate and read tokens; nodes register and report over a real
ManagerService stub with the cluster token, the way daemons do.
"""
import json
import os

import grpc
import pytest

from fleet import config as configuration
from fleet.manager.changes import policystore
from fleet.manager.app import Manager
from fleet.manager.changes.policies import agent_problem
from fleet.manager.changes.policystore import PolicyStore
from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.store.registry import Registry
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc
from tests.helpers import wait_for
from tests.httpapi import Api

ADMIN, OPS, VIEWER, CLUSTER = "admin-token-01", "ops-token-02", "viewer-token-03", "cluster-04"
AUTH = (("authorization", f"Bearer {CLUSTER}"),)
POLICIES = "/api/v1/policies"
EDGE = POLICIES + "/edge"

CONFIG = """
[manager]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
db = "sqlite:///{dir}/fleet.db"
api_token = "{admin}"
cluster_token = "{cluster}"

[manager.api_tokens]
ops = {{ token = "{ops}", scope = "operate" }}
viewer = {{ token = "{viewer}", scope = "read" }}
"""


def web(**keys):
    """An agent table: id web, a sleep, and `keys`."""
    return {"id": "web", "command": ["sleep", "3600"], **keys}


def body(agents=None, labels=None, **extra):
    return {"selector": {"labels": {"role": "edge"} if labels is None else labels},
            "agents": [web()] if agents is None else agents, **extra}


class PolicyManager:
    """A started Manager, its HTTP API (admin by default) and a ManagerService stub."""

    def __init__(self, tmp_path):
        (tmp_path / "fleet.toml").write_text(CONFIG.format(
            dir=tmp_path, admin=ADMIN, cluster=CLUSTER, ops=OPS, viewer=VIEWER))
        config = configuration.load("manager", str(tmp_path / "fleet.toml"), environ={})
        self.manager = Manager(config.manager)
        self.manager.start()
        self.api = Api(self.manager.http_port, ADMIN)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.manager.grpc_port}")
        self.stub = fleet_pb2_grpc.ManagerServiceStub(self.channel)

    def register(self, node_id, **labels):
        self.stub.RegisterNode(pb.RegisterNodeRequest(node_id=node_id, boot_id=1, labels=labels),
                               metadata=AUTH, timeout=5)

    def beat(self, node_id, accept=True, running=""):
        """The policy_version a heartbeat of `node_id` gets back."""
        reply = self.stub.Heartbeat(pb.HeartbeatRequest(
            node_id=node_id, boot_id=1, accept_policies=accept, policy_version=running),
            metadata=AUTH, timeout=5)
        return reply.policy_version

    def desired(self, node_id):
        """(policy_version, {name: (version, [agent tables])}) of GetDesiredAgents."""
        reply = self.stub.GetDesiredAgents(pb.GetDesiredAgentsRequest(node_id=node_id),
                                           metadata=AUTH, timeout=5)
        return reply.policy_version, {p.name: (p.version, json.loads(p.agents_json))
                                      for p in reply.policies}

    def report(self, node_id, *results, version="", boot_id=1):
        self.stub.ReportPolicyStatus(pb.ReportPolicyStatusRequest(
            node_id=node_id, boot_id=boot_id, policy_version=version,
            results=[pb.PolicyResult(**r) for r in results]), metadata=AUTH, timeout=5)

    def put(self, name="edge", payload=None, token=None):
        return self.api.call("PUT", f"{POLICIES}/{name}", body() if payload is None else payload,
                             token=token)

    def policy(self, name="edge"):
        status, answer = self.api.get(f"{POLICIES}/{name}")
        assert status == 200, answer
        return answer["policy"]

    def audit(self):
        status, answer = self.api.get("/api/v1/audit")
        assert status == 200, answer
        return [e for e in answer["entries"] if e["operation"].startswith("policy_")]

    def close(self):
        self.channel.close()
        self.manager.close()


@pytest.fixture
def fleet(tmp_path):
    made = PolicyManager(tmp_path)
    made.register("e1", role="edge")
    made.register("e2", role="edge", zone="b")
    made.register("c1", role="core")
    yield made
    made.close()


def grpc_code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# ---- PUT, GET, DELETE ----

def test_put_creates_version_1_and_get_shows_it(fleet):
    """A PUT creates version 1; GET answers the Policy JSON with the matching nodes pending."""
    status, answer = fleet.put()
    assert status == 200, answer
    policy = fleet.policy()
    assert policy == answer["policy"]
    assert (policy["name"], policy["version"], policy["selector"], policy["agents"]) == \
        ("edge", 1, {"labels": {"role": "edge"}}, [web()])
    assert policy["nodes"] == {"current": 0, "pending": 2, "failed": 0}
    assert policy["failures"] == [] and policy["updated_at"] > 0


def test_an_unchanged_put_keeps_the_version_and_a_change_adds_one(fleet):
    """The same PUT twice keeps version 1; changing an agent or the selector adds one each."""
    fleet.put()
    assert fleet.put()[1]["policy"]["version"] == 1
    assert fleet.put(payload=body([web(restart="never")]))[1]["policy"]["version"] == 2
    assert fleet.put(payload=body([web(restart="never")], {"zone": "b"}))[1]["policy"][
        "version"] == 3
    assert fleet.policy()["nodes"] == {"current": 0, "pending": 1, "failed": 0}


@pytest.mark.parametrize("payload, named", [
    (body([web(restart="sometimes")]), "agents[0] (web) restart: must be one of"),
    (body([{"id": "web"}]), "agents[0] (web) command: required"),
    (body([web(), web()]), "agents[1] id: duplicate agent id 'web'"),
    (body([web(), {"id": "bad id", "command": "x"}]), "agents[1] id: 'bad id' does not match"),
    (body([web(health={"http": "http://x/", "tcp": "x:1"})]),
     "agents[0] (web) health.tcp: set exactly one of http, tcp, exec"),
    (body([web(limits={"cpu": -1})]), "agents[0] (web) limits.cpu: must be a percent"),
    (body([web(colour="blue")]), "agents[0] (web) colour: unknown key"),
    (body([web(backoff_initial=5, backoff_max=1)]),
     "agents[0] (web) backoff_max: must be >= backoff_initial"),
    (body({"id": "web"}), "agents: must be an array"),
    (body(labels={"role": 7}), "selector.labels.role: must be a string"),
    ({"agents": [web()]}, "selector: required"),
    ({"selector": {}, "agents": [web()]}, "selector.labels: required"),
    ({"selector": {"labels": {}}}, "agents: required"),
    (body(hold="yes"), "hold: must be true or false"),
    (body(extra=1), "extra: unknown key"),
    ([web()], "body must be"),
])
def test_invalid_bodies_are_400_naming_the_key_and_store_nothing(fleet, payload, named):
    """Each invalid definition is a 400 whose message names the key (read_agents' own
    words, by position and id), and nothing is stored or audited."""
    status, answer = fleet.put(payload=payload)
    assert status == 400 and answer["error"]["code"] == "invalid_argument", answer
    assert named in answer["error"]["message"], answer
    assert fleet.api.get(EDGE)[0] == 404 and fleet.audit() == []


@pytest.mark.parametrize("raw", [
    rb'{"selector": {"labels": {"k": "\ud800"}}, "agents": []}',
    rb'{"selector": {"labels": {}}, "agents": [{"id": "s", "command": ["\udfff"]}]}',
])
def test_half_a_surrogate_pair_is_400_and_stores_nothing(fleet, raw):
    """A JSON string escaping half a UTF-16 pair is valid JSON but no text: 400 naming
    it, nothing stored or audited (it was stored and then failed the audit with a 500,
    or reached a daemon that could not spawn it). A whole pair is text and passes."""
    status, answer = fleet.api.call("PUT", EDGE, raw)
    assert status == 400 and "lone surrogate" in answer["error"]["message"], answer
    assert fleet.api.get(EDGE)[0] == 404 and fleet.audit() == []
    whole = rb'{"selector": {"labels": {"k": "\ud83d\ude00"}}, "agents": []}'
    status, answer = fleet.api.call("PUT", EDGE, whole)
    assert status == 200 and answer["policy"]["selector"]["labels"]["k"] == "\U0001f600"


def test_a_bad_name_is_400_on_put_and_404_on_reads(fleet):
    """PUT of a name breaking ^[A-Za-z0-9_-]{1,64}$ is 400; GET and DELETE of it are 404."""
    status, answer = fleet.put("x" * 65)
    assert status == 400 and "policy name must match" in answer["error"]["message"]
    assert fleet.api.get(POLICIES + "/a.b")[0] == 404
    assert fleet.api.call("DELETE", POLICIES + "/a.b")[0] == 404
    assert fleet.api.call("PUT", EDGE, b"{not json")[0] == 400


def test_list_is_paged_by_name(fleet):
    """GET /policies lists policies by name, `limit` at a time, with next_cursor."""
    for name in ("c", "a", "b"):
        fleet.put(name)
    status, page = fleet.api.get(POLICIES + "?limit=2")
    assert status == 200 and [p["name"] for p in page["policies"]] == ["a", "b"]
    status, rest = fleet.api.get(POLICIES + "?limit=2&cursor=" + page["next_cursor"])
    assert [p["name"] for p in rest["policies"]] == ["c"] and rest["next_cursor"] is None
    assert rest["policies"][0]["nodes"]["pending"] == 2
    assert fleet.api.get(POLICIES + "?cursor=..")[0] == 400


def test_delete_removes_it_and_a_new_put_continues_the_versions(fleet):
    """DELETE answers deleted; GET is then 404 and the nodes' version empty; a new PUT of
    the name gets the version after the deletion's."""
    fleet.put()
    assert fleet.beat("e1") == "edge:1"
    assert fleet.api.call("DELETE", EDGE) == (200, {"name": "edge", "deleted": True})
    assert fleet.api.get(EDGE)[0] == 404 and fleet.api.call("DELETE", EDGE)[0] == 404
    assert fleet.beat("e1") == "" and fleet.desired("e1") == ("", {})
    assert fleet.api.get(POLICIES)[1]["policies"] == []
    assert fleet.put()[1]["policy"]["version"] == 3
    assert fleet.beat("e1") == "edge:3"


# ---- who may write, and the audit ----

@pytest.mark.parametrize("name, token", [("ops", OPS), ("viewer", VIEWER)])
def test_only_admin_tokens_write_policies(fleet, name, token):
    """operate and read tokens get 403 on PUT and DELETE (audited as permission_denied)
    and may GET."""
    fleet.put()
    assert fleet.put(payload=body([web(restart="never")]), token=token)[0] == 403
    assert fleet.api.call("DELETE", EDGE, token=token)[0] == 403
    assert fleet.api.get(EDGE, token=token)[0] == 200
    assert fleet.api.get(POLICIES, token=token)[0] == 200
    assert fleet.policy()["version"] == 1
    refused = [(e["actor"], e["operation"], e["result"]) for e in fleet.audit()[:2]]
    assert refused == [(name, "policy_delete", "permission_denied"),
                       (name, "policy_put", "permission_denied")]


def test_every_change_is_audited_with_its_diff(fleet):
    """Creation, agents added, removed and changed (with the keys), the selector, a hold
    and the deletion each leave an entry whose message is the diff; an unchanged PUT none."""
    fleet.put(payload=body([web(), {"id": "db", "command": "sleep 1"}]))
    fleet.put(payload=body([web(restart="never", env={"A": "1"}), {"id": "log", "command": "x"}],
                           {"role": "edge", "zone": "b"}, hold=True))
    fleet.put(payload=body([web(restart="never", env={"A": "1"}), {"id": "log", "command": "x"}],
                           {"role": "edge", "zone": "b"}))
    fleet.api.call("DELETE", EDGE)
    entries = fleet.audit()
    assert [(e["actor"], e["operation"], e["result"], e["node_id"], e["agent_id"])
            for e in entries] == [("default", "policy_delete", "ok", "", None),
                                  ("default", "policy_put", "ok", "", None),
                                  ("default", "policy_put", "ok", "", None)]
    assert [e["message"] for e in entries] == [
        "policy edge v2 deleted (v3): agents removed [log, web]",
        "policy edge v1 -> v2: agents added [log]; agents removed [db]; "
        "agents changed [web (env, restart)]; selector {role=edge} -> {role=edge, zone=b}; "
        "held: matching nodes pinned at v1",
        "policy edge created v1: selector {role=edge}; agents [db, web]"]


# ---- heartbeats and desired agents ----

def test_heartbeats_answer_the_policy_version_of_matching_nodes_only(fleet):
    """A matching node's heartbeat gets `name:version` of each policy it matches, sorted
    and joined by ","; a node matching none gets ""; a daemon that did not send
    accept_policies gets "" whatever matches."""
    assert fleet.beat("e1") == ""
    fleet.put()
    fleet.put("zone-b", body(labels={"zone": "b"}, agents=[{"id": "z", "command": "x"}]))
    fleet.put("all", body(labels={}, agents=[{"id": "every", "command": "x"}]))
    assert fleet.beat("e1") == "all:1,edge:1"
    assert fleet.beat("e2") == "all:1,edge:1,zone-b:1"
    assert fleet.beat("c1") == "all:1"
    assert fleet.beat("e2", accept=False) == ""
    fleet.put(payload=body([web(restart="never")]))
    assert fleet.beat("e2") == "all:1,edge:2,zone-b:1"


def test_a_reregistration_with_new_labels_changes_the_answer(fleet):
    """Labels come from the node's registration: re-registered without role=edge, the
    node no longer gets the policy."""
    fleet.put()
    assert fleet.beat("e1") == "edge:1"
    fleet.register("e1", role="core")
    assert fleet.beat("e1") == "" and fleet.policy()["nodes"]["pending"] == 1


def test_heartbeats_are_answered_from_memory(fleet, monkeypatch):
    """200 heartbeats of several nodes read the policy tables at most twice (a snapshot,
    checked once a second), never once per heartbeat."""
    fleet.put()
    fleet.beat("e1")
    store = fleet.manager.parts.policies
    loads = []
    original = store._fingerprint
    monkeypatch.setattr(store, "_fingerprint", lambda: loads.append(1) or original())
    for i in range(200):
        assert fleet.beat(("e1", "e2", "c1")[i % 3]) == ("edge:1", "edge:1", "")[i % 3]
    assert len(loads) <= 2 + 200 // 50   # only after SNAPSHOT_TTL seconds elapsed


def test_get_desired_agents_returns_the_matching_policies_and_their_agents(fleet):
    """GetDesiredAgents answers the version string and every matching policy with its
    agents_json; a node matching none gets nothing; an unknown node is NOT_FOUND."""
    fleet.put(payload=body([web(), {"id": "db", "command": "sleep 1", "restart": "never"}]))
    version, policies = fleet.desired("e2")
    assert version == "edge:1" == fleet.beat("e2")
    assert policies == {"edge": (1, [web(), {"command": "sleep 1", "id": "db",
                                             "restart": "never"}])}
    assert fleet.desired("c1") == ("", {})
    assert grpc_code(lambda: fleet.desired("nobody")) == grpc.StatusCode.NOT_FOUND


def test_a_held_put_pins_matching_nodes_at_the_previous_version(fleet):
    """With hold, nodes matching the previous version stay on it (their pins), a node that
    registers afterwards gets the new one, and deleting a pin (what a rollout does)
    moves that node to the new version."""
    fleet.put()
    fleet.put(payload=body([web(restart="never")], hold=True))
    fleet.register("e3", role="edge")
    assert [fleet.beat(n) for n in ("e1", "e2", "e3")] == ["edge:1", "edge:1", "edge:2"]
    assert fleet.desired("e1")[1] == {"edge": (1, [web()])}
    assert fleet.desired("e3")[1] == {"edge": (2, [web(restart="never")])}
    assert fleet.policy()["version"] == 2
    db = fleet.manager.parts.db
    with db.connection_context():
        db.execute_sql("DELETE FROM policy_pin WHERE node_id = 'e1' AND policy = 'edge'")
    wait_for(lambda: fleet.beat("e1") == "edge:2", timeout=5)
    assert fleet.desired("e1")[1] == {"edge": (2, [web(restart="never")])}
    assert fleet.beat("e2") == "edge:1"
    fleet.api.call("DELETE", EDGE)
    assert fleet.beat("e2") == "" and fleet.desired("e2") == ("", {})


def test_another_managers_change_is_seen_within_a_second(fleet):
    """A second PolicyStore on the same database (another manager) sees a policy written
    through the first within SNAPSHOT_TTL, and the first sees its pin release."""
    parts = fleet.manager.parts
    other = PolicyStore(parts.db, Registry.load(parts.db))
    assert other.version_of("e1") == ""
    fleet.put()
    wait_for(lambda: other.version_of("e1") == "edge:1", timeout=policystore.SNAPSHOT_TTL + 3)


# ---- status reports ----

def test_reports_count_nodes_current_pending_and_failed(fleet):
    """ReportPolicyStatus results decide the counts: applied at the version the node should
    run is current, not applied with a reason failed (listed), anything else pending; a
    new version makes every node pending again."""
    fleet.register("e3", role="edge")
    fleet.put()
    fleet.report("e1", dict(name="edge", version=1, applied=True, conflicts=["web"]),
                 version="edge:1")
    fleet.report("e2", dict(name="edge", version=1, applied=False, reason="bad command"),
                 version="")
    fleet.report("c1", dict(name="edge", version=1, applied=True), version="edge:1")
    policy = fleet.policy()
    assert policy["nodes"] == {"current": 1, "pending": 1, "failed": 1}
    assert policy["failures"] == [{"node_id": "e2", "reason": "bad command"}]
    assert policy["conflicts"] == [{"node_id": "e1", "agents": ["web"]}]
    fleet.report("e3", dict(name="edge", version=1, applied=True), version="edge:1")
    assert fleet.policy()["nodes"] == {"current": 2, "pending": 0, "failed": 1}
    fleet.put(payload=body([web(restart="never")]))
    assert fleet.policy()["nodes"] == {"current": 0, "pending": 3, "failed": 0}
    fleet.report("e1", version="")      # a report without the policy: it is pending there
    fleet.report("e2", dict(name="edge", version=2, applied=True), version="edge:2")
    assert fleet.policy()["nodes"] == {"current": 1, "pending": 2, "failed": 0}


def test_pinned_nodes_count_against_their_pinned_version(fleet):
    """A node held at version 1 that runs version 1 is current while version 2 is out."""
    fleet.put()
    fleet.report("e1", dict(name="edge", version=1, applied=True), version="edge:1")
    fleet.put(payload=body([web(restart="never")], hold=True))
    assert fleet.policy()["nodes"] == {"current": 1, "pending": 1, "failed": 0}


def test_bad_reports_are_refused_and_store_nothing(fleet):
    """An unregistered node is NOT_FOUND, an older boot FAILED_PRECONDITION, too many results,
    a bad or repeated policy name or a negative version INVALID_ARGUMENT."""
    fleet.put()
    ok = dict(name="edge", version=1, applied=True)
    assert grpc_code(lambda: fleet.report("nobody", ok)) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(lambda: fleet.report("e1", ok, boot_id=0)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    many = [dict(name=f"p{i}", version=1, applied=True)
            for i in range(policystore.MAX_RESULTS + 1)]
    for results in (many, [dict(ok, name="a/b")], [ok, ok], [dict(ok, version=-1)],
                    [dict(ok, conflicts=["x"] * (policystore.MAX_CONFLICTS + 1))]):
        assert grpc_code(lambda: fleet.report("e1", *results)) == \
            grpc.StatusCode.INVALID_ARGUMENT
    assert fleet.policy()["nodes"] == {"current": 0, "pending": 2, "failed": 0}


# ---- pieces ----

def test_problems_are_named_by_position_and_id():
    """read_agents' `[agents.NAME.sub] key: why` reads `agents[i] (NAME) sub.key: why`."""
    items = [{"id": "a"}, {"id": "b"}, {"command": "x"}]
    assert agent_problem("[agents.b] restart: bad", items) == "agents[1] (b) restart: bad"
    assert agent_problem("[agents.2] id: '' does not match", items) == \
        "agents[2] id: '' does not match"
    assert agent_problem("[agents.a.health]: set exactly one", items) == \
        "agents[0] (a) health: set exactly one"
    assert agent_problem("[[agents]]: must be an array of tables", items) == \
        "agents: must be an array of tables"


def test_migration_9_adds_the_policy_tables_to_a_version_8_database(tmp_path, monkeypatch):
    """A version 8 database gains policy, policy_status and policy_pin, keeping its nodes."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        tuple(m for m in migrations.MIGRATIONS if m[0] <= 8))
    db = dbmod.open_database(url)
    assert migrations.migrate(db) == 8
    with db.connection_context():
        db.execute_sql("INSERT INTO node (node_id, registered_at, labels) "
                       "VALUES ('n1', 1, '{\"role\": \"edge\"}')")
    monkeypatch.undo()
    assert migrations.migrate(dbmod.open_database(url)) >= 9
    with db.connection_context():
        assert {"policy", "policy_status", "policy_pin"} <= set(db.get_tables())
    store = PolicyStore(db, Registry.load(db))
    store.write("edge", {"role": "edge"}, json.dumps([web()]))
    assert store.version_of("n1") == "edge:1"
    dbmod.close_database(db)
    assert os.path.exists(tmp_path / "old.db")
