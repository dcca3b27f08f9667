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
from fleet.manager.api import openapi_policies, openapi_rollouts, ui
from fleet.manager.api.openapi_base import (AGENT_ID_PATTERN, INT, NEXT, NODE_ID_PATTERN, STR,
                                            TIME, obj, ref)
from fleet.states import State

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
        "type": STR, "version": STR, "status": {"type": "string", "enum": AGENT_STATUSES},
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
        **openapi_rollouts.parameters(),
    }


def responses() -> dict:
    """One reusable response per error status, all with the error envelope."""
    found = {}
    for status, (code, when) in ERRORS.items():
        found[code] = {"description": when,
                       "content": {"application/json": {"schema": ref("Error")}}}
    found["unauthenticated"]["headers"] = {
        "WWW-Authenticate": {"schema": {"type": "string", "example": 'Bearer realm="fleet"'}}}
    return found


def _op(op_id: str, summary: str, schema: str, errors: str = "", params=(), body=None,
        public: bool = False, status: str = "200") -> dict:
    """One operation: `status` with `schema`, the error statuses listed in `errors`."""
    operation = {"operationId": op_id, "summary": summary,
                 "parameters": [ref(p, "parameters") for p in params],
                 "responses": {status: {"description": "OK", "content": {
                     "application/json": {"schema": ref(schema)}}}}}
    statuses = errors.split() + ([] if public else ["401", "403", "500"])
    for status in sorted(set(statuses)):
        operation["responses"][status] = ref(ERRORS[status][0], "responses")
    if public:
        operation["security"] = []
    if body:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref(body)}},
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
        **openapi_rollouts.paths(_op),
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
                                   "304": fresh, "404": ref("not_found", "responses")}}
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
            "description": "The exposition", "content": {"text/plain": {"schema": STR}}}}}
    for status in ("401", "403", "404", "500"):
        operation["responses"][status] = ref(ERRORS[status][0], "responses")
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
