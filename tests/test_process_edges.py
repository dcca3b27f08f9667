"""The process edges: failures that name their cause, the adopted exit, EPERM,
pidfd failures and races, shutdown during an operation, and UNKNOWN agents.

Real child processes throughout; failures the machine cannot be made to produce
(EPERM for root, a failing pidfd_open, an uninspectable pid) are injected at the
OS adapter's seam, a ProcOps subclass.
"""
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from fleet.daemon.app import Daemon
from fleet.daemon.logs import LogKeeper
from fleet.daemon.metrics import Sampler
from fleet.daemon.procops import ProcOps, SpawnError, find_problem
from fleet.daemon.statedir import AgentRecord, StateDir, UnreadableRecord
from fleet.daemon.supervisor import Supervisor
from fleet.errors import Conflict
from fleet.states import State
from fleet.v1 import fleet_pb2 as pb
from tests.daemon_harness import SLEEPER, agent, daemon_config, running_daemon
from tests.helpers import wait_for
from tests.procs import alive


def snap(owner, agent_id):
    supervisor = owner.supervisor if isinstance(owner, Daemon) else owner
    return supervisor.runner(agent_id).snapshot()


def running_pid(owner, agent_id, other_than=0):
    s = snap(owner, agent_id)
    return s.pid if s.state is State.RUNNING and s.pid and s.pid != other_than else 0


class SeamOps(ProcOps):
    """The real OS, with failures switched on at the adapter's seam."""

    def __init__(self):
        self.deny_signals = False     # killpg fails with EPERM
        self.fail_pidfd = False       # pidfd_open fails with EMFILE
        self.uninspectable = False    # adopt: the pid lives but cannot be inspected
        self.pidfd_pids = []          # every pid pidfd_open was asked for

    def killpg(self, pgid, sig):
        if self.deny_signals and sig != 0:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        super().killpg(pgid, sig)

    def pidfd_open(self, pid):
        self.pidfd_pids.append(pid)
        if self.fail_pidfd:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().pidfd_open(pid)

    def adopt(self, pid, pgid, create_time):
        if self.uninspectable:
            raise UnreadableRecord(f"pid {pid} lives but cannot be inspected")
        return super().adopt(pid, pgid, create_time)


@contextlib.contextmanager
def supervising(tmp_path, agents, ops):
    """A Supervisor on tmp_path/state with real agents and the given ops."""
    statedir = StateDir(str(tmp_path / "state"))
    statedir.open()
    supervisor = Supervisor(daemon_config(tmp_path, agents).agents, statedir,
                            LogKeeper(statedir.logs_dir), Sampler(10), ops)
    supervisor.start()
    try:
        yield supervisor
    finally:
        ops.deny_signals = ops.uninspectable = False
        supervisor.stop_all()
        supervisor.close()
        statedir.close()


def own_sleeper():
    """A process not started by fleet, in its own session, with its record facts."""
    popen = subprocess.Popen(SLEEPER[:2] + ["import time; time.sleep(3600)"],
                             start_new_session=True)
    wait_for(lambda: psutil.Process(popen.pid).create_time())
    record = AgentRecord(pid=popen.pid, pgid=popen.pid,
                         create_time=psutil.Process(popen.pid).create_time(),
                         config_hash="", restart_count=0, start_time=0)
    return popen, record


# ---- failures say what failed ----

@pytest.mark.parametrize("overrides,expected", [
    ({"command": ["/usr/bin/nope"]}, "command not found: /usr/bin/nope"),
    ({"command": ["nope-not-on-path"]}, "command not found: nope-not-on-path (searched PATH)"),
    ({"cwd": "/srv/x-does-not-exist"}, "cwd does not exist: /srv/x-does-not-exist"),
    ({"command": ["{script}"]}, "not executable: {script} (permission denied)"),
])
def test_a_spawn_failure_names_cause_and_path_in_last_error_and_the_agents_log(
        tmp_path, overrides, expected):
    """A command that cannot start: last_error and one fleet line in the agent's own
    log (what GetAgentLogs returns) name the cause and the path."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o644)
    overrides = {k: [p.format(script=script) for p in v] if isinstance(v, list) else v
                 for k, v in overrides.items()}
    expected = expected.format(script=script)
    with running_daemon(tmp_path, [agent("a", start_retries=0, **overrides)]) as (node, stub):
        wait_for(lambda: snap(node, "a").state is State.FATAL)
        assert snap(node, "a").last_error == expected
        lines = stub.GetAgentLogs(pb.GetAgentLogsRequest(agent_id="a", lines=10)).lines
        assert len(lines) == 1 and lines[0].startswith("[fleet ")
        assert lines[0].endswith(f"] start failed: {expected}")


@pytest.mark.parametrize("head,command,env,expected", [
    ("#!/nonexistent/interp\n", ["{dir}/script.sh"], {},
     "interpreter not found: /nonexistent/interp (the #! line of {dir}/script.sh)"),
    ("#!/nonexistent/interp -x\n", ["script.sh"], {"PATH": "{dir}"},
     "interpreter not found: /nonexistent/interp (the #! line of {dir}/script.sh)"),
    ("#!/bin/sh\r\n", ["{dir}/script.sh"], {},
     "interpreter not found: /bin/sh (the #! line of {dir}/script.sh); "
     "the line ends in a carriage return (DOS line endings)"),
    ("", ["{dir}"], {}, "is a directory: {dir}"),
])
def test_a_spawn_failure_names_a_missing_interpreter_or_a_directory(
        tmp_path, head, command, env, expected):
    """A script whose #! interpreter is missing (execve: ENOENT) or a directory (EACCES)
    is named as such by the spawn error and by the start warning, not as missing or
    not executable."""
    script = tmp_path / "script.sh"
    script.write_text(head + "exit 0\n")
    script.chmod(0o755)
    command, env, expected = ([p.format(dir=tmp_path) for p in command],
                              {k: v.format(dir=tmp_path) for k, v in env.items()},
                              expected.format(dir=tmp_path))
    with open(os.devnull, "wb") as sink, pytest.raises(SpawnError) as caught:
        ProcOps().spawn(command, "", env, sink.fileno())
    assert str(caught.value) == expected
    assert find_problem(command, "", env) == expected


def test_start_warns_about_each_agent_whose_command_or_cwd_is_missing(tmp_path, caplog):
    """At start one WARNING per agent whose command (resolved on its own PATH) or cwd is
    missing; an agent whose command is found on its own PATH gets none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "myprog").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "myprog").chmod(0o755)
    agents = [agent("gone", ["/usr/bin/nope"], autostart=False),
              agent("nowhere", cwd=str(tmp_path / "missing"), autostart=False),
              agent("pathed", ["myprog"], env={"PATH": str(bin_dir)}, autostart=False),
              agent("fine", autostart=False)]
    with caplog.at_level(logging.WARNING, logger="fleet.daemon.supervisor"):
        with running_daemon(tmp_path, agents):
            pass
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "fleet.daemon.supervisor" and r.levelno == logging.WARNING]
    assert warnings == [
        "gone: command not found: /usr/bin/nope; its starts will fail",
        f"nowhere: cwd does not exist: {tmp_path / 'missing'}; its starts will fail"]


def test_an_adopted_agent_killed_reports_its_exit_as_unknown_and_on_failure_restarts_it(
        tmp_path):
    """An adopted process (not our child) that dies: last_exit_code -1 and signal 0,
    and its exited event says "exit status unknown", never a clean exit; on-failure
    restarts it, and once the new process runs last_error is clear again."""
    agents = [agent("a", restart="on-failure", start_seconds=0)]
    first = Daemon(daemon_config(tmp_path, agents))
    first.start()
    pid = wait_for(lambda: running_pid(first, "a"))
    first.close()
    second = Daemon(daemon_config(tmp_path, agents))
    second.start()
    try:
        assert running_pid(second, "a") == pid
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: running_pid(second, "a", other_than=pid))
        s = snap(second, "a")
        assert new and (s.last_exit_code, s.last_exit_signal) == (-1, 0)
        exited = [e for e in second.supervisor.events.events("a")
                  if e.kind == "exited" and e.pid == pid]
        assert [(e.message, e.exit_code) for e in exited] == \
            [("exited with exit status unknown (adopted process)", -1)]
        assert s.last_error == ""
    finally:
        second.stop()


# ---- the process edges ----

def test_a_child_whose_pidfd_cannot_be_opened_is_killed_and_reaped(tmp_path):
    """pidfd_open fails after the spawn: SpawnError says so, and the child is neither
    left running unsupervised nor left a zombie."""
    ops = SeamOps()
    ops.fail_pidfd = True
    fd = os.open(tmp_path / "a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with pytest.raises(SpawnError, match=r"cannot watch pid \d+ \(pidfd_open: Too many"):
            ops.spawn(SLEEPER, "", dict(os.environ), fd)
    finally:
        os.close(fd)
    [pid] = ops.pidfd_pids
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pid).status()


def test_adoption_opens_the_pidfd_before_checking_the_create_time(tmp_path):
    """A recorded pid that dies and names another process by the time the pidfd is
    opened is not adopted: the pidfd is opened first, then the create time checked."""
    popen, record = own_sleeper()
    other = subprocess.Popen(SLEEPER[:2] + ["import time; time.sleep(3600)"])

    class ReusedPid(ProcOps):
        def pidfd_open(self, pid):
            popen.kill()            # the recorded process dies, and its pid now
            popen.wait()            # names another process: the pidfd is of that one
            return super().pidfd_open(other.pid)
    try:
        assert ReusedPid().adopt(record.pid, record.pgid, record.create_time) is None
    finally:
        other.kill()
        other.wait()


def test_a_stop_the_kernel_refuses_is_an_error_and_the_agent_is_not_stopping(tmp_path):
    """EPERM on the stop signal is not "gone": stop fails with Conflict naming it, the
    agent stays RUNNING with last_error, the process lives; allowed again, stop works."""
    ops = SeamOps()
    with supervising(tmp_path, [agent("a")], ops) as supervisor:
        pid = wait_for(lambda: running_pid(supervisor, "a"))
        ops.deny_signals = True
        with pytest.raises(Conflict, match="no permission to signal process group"):
            supervisor.operate("a", "stop")
        s = snap(supervisor, "a")
        assert s.state is State.RUNNING and s.pid == pid and alive(pid)
        assert s.last_error.startswith("stop failed: no permission to signal process group")
        ops.deny_signals = False
        assert supervisor.operate("a", "stop").state is State.STOPPED
        assert not alive(pid)


def test_shutdown_signals_every_agent_while_an_operation_holds_one_agents_lock(tmp_path):
    """A stop waiting out a stubborn agent's stop_timeout does not delay the shutdown's
    signal to the other agents."""
    stubborn = [sys.executable, "-c", "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                "time.sleep(3600)"]
    with running_daemon(tmp_path, [agent("slow", stubborn, stop_timeout=6),
                                   agent("b")]) as (node, _):
        slow = wait_for(lambda: running_pid(node, "slow"))
        wait_for(lambda: "ready" in (tmp_path / "state" / "logs" / "slow.log").read_text())
        other = wait_for(lambda: running_pid(node, "b"))
        stopping = threading.Thread(target=node.supervisor.operate, args=("slow", "stop"))
        stopping.start()
        wait_for(lambda: snap(node, "slow").state is State.STOPPING)
        shutdown = threading.Thread(target=node.supervisor.stop_all)
        shutdown.start()
        wait_for(lambda: not alive(other), timeout=6)
        assert alive(slow) and stopping.is_alive()   # b went first, not after slow's stop
        shutdown.join(10)
        stopping.join(10)
    assert not alive(slow)


def test_stopping_an_unknown_agent_never_forgets_a_process_that_may_live(tmp_path):
    """UNKNOWN with a recorded pid that cannot be inspected: stop is refused with a clear
    error, the record and process kept (a shutdown keeps them too); once the pid can be
    identified, stop kills it and forgets the record."""
    popen, record = own_sleeper()
    (tmp_path / "state" / "agents").mkdir(parents=True)
    StateDir(str(tmp_path / "state")).write_agent("a", record)
    path = tmp_path / "state" / "agents" / "a.json"
    ops = SeamOps()
    ops.uninspectable = True
    try:
        with supervising(tmp_path, [agent("a")], ops) as supervisor:
            assert snap(supervisor, "a").state is State.UNKNOWN
            for operation in ("stop", "restart"):
                with pytest.raises(Conflict, match=rf"cannot be stopped: pid {popen.pid} lives "
                                   rf"but cannot be inspected.*remove {path}"):
                    supervisor.operate("a", operation)
            supervisor.stop_all()        # a shutdown leaves it too
            assert snap(supervisor, "a").state is State.UNKNOWN
            assert path.exists() and alive(popen.pid)
        ops.uninspectable = True
        with supervising(tmp_path, [agent("a")], ops) as supervisor:
            assert snap(supervisor, "a").state is State.UNKNOWN
            ops.uninspectable = False
            assert supervisor.operate("a", "stop").state is State.STOPPED
            assert popen.wait(5) == -signal.SIGTERM
            wait_for(lambda: not path.exists())   # published just after the stop answers
    finally:
        popen.kill()
        popen.wait()


def test_stopping_an_agent_with_an_unreadable_record_is_refused_until_it_is_removed(tmp_path):
    """A corrupt record may stand for a live process: stop is refused and the record
    kept; once an operator removes it, stop succeeds."""
    agents_dir = tmp_path / "state" / "agents"
    agents_dir.mkdir(parents=True)
    (agents_dir / "a.json").write_text("{not json")
    with supervising(tmp_path, [agent("a")], SeamOps()) as supervisor:
        with pytest.raises(Conflict, match="unreadable state record"):
            supervisor.operate("a", "stop")
        assert (agents_dir / "a.json").read_text() == "{not json"
        (agents_dir / "a.json").unlink()
        assert supervisor.operate("a", "stop").state is State.STOPPED


def test_a_removed_agent_whose_pid_cannot_be_inspected_keeps_its_record(tmp_path):
    """An agent no longer configured whose recorded pid cannot be inspected is left
    running with its record kept (never forgotten while it may live)."""
    popen, record = own_sleeper()
    (tmp_path / "state" / "agents").mkdir(parents=True)
    StateDir(str(tmp_path / "state")).write_agent("gone", record)
    ops = SeamOps()
    ops.uninspectable = True
    try:
        with supervising(tmp_path, [agent("a", autostart=False)], ops):
            assert (tmp_path / "state" / "agents" / "gone.json").exists()
            assert alive(popen.pid)
    finally:
        popen.kill()
        popen.wait()


# ---- restarts slower than the operation's wait, and fixes that should not wait ----

IGNORES_TERM = [sys.executable, "-c",
                "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('up', flush=True)\ntime.sleep(3600)"]


def test_a_restart_slower_than_the_wait_still_starts_the_agent(tmp_path, monkeypatch):
    """An agent whose stop outlasts the restart's wait (a stop_timeout past 25 s) is
    answered STOPPING, not refused, and starts again once its group is killed (it
    was left STOPPED for good, the start refused as "still stopping")."""
    from fleet.daemon import runner as runner_module
    monkeypatch.setattr(runner_module, "STOP_WAIT_SECONDS", 0.3)
    agents = [agent("slow", IGNORES_TERM, stop_timeout=1.5, start_seconds=0.5)]
    with running_daemon(tmp_path, agents) as (node, _):
        pid = wait_for(lambda: running_pid(node, "slow"))
        runner = node.supervisor.runner("slow")
        answer = runner.operate("restart")
        assert answer.state is State.STOPPING and answer.pid == pid
        new = wait_for(lambda: running_pid(node, "slow", other_than=pid), timeout=10)
        assert new and not alive(pid)
        assert snap(node, "slow").restart_count == 1
        runner.operate("restart")                      # then a stop wins over it
        runner.operate("stop")
        wait_for(lambda: snap(node, "slow").state is State.STOPPED, timeout=10)


def test_a_reload_that_fixes_an_agent_in_backoff_starts_it_now(tmp_path):
    """A changed command for an agent waiting out a long backoff starts it at once, as
    for a FATAL one (it waited out the backoff the broken command earned); once it
    runs, last_error no longer shows the old failure."""
    from fleet.daemon import reconcile
    broken = agent("a", ["/usr/bin/nope-such-binary"], backoff_initial=60, backoff_max=60)
    with running_daemon(tmp_path, [broken]) as (node, _):
        wait_for(lambda: snap(node, "a").state is State.BACKOFF)
        assert snap(node, "a").last_error == "command not found: /usr/bin/nope-such-binary"
        fixed = daemon_config(tmp_path, [agent("a")]).agents
        changes = reconcile.apply(node.supervisor, fixed, "reload")
        assert [(c.agent_id, c.change) for c in changes] == [("a", "changed")]
        assert wait_for(lambda: running_pid(node, "a"), timeout=10)
        assert snap(node, "a").last_error == ""


def test_a_daemon_leaving_its_agents_finishes_a_stop_in_progress(tmp_path):
    """stop_agents_on_exit = false and a daemon stop while an operator's stop waits on
    an agent ignoring SIGTERM: the daemon still SIGKILLs it after its stop_timeout
    and returns soon after (it returned at once, the kill never sent, and the
    process then waited out the operation's 25 s); the other agents stay running."""
    agents = [agent("slow", IGNORES_TERM, stop_timeout=1.0), agent("other")]
    node = Daemon(daemon_config(tmp_path, agents, stop_agents_on_exit=False))
    node.start()
    stopper, slow, other = None, 0, 0
    try:
        slow = wait_for(lambda: running_pid(node, "slow"))
        other = wait_for(lambda: running_pid(node, "other"))
        stopper = threading.Thread(target=node.supervisor.runner("slow").operate, args=("stop",))
        stopper.start()
        wait_for(lambda: snap(node, "slow").state is State.STOPPING)
        began = time.monotonic()
        node.stop()
        assert time.monotonic() - began < 1.0 + 3.0
        assert not alive(slow) and alive(other)
        stopper.join(5)
        assert not stopper.is_alive()
    finally:
        if stopper is None:
            node.stop()
        for pid in (slow, other):          # left running on purpose, or by a failure
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
