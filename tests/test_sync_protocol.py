"""The daemon's side of the no-lost-updates protocol, against a recording ManagerService."""
import threading

from fleet.daemon.app import Daemon
from fleet.rpc import create_server
from fleet.v1 import fleet_pb2 as pb
from fleet.v1 import fleet_pb2_grpc as pb_grpc
from tests.daemon_harness import agent, daemon_config
from tests.helpers import wait_for


class RecordingManager(pb_grpc.ManagerServiceServicer):
    """Acknowledges everything and records each report; can ask for a full one once."""

    def __init__(self):
        self.reports = []
        self.lock = threading.Lock()
        self.ask_full_on_seq = None

    def RegisterNode(self, request, context):
        return pb.RegisterNodeResponse()

    def Heartbeat(self, request, context):
        return pb.HeartbeatResponse()

    def SyncAgentStates(self, request, context):
        with self.lock:
            self.reports.append(request)
        ask = request.seq == self.ask_full_on_seq
        return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states),
                                          report_full_state=ask)

    def snapshot(self):
        with self.lock:
            return list(self.reports)


def test_changes_only_between_full_reports_and_full_when_asked(tmp_path):
    """Between full reports only changed agents are sent; report_full_state brings a full one;
    seq counts acknowledged reports of one boot."""
    recorder = RecordingManager()
    server, port = create_server("127.0.0.1:0",
                                 [lambda s: pb_grpc.add_ManagerServiceServicer_to_server(recorder, s)])
    server.start()
    config = daemon_config(tmp_path, [agent("a"), agent("b"), agent("c")],
                           manager=f"127.0.0.1:{port}", sync_interval=60, heartbeat_interval=60)
    daemon = Daemon(config)
    daemon.start()
    try:
        wait_for(lambda: any(r.full for r in recorder.snapshot()))
        wait_for(lambda: daemon.syncer.pending_count() == 0
                 and all(s.state.name == "RUNNING" for s in daemon.supervisor.snapshots()))
        seen = len(recorder.snapshot())
        recorder.ask_full_on_seq = recorder.snapshot()[-1].seq + 1
        daemon.supervisor.operate("b", "stop")
        wait_for(lambda: len(recorder.snapshot()) >= seen + 2)
        changed, full = recorder.snapshot()[seen:seen + 2]
        assert not changed.full and [s.agent_id for s in changed.states] == ["b"]
        assert changed.states[0].status == pb.AGENT_STATUS_STOPPED
        assert full.full and sorted(s.agent_id for s in full.states) == ["a", "b", "c"]
        seqs = [r.seq for r in recorder.snapshot()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert {r.boot_id for r in recorder.snapshot()} == {daemon.boot_id}
    finally:
        daemon.stop()
        server.stop(0)


def test_a_new_boot_has_a_higher_boot_id(tmp_path):
    """Each daemon start increments the boot id kept in state_dir."""
    config = daemon_config(tmp_path, [])
    first = Daemon(config)
    first.start()
    first.stop()
    second = Daemon(config)
    second.start()
    second.stop()
    assert second.boot_id == first.boot_id + 1
