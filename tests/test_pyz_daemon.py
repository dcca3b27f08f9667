"""The built fleet.pyz as a node daemon, run from an empty directory."""
import sys

import grpc

from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.helpers import wait_for
from tests.procs import FleetProcess, agent_pids, alive

CONFIG = """
[daemon]
listen = "127.0.0.1:0"
manager = "127.0.0.1:1"

[[agents]]
id = "one"
command = ["{python}", "-c", "import time; time.sleep(3600)"]
start_seconds = 0.2

[[agents]]
id = "two"
command = ["sleep", "3600"]
start_seconds = 0.2
"""


def test_pyz_from_an_empty_directory_serves_and_leaves_no_agent(pyz, tmp_path):
    """fleet.pyz in an empty cwd serves ListAgents; SIGTERM leaves no agent behind."""
    config = tmp_path / "fleet.toml"
    config.write_text(CONFIG.format(python=sys.executable))
    work = tmp_path / "empty"
    work.mkdir()
    daemon = FleetProcess("--role", "daemon", "--config", str(config), entry=[sys.executable, str(pyz)],
                          log_dir=tmp_path, cwd=work, env={"FLEET_CACHE_DIR": str(tmp_path / "cache")})
    port = daemon.port()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.DaemonServiceStub(channel)

    def both_running():
        found = [a for a in stub.ListAgents(pb.ListAgentsRequest(), timeout=5).agents
                 if a.status == pb.AGENT_STATUS_RUNNING and a.pid]
        return found if len(found) == 2 else None
    agents = wait_for(both_running)
    channel.close()
    assert sorted(a.agent_id for a in agents) == ["one", "two"]
    pids = agent_pids(daemon.pid)
    assert pids == {a.pid for a in agents}
    assert (work / "fleet-state" / "logs" / "one.log").exists()   # default state_dir, in cwd
    assert daemon.terminate() == 0
    assert not [p for p in pids if alive(p)]


def test_a_cold_start_runs_fleet_fresh_under_the_same_pid(pyz, tmp_path):
    """After unpacking, fleet re-execs itself (same pid) and the marker never reaches agents."""
    config = tmp_path / "env.toml"
    config.write_text(
        '[daemon]\nlisten = "127.0.0.1:0"\nmanager = "127.0.0.1:1"\n'
        f'state_dir = "{tmp_path}/state"\n[[agents]]\nid = "env"\n'
        f'command = ["{sys.executable}", "-c", "import os, time; print(sorted(os.environ), flush=True); '
        'time.sleep(3600)"]\nstart_seconds = 0.2\n')
    daemon = FleetProcess("--role", "daemon", "--config", str(config), entry=[sys.executable, str(pyz)],
                          log_dir=tmp_path, env={"FLEET_CACHE_DIR": str(tmp_path / "fresh-cache"),
                               "FLEET_LOG_LEVEL": "debug"})
    daemon.port()
    lock_pid = (tmp_path / "state" / "daemon.lock").read_text().strip()
    assert lock_pid == str(daemon.pid)          # the same process, after exec
    assert daemon.read().count("starting fleet in a fresh interpreter") == 1
    log = tmp_path / "state" / "logs" / "env.log"
    printed = wait_for(lambda: log.exists() and log.read_text())
    assert "FLEET_CACHE_DIR" in printed and "FLEET_BOOTSTRAP_FRESH" not in printed
    assert daemon.terminate() == 0
