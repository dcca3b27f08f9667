"""The agent state machine, driven with fake process ops and an explicit clock."""
import dataclasses
import os

import pytest

from fleet.config import AgentConfig
from fleet.daemon.procops import UNKNOWN_EXIT, Child, Exit, SignalDenied, SpawnError
from fleet.daemon.program import Program
from fleet.errors import Conflict
from fleet.states import State


class FakeOps:
    """Process ops that record what the supervisor asked for; nothing is spawned."""

    def __init__(self):
        self.now = 0.0
        self.next_pid = 100
        self.spawned = []
        self.signals = []
        self.fail_spawn = False
        self.deny_signals = False      # kill_group raises SignalDenied (EPERM)

    def monotonic(self):
        return self.now

    def wall_ms(self):
        return int(self.now * 1000)

    def jitter(self):
        return 1.0

    def spawn(self, command, cwd, env, log_fd):
        if self.fail_spawn:
            raise SpawnError("command not found: /usr/bin/nope")
        self.next_pid += 1
        self.spawned.append(self.next_pid)
        return Child(self.next_pid, self.next_pid, 1.0)

    def kill_group(self, pgid, sig):
        if self.deny_signals:
            raise SignalDenied(f"no permission to signal process group {pgid}")
        self.signals.append((pgid, sig))
        return True

    def close(self, child):
        pass


def make(log_path=os.devnull, **overrides):
    config = AgentConfig(id="a", command=("x",), start_seconds=1, backoff_initial=1,
                         backoff_max=8, start_retries=3)
    ops = FakeOps()
    program = Program(dataclasses.replace(config, **overrides), ops,
                      lambda agent_id: os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    return program, ops


def test_start_window_then_running():
    """A spawned agent is STARTING until start_seconds pass, then RUNNING."""
    program, ops = make()
    program.set_initial(0.0)
    assert program.state is State.STARTING
    program.tick(0.5)
    assert program.state is State.STARTING
    program.tick(1.0)
    assert program.state is State.RUNNING


def test_exit_while_starting_backs_off_with_growing_capped_delays():
    """Failed starts wait min(max, initial*2^(n-1)) before each retry."""
    program, ops = make(start_retries=-1)
    program.set_initial(0.0)
    delays = []
    for _ in range(6):
        program.exited(Exit(1, 0), ops.now)
        assert program.state is State.BACKOFF
        delays.append(program.retry_at - ops.now)
        ops.now = program.retry_at
        program.tick(ops.now)
        assert program.state is State.STARTING
    assert delays == [1, 2, 4, 8, 8, 8]


def test_start_retries_used_up_is_fatal():
    """After start_retries failed retries the agent is FATAL with the exit reported."""
    program, ops = make(start_retries=2)
    program.set_initial(0.0)
    for _ in range(3):
        program.exited(Exit(3, 0), ops.now)
        if program.state is State.BACKOFF:
            ops.now = program.retry_at
            program.tick(ops.now)
    assert program.state is State.FATAL
    assert program.snapshot().last_exit_code == 3
    assert program.restart_count == 2


def test_exit_after_running_restarts_at_once_and_resets_failures():
    """An exit after RUNNING spawns again immediately (policy always)."""
    program, ops = make()
    program.set_initial(0.0)
    program.exited(Exit(1, 0), 0.1)          # one failed start
    retry = program.retry_at
    program.tick(retry)
    program.tick(retry + 1)                  # up past start_seconds
    assert program.state is State.RUNNING and program.failures == 0
    program.exited(Exit(0, 9), 10.0)
    assert program.state is State.STARTING
    assert len(ops.spawned) == 3


@pytest.mark.parametrize("policy,status,expected", [
    ("never", Exit(1, 0), State.EXITED),
    ("on-failure", Exit(0, 0), State.EXITED),
    ("on-failure", Exit(2, 0), State.STARTING),
    ("on-failure", Exit(-1, 9), State.STARTING),
])
def test_restart_policy_after_running(policy, status, expected):
    """restart = never / on-failure decide what follows an exit after RUNNING."""
    program, ops = make(restart=policy)
    program.set_initial(0.0)
    program.tick(1.0)
    program.exited(status, 5.0)
    assert program.state is expected


def test_stop_signals_group_then_kills_after_timeout():
    """stop sends stop_signal to the group, SIGKILL once stop_timeout passes."""
    program, ops = make(stop_timeout=3, stop_signal=15)
    program.set_initial(0.0)
    pgid = program.child.pgid
    program.stop(1.0)
    assert program.state is State.STOPPING and ops.signals == [(pgid, 15)]
    program.tick(3.9)
    assert ops.signals == [(pgid, 15)]
    program.tick(4.0)
    assert ops.signals[-1] == (pgid, 9)
    program.exited(Exit(-1, 9), 4.1)
    assert program.state is State.STOPPED


def test_start_from_fatal_resets_retries_and_start_while_stopping_conflicts():
    """start from FATAL spawns with a fresh retry budget; start while STOPPING is refused."""
    program, ops = make(start_retries=0)
    program.set_initial(0.0)
    program.exited(Exit(1, 0), 0.1)
    assert program.state is State.FATAL
    program.start(5.0)
    assert program.state is State.STARTING and program.failures == 0
    program.stop(6.0)
    with pytest.raises(Conflict):
        program.start(6.1)


def test_spawn_failure_is_a_failed_start_named_in_last_error_and_the_log(tmp_path):
    """A command that cannot be spawned goes to BACKOFF; last_error and one line of
    the agent's log name the cause."""
    log_path = str(tmp_path / "a.log")
    program, ops = make(log_path=log_path)
    ops.fail_spawn = True
    program.set_initial(0.0)
    assert program.state is State.BACKOFF
    assert program.last_error == "command not found: /usr/bin/nope"
    lines = open(log_path).read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[fleet ")
    assert lines[0].endswith("] start failed: command not found: /usr/bin/nope")


def test_state_changes_are_logged_with_the_exit_and_the_reason(caplog):
    """`id: OLD -> NEW` lines carry the exit code or signal and why the change happened."""
    program, ops = make(start_retries=5)
    with caplog.at_level("INFO", logger="fleet.daemon.program"):
        program.set_initial(0.0)
        program.exited(Exit(-1, 9), 0.1)
        program.tick(1.1)
        program.tick(5.0)
        program.exited(Exit(3, 0), 20.0)
    lines = [r.getMessage() for r in caplog.records]
    assert "a: STARTING -> BACKOFF pid=0 (exited 0.1 s after start with signal 9; " \
           "retry 1 of 5 in 1.0 s)" in lines
    assert any(line.startswith("a: STARTING -> RUNNING pid=") for line in lines)
    assert "a: RUNNING -> STARTING pid=103 (exited with code 3; restarting: restart=always)" \
        in lines


@pytest.mark.parametrize("policy,expected", [("on-failure", State.STARTING),
                                             ("never", State.EXITED)])
def test_an_adopted_process_exit_is_unknown_and_on_failure_restarts_it(policy, expected):
    """An adopted agent's exit is reported as unknown (code -1, last_error says so),
    never as a clean exit; on-failure counts it as a failure and restarts."""
    program, ops = make(restart=policy)
    program.adopt(Child(50, 50, 1.0), 0, 4, program.running_hash, 0.0)
    program.exited(UNKNOWN_EXIT, 1.0)
    snapshot = program.snapshot()
    assert program.state is expected
    assert (snapshot.last_exit_code, snapshot.last_exit_signal) == (-1, 0)
    assert snapshot.last_error == "exit status unknown: adopted process pid=50"


def test_a_stop_refused_by_the_kernel_is_an_error_not_a_gone_process():
    """EPERM on the stop signal: stop fails (Conflict) naming it, the agent stays
    RUNNING with last_error set, never STOPPING forever; once allowed, stop works."""
    program, ops = make()
    program.set_initial(0.0)
    program.tick(1.0)
    ops.deny_signals = True
    with pytest.raises(Conflict, match="no permission to signal process group"):
        program.stop(2.0)
    assert program.state is State.RUNNING
    assert program.last_error.startswith("stop failed: no permission")
    ops.deny_signals = False
    program.stop(3.0)
    assert program.state is State.STOPPING


def test_stop_then_start_is_not_a_restart_but_the_restart_operation_is():
    """restart_count: a start after a stop does not count; restart, crash restarts,
    retries and a start from EXITED do."""
    program, ops = make(restart="never")
    program.set_initial(0.0)
    program.stop(1.0)
    program.exited(Exit(-1, 15), 1.1)
    program.start(2.0)
    assert program.restart_count == 0
    program.stop(3.0)
    program.exited(Exit(-1, 15), 3.1)
    program.start(3.2, restart=True)
    assert program.restart_count == 1
    program.tick(5.0)
    program.exited(Exit(0, 0), 6.0)
    assert program.state is State.EXITED
    program.start(7.0)
    assert program.restart_count == 2


def test_stop_leaves_an_unknown_agent_alone():
    """Program.stop on UNKNOWN changes nothing: only the runner, which reads the
    record, may decide the process is gone."""
    program, ops = make()
    program.set_unknown("pid 5 lives but cannot be inspected", 0.0)
    program.stop(1.0)
    assert program.state is State.UNKNOWN and not ops.signals


def test_noop_operations():
    """start on RUNNING and stop on STOPPED change nothing."""
    program, ops = make(autostart=False)
    program.set_initial(0.0)
    assert program.state is State.STOPPED
    program.stop(0.1)
    assert program.state is State.STOPPED
    program.start(0.2)
    program.tick(1.2)
    program.start(1.3)
    assert program.state is State.RUNNING and len(ops.spawned) == 1


def test_restart_for_a_cause_stops_then_starts_once_the_group_exits():
    """restart_for (health, limit) sends the stop signal, and when the group exits
    starts a new process at once, counted in restart_count, as after a crash."""
    program, ops = make()
    program.set_initial(0.0)
    program.tick(1.0)
    first = program.child.pid
    assert program.restart_for("health", "GET u -> 500", 5.0) is True
    assert program.state is State.STOPPING and ops.signals[-1] == (first, 15)
    program.exited(Exit(-1, 15), 5.1)
    assert program.state is State.STARTING and program.child.pid != first
    assert program.restart_count == 1 and program.failures == 0


def test_restart_for_acts_only_on_a_running_agent_and_a_stop_cancels_it():
    """A STARTING agent is never restarted by a cause (its failures are the backoff's);
    an operator's stop during the restart wins: the agent stays STOPPED."""
    program, ops = make()
    program.set_initial(0.0)
    assert program.restart_for("limit", "rss", 0.5) is False and program.state is State.STARTING
    program.tick(1.0)
    assert program.restart_for("limit", "rss", 2.0) is True
    program.stop(2.1)
    program.exited(Exit(-1, 15), 2.2)
    assert program.state is State.STOPPED and program.restart_count == 0


def test_health_of_a_probed_agent_follows_its_probe_and_limits():
    """With a probe: unknown until a result, then the probe's verdict and message; a
    limit held too long overrides it; a new process starts unknown again."""
    from fleet.config import HealthConfig
    program, ops = make(health=HealthConfig("tcp", "127.0.0.1:1"))
    program.set_initial(0.0)
    program.tick(1.0)
    assert program.health_now() == ("unknown", "no probe result yet")
    pid = program.child.pid
    program.set_probe(pid + 1, "healthy", "")          # another process's result: ignored
    assert program.health_now()[0] == "unknown"
    program.set_probe(pid, "unhealthy", "connect 127.0.0.1:1: connection refused")
    assert program.health_now() == ("unhealthy", "connect 127.0.0.1:1: connection refused")
    program.set_probe(pid, "healthy", "")
    program.set_limit(pid, "rss 612 MiB > 512 MiB for 60 s")
    assert program.snapshot().health == "unhealthy"
    assert program.snapshot().health_message == "rss 612 MiB > 512 MiB for 60 s"
    program.exited(Exit(1, 0), 2.0)                     # crash of RUNNING: restarted
    assert program.health_now() == ("unknown", "no probe result yet")
