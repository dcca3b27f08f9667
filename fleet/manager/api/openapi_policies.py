"""The policies part of the OpenAPI document (fleet.manager.api.openapi merges it in).

The agent definition schema lists the `[[agents]]` keys with their types and
ranges; rules across keys (unique ids, backoff_max >= backoff_initial, exactly
one health probe) are checked by fleet.config.agents.read_agents and answered 400.
"""
from __future__ import annotations

import signal

from fleet.config.agents import HEALTH_ACTIONS, RESTART_POLICIES
from fleet.manager import paging
from fleet.manager.api.openapi_base import AGENT_ID_PATTERN
from fleet.manager.changes import policies
from fleet.values import MAX_SECONDS

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"                      # policystore.NAME_RE
_TEXT = {"type": "string", "pattern": r"^[^\x00]*$"}
_STRING = {"type": "string"}


def _or_text(schema: dict, description: str = "") -> dict:
    """`schema`, or a string (the config file's converters also read numbers and
    booleans written as text: "1.5", "yes", "512MiB")."""
    found = {"anyOf": [schema, _STRING]}
    if description:
        found["description"] = description
    return found


def _number(low: float, high: float) -> dict:
    return _or_text({"type": "number", "minimum": low, "maximum": high})


_SECONDS = _number(0, MAX_SECONDS)
_COMMAND = {"anyOf": [{"type": "array", "minItems": 1, "items": _TEXT}, _STRING],
            "description": "argv, or one shell-like string"}


def _obj(properties: dict, required: list, description: str = "") -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def agent_definition() -> dict:
    """One `[[agents]]` table, as the config file has it."""
    timing = {"interval": _number(0.1, MAX_SECONDS), "timeout": _number(0.01, MAX_SECONDS),
              "grace": _SECONDS, "failures": _number(1, 1000),
              "on_unhealthy": {"type": "string", "enum": list(HEALTH_ACTIONS)}}
    probes = {"http": {**_TEXT, "description": "http://HOST[:PORT]/PATH"},
              "tcp": {**_TEXT, "description": "HOST:PORT"}, "exec": _COMMAND}
    health = _obj({**probes, **timing}, [], "exactly one of http, tcp, exec, and its timing")
    limits = _obj({"memory": _or_text({"type": "integer", "minimum": 1, "maximum": 2**50},
                                      "bytes, or a size like \"512MiB\""),
                   "cpu": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                           "maximum": 100000},
                   "for": _SECONDS, "action": {"type": "string", "enum": list(HEALTH_ACTIONS)}},
                  [], "memory (bytes) and/or cpu (percent of one core) over the process tree")
    return _obj({
        "id": {"type": "string", "pattern": AGENT_ID_PATTERN}, "command": _COMMAND,
        "type": _TEXT, "version": _TEXT, "cwd": _TEXT,
        "env": {"type": "object", "additionalProperties": _TEXT},
        "autostart": _or_text({"type": "boolean"}, "true/false (or yes/no, on/off, 1/0)"),
        "restart": {"type": "string", "enum": list(RESTART_POLICIES)},
        "start_seconds": _SECONDS,
        "start_retries": _number(-1, 1_000_000),
        "backoff_initial": _SECONDS, "backoff_max": {**_SECONDS, "description": (
            "at least backoff_initial")},
        "stop_signal": {"anyOf": [{"type": "integer"}, _STRING], "description": (
            "a signal name or number, e.g. " + ", ".join(sorted({s.name for s in signal.Signals
                                                                  })[:3]))},
        "stop_timeout": _SECONDS,
        "log_max_bytes": _number(1024, 2**50),
        "log_backups": _number(0, 100),
        "health": health, "limits": limits}, ["id", "command"],
        "One [[agents]] table of the config file, in JSON")


def _selector() -> dict:
    labels = {"type": "object", "additionalProperties": {"type": "string"},
              "maxProperties": policies.MAX_LABELS,
              "description": "a node must carry every label; empty: every node"}
    return _obj({"labels": labels}, ["labels"])


def policy() -> dict:
    """The Policy object (DESIGN.md "Changing the fleet"), with the nodes' counts."""
    count = {"type": "integer", "format": "int64", "minimum": 0}
    return _obj({
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "version": {"type": "integer", "format": "int64", "minimum": 1,
                    "description": "grows by one per change"},
        "selector": _selector(),
        "agents": {"type": "array", "items": {"type": "object"},
                   "description": "the agent definitions, as put"},
        "updated_at": {"type": "integer", "format": "int64",
                       "description": "Unix ms of this version"},
        "nodes": _obj({"current": count, "pending": count, "failed": count},
                      ["current", "pending", "failed"], (
                          "The nodes matching now, by what they last reported for the "
                          "version they should run (their pin's, else the newest): applied "
                          "(current), not applied with a reason (failed), else pending")),
        "failures": {"type": "array", "maxItems": policies.MAX_LISTED, "items": _obj(
            {"node_id": {"type": "string"}, "reason": {"type": "string"}},
            ["node_id", "reason"])},
        "conflicts": {"type": "array", "maxItems": policies.MAX_LISTED, "items": _obj(
            {"node_id": {"type": "string"}, "agents": {"type": "array", "items": {
                "type": "string"}}}, ["node_id", "agents"]), "description": (
            "Nodes that applied it but kept a local agent of the same id (those ids)")},
    }, ["name", "version", "selector", "agents", "updated_at", "nodes", "failures",
        "conflicts"], "Agent definitions for the nodes whose labels match a selector")


def schemas(ref) -> dict:
    """Policy, PolicyList, PolicyResponse, PolicyRequest, PolicyDeleted."""
    request = _obj({
        "selector": _selector(),
        "agents": {"type": "array", "items": agent_definition(), "description": (
            "Checked like the config file's [[agents]]; ids unique")},
        "hold": {"type": "boolean", "default": False, "description": (
            "Pin the nodes matching the previous version at it (a rollout releases them)")}},
        ["selector", "agents"])
    return {
        "Policy": policy(), "PolicyRequest": request,
        "AgentDefinition": agent_definition(),
        "PolicyResponse": _obj({"policy": ref("Policy")}, ["policy"]),
        "PolicyList": _obj({"policies": {"type": "array", "items": ref("Policy")},
                            "next_cursor": {"type": "string", "nullable": True, "description":
                                            "pass as cursor for the next page; null on the last"}},
                           ["policies", "next_cursor"]),
        "PolicyDeleted": _obj({"name": {"type": "string"}, "deleted": {"type": "boolean"}},
                              ["name", "deleted"]),
    }


def parameters() -> dict:
    """PolicyName (path) and PolicyCursor (query)."""
    return {
        "PolicyName": {"name": "name", "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": NAME_PATTERN}},
        "PolicyCursor": {"name": "cursor", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": "^$|" + paging.POLICY_CURSOR},
                         "description": "The next_cursor of the previous page, unchanged"},
    }


def paths(op) -> dict:
    """The policies endpoints; `op` is openapi._op."""
    name = ("PolicyName",)
    return {
        "/api/v1/policies": {"get": op(
            "listPolicies", "Policies by name, with their nodes' counts, a page at a time",
            "PolicyList", "400", ("Limit", "PolicyCursor"))},
        "/api/v1/policies/{name}": {
            "get": op("getPolicy", "One policy, its nodes current, pending and failed",
                      "PolicyResponse", "404", name),
            "put": op("putPolicy", "Create or change a policy (admin); version + 1 when "
                      "something changed", "PolicyResponse", "400 409 413", name,
                      body="PolicyRequest"),
            "delete": op("deletePolicy", "Delete a policy (admin): nodes drop its agents",
                         "PolicyDeleted", "404 409", name)},
    }
