"""TLS on the manager's HTTP and gRPC and on the daemon's gRPC, mutual between them.

One throwaway cluster CA signs the manager's and the daemons' certificates; a
second CA plays an impostor. Managers and daemons run in-process on 127.0.0.1
port 0, except where the command line itself is under test.
"""
import json
import ssl
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest

from fleet import config as configuration
from fleet import errors
from fleet.daemon.app import Daemon
from fleet.daemon.manager_client import ManagerClient
from fleet.manager.app import Manager
from fleet.rpc import open_channel
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.daemon_harness import agent, daemon_config, started
from tests.helpers import wait_for
from tests.procs import FLEET_PY, REPO, FleetProcess
from tests.tls_certs import issue, make_ca

API = "api-token-tls-tests-0123456789"
CLUSTER = "cluster-token-tls-tests-9876543210"
PLAIN_HTTP = b"The client sent a plain HTTP request, but this server only speaks HTTPS"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The cluster CA, its manager and daemon certificates, and an impostor's."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(directory, "cluster-ca"), make_ca(directory, "other-ca")
    return {"ca": ca, "manager": issue(directory, ca, "manager"),
            "daemon": issue(directory, ca, "daemon"), "rogue": issue(directory, other, "rogue"),
            "named": issue(directory, ca, "named", sans="DNS:manager.fleet.test")}


def manager_tls(pki):
    """[manager.tls] with mutual TLS toward daemons."""
    return {"cert": pki["manager"].cert, "key": pki["manager"].key, "client_ca": pki["ca"].cert}


def daemon_tls(pki, name="daemon"):
    """[daemon.tls] with certificate `name`, trusting the cluster CA."""
    return {"cert": pki[name].cert, "key": pki[name].key, "ca": pki["ca"].cert}


def make_manager(tmp_path, tls):
    """An unstarted in-process Manager on port 0 with [manager.tls] = tls."""
    problems = []
    config = configuration.parse("manager", {"manager": {
        "http": "127.0.0.1:0", "grpc": "127.0.0.1:0", "db": f"sqlite:///{tmp_path}/m.db",
        "api_token": API, "cluster_token": CLUSTER, "tls": tls}}, problems)
    assert not problems, problems
    return Manager(config.manager)


def make_daemon(tmp_path, manager, tls, node_id="n1"):
    """An unstarted in-process Daemon reporting to manager, with [daemon.tls] = tls."""
    config = daemon_config(tmp_path / node_id, [agent("a")], node_id=node_id, tls=tls,
                           manager=f"127.0.0.1:{manager.grpc_port}", cluster_token=CLUSTER)
    return Daemon(config)


def https(port, ca, method, path, body=None):
    """(status, parsed JSON) of one API request over HTTPS, trusting only ca."""
    context = ssl.create_default_context(cafile=ca)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {API}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=40) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def running_pid(port, ca, node="n1", agent_id="a", other_than=None):
    """The pid of the agent once the manager stores it running (and not other_than)."""
    status, body = https(port, ca, "GET", f"/api/v1/nodes/{node}/agents")
    agents = {a["agent_id"]: a for a in body["agents"]} if status == 200 else {}
    found = agents.get(agent_id)
    if found and found["status"] == "running" and found["pid"] not in (None, other_than):
        return found["pid"]
    return None


def test_mutual_tls_end_to_end(tmp_path, pki):
    """One CA for all: the node registers, an HTTPS operate restarts its agent over mTLS."""
    ca = pki["ca"].cert
    with started(make_manager(tmp_path, manager_tls(pki))) as manager, \
            started(make_daemon(tmp_path, manager, daemon_tls(pki))):
        before = wait_for(lambda: running_pid(manager.http_port, ca), timeout=10)
        status, body = https(manager.http_port, ca, "POST", "/api/v1/nodes/n1/agents/a/operate",
                             {"operation": "restart"})
        assert status == 200, body
        assert body["agent"]["pid"] not in (None, before)
        wait_for(lambda: running_pid(manager.http_port, ca, other_than=before), timeout=10)


def test_manager_refuses_a_daemon_certificate_from_another_ca(tmp_path, pki, caplog):
    """A daemon whose certificate another CA signed never registers: RegisterNode is UNAVAILABLE."""
    with started(make_manager(tmp_path, manager_tls(pki))) as manager:
        rogue = configuration.TLSConfig(**daemon_tls(pki, "rogue"))
        channel = open_channel(f"127.0.0.1:{manager.grpc_port}", CLUSTER, rogue)
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ManagerServiceStub(channel).RegisterNode(
                pb.RegisterNodeRequest(node_id="rogue", boot_id=1), timeout=5)
        channel.close()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with started(make_daemon(tmp_path, manager, daemon_tls(pki, "rogue"), node_id="rogue")):
            wait_for(lambda: any("report to manager" in r.getMessage() and "unreachable"
                                 in r.getMessage() for r in caplog.records), timeout=10)
        assert manager.parts.nodes.list_nodes() == []


def register_by_hand(manager_port, pki, node_id, advertise):
    """Register node_id at `advertise` with one running agent "a", as a trusted daemon would."""
    tls = configuration.TLSConfig(**daemon_tls(pki))
    channel = open_channel(f"127.0.0.1:{manager_port}", CLUSTER, tls)
    stub = pb_grpc.ManagerServiceStub(channel)
    stub.RegisterNode(pb.RegisterNodeRequest(node_id=node_id, advertise_address=advertise,
                                             boot_id=1), timeout=5)
    state = pb.AgentState(agent_id="a", status=pb.AGENT_STATUS_RUNNING, pid=1)
    stub.SyncAgentStates(pb.SyncAgentStatesRequest(node_id=node_id, boot_id=1, seq=1, full=True,
                                                   states=[state]), timeout=5)
    channel.close()


def test_manager_refuses_a_daemon_server_certificate_from_another_ca(tmp_path, pki):
    """The manager does not operate a daemon whose server certificate another CA signed: 503."""
    ca = pki["ca"].cert
    with started(make_manager(tmp_path, manager_tls(pki))) as manager, \
            started(make_daemon(tmp_path, manager, daemon_tls(pki, "rogue"))) as rogue:
        register_by_hand(manager.grpc_port, pki, "n1", f"127.0.0.1:{rogue.port}")
        status, body = https(manager.http_port, ca, "POST", "/api/v1/nodes/n1/agents/a/operate",
                             {"operation": "restart"})
        assert status == 503 and body["error"]["code"] == "unavailable", body
        # The manager's own check failed (a refusal by the daemon reads "Socket closed").
        assert "CERTIFICATE_VERIFY_FAILED" in body["error"]["message"], body


def test_plaintext_to_the_tls_ports_fails_clearly(tmp_path, pki):
    """Plaintext gRPC to the TLS port is UNAVAILABLE; plain HTTP to HTTPS gets a clear 400."""
    with started(make_manager(tmp_path, manager_tls(pki))) as manager:
        channel = grpc.insecure_channel(f"127.0.0.1:{manager.grpc_port}")
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ManagerServiceStub(channel).RegisterNode(
                pb.RegisterNodeRequest(node_id="plain"), timeout=5,
                metadata=(("authorization", f"Bearer {CLUSTER}"),))
        channel.close()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{manager.http_port}/health", timeout=10)
        assert refused.value.code == 400 and PLAIN_HTTP in refused.value.read()
        assert manager.parts.nodes.list_nodes() == []


def test_the_daemon_client_fails_over_plaintext_to_a_tls_manager(tmp_path, pki):
    """A daemon without [daemon.tls] cannot reach a TLS manager: its client raises Unavailable."""
    with started(make_manager(tmp_path, manager_tls(pki))) as manager:
        client = ManagerClient((f"127.0.0.1:{manager.grpc_port}",), CLUSTER)
        with pytest.raises(errors.Unavailable):
            client.register(pb.RegisterNodeRequest(node_id="plain", boot_id=1))
        client.close()


def test_daemon_server_name_names_the_manager(tmp_path, pki):
    """A manager certificate for a name, not the IP, is accepted given [daemon.tls] server_name."""
    named = {"cert": pki["named"].cert, "key": pki["named"].key, "client_ca": pki["ca"].cert}
    with started(make_manager(tmp_path, named)) as manager:
        address = (f"127.0.0.1:{manager.grpc_port}",)
        for node_id, server_name in (("n1", ""), ("n2", "manager.fleet.test")):
            tls = configuration.TLSConfig(**daemon_tls(pki), server_name=server_name)
            client = ManagerClient(address, CLUSTER, tls)
            try:
                client.register(pb.RegisterNodeRequest(node_id=node_id, boot_id=1))
            except errors.Unavailable:
                pass   # n1: the certificate does not name 127.0.0.1
            finally:
                client.close()
        assert [n["node_id"] for n in manager.parts.nodes.list_nodes()] == ["n2"]


def write_manager_toml(path, tmp_path, tls):
    """A manager config file on port 0 with [manager.tls] = tls."""
    lines = ["[manager]", 'http = "127.0.0.1:0"', 'grpc = "127.0.0.1:0"',
             f'db = "sqlite:///{tmp_path}/fleet.db"', f'api_token = "{API}"',
             f'cluster_token = "{CLUSTER}"', "[manager.tls]"]
    lines += [f'{key} = "{value}"' for key, value in tls.items()]
    path.write_text("\n".join(lines) + "\n")


def test_a_missing_cert_file_is_a_config_error(tmp_path, pki):
    """fleet exits 2 naming [manager.tls] cert when the certificate file does not exist."""
    path = tmp_path / "manager.toml"
    write_manager_toml(path, tmp_path, {**manager_tls(pki), "cert": str(tmp_path / "gone.pem")})
    done = subprocess.run(FLEET_PY + ["--role", "manager", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("config error: [manager.tls] cert: cannot read "), done.stderr
    assert "Traceback" not in done.stderr and "listening" not in done.stderr


@pytest.mark.parametrize("broken, key, why", [
    ({"key": "rogue"}, "key", "does not match cert"),
    ({"cert": "key-of-manager"}, "cert", "holds no PEM certificate"),
    ({"client_ca": "key-of-manager"}, "client_ca", "holds no PEM certificate"),
])
def test_unusable_pem_files_are_config_errors(pki, broken, key, why):
    """A mismatched key or a file without a certificate is reported at load, naming its key."""
    paths = {"rogue": pki["rogue"].key, "key-of-manager": pki["manager"].key}
    tls = {**manager_tls(pki), **{k: paths[v] for k, v in broken.items()}}
    problems = []
    configuration.parse("manager", {"manager": {"tls": tls}}, problems)
    assert len(problems) == 1 and problems[0].startswith(f"[manager.tls] {key}: ")
    assert why in problems[0], problems


def test_role_all_local_daemon_inherits_the_manager_tls(tmp_path, pki):
    """--role all with only [manager.tls]: the local daemon borrows it, registers, is operated."""
    path = tmp_path / "all.toml"
    write_manager_toml(path, tmp_path, manager_tls(pki))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f'[daemon]\nlisten = "127.0.0.1:0"\nstate_dir = "{tmp_path}/state"\n'
                     f'node_id = "n1"\nsync_interval = 0.5\n'
                     f'[[agents]]\nid = "a"\ncommand = ["sleep", "3600"]\nstart_seconds = 0.2\n')
    proc = FleetProcess("--role", "all", "--config", str(path), log_dir=tmp_path)
    try:
        port, ca = proc.port("http"), pki["ca"].cert
        before = wait_for(lambda: running_pid(port, ca), timeout=15)
        status, body = https(port, ca, "POST", "/api/v1/nodes/n1/agents/a/operate",
                             {"operation": "restart"})
        assert status == 200 and body["agent"]["pid"] != before, body
    finally:
        assert proc.terminate() == 0, proc.read()
