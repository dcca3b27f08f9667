"""What an operation costs the daemon: no record written twice, no needless wake-ups."""
import json

from fleet.daemon.syncer import StateSyncer
from fleet.states import State
from fleet.v1 import fleet_pb2 as pb
from tests.daemon_harness import agent, running_daemon
from tests.helpers import wait_for


def test_a_restart_writes_the_state_record_only_when_it_changes(tmp_path):
    """A restart writes the new process's record once, over the old one (its start
    follows the exit under one lock, as a health restart's does); STOPPING and
    RUNNING, which change nothing in it, write nothing."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        wait_for(lambda: node.supervisor.runner("a").snapshot().state is State.RUNNING)
        writes = []
        real = node.statedir.write_agent

        def counted(agent_id, record):
            writes.append(record.pid if record else None)
            real(agent_id, record)

        node.statedir.write_agent = counted
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id="a", operation="restart"))
        wait_for(lambda: node.supervisor.runner("a").snapshot().state is State.RUNNING)
        assert writes == [answer.agent.pid]
        with open(tmp_path / "state" / "agents" / "a.json") as handle:
            assert json.load(handle)["pid"] == answer.agent.pid


class _Counted:
    """Counts notify() calls on the condition it wraps."""

    def __init__(self, cond):
        self.cond, self.notified = cond, 0

    def __enter__(self):
        return self.cond.__enter__()

    def __exit__(self, *exc):
        return self.cond.__exit__(*exc)

    def notify(self):
        self.notified += 1
        self.cond.notify()


def test_changes_within_the_debounce_wake_the_syncer_once(tmp_path):
    """The first change sets the prompt deadline and wakes the syncer; the changes that
    follow before the report are merged without waking it again."""
    with running_daemon(tmp_path, [agent("a"), agent("b")]) as (node, _):
        snapshots = [r.snapshot() for r in node.supervisor.runners.values()]
    syncer = StateSyncer(client=None, registration=lambda _: pb.RegisterNodeRequest(), snapshots=list,
                         sync_interval=10, heartbeat_interval=30)
    syncer._cond = counted = _Counted(syncer._cond)
    for snapshot in snapshots + snapshots:
        syncer.notify(snapshot)
    assert counted.notified == 1
    assert syncer.pending_count() == 2
