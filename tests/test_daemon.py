"""The node daemon with real child processes, served over real gRPC."""
import os
import signal
import statistics
import sys
import time

import grpc
import psutil
import pytest

from fleet.states import State
from fleet.v1 import fleet_pb2 as pb
from tests.daemon_harness import agent, running_daemon
from tests.helpers import wait_for


def alive(pid):
    """True for a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def snap(node, agent_id):
    return node.supervisor.runner(agent_id).snapshot()


def running_pid(node, agent_id, other_than=0):
    s = snap(node, agent_id)
    return s.pid if s.state is State.RUNNING and s.pid and s.pid != other_than else 0


def test_sigkill_of_a_running_agent_is_replaced_within_100ms(tmp_path):
    """SIGKILL of a RUNNING agent: a new pid is running within 100 ms (median of 5)."""
    with running_daemon(tmp_path, [agent("a", start_seconds=0, backoff_initial=0)]) as (node, _):
        took = []
        for _ in range(5):
            old = wait_for(lambda: running_pid(node, "a"))
            began = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: running_pid(node, "a", other_than=old), timeout=2, interval=0.001)
            took.append(time.monotonic() - began)
            assert not alive(old)
        assert statistics.median(took) < 0.1, took
        assert snap(node, "a").restart_count == 5
        assert snap(node, "a").last_exit_signal == signal.SIGKILL


def test_term_ignoring_agent_is_killed_after_stop_timeout(tmp_path):
    """stop sends TERM, waits stop_timeout, then SIGKILLs the group."""
    stubborn = [sys.executable, "-c", "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                "time.sleep(3600)"]
    with running_daemon(tmp_path, [agent("s", stubborn, stop_timeout=0.5)]) as (node, stub):
        pid = wait_for(lambda: running_pid(node, "s"))
        wait_for(lambda: "ready" in open(node.statedir.logs_dir + "/s.log").read())
        began = time.monotonic()
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id="s", operation="stop"))
        assert time.monotonic() - began >= 0.5
        assert answer.agent.status == pb.AGENT_STATUS_STOPPED
        assert answer.agent.last_exit_signal == signal.SIGKILL
        assert not alive(pid)


def test_always_crashing_agent_ends_fatal(tmp_path):
    """An agent that always exits 3 ends FATAL after start_retries, with count and code."""
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    # start_seconds well past python's start-up under load: every exit is a failed start
    crashing = agent("c", crash, start_retries=2, start_seconds=5)
    with running_daemon(tmp_path, [crashing]) as (node, stub):
        wait_for(lambda: snap(node, "c").state is State.FATAL, timeout=10)
        info = stub.ListAgents(pb.ListAgentsRequest()).agents[0]
        assert info.status == pb.AGENT_STATUS_FATAL
        assert info.restart_count == 2 and info.last_exit_code == 3
        assert info.health == "unhealthy" and "with code 3" in info.last_error


def test_never_give_up_keeps_retrying_with_growing_capped_delays(tmp_path):
    """start_retries = -1 keeps backing off; delays grow, then stay at backoff_max."""
    crash = [sys.executable, "-c", "raise SystemExit(1)"]
    delays = {}

    def record():
        s = snap(node, "c")
        if s.state is State.BACKOFF:
            delays[s.restart_count] = (s.next_retry_time - s.changed_at) / 1000
        return len(delays) >= 6

    with running_daemon(tmp_path, [agent("c", crash, start_retries=-1, backoff_initial=0.05,
                                         backoff_max=0.2, start_seconds=5)]) as (node, _):
        wait_for(record, timeout=20, interval=0.005)
        assert snap(node, "c").state is not State.FATAL
    ordered = [delays[k] for k in sorted(delays)]
    assert all(d <= 0.2 + 0.002 for d in ordered), ordered
    assert ordered[0] < 0.06 and ordered[-1] >= 0.2 * 0.8 - 0.002, ordered


def test_restart_operation_changes_the_pid_and_the_old_one_is_gone(tmp_path):
    """OperateAgent restart: a new pid, and the old process no longer exists."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        old = wait_for(lambda: running_pid(node, "a"))
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id="a", operation="restart"))
        assert answer.agent.pid not in (0, old)
        assert answer.agent.status == pb.AGENT_STATUS_STARTING
        assert not alive(old)
        assert answer.agent.restart_count == 1


def test_operation_errors_carry_the_right_status_codes(tmp_path):
    """Unknown agent NOT_FOUND, unknown operation INVALID_ARGUMENT, other node FAILED_PRECONDITION."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        cases = [
            (pb.OperateAgentRequest(agent_id="nope", operation="start"), grpc.StatusCode.NOT_FOUND),
            (pb.OperateAgentRequest(agent_id="a", operation="Start"),
             grpc.StatusCode.INVALID_ARGUMENT),
            (pb.OperateAgentRequest(node_id="other", agent_id="a", operation="start"),
             grpc.StatusCode.FAILED_PRECONDITION),
        ]
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.OperateAgent(request)
            assert caught.value.code() == code
        for request in (pb.GetAgentLogsRequest(agent_id="a", lines=1001),
                        pb.GetAgentLogsRequest(agent_id="a", lines=-1),
                        pb.GetAgentMetricsRequest(agent_id="a", duration_seconds=86401),
                        pb.GetAgentMetricsRequest(agent_id="a", duration_seconds=-1)):
            method = stub.GetAgentLogs if isinstance(request, pb.GetAgentLogsRequest) \
                else stub.GetAgentMetrics
            with pytest.raises(grpc.RpcError) as caught:
                method(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cluster_token_is_required_when_set(tmp_path):
    """With a cluster token, a call without it (or with another) is UNAUTHENTICATED."""
    with running_daemon(tmp_path, [agent("a")], token="s3cret-token") as (node, stub):
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListAgents(pb.ListAgentsRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = stub.ListAgents(pb.ListAgentsRequest(),
                               metadata=(("authorization", "Bearer s3cret-token"),))
        assert [a.agent_id for a in good.agents] == ["a"]


def test_logs_return_what_the_agent_printed(tmp_path):
    """GetAgentLogs returns the lines the agent wrote to stdout."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        def lines():
            return stub.GetAgentLogs(pb.GetAgentLogsRequest(agent_id="a", lines=10)).lines
        assert wait_for(lambda: "hello from agent" in lines())


def test_logs_offset_follows_only_new_lines(tmp_path):
    """A tail gives next_offset (the log's size); from there only newer lines come;
    a negative offset is INVALID_ARGUMENT."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        wait_for(lambda: "hello from agent" in stub.GetAgentLogs(
            pb.GetAgentLogsRequest(agent_id="a", lines=10)).lines)
        tail = stub.GetAgentLogs(pb.GetAgentLogsRequest(agent_id="a", lines=10))
        path = os.path.join(node.statedir.logs_dir, "a.log")
        assert tail.next_offset == os.path.getsize(path)
        with open(path, "ab") as log:
            log.write(b"appended by the test\n")
        newer = stub.GetAgentLogs(pb.GetAgentLogsRequest(agent_id="a", offset=tail.next_offset))
        assert list(newer.lines) == ["appended by the test"]
        assert newer.next_offset == os.path.getsize(path)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetAgentLogs(pb.GetAgentLogsRequest(agent_id="a", offset=-1))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_have_points_with_rss(tmp_path):
    """GetAgentMetrics returns points with rss > 0 for a running agent."""
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        wait_for(lambda: running_pid(node, "a"))

        def points():
            return stub.GetAgentMetrics(
                pb.GetAgentMetricsRequest(agent_id="a", duration_seconds=60)).data_points
        found = wait_for(points, timeout=5)
        assert found[-1].memory_rss > 0 and found[-1].threads >= 1


def test_autostart_false_stays_stopped_until_started(tmp_path):
    """autostart = false leaves the agent STOPPED; start spawns it."""
    with running_daemon(tmp_path, [agent("a", autostart=False)]) as (node, stub):
        assert snap(node, "a").state is State.STOPPED
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id="a", operation="start"))
        assert answer.agent.status == pb.AGENT_STATUS_STARTING and answer.agent.pid > 0


def test_clean_stop_leaves_no_agent(tmp_path):
    """Daemon.stop() stops every agent, including their children."""
    forker = [sys.executable, "-c", "import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
              "time.sleep(3600)"]
    with running_daemon(tmp_path, [agent("a"), agent("f", forker)]) as (node, _):
        pids = [wait_for(lambda: running_pid(node, i)) for i in ("a", "f")]
        wait_for(lambda: psutil.Process(pids[1]).children())
        group = pids + [c.pid for c in psutil.Process(pids[1]).children()]
    wait_for(lambda: not [p for p in group if alive(p)], timeout=2)


def test_shutdown_stops_many_stubborn_agents_in_parallel(tmp_path):
    """40 TERM-ignoring agents stop within one stop_timeout (+2 s), not one after another."""
    stubborn = [sys.executable, "-c", "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)"]
    agents = [agent(f"s{i}", stubborn, stop_timeout=1) for i in range(40)]
    with running_daemon(tmp_path, agents) as (node, _):
        pids = [wait_for(lambda i=i: running_pid(node, f"s{i}"), timeout=20) for i in range(40)]
        began = time.monotonic()
        node.supervisor.stop_all()
        took = time.monotonic() - began
    assert took < 1 + 2, took
    wait_for(lambda: not [p for p in pids if alive(p)], timeout=2)


def test_restarted_daemon_adopts_stops_removed_agents_and_flags_changed_config(tmp_path):
    """A daemon restarted in place adopts live agents, stops those no longer configured,
    and flags an agent whose command changed (applied at its next restart)."""
    from fleet.daemon.app import Daemon
    from tests.daemon_harness import daemon_config
    first = Daemon(daemon_config(tmp_path, [agent("keep"), agent("drop"), agent("edit")]))
    first.start()
    pids = {i: wait_for(lambda i=i: running_pid(first, i)) for i in ("keep", "drop", "edit")}
    first.close()                           # the daemon goes away; its agents stay
    assert all(alive(p) for p in pids.values())
    assert not first.syncer._thread.is_alive()   # close() ends the syncer too: no retrying ghost
    edited = [sys.executable, "-c", "import time; time.sleep(3599)"]
    second = Daemon(daemon_config(tmp_path, [agent("keep"), agent("edit", edited)]))
    second.start()
    try:
        assert snap(second, "keep").pid == pids["keep"] and snap(second, "keep").state is State.RUNNING
        assert snap(second, "edit").pid == pids["edit"] and snap(second, "edit").config_changed
        wait_for(lambda: not alive(pids["drop"]), timeout=5)
        second.supervisor.operate("edit", "restart")
        assert not snap(second, "edit").config_changed
        # The pid exists from the spawn; its argv shows once its exec has set it up.
        argv = wait_for(lambda: psutil.Process(snap(second, "edit").pid).cmdline(), timeout=5)
        assert argv[-1].endswith("3599)")
    finally:
        second.stop()
    assert not [p for p in pids.values() if alive(p)]


def test_an_unreadable_record_leaves_the_agent_unknown_until_an_operator_acts(tmp_path):
    """A corrupt state record: the agent is UNKNOWN (not started twice); start then runs it."""
    state = tmp_path / "state" / "agents"
    state.mkdir(parents=True)
    (state / "a.json").write_text("{not json")
    with running_daemon(tmp_path, [agent("a")]) as (node, stub):
        info = stub.ListAgents(pb.ListAgentsRequest()).agents[0]
        assert info.status == pb.AGENT_STATUS_UNKNOWN and info.pid == 0
        assert "unreadable state record" in info.last_error and info.health == "unknown"
        assert (state / "a.json").read_text() == "{not json"
        answer = stub.OperateAgent(pb.OperateAgentRequest(agent_id="a", operation="start"))
        assert answer.agent.pid > 0
        wait_for(lambda: running_pid(node, "a"))
