"""The OpenAPI 3.0 document of the HTTP API (served at /api/v1/openapi.json).

Built from the same constants the code checks (id patterns, ranges, status
names), so the document and the behaviour cannot drift apart silently; a test
compares its paths and methods with the app's routes.
"""
from __future__ import annotations

import functools
import json

import fleet
from fleet.config import ManagerConfig
from fleet.manager import events, paging
from fleet.manager.api import openapi_policies, openapi_rollouts, ui
from fleet.manager.api.openapi_base import (AGENT_ID_PATTERN, ERRORS, NODE_ID_PATTERN, STR,
                                            ref)
from fleet.manager.api.openapi_schemas import schemas
from fleet.manager.nodes import AGENT_STATUSES

SCOPES_NOTE = (
    "An API token of [manager.api_tokens] has a scope: `read` may GET everything, "
    "`operate` may also operate agents, sync nodes and run rollouts, `admin` may also "
    "delete nodes and write policies. "
    "api_token, the generated fleet-api.token and a token without a scope are admin. "
    "A valid token below what an endpoint needs gets 403 permission_denied.")


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
        "AgentStatus": query("status", {"type": "string", "enum": ["", *AGENT_STATUSES]},
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
            "400 404", node + ("AgentStatus", "Health", "Type", "Limit", "AgentCursor"))},
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
