"""The component schemas of the OpenAPI document (fleet.manager.api.openapi): the
JSON bodies the API answers and takes, from the same constants the code checks."""
from __future__ import annotations

from fleet.errors import HTTP_STATUS
from fleet.manager import events, nodemetrics
from fleet.manager.api import openapi_policies, openapi_rollouts
from fleet.manager.api.openapi_base import (AGENT_ID_PATTERN, ERRORS, INT, NEXT,
                                            NODE_ID_PATTERN, STR, TIME, obj, ref)
from fleet.manager.ingest import HEALTHS
from fleet.manager.nodes import AGENT_STATUSES

AUDIT_OPERATIONS = ["start", "stop", "restart", "sync", "delete", "reload", "policy_put",
                    "policy_delete", "rollout", "rollout-cancel"]
# "ok", or the code of any FleetError kind (what fleet.manager.audit records).
AUDIT_RESULTS = ["ok"] + sorted({kind.code for kind in HTTP_STATUS})


def _node_metric_schemas() -> tuple[dict, dict]:
    """The Node JSON's `resources` and a point of a node's metrics."""
    num = {"type": "number"}
    figures = {
        "cpu": {**num, "minimum": 0, "maximum": 100,
                "description": "percent of the whole machine (a bucket: its mean)"},
        "load1": num, "load5": num, "load15": num,
        "memory_used": {**INT, "description": "bytes: MemTotal - MemAvailable"},
        "memory_total": INT, "swap_used": INT, "swap_total": INT,
        "disk_used": {**INT, "description": "bytes, summed over the real mounts"},
        "disk_total": INT,
        "disk_read_rate": {**num, "description": "bytes/s, whole disks"},
        "disk_write_rate": {**num, "description": "bytes/s, whole disks"},
        "net_rx_rate": {**num, "description": "bytes/s, every interface but lo"},
        "net_tx_rate": {**num, "description": "bytes/s, every interface but lo"}}
    disk = obj({"mount": STR, "used": INT, "total": INT}, "One real mount (one per device)")
    node_resources = obj({
        "time": {**INT, "description": "Unix ms of the sample"}, **figures,
        "disks": {"type": "array", "items": disk}}, "A sample of a node's machine")
    node_point = obj({
        "time": {**INT, "description": "Unix ms: the sample, or the start of its bucket"},
        **figures,
        "cpu_max": {**num, "description": "the bucket's peak cpu; a sample's own cpu"},
        "resolution_seconds": {**num, "description": "the daemon's metrics_interval for a "
                               "raw sample, else the bucket's width (60 or more)"}},
        "A node sample, or the means over a bucket of whole minutes")
    return node_resources, node_point


def schemas() -> dict:
    """The component schemas: Node, Agent, MetricPoint, AuditEntry, Error and the bodies."""
    node_resources, node_point = _node_metric_schemas()
    node = obj({
        "node_id": {"type": "string", "pattern": NODE_ID_PATTERN}, "hostname": STR, "ip": STR,
        "advertise_address": STR, "os": STR, "arch": STR,
        "labels": {"type": "object", "additionalProperties": STR},
        "daemon_version": STR, "status": {"type": "string", "enum": ["online", "offline"]},
        "registered_at": INT, "last_seen": TIME,
        "resources": {**node_resources, "nullable": True,
                      "description": "the latest sample of the machine; null before the first"}},
        "A node running a fleet daemon")
    agent = obj({
        "node_id": STR, "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
        "type": STR, "version": STR, "status": {"type": "string", "enum": list(AGENT_STATUSES)},
        "pid": {**INT, "description": "0 when no process"}, "start_time": TIME,
        "restart_count": INT, "last_exit_code": {**INT, "description": "-1: none"},
        "last_exit_signal": {**INT, "description": "0: none"}, "last_error": STR,
        "next_retry_time": {**TIME, "description": "Unix ms when a BACKOFF agent starts again; null when unset"},
        "health": {"type": "string", "enum": ["healthy", "unhealthy", "unknown"]},
        "health_message": {**STR, "description": "why it is not healthy, in words; "
                           "empty when healthy"},
        "changed_at": {**TIME, "description": "Unix ms of the daemon's last state change; null when unknown"},
        "config_changed": {"type": "boolean",
                           "description": "its config differs from the running process's"},
        "last_heartbeat": TIME, "last_sync_time": TIME}, "An agent as last stored")
    num = {"type": "number"}
    point = obj({
        "timestamp": {**INT, "description": "Unix ms: the sample, or the start of its minute"},
        "cpu": {**num, "description": "percent of one core (a minute: its mean)"},
        "memory_rss": INT, "memory_vms": INT,
        "disk_read_bytes": {**INT, "description": "cumulative; 0 in a one-minute point"},
        "disk_write_bytes": {**INT, "description": "cumulative; 0 in a one-minute point"},
        "open_files": INT, "threads": INT,
        "process_count": {**INT, "description": "processes summed into the point"},
        "disk_read_rate": {**num, "description": "bytes/s since the previous sample"},
        "disk_write_rate": {**num, "description": "bytes/s since the previous sample"},
        "cpu_max": {**num, "description": "a minute's peak cpu; a sample's own cpu"},
        "memory_rss_max": {**INT, "description": "a minute's peak rss; a sample's own rss"},
        "resolution_seconds": {**num, "description": "metrics_interval for a sample, 60 for "
                               "a one-minute point (mean and max over that minute; counts "
                               "are the minute's maximum)"}},
        "A resource sample, or a one-minute rollup")
    error = obj({"error": obj({
        "code": {"type": "string", "enum": sorted({code for code, _ in ERRORS.values()})},
        "message": STR})})
    return {
        **openapi_rollouts.schemas(),
        "Node": node, "Agent": agent, "MetricPoint": point, "Error": error,
        "NodeResources": node_resources, "NodeMetricPoint": node_point,
        "NodeMetrics": obj({"points": {"type": "array", "items": ref("NodeMetricPoint"),
                                        "maxItems": nodemetrics.MAX_POINTS, "description": (
            "Oldest first: raw samples for a range within the hour when they are at most "
            "1,000, else buckets of whole minutes, as few minutes as keep the answer "
            "within 1,000 points")}}),
        "NodeList": obj({"nodes": {"type": "array", "items": ref("Node")},
                          "next_cursor": NEXT}),
        "NodeResponse": obj({"node": ref("Node")}),
        "Deleted": obj({"node_id": STR, "deleted": {"type": "boolean"}}),
        "AgentList": obj({"agents": {"type": "array", "items": ref("Agent")}}),
        "AgentPage": obj({"agents": {"type": "array", "items": ref("Agent")},
                           "next_cursor": NEXT}),
        "Overview": overview(),
        "AgentResponse": obj({"agent": ref("Agent")}),
        "ReloadResult": obj({
            "agents": {"type": "array", "items": ref("Agent")},
            "changes": {"type": "array", "items": obj({
                "agent_id": STR,
                "change": {"type": "string",
                           "enum": ["added", "removed", "changed", "flagged"]}})}},
            "Every agent after the reload, and what it changed (flagged: changed "
            "but not restarted, restart_on_change = false)"),
        "OperateRequest": {"type": "object", "required": ["operation"], "properties": {
            "operation": {"type": "string", "enum": ["start", "stop", "restart"]}}},
        "Logs": obj({"lines": {"type": "array", "items": STR},
                      "truncated": {"type": "boolean"},
                      "next_offset": {**INT, "minimum": 0, "description": (
                          "byte offset where the read ended (the log's size without "
                          "offset): pass it as offset to get only newer lines")}}),
        "Metrics": obj({"points": {"type": "array", "items": ref("MetricPoint"), "description": (
            "The samples of the last hour (at metrics_interval), oldest first, then "
            "(coarsest last) one-minute points before them, oldest first")}}),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Index": obj({"name": STR, "api": STR, "openapi": STR}),
        "AuditEntry": obj({
            "id": INT, "time": {**INT, "description": "when it began, Unix milliseconds"},
            "actor": {**STR, "description": "the API token's name (never the token)"},
            "node_id": {"type": "string", "pattern": "^$|" + NODE_ID_PATTERN,
                        "description": "empty for a fleet-wide change (a policy's, a rollout's)"},
            "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN, "nullable": True,
                         "description": "null for a node-level operation"},
            "operation": {"type": "string", "enum": AUDIT_OPERATIONS},
            "result": {"type": "string", "enum": AUDIT_RESULTS,
                       "description": "ok, or the error code"},
            "message": {**STR, "description": "the error message; empty when ok, but for "
                        "a policy change (its diff) and a rollout (which one)"},
            "duration_ms": {**INT, "minimum": 0}}, "One operation, as audited"),
        "AuditList": obj({"entries": {"type": "array", "items": ref("AuditEntry")},
                           "next_cursor": NEXT}),
        "Event": obj({
            "node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
            "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
            "time": {**INT, "description": "when the daemon recorded it, Unix milliseconds"},
            "kind": {"type": "string", "enum": list(events.KINDS)},
            "message": {**STR, "description": "why, in words; a restart's names its cause "
                                               "(cause=operator|health|limit|policy)"},
            "pid": {**INT, "description": "0 when no process"},
            "exit_code": {**INT, "description": "-1: none"},
            "exit_signal": {**INT, "description": "0: none"}}, "One entry of an agent's history"),
        "EventList": obj({
            "events": {"type": "array", "items": ref("Event")},
            "next_cursor": {"type": "string", "nullable": True,
                            "description": "pass as cursor for the next page; null on the last"}}),
        **openapi_policies.schemas(ref),
    }


def overview() -> dict:
    """The Overview schema: every status and health key is present, 0 when none."""
    counts = {"type": "integer", "format": "int64", "minimum": 0}
    restart = obj({"node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
                    "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
                    "restarts": {**counts, "minimum": 1}})
    return obj({
        "nodes": obj({"total": counts, "online": counts, "offline": counts}),
        "agents": obj({"total": counts,
                        "status": obj({name: counts for name in AGENT_STATUSES}),
                        "health": obj({name: counts for name in HEALTHS})}),
        "top_restarts": {"type": "array", "items": restart, "maxItems": 10, "description": (
            "The agents with the most restarts in the last hour, most first: `restart` "
            "events, and `started` events that follow neither `stopped` nor `restart` "
            "(an agent's first start is not a restart)")}},
        "Nodes by status, agents by status and health, the agents restarting most")
