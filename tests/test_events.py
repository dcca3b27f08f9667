"""Agents' events: the state machine's events, the daemon's EventLog on disk, and the
manager's storage, retention and endpoints (file SQLite, real HTTP server)."""
import json
import os
import time

import pytest

from fleet.config import read_manager
from fleet.daemon.events import KEEP, EventLog
from fleet.daemon.procops import Child, Exit
from fleet.manager.service import FleetService
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.events import EventService, EventStore
from fleet.manager.api.routes import make_app
from fleet.manager.nodes import NodeFacts
from fleet.manager.pool import DaemonClientPool
from fleet.manager.parts import build_manager
from fleet.manager.tokens import ApiAuth
from fleet.manager.api.server import serve_http
from fleet.v1 import fleet_pb2 as pb
from tests.httpapi import Api
from tests.test_program import make

TOKEN = "events-api-token-0123456789"


# ---- the state machine ----

def kinds(program):
    return [(e.kind, e.exit_code) for e in program.take_events()]


def test_a_crash_loop_makes_started_exited_backoff_then_fatal_events():
    """Each start, exit (with its code), backoff and the final fatal is one event, the
    logged reason its message."""
    program, ops = make(start_retries=1)
    program.set_initial(ops.now)
    program.exited(Exit(3, 0), ops.now)
    ops.now = program.retry_at
    program.tick(ops.now)
    program.exited(Exit(3, 0), ops.now)
    events = program.take_events()
    assert [(e.kind, e.exit_code) for e in events] == [
        ("started", -1), ("exited", 3), ("backoff", -1), ("started", -1), ("exited", 3),
        ("fatal", -1)]
    assert events[0].message == "autostart" and events[0].pid == ops.spawned[0]
    assert "exited 0.0 s after start with code 3" in events[1].message
    assert "retry 1 of 1" in events[2].message and "start_retries (1) used up" in events[5].message


def test_a_running_exit_restarted_at_once_and_a_stop_carry_the_exit():
    """A RUNNING process that dies is an `exited` event with its signal before the restart's
    `started`; a stop's exit is the `stopped` event's code; adoption is `adopted`."""
    program, ops = make(start_seconds=0)
    program.set_initial(ops.now)
    program.exited(Exit(-1, 9), ops.now)
    assert kinds(program) == [("started", -1), ("running", -1), ("exited", -1),
                              ("started", -1), ("running", -1)]
    program.stop(ops.now)
    program.exited(Exit(0, 0), ops.now)
    assert kinds(program) == [("stopping", -1), ("stopped", 0)]
    adopted, ops = make()
    adopted.adopt(Child(77, 77, 1.0), 1, 0, "h", ops.now)
    assert [(e.kind, e.pid) for e in adopted.take_events()] == [("adopted", 77)]


# ---- the daemon's EventLog ----

def test_the_event_log_keeps_the_last_256_per_agent_across_a_restart(tmp_path):
    """After 300 events and a new EventLog on the same directory, the last 256 remain
    (oldest 45), numbering goes on at 301, and the file stays bounded."""
    log = EventLog(str(tmp_path))
    log.load()
    for n in range(300):
        log.record("a", "exited", f"n{n}", pid=n, exit_code=1)
    log.close()
    again = EventLog(str(tmp_path))
    again.load()
    kept = again.events("a")
    assert len(kept) == KEEP and kept[0].seq == 45 and kept[0].message == "n44"
    assert again.record("a", "started", "x").seq == 301
    with open(tmp_path / "a.jsonl") as handle:
        assert len(handle.readlines()) < 2 * KEEP
    again.close()


def test_unacknowledged_events_survive_a_restart_and_acknowledged_ones_are_not_resent(tmp_path):
    """Only events the manager did not acknowledge are unsent, also after a restart; a torn
    last line (a crash mid-write) is skipped."""
    log = EventLog(str(tmp_path))
    log.load()
    first = [log.record("a", "started", "1"), log.record("b", "started", "2")]
    log.acknowledge(first[:1])
    log.record("a", "exited", "3", exit_code=2)
    log.close()
    with open(tmp_path / "a.jsonl", "a") as handle:
        handle.write('{"seq": 3, "time"')
    again = EventLog(str(tmp_path))
    again.load()
    assert sorted((e.agent_id, e.message) for e in again.unsent(100)) == [("a", "3"), ("b", "2")]
    again.acknowledge(again.unsent(100))
    assert again.unsent(100) == []
    again.close()


# ---- the manager ----

class Manager:
    """build_manager over a database, with the HTTP API on port 0."""

    def __init__(self, url):
        self.db = open_database(url)
        migrate(self.db)
        self.parts = build_manager(self.db)
        self.parts.writer.start()
        self.pool = DaemonClientPool("cluster-token-events-0123456789")
        service = FleetService(self.parts.nodes, self.pool)
        app = make_app(service, ApiAuth([("default", TOKEN)]),
                       events=EventService(self.parts.events, self.parts.nodes))
        self.http = serve_http(app, "127.0.0.1:0")
        self.http.start_background()
        self.api = Api(self.http.port, TOKEN)
        self.seq = 0
        for node in ("n1", "n2"):
            self.parts.nodes.register(NodeFacts(node, advertise_address="127.0.0.1:1",
                                                boot_id=1))

    def report(self, node, events, seq=None, states=()):
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.parts.reports.sync(node, 1, seq, False, list(states), events=events)

    def events(self, query=""):
        status, body = self.api.get("/api/v1/events" + query)
        assert status == 200, body
        return body

    def close(self):
        self.http.stop()
        self.pool.close_all()
        self.parts.stop()
        close_database(self.db)


@pytest.fixture
def manager(db_url):
    made = Manager(db_url)
    yield made
    made.close()


def event(agent, seq, time_ms, kind="exited", **fields):
    return pb.AgentEvent(agent_id=agent, seq=seq, time=time_ms, kind=kind,
                         message=f"{kind} {seq}", **fields)


def running(agent):
    return pb.AgentState(agent_id=agent, status=pb.AGENT_STATUS_RUNNING, pid=5, health="healthy")


def test_a_retried_report_and_a_resend_store_each_event_once(manager):
    """The same report twice (same boot and seq), then a later one carrying the same events
    and one new one: each event stored once, with every field."""
    now = int(time.time() * 1000)
    batch = [event("a", 1, now, "exited", pid=7, exit_code=3, exit_signal=0),
             event("a", 2, now + 1, "backoff")]
    manager.report("n1", batch, seq=1, states=[running("a")])
    manager.report("n1", batch, seq=1, states=[running("a")])
    manager.report("n1", batch + [event("a", 3, now + 2, "fatal")], seq=2)
    listed = manager.events()["events"]
    assert [e["kind"] for e in listed] == ["fatal", "backoff", "exited"]
    assert listed[2] == {"node_id": "n1", "agent_id": "a", "time": now, "kind": "exited",
                         "message": "exited 1", "pid": 7, "exit_code": 3, "exit_signal": 0}


def test_a_bad_event_is_named_and_the_rest_stored(manager):
    """An event of an unknown kind is rejected with its reason; the report's others are kept."""
    now = int(time.time() * 1000)
    result = manager.report("n1", [event("a", 1, now, "exploded"), event("a", 2, now)])
    assert result.rejected == 1 and "kind 'exploded'" in result.errors[0][1]
    assert [e["message"] for e in manager.events()["events"]] == ["exited 2"]


def test_the_endpoints_filter_newest_first_and_page_with_a_cursor(manager):
    """Filters by node, agent, kind and since; pages of `limit` follow next_cursor, newest
    first, none twice, null at the end; the agent endpoint serves one agent's."""
    now = int(time.time() * 1000)
    manager.report("n1", [event("a", s, now + s, "exited" if s % 2 else "started")
                          for s in range(1, 8)], states=[running("a")])
    manager.report("n2", [event("a", 1, now + 100, "fatal"), event("b", 1, now + 101)])
    assert len(manager.events()["events"]) == 9
    assert [e["time"] - now for e in manager.events("?node=n1&kind=exited")["events"]] == \
        [7, 5, 3, 1]
    assert [e["node_id"] for e in manager.events("?agent=a&since=%d" % (now + 7))["events"]] == \
        ["n2", "n1"]
    seen, query = [], "?node=n1&limit=3"
    while True:
        body = manager.events(query)
        seen += [e["time"] - now for e in body["events"]]
        if body["next_cursor"] is None:
            break
        query = f"?node=n1&limit=3&cursor={body['next_cursor']}"
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    status, body = manager.api.get("/api/v1/nodes/n2/agents/b/events?limit=1")
    assert status == 200 and [e["agent_id"] for e in body["events"]] == ["b"]
    assert body["next_cursor"] is None


@pytest.mark.parametrize("query, words", [
    ("?limit=0", "limit must be an integer from 1 to 5000"),
    ("?limit=5001", "limit must be an integer from 1 to 5000"),
    ("?limit=x", "limit must be an integer"),
    ("?since=-1", "since must be Unix milliseconds"),
    ("?kind=boom", "kind 'boom' is not a valid filter"),
    ("?node=../x", "node '../x' is not a valid filter"),
    ("?cursor=zzz", "cursor is not one this server gave"),
])
def test_bad_parameters_are_400_with_a_clear_message(manager, query, words):
    """Each bad parameter answers 400 invalid_argument naming what was wrong."""
    status, body = manager.api.get("/api/v1/events" + query)
    assert status == 400 and body["error"]["code"] == "invalid_argument", body
    assert words in body["error"]["message"]


def test_an_unknown_node_or_agent_is_404(manager):
    """The agent endpoint answers 404 for a node or an agent the manager does not know."""
    manager.report("n1", [], states=[running("a")])
    assert manager.api.get("/api/v1/nodes/n1/agents/a/events")[0] == 200
    for path, words in (("/api/v1/nodes/nx/agents/a/events", "node 'nx' not found"),
                        ("/api/v1/nodes/n1/agents/zz/events", "agent 'zz' not found")):
        status, body = manager.api.get(path)
        assert status == 404 and words in body["error"]["message"], body


def test_retention_purges_events_older_than_events_retention(manager):
    """purge() deletes the events older than the retention and keeps the rest."""
    now = time.time()
    day = 86_400_000
    manager.report("n1", [event("a", 1, int(now * 1000) - 3 * day),
                          event("a", 2, int(now * 1000) - day // 2),
                          event("a", 3, int(now * 1000))])
    store = EventStore(manager.db, retention=86400, clock=lambda: now)
    assert store.purge() == 1
    assert [e["message"] for e in manager.events()["events"]] == ["exited 3", "exited 2"]


def test_events_retention_is_read_and_checked():
    """[manager] events_retention defaults to a week; a value under a minute is refused,
    named by section and key."""
    problems = []
    assert read_manager({"events_retention": 3600}, problems).events_retention == 3600
    assert read_manager({}, problems).events_retention == 604800 and problems == []
    read_manager({"events_retention": 5}, problems)
    assert len(problems) == 1 and "events_retention" in problems[0], problems


def test_stored_events_dump_as_json_lines(tmp_path):
    """Each line of an agent's events file is one JSON object with every field."""
    log = EventLog(str(tmp_path))
    log.load()
    log.record("a", "restart", "cause=operator", pid=4)
    log.close()
    with open(os.path.join(tmp_path, "a.jsonl")) as handle:
        line = json.loads(handle.readline())
    assert line["kind"] == "restart" and line["message"] == "cause=operator" and line["seq"] == 1
