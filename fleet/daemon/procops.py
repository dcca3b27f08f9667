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

CR = "\r"   # ends a #! line written with DOS line endings


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
    known: bool = True   # False for an adopted process: not our child, its status is lost

    def describe(self) -> str:
        """The exit in words, for logs and last_error."""
        if not self.known:
            return "exit status unknown (adopted process)"
        if self.signal:
            return f"signal {self.signal}"
        return f"code {self.code}"


UNKNOWN_EXIT = Exit(-1, 0, known=False)


class SpawnError(Exception):
    """A command that could not be started; the message names the cause and the path."""


class SignalDenied(Exception):
    """The process group lives but we may not signal it (EPERM): it is not gone."""


def describe_spawn_error(exc: OSError, command, cwd: str,
                         env: dict[str, str] | None = None) -> str:
    """`command not found: /usr/bin/nope`, `cwd does not exist: /srv/x`, ... from
    the error Popen raised (its filename is the cwd when chdir failed). execve's
    errno alone misleads, so the file it ran is looked at: ENOENT for a script that
    exists means its #! interpreter is missing, EACCES for a directory is that."""
    if cwd and exc.filename == cwd:
        why = {errno.ENOENT: "cwd does not exist", errno.ENOTDIR: "cwd is not a directory",
               errno.EACCES: "cwd not accessible (permission denied)"}
        return f"{why.get(exc.errno, f'cwd unusable ({exc.strerror})')}: {cwd}"
    path = command[0] if command else ""
    found = _resolve(path, cwd, env) if path else ""
    if exc.errno in (errno.ENOENT, errno.EACCES) and os.path.isdir(found):
        return f"is a directory: {found}"
    if exc.errno == errno.ENOENT:
        return _interpreter_problem(found, cwd) or \
            f"command not found: {path}" + ("" if "/" in path else " (searched PATH)")
    if exc.errno == errno.EACCES:
        return f"not executable: {path} (permission denied)"
    if exc.errno == errno.ENOEXEC:
        return f"not executable: {path} (exec format error)"
    return f"cannot execute {path}: {exc.strerror or exc}"


def find_problem(command, cwd: str, env: dict[str, str]) -> str:
    """What would make spawning command fail, resolved as spawn resolves it (the
    env's PATH for a bare name, cwd for a relative path); "" if nothing."""
    if cwd and not os.path.isdir(cwd):
        return f"cwd does not exist: {cwd}" if not os.path.exists(cwd) \
            else f"cwd is not a directory: {cwd}"
    path = command[0]
    found = _resolve(path, cwd, env)
    if not found:
        return f"command not found: {path}" + ("" if "/" in path else " (searched PATH)")
    if os.path.isdir(found):
        return f"is a directory: {found}"
    if not os.access(found, os.X_OK):
        return f"not executable: {found}"
    return _interpreter_problem(found, cwd)


def _resolve(path: str, cwd: str, env: dict[str, str] | None) -> str:
    """The file exec runs for `path`: joined to cwd when it holds a "/", else the
    first match on the env's PATH (an executable file before any other file, a file
    before a directory: exec goes on past those it cannot run); "" if none exists."""
    if "/" in path:
        candidates = [os.path.join(cwd, path) if cwd else path]
    else:
        candidates = [os.path.join(folder, path) for folder in os.get_exec_path(env)]
    files = [c for c in candidates if os.path.isfile(c)]
    runnable = [c for c in files if os.access(c, os.X_OK)]
    return (runnable or files or [c for c in candidates if os.path.isdir(c)] or [""])[0]


def _interpreter_problem(found: str, cwd: str) -> str:
    """`interpreter not found: ...` when `found` is a script whose #! interpreter
    does not exist (the kernel resolves a relative one against cwd); else ""."""
    interpreter = _shebang(found) if found and os.path.isfile(found) else None
    if not interpreter or os.path.exists(os.path.join(cwd, interpreter)):
        return ""
    problem = f"interpreter not found: {interpreter.rstrip(CR)} (the #! line of {found})"
    if interpreter.endswith(CR):
        problem += "; the line ends in a carriage return (DOS line endings)"
    return problem


def _shebang(path: str) -> str | None:
    """The interpreter the #! line of the file names; None without one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)   # the kernel reads no more (BINPRM_BUF_SIZE)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    # The kernel splits the line on spaces and tabs only: a "\r" stays in the name.
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    return os.fsdecode(line.replace(b"\t", b" ").split(b" ", 1)[0]) or None


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
        """Start command in a new session with stdout and stderr on log_fd.

        Raises SpawnError naming the cause and path. A child that cannot be
        watched (no pidfd) is killed and reaped: none runs unsupervised.
        """
        try:
            popen = subprocess.Popen(
                list(command), cwd=cwd or None, env=env, stdin=subprocess.DEVNULL,
                stdout=log_fd, stderr=log_fd, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SpawnError(describe_spawn_error(exc, command, cwd, env)) from exc
        try:
            pidfd = self.pidfd_open(popen.pid)
        except OSError as exc:
            self._discard(popen)
            raise SpawnError(f"cannot watch pid {popen.pid} (pidfd_open: {exc.strerror}); "
                             "killed it") from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # exited already; the pidfd will say so at once
        return Child(popen.pid, popen.pid, create_time, popen, pidfd)

    @staticmethod
    def _discard(popen: subprocess.Popen) -> None:
        """SIGKILL the new session's group and reap its leader."""
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except OSError:
            popen.kill()
        popen.wait()

    def adopt(self, pid: int, pgid: int, create_time: float) -> Child | None:
        """A Child for a live pid whose create time matches, else None.

        The pidfd is opened first and the create time checked after: the pidfd
        then refers to the very process checked, so a pid reused in between
        cannot be adopted. Raises UnreadableRecord when the pid lives but its
        facts cannot be read.
        """
        try:
            pidfd = self.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:
            raise UnreadableRecord(f"pid {pid} cannot be watched (pidfd_open: "
                                   f"{exc.strerror})") from exc
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - create_time) <= 0.01 and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                return Child(pid, pgid, create_time, None, pidfd)
        except psutil.AccessDenied as exc:
            os.close(pidfd)
            raise UnreadableRecord(f"pid {pid} lives but cannot be inspected") from exc
        except psutil.Error:
            pass
        os.close(pidfd)
        return None

    def pidfd_open(self, pid: int) -> int:
        """A pidfd for pid; OSError (ProcessLookupError when there is no such pid)."""
        return os.pidfd_open(pid)

    def reap(self, child: Child) -> Exit:
        """The exit of a child whose pidfd became readable (or that is gone)."""
        self.close(child)
        if child.popen is None:
            return UNKNOWN_EXIT  # not our child: its parent (init) reaped it
        returncode = child.popen.wait()
        if returncode < 0:
            return Exit(-1, -returncode)
        return Exit(returncode, 0)

    def close(self, child: Child) -> None:
        if child.pidfd >= 0:
            os.close(child.pidfd)
            child.pidfd = -1

    def kill_group(self, pgid: int, sig: int) -> bool:
        """Send sig to the process group; False if the group is gone (ESRCH).

        Raises SignalDenied when the group lives but may not be signalled (EPERM).
        """
        try:
            self.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise SignalDenied(f"no permission to signal process group {pgid} "
                               f"(signal {sig}: {exc.strerror})") from exc

    def group_alive(self, pgid: int) -> bool:
        """True while any process of the group lives (one we may not signal too)."""
        try:
            self.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def killpg(self, pgid: int, sig: int) -> None:
        """os.killpg: the one syscall every group signal goes through."""
        os.killpg(pgid, sig)


SIGKILL = int(signal.SIGKILL)
