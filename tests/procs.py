"""Real fleet processes for end-to-end tests: start, read their log, find their ports."""
import itertools
import os
import re
import subprocess
import sys

import psutil

from tests.helpers import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET_PY = [sys.executable, os.path.join(REPO, "fleet.py")]
_count = itertools.count()


def alive(pid):
    """True for a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def agent_pids(root_pid):
    """Live child processes of a fleet process (its agents)."""
    return {p.pid for p in psutil.Process(root_pid).children() if alive(p.pid)}


class FleetProcess:
    """A fleet process whose stderr goes to a file that read() returns."""

    def __init__(self, *args, entry=None, log_dir, cwd=None, env=None):
        self.log_path = os.path.join(str(log_dir), f"fleet-{next(_count)}.log")
        command = list(entry or FLEET_PY) + list(args)
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(command, stderr=log, cwd=cwd,
                                          env={**os.environ, **(env or {})})

    @property
    def pid(self):
        return self.popen.pid

    def read(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()

    def port(self, label="grpc", timeout=30):
        """The port of the `listening LABEL=HOST:PORT` line, once logged."""
        pattern = rf"listening {re.escape(label)}=\S+:(\d+)"
        found = wait_for(lambda: self.popen.poll() is None and re.search(pattern, self.read())
                         or self._died(), timeout=timeout)
        return int(found.group(1))

    def _died(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"fleet exited {self.popen.returncode}:\n{self.read()}")
        return None

    def terminate(self, timeout=30):
        """SIGTERM, then the exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
        return self.popen.wait(timeout)

    def kill(self):
        self.popen.kill()
        self.popen.wait(10)


def kill_recorded_agents(state_dir):
    """SIGKILL the groups of agents a killed daemon left behind (from its state records)."""
    import glob
    import json
    import signal
    for path in glob.glob(os.path.join(str(state_dir), "agents", "*.json")):
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        try:
            os.killpg(record["pgid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
