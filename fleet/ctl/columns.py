"""The columns of ctl's tables: how an Agent, Node, Event... of the API shows in a row."""
from __future__ import annotations

import time
from typing import Optional

from fleet.ctl import output
from fleet.ctl.output import Column, ago, iso, number, size


# ---- columns ----

def _last_exit(agent: dict) -> str:
    if agent.get("last_exit_signal"):
        return f"signal {agent['last_exit_signal']}"
    code = agent.get("last_exit_code", -1)
    return "-" if code is None or code < 0 else f"code {code}"


def _uptime(agent: dict) -> str:
    if agent.get("status") not in ("running", "starting") or not agent.get("start_time"):
        return "-"
    return output.duration(max(0.0, time.time() - agent["start_time"] / 1000.0))


def _why(agent: dict) -> str:
    return (agent.get("health_message") or agent.get("last_error") or "").replace("\n", " ")


def agent_columns(with_node: bool) -> list[Column]:
    """The agents table; NODE first when the list spans nodes."""
    columns = [Column("NODE", lambda a: a["node_id"])] if with_node else []
    return columns + [
        Column("AGENT", lambda a: a["agent_id"]),
        Column("TYPE", lambda a: a.get("type") or "-"),
        Column("STATUS", lambda a: a["status"] + ("*" if a.get("config_changed") else "")),
        Column("HEALTH", lambda a: a.get("health") or "-"),
        Column("PID", lambda a: str(a["pid"]) if a.get("pid") else "-", right=True),
        Column("RESTARTS", lambda a: str(a.get("restart_count", 0)), right=True),
        Column("UP", _uptime, right=True),
        Column("LAST EXIT", _last_exit),
        Column("MESSAGE", _why),
    ]


def _resource(node: dict, name: str) -> Optional[float]:
    return (node.get("resources") or {}).get(name)


def _memory(node: dict) -> str:
    used, total = _resource(node, "memory_used"), _resource(node, "memory_total")
    return "-" if used is None or not total else f"{size(used)}/{size(total)}"


NODE_COLUMNS = [
    Column("NODE", lambda n: n["node_id"]),
    Column("STATUS", lambda n: n["status"]),
    Column("HOSTNAME", lambda n: n.get("hostname") or "-"),
    Column("ADDRESS", lambda n: n.get("advertise_address") or "-"),
    Column("VERSION", lambda n: n.get("daemon_version") or "-"),
    Column("LAST SEEN", lambda n: ago(n.get("last_seen")), right=True),
    Column("CPU", lambda n: "-" if _resource(n, "cpu") is None
           else f"{_resource(n, 'cpu'):.1f}%", right=True),
    Column("MEMORY", _memory, right=True),
    Column("LABELS", lambda n: output.labels(n.get("labels"))),
]

EVENT_COLUMNS = [
    Column("TIME", lambda e: iso(e["time"])),
    Column("NODE", lambda e: e["node_id"]),
    Column("AGENT", lambda e: e["agent_id"]),
    Column("KIND", lambda e: e["kind"]),
    Column("PID", lambda e: str(e["pid"]) if e.get("pid") else "-", right=True),
    Column("EXIT", lambda e: _last_exit({"last_exit_code": e.get("exit_code"),
                                         "last_exit_signal": e.get("exit_signal")})),
    Column("MESSAGE", lambda e: (e.get("message") or "").replace("\n", " ")),
]

AUDIT_COLUMNS = [
    Column("TIME", lambda e: iso(e["time"])),
    Column("ACTOR", lambda e: e.get("actor") or "-"),
    Column("NODE", lambda e: e["node_id"]),
    Column("AGENT", lambda e: e.get("agent_id") or "-"),
    Column("OPERATION", lambda e: e["operation"]),
    Column("RESULT", lambda e: e["result"]),
    Column("MS", lambda e: str(e.get("duration_ms", "-")), right=True),
    Column("MESSAGE", lambda e: e.get("message") or ""),
]

METRIC_COLUMNS = [
    Column("TIME", lambda p: iso(p["timestamp"])),
    Column("CPU%", lambda p: number(p.get("cpu"), 1), right=True),
    Column("RSS", lambda p: size(p.get("memory_rss")), right=True),
    Column("VMS", lambda p: size(p.get("memory_vms")), right=True),
    Column("READ/S", lambda p: size(p.get("disk_read_rate")), right=True),
    Column("WRITE/S", lambda p: size(p.get("disk_write_rate")), right=True),
    Column("FILES", lambda p: number(p.get("open_files")), right=True),
    Column("THREADS", lambda p: number(p.get("threads")), right=True),
    Column("PROCS", lambda p: number(p.get("process_count")), right=True),
    Column("RES", lambda p: f"{p.get('resolution_seconds', 0):g}s", right=True),
]

POLICY_COLUMNS = [
    Column("NAME", lambda p: p["name"]),
    Column("VERSION", lambda p: str(p.get("version", "-")), right=True),
    Column("SELECTOR", lambda p: output.labels((p.get("selector") or {}).get("labels"))),
    Column("AGENTS", lambda p: ",".join(a.get("id", "?") for a in p.get("agents") or []) or "-"),
    Column("CURRENT", lambda p: str((p.get("nodes") or {}).get("current", 0)), right=True),
    Column("PENDING", lambda p: str((p.get("nodes") or {}).get("pending", 0)), right=True),
    Column("FAILED", lambda p: str((p.get("nodes") or {}).get("failed", 0)), right=True),
    Column("UPDATED", lambda p: ago(p.get("updated_at")), right=True),
]

ROLLOUT_NODE_COLUMNS = [
    Column("NODE", lambda n: n["node_id"]),
    Column("STATUS", lambda n: n["status"]),
    Column("MESSAGE", lambda n: n.get("message") or ""),
]
