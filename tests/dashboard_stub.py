"""A stub of the manager's HTTP API answering the JSON shapes of the shared contract
(overview, node resources and metrics, log offsets) beside the real /ui/ files, so the
dashboard is checked against endpoints other branches are still building."""
import contextlib
import time

import bottle

from fleet.manager.api import ui
from fleet.manager.api.server import serve_http

NODE = {"node_id": "n1", "hostname": "edge-1", "ip": "10.0.0.5", "advertise_address": "10.0.0.5:9091",
        "os": "linux", "arch": "x86_64", "labels": {"role": "edge"}, "daemon_version": "0.1.0",
        "status": "online", "registered_at": 1, "last_seen": 1,
        "resources": {"time": 1, "cpu": 37.5, "load1": 0.5, "load5": 0.4, "load15": 0.3,
                      "memory_used": 3 << 30, "memory_total": 8 << 30, "swap_used": 0,
                      "swap_total": 0, "disk_used": 20 << 30, "disk_total": 100 << 30,
                      "disks": [], "disk_read_rate": 1024.0, "disk_write_rate": 2048.0,
                      "net_rx_rate": 10.0, "net_tx_rate": 20.0}}
AGENT = {"node_id": "n1", "agent_id": "a1", "type": "demo", "version": "1", "status": "running",
         "pid": 4242, "start_time": 1, "restart_count": 7, "last_exit_code": -1,
         "last_exit_signal": 9, "last_error": "", "next_retry_time": None, "health": "unhealthy",
         "health_message": "GET http://127.0.0.1:9100/metrics -> 500", "changed_at": 1,
         "config_changed": False, "last_heartbeat": 1, "last_sync_time": 1}
OVERVIEW = {"nodes": {"total": 3, "online": 2, "offline": 1},
            "agents": {"total": 9, "status": {"stopped": 1, "starting": 0, "running": 6, "backoff": 1,
                                              "stopping": 0, "exited": 0, "fatal": 1, "unknown": 0},
                       "health": {"healthy": 6, "unhealthy": 2, "unknown": 1}},
            "top_restarts": [{"node_id": "n1", "agent_id": "a1", "restarts": 7}]}


class StubLog:
    """An agent's log file as the contract reads it: byte offsets, complete lines."""

    def __init__(self, lines):
        self.data = "".join(line + "\n" for line in lines).encode()
        self.offsets = []          # the offset of each follow call

    def read(self, query):
        lines = int(query.get("lines", 100))
        if "offset" not in query:
            tail = self.data.decode().splitlines()[-lines:]
        else:
            offset = int(query["offset"])
            self.offsets.append(offset)
            tail = self.data[offset if offset <= len(self.data) else 0:].decode().splitlines()[:lines]
        return {"lines": tail, "truncated": False, "next_offset": len(self.data)}


def answers(now):
    """{path: JSON} of every stubbed GET but the logs, with times near `now` (Unix ms)."""
    node = {**NODE, "last_seen": now - 3000, "registered_at": now - 86400000}
    points = [{"time": now - (60 - i) * 10000, "timestamp": now - (60 - i) * 10000,
               "cpu": 20 + (i % 7) * 5, "memory_used": (3 << 30) + i * (8 << 20),
               "memory_rss": (40 << 20) + i * (1 << 20), "resolution_seconds": 10} for i in range(60)]
    event = {"node_id": "n1", "agent_id": "a1", "time": now - 5000, "kind": "restart",
             "message": "restart: health", "pid": 4242, "exit_code": -1, "exit_signal": 0}
    return {
        "overview": OVERVIEW,
        "nodes": {"nodes": [node], "next_cursor": None},
        "nodes/n1": {"node": node},
        "nodes/n1/agents": {"agents": [AGENT], "next_cursor": None},
        "nodes/n1/metrics": {"points": points},
        "nodes/n1/agents/a1/metrics": {"points": points},
        "nodes/n1/agents/a1/events": {"events": [event], "next_cursor": None},
    }


@contextlib.contextmanager
def stub_api(token):
    """/ui/ and a stub /api/v1 answering the contract's shapes (bearer `token`):
    yields (base URL, StubLog of agent a1)."""
    app, log = bottle.Bottle(), StubLog([f"line {i}" for i in range(1, 6)])
    dashboard = ui.Dashboard(ui.load_files())
    app.route("/ui/", "GET", dashboard.index)
    app.route("/ui/<name>", "GET", dashboard.file)
    stubbed = answers(int(time.time() * 1000))

    def answer(path):
        bottle.response.content_type = "application/json"
        if bottle.request.get_header("Authorization") != f"Bearer {token}":
            bottle.response.status = 401
            return {"error": {"code": "unauthenticated", "message": "invalid token"}}
        if path == "nodes/n1/agents/a1/logs":
            return log.read(bottle.request.query)
        return stubbed[path]
    app.route("/api/v1/<path:path>", "GET", answer)
    http = serve_http(app, "127.0.0.1:0")
    http.start_background()
    try:
        yield f"http://127.0.0.1:{http.port}", log
    finally:
        http.stop()
