"""The agent state machine, driven with fake process ops and an explicit clock."""
import dataclasses
import os

import pytest

from fleet.config import AgentConfig
from fleet.daemon.procops import Child, Exit
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

    def monotonic(self):
        return self.now

    def wall_ms(self):
        return int(self.now * 1000)

    def jitter(self):
        return 1.0

    def spawn(self, command, cwd, env, log_fd):
        if self.fail_spawn:
            raise FileNotFoundError(2, "No such file or directory")
        self.next_pid += 1
        self.spawned.append(self.next_pid)
        return Child(self.next_pid, self.next_pid, 1.0)

    def kill_group(self, pgid, sig):
        self.signals.append((pgid, sig))
        return True

    def close(self, child):
        pass


def make(**overrides):
    config = AgentConfig(id="a", command=("x",), start_seconds=1, backoff_initial=1,
                         backoff_max=8, start_retries=3)
    ops = FakeOps()
    program = Program(dataclasses.replace(config, **overrides), ops,
                      lambda agent_id: os.open(os.devnull, os.O_WRONLY))
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


def test_spawn_failure_is_a_failed_start():
    """A command that cannot be spawned goes to BACKOFF with last_error set."""
    program, ops = make()
    ops.fail_spawn = True
    program.set_initial(0.0)
    assert program.state is State.BACKOFF
    assert "spawn failed" in program.last_error


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
