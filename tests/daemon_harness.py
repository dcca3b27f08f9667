"""An in-process daemon on 127.0.0.1:0 with real agents, and a stub to call it."""
import contextlib
import sys

import grpc

from fleet import config as configuration
from fleet.daemon.app import Daemon
from fleet.v1 import fleet_pb2_grpc as pb_grpc

# A program that prints a line, then sleeps until killed.
SLEEPER = [sys.executable, "-c",
           "import sys, time; print('hello from agent', flush=True); time.sleep(3600)"]


def agent(agent_id, command=None, **overrides):
    """An [[agents]] table with short test timings."""
    table = {"id": agent_id, "command": command or SLEEPER, "start_seconds": 0.2,
             "backoff_initial": 0.05, "backoff_max": 0.2, "stop_timeout": 2}
    table.update(overrides)
    return table


def daemon_config(tmp_path, agents, **daemon):
    data = {"daemon": {"listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
                       "manager": "127.0.0.1:1", "sync_interval": 0.5,
                       "metrics_interval": 1, **daemon},
            "agents": agents}
    problems = []
    config = configuration.parse("daemon", data, problems)
    assert not problems, problems
    return config


@contextlib.contextmanager
def running_daemon(tmp_path, agents, token="", **daemon):
    """Yield (daemon, stub); the daemon is stopped (agents too) on exit."""
    if token:
        daemon["cluster_token"] = token
    node = Daemon(daemon_config(tmp_path, agents, **daemon))
    node.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{node.port}")
    try:
        yield node, pb_grpc.DaemonServiceStub(channel)
    finally:
        channel.close()
        node.stop()


@contextlib.contextmanager
def started(thing):
    """Start a Manager or Daemon for the block; stop it after (a Daemon stops its agents)."""
    thing.start()
    try:
        yield thing
    finally:
        thing.stop() if isinstance(thing, Daemon) else thing.close()
