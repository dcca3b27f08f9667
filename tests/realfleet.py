"""A cluster of real fleet processes for fault tests: config files, fixed ports, and
clients for the manager's HTTP API and both gRPC services (with the cluster token)."""
import json
import socket

import grpc

from fleet.states import State
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests import httpapi
from tests.procs import FleetProcess, kill_recorded_agents

API_TOKEN = "api-token-for-fault-tests-0123456789"
CLUSTER_TOKEN = "cluster-token-for-fault-tests-9876543210"
AUTH = (("authorization", f"Bearer {CLUSTER_TOKEN}"),)
SYNC_INTERVAL = 0.5

MANAGER = """
[manager]
http = "127.0.0.1:{http}"
grpc = "127.0.0.1:{grpc}"
db = "sqlite:///{db}"
offline_after = {offline_after}
api_token = "{api}"
cluster_token = "{cluster}"
{extra}
"""

DAEMON = """
log_level = "debug"

[daemon]
listen = "127.0.0.1:0"
manager = "127.0.0.1:{grpc}"
state_dir = "{state}"
node_id = "{node}"
cluster_token = "{cluster}"
sync_interval = {sync}
heartbeat_interval = {sync}
metrics_interval = 1
{agents}
"""

AGENT = """
[[agents]]
id = "{id}"
command = {command}
start_seconds = 0.2
backoff_initial = 0.1
backoff_max = 0.5
stop_timeout = 2
"""


def free_port():
    """A port free on 127.0.0.1 right now, for a server that must keep it across restarts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agents_toml(ids, command=("sleep", "3600")):
    """[[agents]] tables, one per id, all running `command`."""
    return "".join(AGENT.format(id=i, command=json.dumps(list(command))) for i in ids)


class Cluster:
    """Writes configs under one directory and runs `python fleet.py` processes;
    close() stops every process it started and any agent a killed daemon left."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.db_path = tmp / "fleet.db"
        self.procs = []           # (role, FleetProcess) in start order
        self.state_dirs = []

    def manager_config(self, grpc_port=0, http_port=0, extra="", offline_after=3):
        path = self.tmp / "manager.toml"
        path.write_text(MANAGER.format(http=http_port, grpc=grpc_port, db=self.db_path,
                                       api=API_TOKEN, cluster=CLUSTER_TOKEN, extra=extra,
                                       offline_after=offline_after))
        return path

    def daemon_config(self, node, manager_port, agents):
        state = self.tmp / node
        self.state_dirs.append(state)
        path = self.tmp / f"{node}.toml"
        path.write_text(DAEMON.format(grpc=manager_port, state=state, node=node,
                                      cluster=CLUSTER_TOKEN, sync=SYNC_INTERVAL, agents=agents))
        return path

    def run(self, role, config):
        """Start `python fleet.py --role ROLE --config CONFIG`."""
        proc = FleetProcess("--role", role, "--config", str(config), log_dir=self.tmp)
        self.procs.append((role, proc))
        return proc

    def close(self):
        # Daemons first, so that their final reports reach a manager still running.
        for _, proc in sorted(self.procs, key=lambda started: started[0] != "daemon"):
            try:
                proc.terminate(timeout=15)
            except Exception:  # noqa: BLE001 - a stuck process is killed, not left behind
                proc.kill()
        for state in self.state_dirs:
            kill_recorded_agents(state)


class Api(httpapi.Api):
    """The manager's JSON HTTP API, with the fault tests' token."""

    def __init__(self, port, token=API_TOKEN):
        super().__init__(port, token)

    def stored(self, node):
        """{agent_id: (status, pid)} as the manager stores them."""
        return {i: (a["status"], a["pid"]) for i, a in self.agents(node).items()}


class DaemonStub:
    """A daemon's own DaemonService, called the way the manager calls it."""

    def __init__(self, port):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.DaemonServiceStub(self.channel)

    def agents(self):
        """{agent_id: AgentInfo} from ListAgents."""
        reply = self.stub.ListAgents(pb.ListAgentsRequest(), metadata=AUTH, timeout=5)
        return {a.agent_id: a for a in reply.agents}

    def truth(self):
        """{agent_id: (status, pid)} from ListAgents, shaped like Api.stored."""
        return {i: (State(a.status).api_name, a.pid) for i, a in self.agents().items()}

    def operate(self, agent_id, operation):
        request = pb.OperateAgentRequest(agent_id=agent_id, operation=operation)
        return self.stub.OperateAgent(request, metadata=AUTH, timeout=30).agent

    def close(self):
        self.channel.close()


def manager_stub(port):
    """(channel, ManagerService stub) to a manager's gRPC port; pass metadata=AUTH."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.ManagerServiceStub(channel)


def running_state(agent_id, pid, **fields):
    """An AgentState of a RUNNING agent, as a report carries it."""
    return pb.AgentState(agent_id=agent_id, status=pb.AGENT_STATUS_RUNNING, pid=pid,
                         health="healthy", **fields)
