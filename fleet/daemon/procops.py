"""Every os and psutil call the supervisor makes, behind one small adapter.

The supervisor's decisions take this object so that tests can drive the state
machine with a fake one and an explicit clock. Processes are spawned with
`start_new_session=True` (own process group, no terminal signals) and
`close_fds=True`, never with `preexec_fn` (it forces a fork path that can
deadlock beside gRPC threads).
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import signal
import subprocess
import time

import psutil

from fleet.daemon.statedir import UnreadableRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Child:
    """A process the supervisor watches: its own child, or one it adopted."""

    pid: int
    pgid: int
    create_time: float            # psutil's create time, to tell a reused pid apart
    popen: subprocess.Popen | None = None   # None for an adopted process
    pidfd: int = -1               # readable once the process has exited


@dataclasses.dataclass(frozen=True)
class Exit:
    code: int      # -1 when unknown (an adopted process) or killed by a signal
    signal: int    # 0 when it exited by itself


class ProcOps:
    """The real operating system."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def jitter(self) -> float:
        """The random factor of a backoff delay, U(0.8, 1.0)."""
        return random.uniform(0.8, 1.0)

    def spawn(self, command, cwd: str, env: dict[str, str], log_fd: int) -> Child:
        """Start command in a new session with stdout and stderr on log_fd."""
        popen = subprocess.Popen(
            list(command), cwd=cwd or None, env=env, stdin=subprocess.DEVNULL,
            stdout=log_fd, stderr=log_fd, start_new_session=True, close_fds=True)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # exited already; the pidfd will say so at once
        return Child(popen.pid, popen.pid, create_time, popen, self._pidfd(popen.pid))

    def adopt(self, pid: int, pgid: int, create_time: float) -> Child | None:
        """A Child for a live pid whose create time matches, else None.

        Raises UnreadableRecord when the pid lives but its facts cannot be read.
        """
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - create_time) > 0.01 or \
                    proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.AccessDenied as exc:
            raise UnreadableRecord(f"pid {pid} lives but cannot be inspected") from exc
        except psutil.Error:
            return None
        pidfd = self._pidfd(pid)
        return Child(pid, pgid, create_time, None, pidfd) if pidfd >= 0 else None

    @staticmethod
    def _pidfd(pid: int) -> int:
        try:
            return os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
            return -1

    def reap(self, child: Child) -> Exit:
        """The exit of a child whose pidfd became readable (or that is gone)."""
        self.close(child)
        if child.popen is None:
            return Exit(-1, 0)
        returncode = child.popen.wait()
        if returncode < 0:
            return Exit(-1, -returncode)
        return Exit(returncode, 0)

    def close(self, child: Child) -> None:
        if child.pidfd >= 0:
            os.close(child.pidfd)
            child.pidfd = -1

    def kill_group(self, pgid: int, sig: int) -> bool:
        """Send sig to the process group; False if the group is gone."""
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            log.warning("pgid=%s: no permission to signal the group", pgid)
            return False

    def group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


SIGKILL = int(signal.SIGKILL)
