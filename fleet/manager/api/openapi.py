"""The OpenAPI 3.0 document of the HTTP API (served at /api/v1/openapi.json).

Built from the same constants the code checks (id patterns, ranges, status
names), so the document and the behaviour cannot drift apart silently; a test
compares its paths and methods with the app's routes.
"""
from __future__ import annotations

import functools
import json

import fleet
from fleet.errors import HTTP_STATUS
from fleet.config import ManagerConfig
from fleet.manager import events, nodemetrics, paging
from fleet.manager.api import openapi_policies, ui
from fleet.manager.changes import rollouts
from fleet.states import State

NODE_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"   # values.valid_node_id
AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"                          # values.valid_agent_id
AGENT_STATUSES = [s.api_name for s in State if s is not State.UNSPECIFIED]
HEALTHS = ["healthy", "unhealthy", "unknown"]
AUDIT_OPERATIONS = ["start", "stop", "restart", "sync", "delete", "reload", "policy_put",
                    "policy_delete", "rollout", "rollout-cancel"]
# "ok", or the code of any FleetError kind (what fleet.manager.audit records).
AUDIT_RESULTS = ["ok"] + sorted({kind.code for kind in HTTP_STATUS})

SCOPES_NOTE = (
    "An API token of [manager.api_tokens] has a scope: `read` may GET everything, "
    "`operate` may also operate agents, sync nodes and run rollouts, `admin` may also "
    "delete nodes and write policies. "
    "api_token, the generated fleet-api.token and a token without a scope are admin. "
    "A valid token below what an endpoint needs gets 403 permission_denied.")

_INT = {"type": "integer", "format": "int64"}
_TIME = {"type": "integer", "format": "int64", "nullable": True,
         "description": "Unix milliseconds; null when unset"}
_STR = {"type": "string"}
_NEXT = {"type": "string", "nullable": True,
         "description": "pass as cursor for the next page; null on the last"}

ERRORS = {  # status: (error code, when)
    "400": ("invalid_argument", "Bad parameter or body"),
    "401": ("unauthenticated", "No or bad API token"),
    "403": ("permission_denied", "The token's scope is below what this needs"),
    "404": ("not_found", "Unknown node, agent or route"),
    "405": ("method_not_allowed", "Method not allowed on this path"),
    "409": ("conflict", "Refused in the agent's or daemon's state, or node online on delete"),
    "413": ("payload_too_large", "Request body over 64 KiB"),
    "500": ("internal", "A bug on the manager (logged, never detailed)"),
    "502": ("daemon_error", "The daemon answered with an unexpected error"),
    "503": ("unavailable", "The daemon is unreachable"),
    "504": ("deadline_exceeded", "The daemon did not answer in time"),
}


def _obj(properties: dict, description: str = "") -> dict:
    schema = {"type": "object", "required": list(properties), "properties": properties,
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def _ref(name: str, kind: str = "schemas") -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _node_metric_schemas() -> tuple[dict, dict]:
    """The Node JSON's `resources` and a point of a node's metrics."""
    num = {"type": "number"}
    figures = {
        "cpu": {**num, "minimum": 0, "maximum": 100,
                "description": "percent of the whole machine (a bucket: its mean)"},
        "load1": num, "load5": num, "load15": num,
        "memory_used": {**_INT, "description": "bytes: MemTotal - MemAvailable"},
        "memory_total": _INT, "swap_used": _INT, "swap_total": _INT,
        "disk_used": {**_INT, "description": "bytes, summed over the real mounts"},
        "disk_total": _INT,
        "disk_read_rate": {**num, "description": "bytes/s, whole disks"},
        "disk_write_rate": {**num, "description": "bytes/s, whole disks"},
        "net_rx_rate": {**num, "description": "bytes/s, every interface but lo"},
        "net_tx_rate": {**num, "description": "bytes/s, every interface but lo"}}
    disk = _obj({"mount": _STR, "used": _INT, "total": _INT}, "One real mount (one per device)")
    node_resources = _obj({
        "time": {**_INT, "description": "Unix ms of the sample"}, **figures,
        "disks": {"type": "array", "items": disk}}, "A sample of a node's machine")
    node_point = _obj({
        "time": {**_INT, "description": "Unix ms: the sample, or the start of its bucket"},
        **figures,
        "cpu_max": {**num, "description": "the bucket's peak cpu; a sample's own cpu"},
        "resolution_seconds": {**num, "description": "the daemon's metrics_interval for a "
                               "raw sample, else the bucket's width (60 or more)"}},
        "A node sample, or the means over a bucket of whole minutes")
    return node_resources, node_point


def schemas() -> dict:
    """The component schemas: Node, Agent, MetricPoint, AuditEntry, Error and the bodies."""
    node_resources, node_point = _node_metric_schemas()
    node = _obj({
        "node_id": {"type": "string", "pattern": NODE_ID_PATTERN}, "hostname": _STR, "ip": _STR,
        "advertise_address": _STR, "os": _STR, "arch": _STR,
        "labels": {"type": "object", "additionalProperties": _STR},
        "daemon_version": _STR, "status": {"type": "string", "enum": ["online", "offline"]},
        "registered_at": _INT, "last_seen": _TIME,
        "resources": {**node_resources, "nullable": True,
                      "description": "the latest sample of the machine; null before the first"}},
        "A node running a fleet daemon")
    agent = _obj({
        "node_id": _STR, "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
        "type": _STR, "version": _STR, "status": {"type": "string", "enum": AGENT_STATUSES},
        "pid": {**_INT, "description": "0 when no process"}, "start_time": _TIME,
        "restart_count": _INT, "last_exit_code": {**_INT, "description": "-1: none"},
        "last_exit_signal": {**_INT, "description": "0: none"}, "last_error": _STR,
        "next_retry_time": {**_TIME, "description": "Unix ms when a BACKOFF agent starts again; null when unset"},
        "health": {"type": "string", "enum": ["healthy", "unhealthy", "unknown"]},
        "health_message": {**_STR, "description": "why it is not healthy, in words; "
                           "empty when healthy"},
        "changed_at": {**_TIME, "description": "Unix ms of the daemon's last state change; null when unknown"},
        "config_changed": {"type": "boolean",
                           "description": "its config differs from the running process's"},
        "last_heartbeat": _TIME, "last_sync_time": _TIME}, "An agent as last stored")
    num = {"type": "number"}
    point = _obj({
        "timestamp": {**_INT, "description": "Unix ms: the sample, or the start of its minute"},
        "cpu": {**num, "description": "percent of one core (a minute: its mean)"},
        "memory_rss": _INT, "memory_vms": _INT,
        "disk_read_bytes": {**_INT, "description": "cumulative; 0 in a one-minute point"},
        "disk_write_bytes": {**_INT, "description": "cumulative; 0 in a one-minute point"},
        "open_files": _INT, "threads": _INT,
        "process_count": {**_INT, "description": "processes summed into the point"},
        "disk_read_rate": {**num, "description": "bytes/s since the previous sample"},
        "disk_write_rate": {**num, "description": "bytes/s since the previous sample"},
        "cpu_max": {**num, "description": "a minute's peak cpu; a sample's own cpu"},
        "memory_rss_max": {**_INT, "description": "a minute's peak rss; a sample's own rss"},
        "resolution_seconds": {**num, "description": "metrics_interval for a sample, 60 for "
                               "a one-minute point (mean and max over that minute; counts "
                               "are the minute's maximum)"}},
        "A resource sample, or a one-minute rollup")
    error = _obj({"error": _obj({
        "code": {"type": "string", "enum": sorted({code for code, _ in ERRORS.values()})},
        "message": _STR})})
    return {
        **rollout_schemas(),
        "Node": node, "Agent": agent, "MetricPoint": point, "Error": error,
        "NodeResources": node_resources, "NodeMetricPoint": node_point,
        "NodeMetrics": _obj({"points": {"type": "array", "items": _ref("NodeMetricPoint"),
                                        "maxItems": nodemetrics.MAX_POINTS, "description": (
            "Oldest first: raw samples for a range within the hour when they are at most "
            "1,000, else buckets of whole minutes, as few minutes as keep the answer "
            "within 1,000 points")}}),
        "NodeList": _obj({"nodes": {"type": "array", "items": _ref("Node")},
                          "next_cursor": _NEXT}),
        "NodeResponse": _obj({"node": _ref("Node")}),
        "Deleted": _obj({"node_id": _STR, "deleted": {"type": "boolean"}}),
        "AgentList": _obj({"agents": {"type": "array", "items": _ref("Agent")}}),
        "AgentPage": _obj({"agents": {"type": "array", "items": _ref("Agent")},
                           "next_cursor": _NEXT}),
        "Overview": overview(),
        "AgentResponse": _obj({"agent": _ref("Agent")}),
        "ReloadResult": _obj({
            "agents": {"type": "array", "items": _ref("Agent")},
            "changes": {"type": "array", "items": _obj({
                "agent_id": _STR,
                "change": {"type": "string",
                           "enum": ["added", "removed", "changed", "flagged"]}})}},
            "Every agent after the reload, and what it changed (flagged: changed "
            "but not restarted, restart_on_change = false)"),
        "OperateRequest": {"type": "object", "required": ["operation"], "properties": {
            "operation": {"type": "string", "enum": ["start", "stop", "restart"]}}},
        "Logs": _obj({"lines": {"type": "array", "items": _STR},
                      "truncated": {"type": "boolean"},
                      "next_offset": {**_INT, "minimum": 0, "description": (
                          "byte offset where the read ended (the log's size without "
                          "offset): pass it as offset to get only newer lines")}}),
        "Metrics": _obj({"points": {"type": "array", "items": _ref("MetricPoint"), "description": (
            "The samples of the last hour (at metrics_interval), oldest first, then "
            "(coarsest last) one-minute points before them, oldest first")}}),
        "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Index": _obj({"name": _STR, "api": _STR, "openapi": _STR}),
        "AuditEntry": _obj({
            "id": _INT, "time": {**_INT, "description": "when it began, Unix milliseconds"},
            "actor": {**_STR, "description": "the API token's name (never the token)"},
            "node_id": {"type": "string", "pattern": "^$|" + NODE_ID_PATTERN,
                        "description": "empty for a fleet-wide change (a policy's, a rollout's)"},
            "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN, "nullable": True,
                         "description": "null for a node-level operation"},
            "operation": {"type": "string", "enum": AUDIT_OPERATIONS},
            "result": {"type": "string", "enum": AUDIT_RESULTS,
                       "description": "ok, or the error code"},
            "message": {**_STR, "description": "the error message; empty when ok, but for "
                        "a policy change (its diff) and a rollout (which one)"},
            "duration_ms": {**_INT, "minimum": 0}}, "One operation, as audited"),
        "AuditList": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")},
                           "next_cursor": _NEXT}),
        "Event": _obj({
            "node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
            "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
            "time": {**_INT, "description": "when the daemon recorded it, Unix milliseconds"},
            "kind": {"type": "string", "enum": list(events.KINDS)},
            "message": {**_STR, "description": "why, in words; a restart's names its cause "
                                               "(cause=operator|health|limit|policy)"},
            "pid": {**_INT, "description": "0 when no process"},
            "exit_code": {**_INT, "description": "-1: none"},
            "exit_signal": {**_INT, "description": "0: none"}}, "One entry of an agent's history"),
        "EventList": _obj({
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": "string", "nullable": True,
                            "description": "pass as cursor for the next page; null on the last"}}),
        **openapi_policies.schemas(_ref),
    }


def overview() -> dict:
    """The Overview schema: every status and health key is present, 0 when none."""
    counts = {"type": "integer", "format": "int64", "minimum": 0}
    restart = _obj({"node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
                    "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
                    "restarts": {**counts, "minimum": 1}})
    return _obj({
        "nodes": _obj({"total": counts, "online": counts, "offline": counts}),
        "agents": _obj({"total": counts,
                        "status": _obj({name: counts for name in AGENT_STATUSES}),
                        "health": _obj({name: counts for name in HEALTHS})}),
        "top_restarts": {"type": "array", "items": restart, "maxItems": 10, "description": (
            "The agents with the most restarts in the last hour, most first: `restart` "
            "events, and `started` events that follow neither `stopped` nor `restart` "
            "(an agent's first start is not a restart)")}},
        "Nodes by status, agents by status and health, the agents restarting most")


def rollout_schemas() -> dict:
    """Rollout, its list, its request (fleet.manager.changes.rollouts)."""
    bounded = {key: {"type": "integer", "minimum": low, "maximum": high,
                     "default": rollouts.DEFAULTS[key]}
               for key, (low, high) in rollouts.RANGES.items()}
    selector = {"type": "object", "additionalProperties": False, "properties": {
        "labels": {"type": "object", "additionalProperties": _STR,
                   "maxProperties": rollouts.MAX_LABELS}},
        "description": "nodes carrying every label; {} or no labels: every node"}
    node = _obj({"node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
                 "status": {"type": "string", "enum": list(rollouts.NODE_STATUSES)},
                 "message": {**_STR, "description": "the result or why it failed or was "
                             "skipped"},
                 "started_at": _TIME, "finished_at": _TIME}, "One node of a rollout")
    rollout = _obj({
        "id": _INT, "operation": {"type": "string", "enum": list(rollouts.OPERATIONS),
                                  "nullable": True},
        "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN, "nullable": True},
        "policy": {"type": "string", "nullable": True,
                   "description": "a policy rollout's policy (operation and agent_id null)"},
        "selector": selector, **{key: {"type": "integer"} for key in rollouts.RANGES},
        "status": {"type": "string", "enum": list(rollouts.STATUSES)},
        "created_at": _INT, "finished_at": _TIME,
        "nodes": {"type": "array", "items": _ref("RolloutNode"),
                  "description": "frozen at creation, by node_id"}},
        "An operation applied in waves of max_parallel nodes; it stops starting nodes once "
        "more than max_failures have failed (0: at the first failure)")
    request = {"oneOf": [
        {"type": "object", "required": ["operation", "agent_id"],
         "additionalProperties": False, "properties": {
             "operation": {"type": "string", "enum": list(rollouts.OPERATIONS)},
             "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN},
             "selector": selector, **bounded}},
        {"type": "object", "required": ["policy"], "additionalProperties": False,
         "description": "a policy rollout: the policy's nodes pinned at an older version "
                        "move to its newest", "properties": {
             "policy": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, **bounded}}]}
    return {"Rollout": rollout, "RolloutNode": node, "RolloutRequest": request,
            "RolloutResponse": _obj({"rollout": _ref("Rollout")}),
            "RolloutList": _obj({"rollouts": {"type": "array", "items": _ref("Rollout")},
                                 "next_cursor": _NEXT})}


def parameters() -> dict:
    """The shared path and query parameters, with their rules and ranges."""
    def query(name, schema, description):
        return {"name": name, "in": "query", "required": False, "schema": schema,
                "description": description}

    def cursor(pattern):
        return query("cursor", {"type": "string", "pattern": "^$|" + pattern},
                     "The next_cursor of the previous page, unchanged (empty: the first page)")
    return {
        "NodeId": {"name": "node_id", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": NODE_ID_PATTERN}},
        "AgentId": {"name": "agent_id", "in": "path", "required": True,
                    "schema": {"type": "string", "pattern": AGENT_ID_PATTERN}},
        "Status": query("status", {"type": "string", "enum": ["", "online", "offline"]},
                        "Only nodes in this status (empty: every node)"),
        "Health": query("health", {"type": "string",
                                   "enum": ["", "healthy", "unhealthy", "unknown"]},
                        "Only agents of this health (empty: every agent)"),
        "Label": {**query("label", {"type": "array", "items": {"type": "string",
                                                                 "pattern": "^[^=]+=.*$"}},
                          "Only nodes with this label, KEY=VALUE; repeat to require several"),
                  "style": "form", "explode": True},
        "Lines": query("lines", {"type": "integer", "minimum": 1, "maximum": 1000,
                                 "default": 100}, "How many of the last log lines"),
        "Offset": query("offset", {"type": "integer", "format": "int64", "minimum": 0,
                                   "maximum": 10**18 - 1},
                        "Only the whole lines from this byte offset of the log on, at most "
                        "`lines` of them (a follower passes the last next_offset); a log now "
                        "shorter than offset was rotated and is read from 0"),
        "Grep": query("grep", {"type": "string", "maxLength": 1024, "pattern": r"^[^\x00]*$",
                               "default": ""}, "Only lines containing this text (no NUL)"),
        "Duration": query("duration", {"type": "integer", "minimum": 1, "maximum": 86400,
                                       "default": 3600},
                          "Seconds of history, up to now: the last hour in samples, "
                          "older in one-minute points"),
        "NodeDuration": query("duration", {
            "type": "integer", "minimum": 1, "maximum": int(ManagerConfig.node_metrics_retention),
            "default": 3600}, "Seconds of history, up to now: at most [manager] "
            "node_metrics_retention (default a week); the resolution follows"),
        "AuditNode": query("node", {"type": "string", "pattern": "^$|" + NODE_ID_PATTERN},
                           "Only the entries of this node, deleted nodes included "
                           "(empty: every node)"),
        "Limit": query("limit", {"type": "integer", "minimum": 1, "maximum": paging.MAX_LIMIT,
                                 "default": paging.DEFAULT_LIMIT}, "At most this many, one page"),
        "EventLimit": query("limit", {"type": "integer", "minimum": 1, "maximum": events.MAX_LIMIT,
                                      "default": events.DEFAULT_LIMIT},
                            "At most this many events, newest first"),
        "Since": query("since", {"type": "integer", "minimum": 0, "maximum": events.MAX_SINCE},
                       "Only events at or after this time, Unix milliseconds"),
        "Cursor": query("cursor", {"type": "string", "pattern": "^$|" + events.CURSOR_PATTERN},
                        "The next_cursor of the previous page, unchanged"),
        "EventNode": query("node", {"type": "string", "pattern": "^$|" + NODE_ID_PATTERN},
                           "Only this node's events (empty: every node)"),
        "EventAgent": query("agent", {"type": "string", "pattern": "^$|" + AGENT_ID_PATTERN},
                            "Only events of agents with this id (empty: every agent)"),
        "NodeCursor": cursor(paging.NODE_CURSOR),
        "AgentCursor": cursor(paging.AGENT_CURSOR),
        "FleetAgentCursor": cursor(paging.FLEET_AGENT_CURSOR),
        "AuditCursor": cursor(paging.TIME_ID_CURSOR),
        "RolloutCursor": cursor(rollouts.ID_CURSOR),
        "RolloutId": {"name": "rollout_id", "in": "path", "required": True,
                      "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
        "AgentStatus": query("status", {"type": "string", "enum": [""] + AGENT_STATUSES},
                             "Only agents in this status (empty: every agent)"),
        "Type": query("type", {"type": "string", "maxLength": 1024, "pattern": r"^[^\x00]*$"},
                      "Only agents of this type, exactly (empty: every type)"),
        "AgentNode": query("node", {"type": "string", "pattern": "^$|" + NODE_ID_PATTERN},
                           "Only this node's agents (empty: every node)"),
        "AgentLabel": {**query("label", {"type": "array", "items": {
            "type": "string", "pattern": "^[^=]+=.*$"}},
            "Only agents of nodes with this label, KEY=VALUE; repeat to require several"),
            "style": "form", "explode": True},
        "Kind": query("kind", {"type": "string", "enum": [""] + list(events.KINDS)},
                      "Only events of this kind (empty: every kind)"),
        **openapi_policies.parameters(),
    }


def responses() -> dict:
    """One reusable response per error status, all with the error envelope."""
    found = {}
    for status, (code, when) in ERRORS.items():
        found[code] = {"description": when,
                       "content": {"application/json": {"schema": _ref("Error")}}}
    found["unauthenticated"]["headers"] = {
        "WWW-Authenticate": {"schema": {"type": "string", "example": 'Bearer realm="fleet"'}}}
    return found


def _op(op_id: str, summary: str, schema: str, errors: str = "", params=(), body=None,
        public: bool = False, status: str = "200") -> dict:
    """One operation: `status` with `schema`, the error statuses listed in `errors`."""
    operation = {"operationId": op_id, "summary": summary,
                 "parameters": [_ref(p, "parameters") for p in params],
                 "responses": {status: {"description": "OK", "content": {
                     "application/json": {"schema": _ref(schema)}}}}}
    statuses = errors.split() + ([] if public else ["401", "403", "500"])
    for status in sorted(set(statuses)):
        operation["responses"][status] = _ref(ERRORS[status][0], "responses")
    if public:
        operation["security"] = []
    if body:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(body)}},
            "description": "Parsed as JSON whatever the Content-Type; at most 64 KiB"}
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


def paths() -> dict:
    """Every endpoint of the HTTP API."""
    node, agent = ("NodeId",), ("NodeId", "AgentId")
    daemon = "404 409 502 503 504"
    return {
        "/": {"get": _browser_redirect(_op("index", "What this server is", "Index", public=True))},
        "/health": {"get": _op("health", "Liveness", "Health", public=True)},
        "/api/v1/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.0 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/api/v1/nodes": {"get": _op("listNodes", "List nodes, a page at a time", "NodeList",
                                     "400", ("Status", "Label", "Limit", "NodeCursor"))},
        "/api/v1/nodes/{node_id}": {
            "get": _op("getNode", "One node", "NodeResponse", "404", node),
            "delete": _op("deleteNode", "Remove an offline node and its agents", "Deleted",
                          "404 409", node)},
        "/api/v1/nodes/{node_id}/agents": {"get": _op(
            "listAgents", "The node's agents as last stored, a page at a time", "AgentPage",
            "400 404", node + ("Health", "Limit", "AgentCursor"))},
        "/api/v1/nodes/{node_id}/agents/sync": {"post": _op(
            "syncAgents", "Pull the agents from the daemon and store them", "AgentList",
            daemon, node)},
        "/api/v1/nodes/{node_id}/reload": {"post": _op(
            "reloadNode", "Make the daemon reread its config and apply its agents "
            "(an invalid config changes nothing: 400 naming every problem)", "ReloadResult",
            "400 " + daemon, node)},
        "/api/v1/nodes/{node_id}/agents/{agent_id}/operate": {"post": _op(
            "operateAgent", "Start, stop or restart an agent", "AgentResponse",
            "400 413 " + daemon, agent, body="OperateRequest")},
        "/api/v1/nodes/{node_id}/agents/{agent_id}/logs": {"get": _op(
            "agentLogs", "The agent's last log lines, or the lines after an offset", "Logs",
            "400 " + daemon,
            agent + ("Lines", "Grep", "Offset"))},
        "/api/v1/nodes/{node_id}/agents/{agent_id}/metrics": {"get": _op(
            "agentMetrics", "The agent's resource samples", "Metrics", "400 " + daemon,
            agent + ("Duration",))},
        "/api/v1/audit": {"get": _op(
            "listAudit", "Operations done, newest first", "AuditList", "400 404",
            ("AuditNode", "Limit", "AuditCursor"))},
        "/api/v1/nodes/{node_id}/agents/{agent_id}/events": {"get": _op(
            "agentEvents", "The agent's events, newest first", "EventList", "400 404",
            agent + ("Since", "EventLimit", "Cursor"))},
        "/api/v1/nodes/{node_id}/metrics": {"get": _op(
            "nodeMetrics", "The node's machine samples, at most ~1,000 points", "NodeMetrics",
            "400 404", node + ("NodeDuration",))},
        "/api/v1/events": {"get": _op(
            "listEvents", "Events of the fleet, newest first", "EventList", "400",
            ("EventNode", "EventAgent", "Kind", "Since", "EventLimit", "Cursor"))},
        "/metrics": {"get": _metrics_op()},
        **dashboard_paths(),
        "/api/v1/agents": {"get": _op(
            "listFleetAgents", "Agents of every node by (node_id, agent_id), filtered, "
            "a page at a time", "AgentPage", "400",
            ("AgentStatus", "Health", "Type", "AgentNode", "AgentLabel", "Limit",
             "FleetAgentCursor"))},
        "/api/v1/overview": {"get": _op(
            "overview", "Nodes by status, agents by status and health, top restarts",
            "Overview")},
        **openapi_policies.paths(_op),
        "/api/v1/rollouts": {
            "post": _op("createRollout", "Start a rollout over the nodes of a selector that "
                        "have the agent (frozen now, by node_id); 404 when none. A policy "
                        "rollout: its pinned nodes; 404 unknown policy, 409 none pinned",
                        "RolloutResponse", "400 404 409 413",
                        body="RolloutRequest", status="202"),
            "get": _op("listRollouts", "Rollouts, newest first, a page at a time",
                       "RolloutList", "400", ("Limit", "RolloutCursor"))},
        "/api/v1/rollouts/{rollout_id}": {"get": _op(
            "getRollout", "One rollout and each node's result", "RolloutResponse", "404",
            ("RolloutId",))},
        "/api/v1/rollouts/{rollout_id}/cancel": {"post": _op(
            "cancelRollout", "Cancel a rollout: pending nodes are skipped, a node in flight "
            "finishes", "RolloutResponse", "404 409", ("RolloutId",))},
    }


def _browser_redirect(operation: dict) -> dict:
    """`operation` that also sends a browser (Accept: text/html) to the dashboard."""
    operation["responses"]["302"] = {
        "description": "Accept names text/html: go to the dashboard, ui/",
        "headers": {"Location": {"schema": {"type": "string", "example": "ui/"}}}}
    return operation


def dashboard_paths() -> dict:
    """The dashboard's static files (no token: the page asks for one)."""
    files = ui.load_files()
    types = sorted({found.content_type.split(";")[0] for found in files.values()})
    fresh = {"description": "Not modified (If-None-Match matched the ETag)"}

    def serve(op_id: str, summary: str, media: list, params=()) -> dict:
        content = {kind: {"schema": {"type": "string"}} for kind in media}
        operation = {"operationId": op_id, "summary": summary, "security": [],
                     "responses": {"200": {"description": "The file", "content": content},
                                   "304": fresh, "404": _ref("not_found", "responses")}}
        if params:
            operation["parameters"] = list(params)
        return operation

    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": sorted(files) or ["index.html"]}}
    return {
        "/ui": {"get": {"operationId": "dashboardRedirect", "summary": "To the dashboard, ui/",
                        "security": [], "responses": {"302": {"description": "Go to ui/"}}}},
        "/ui/": {"get": serve("dashboard", "The dashboard (HTML)", ["text/html"])},
        "/ui/{name}": {"get": serve("dashboardFile", "A file of the dashboard", types,
                                    [name])},
    }


def _metrics_op() -> dict:
    """GET /metrics: Prometheus text, with a token of scope read unless metrics_public."""
    operation = {"operationId": "prometheusMetrics", "summary": (
        "Prometheus metrics (text format 0.0.4); no token needed with "
        "[manager] metrics_public = true"), "responses": {"200": {
            "description": "The exposition", "content": {"text/plain": {"schema": _STR}}}}}
    for status in ("401", "403", "404", "500"):
        operation["responses"][status] = _ref(ERRORS[status][0], "responses")
    return operation


def document(version: str = fleet.__version__) -> dict:
    """The whole OpenAPI 3.0.3 document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "fleet manager API", "version": version, "description": (
            "Manage agents on many nodes. Every endpoint but /, /health and this document "
            "needs `Authorization: Bearer <api token>`. Errors are "
            '{"error":{"code":...,"message":...}}; a method a path does not serve gets 405.')},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": SCOPES_NOTE}},
            "schemas": schemas(), "parameters": parameters(), "responses": responses()},
    }


@functools.lru_cache(maxsize=1)
def document_json() -> str:
    """The document as JSON text, built once."""
    return json.dumps(document(), indent=1, sort_keys=True) + "\n"
