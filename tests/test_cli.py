"""The command line and the daemon's lifecycle, as real processes."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import wait_for

from tests.procs import FLEET_PY as FLEET
from tests.procs import FleetProcess, agent_pids, alive

CONFIG = """
[daemon]
listen = "127.0.0.1:0"
manager = "127.0.0.1:1"
state_dir = "{state}"
{extra}

[[agents]]
id = "sleeper"
command = ["{python}", "-c", "import time; print('up', flush=True); time.sleep(3600)"]
start_seconds = 0.2
stop_timeout = 2
"""


def run_fleet(*args, env=None, cwd=None):
    return subprocess.run(FLEET + list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def write_config(tmp_path, extra=""):
    path = tmp_path / "fleet.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state", python=sys.executable, extra=extra))
    return str(path)


def test_version_and_missing_role():
    """--version prints the version; no --role exits 2 with a message."""
    assert run_fleet("--version").stdout.startswith("fleet 0.")
    missing = run_fleet()
    assert missing.returncode == 2 and "--role is required" in missing.stderr


def test_bad_config_exits_2_naming_every_key(tmp_path):
    """A bad config exits 2 with one line per problem, each naming section and key."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlisten = "nowhere"\nsync_interval = "soon"\nbogus = 1\n'
                   '[[agents]]\nid = "a/b"\ncommand = []\nrestart = "sometimes"\n')
    result = run_fleet("--role", "daemon", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("config error: ") for line in lines)
    for key in ("[daemon] listen", "[daemon] sync_interval", "[daemon] bogus: unknown key",
                "[agents.0] id", "[agents.0] command", "[agents.0] restart"):
        assert any(key in line for line in lines), (key, lines)


def test_non_loopback_listen_needs_a_token(tmp_path):
    """A daemon on 0.0.0.0 without a cluster token is refused unless --insecure."""
    result = run_fleet("--role", "daemon", "--listen", "0.0.0.0:0",
                       "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2 and "cluster_token" in result.stderr


def test_env_beats_file_and_flags_beat_env(tmp_path):
    """FLEET_LISTEN overrides the file, --listen overrides FLEET_LISTEN."""
    config = write_config(tmp_path)
    from_env = run_fleet("--role", "daemon", "--config", config,
                         env={"FLEET_LISTEN": "bad-address"})
    assert from_env.returncode == 2 and "'bad-address'" in from_env.stderr
    from_flag = run_fleet("--role", "daemon", "--config", config, "--listen", "worse",
                          env={"FLEET_LISTEN": "bad-address"})
    assert "'worse'" in from_flag.stderr and "bad-address" not in from_flag.stderr


def test_sigterm_stops_agents_and_exits_0(tmp_path):
    """SIGTERM stops every agent within its timeout and the daemon exits 0."""
    daemon = FleetProcess("--role", "daemon", "--config", write_config(tmp_path), log_dir=tmp_path)
    daemon.port()
    pids = wait_for(lambda: agent_pids(daemon.pid))
    daemon.popen.send_signal(signal.SIGTERM)
    assert daemon.popen.wait(15) == 0
    assert not [p for p in pids if alive(p)]


def test_second_daemon_on_the_same_state_dir_exits_1(tmp_path):
    """A lock keeps a second daemon off a state_dir that one already uses."""
    config = write_config(tmp_path)
    first = FleetProcess("--role", "daemon", "--config", config, log_dir=tmp_path)
    first.port()
    try:
        second = run_fleet("--role", "daemon", "--config", config)
        assert second.returncode == 1 and "locked" in second.stderr
    finally:
        first.popen.send_signal(signal.SIGTERM)
        first.popen.wait(15)


def test_sigkilled_daemon_leaves_agents_running_and_the_next_one_adopts_them(tmp_path):
    """Agents outlive a SIGKILLed daemon; its successor adopts the same pids."""
    config = write_config(tmp_path)
    first = FleetProcess("--role", "daemon", "--config", config, log_dir=tmp_path)
    first.port()
    pids = wait_for(lambda: agent_pids(first.pid))
    wait_for(lambda: os.path.exists(tmp_path / "state" / "agents" / "sleeper.json"))
    first.popen.kill()
    first.popen.wait(10)
    assert all(alive(p) for p in pids)
    adopt_then_stop(tmp_path, config, pids)


def test_stop_agents_on_exit_false_leaves_agents_for_the_next_daemon_to_adopt(tmp_path):
    """stop_agents_on_exit = false: SIGTERM exits 0 and leaves agents running with their
    records; the next daemon adopts the same pids and, by default, stops them at SIGTERM."""
    first = FleetProcess("--role", "daemon", "--config",
                         write_config(tmp_path, "stop_agents_on_exit = false"), log_dir=tmp_path)
    first.port()
    pids = wait_for(lambda: agent_pids(first.pid))
    record = tmp_path / "state" / "agents" / "sleeper.json"
    wait_for(record.exists)
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(15) == 0
    assert all(alive(p) for p in pids) and record.exists()
    adopt_then_stop(tmp_path, write_config(tmp_path), pids)


def test_an_unusable_database_directory_exits_1_with_one_message(tmp_path):
    """A database in a missing directory exits 1 with a clear message, no traceback."""
    nowhere = run_fleet("--role", "manager", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                        "--db", f"sqlite:///{tmp_path}/no/such/dir/m.db")
    assert nowhere.returncode == 1 and "Traceback" not in nowhere.stderr
    assert "beside the database" in nowhere.stderr and "No such file or directory" in nowhere.stderr


LISTENERS = {"manager": {"--http": "http", "--grpc": "grpc"},
             "daemon": {"--listen": "grpc"},
             "all": {"--http": "http", "--grpc": "grpc", "--listen": "daemon-grpc"}}


@pytest.mark.parametrize("role, flag", [(role, flag) for role, flags in LISTENERS.items()
                                        for flag in flags])
def test_a_port_in_use_exits_1_with_one_line_and_leaves_nothing_behind(tmp_path, role, flag):
    """A taken port: exit 1, one line naming the listener and address, and no token
    file, database or state dir left by the failed start."""
    work = tmp_path / "work"
    work.mkdir()
    addresses = {f: "127.0.0.1:0" for f in LISTENERS[role]}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses[flag] = f"127.0.0.1:{port}"
        args = [arg for pair in addresses.items() for arg in pair]
        result = run_fleet("--role", role, *args, "--db", f"sqlite:///{work}/fleet.db",
                           "--state-dir", str(work / "state"), cwd=work)
    label = LISTENERS[role][flag]
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f" fleet: cannot listen {label}=127.0.0.1:{port}: "
                             "address already in use"), lines
    assert os.listdir(work) == []


HIDE_PSYCOPG2 = "raise ImportError('psycopg2 hidden by the test')\n"
PG = "postgresql://fleet@localhost/fleet"


@pytest.mark.parametrize("role", ["manager", "all"])
@pytest.mark.parametrize("config, expected", [
    pytest.param(f'[manager]\ndb = "{PG}"', [
        "[manager] db: PostgreSQL needs the psycopg2 driver",
        "[manager] api_token: required with a PostgreSQL database",
        "[manager] cluster_token: required with a PostgreSQL database"], id="postgresql"),
    pytest.param(f'[manager]\ndb = "{PG}"\napi_token = "a-token"\ncluster_token = "c-token"',
                 ["[manager] db: PostgreSQL needs the psycopg2 driver"], id="no-driver"),
    pytest.param('[manager]\ndb = "postgresql://fleet@localhost/"',
                 ["[manager] db: the PostgreSQL URL names no database"], id="no-database-name"),
    pytest.param('[manager]\ndb = "sqlite:///:memory:"',
                 ["[manager] db: sqlite:///:memory: is not supported"], id="memory"),
    pytest.param('[manager]\nworkers = 65\nmetrics_public = "sometimes"',
                 ["[manager] metrics_public: not a boolean",
                  "[manager] workers: must be between 1 and 64"], id="bad-workers"),
    pytest.param('log_level = "loud"\nlog_format = "xml"',
                 ["log_level: must be one of", "log_format: "], id="top-level"),
    pytest.param('[[agents]]\nid = "ticker"\ncommand = ["x"]\nrestart = "sometimes"\n'
                 '[[agents]]\ncommand = "y"\nstart_seconds = "soon"\n'
                 '[[agents]]\nid = "twin"\ncommand = "z"\n[[agents]]\nid = "twin"\ncommand = "z"\n',
                 ["[agents.ticker] restart: must be one of", "[agents.1] id: ''",
                  "[agents.1] start_seconds: not a number",
                  "[agents.3] id: duplicate agent id 'twin'"], id="agents"),
])
def test_config_problems_exit_2_naming_section_and_key(tmp_path, role, config, expected):
    """Each config problem found at start is one `config error:` line naming its key
    (top-level keys alone, agents by id), exit 2, nothing created."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "psycopg2.py").write_text(HIDE_PSYCOPG2)   # the driver is missing
    (tmp_path / "fleet.toml").write_text(config)
    result = run_fleet("--role", role, "--config", str(tmp_path / "fleet.toml"),
                       "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--listen", "127.0.0.1:0",
                       "--state-dir", str(work / "state"), cwd=work,
                       env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, start in zip(sorted(lines), sorted(expected)):
        assert line.startswith(f"config error: {start}"), (line, start)
    assert os.listdir(work) == []


def test_an_empty_token_file_beside_the_database_is_a_config_error(tmp_path):
    """An empty fleet-api.token exits 2 naming the key it stands for; nothing else is made."""
    (tmp_path / "fleet-api.token").write_text("\n")
    result = run_fleet("--role", "manager", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                       "--db", f"sqlite:///{tmp_path}/fleet.db", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"config error: [manager] api_token: token file {tmp_path}/fleet-api.token is empty "
        "(delete it to have a new token made, or set api_token)"]
    assert os.listdir(tmp_path) == ["fleet-api.token"]


def test_a_second_sigint_forces_exit_130(tmp_path):
    """SIGINT starts a clean stop; a second SIGINT while agents are still stopping exits 130."""
    config = tmp_path / "stubborn.toml"
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(3600)")
    config.write_text(CONFIG.format(state=tmp_path / "state", python=sys.executable, extra="")
                      .replace("import time; print('up', flush=True); time.sleep(3600)", stubborn)
                      .replace("stop_timeout = 2", "stop_timeout = 30"))
    daemon = FleetProcess("--role", "daemon", "--config", str(config), log_dir=tmp_path)
    daemon.port()
    pids = wait_for(lambda: agent_pids(daemon.pid))
    agent_log = tmp_path / "state" / "logs" / "sleeper.log"
    wait_for(lambda: agent_log.exists() and "ready" in agent_log.read_text())
    daemon.popen.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping" in daemon.read())
    daemon.popen.send_signal(signal.SIGINT)
    assert daemon.popen.wait(10) == 130, daemon.read()
    for pid in pids:          # the stubborn agent outlives a forced exit: clean it up
        os.kill(pid, signal.SIGKILL)


def adopt_then_stop(tmp_path, config, pids):
    """A second daemon on the same state_dir adopts `pids` (no new child) and, at its
    SIGTERM, exits 0 having stopped them."""
    second = FleetProcess("--role", "daemon", "--config", config, log_dir=tmp_path)
    second.port()
    assert wait_for(lambda: "adopted pid=%d" % next(iter(pids)) in second.read())
    assert agent_pids(second.pid) == set()   # adopted, not a new child
    second.popen.send_signal(signal.SIGTERM)
    assert second.popen.wait(15) == 0
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=5)
