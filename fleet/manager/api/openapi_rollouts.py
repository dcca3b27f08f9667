"""The rollouts part of the OpenAPI document (fleet.manager.api.openapi merges it in)."""
from __future__ import annotations

from fleet.manager.api.openapi_base import (AGENT_ID_PATTERN, INT, NEXT, NODE_ID_PATTERN, STR,
                                            TIME, obj, ref)
from fleet.manager.changes import rollouts


def schemas() -> dict:
    """Rollout, its list, its request (fleet.manager.changes.rollouts)."""
    bounded = {key: {"type": "integer", "minimum": low, "maximum": high,
                     "default": rollouts.DEFAULTS[key]}
               for key, (low, high) in rollouts.RANGES.items()}
    selector = {"type": "object", "additionalProperties": False, "properties": {
        "labels": {"type": "object", "additionalProperties": STR,
                   "maxProperties": rollouts.MAX_LABELS}},
        "description": "nodes carrying every label; {} or no labels: every node"}
    node = obj({"node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
                 "status": {"type": "string", "enum": list(rollouts.NODE_STATUSES)},
                 "message": {**STR, "description": "the result or why it failed or was "
                             "skipped"},
                 "started_at": TIME, "finished_at": TIME}, "One node of a rollout")
    rollout = obj({
        "id": INT, "operation": {"type": "string", "enum": list(rollouts.OPERATIONS),
                                  "nullable": True},
        "agent_id": {"type": "string", "pattern": AGENT_ID_PATTERN, "nullable": True},
        "policy": {"type": "string", "nullable": True,
                   "description": "a policy rollout's policy (operation and agent_id null)"},
        "selector": selector, **{key: {"type": "integer"} for key in rollouts.RANGES},
        "status": {"type": "string", "enum": list(rollouts.STATUSES)},
        "created_at": INT, "finished_at": TIME,
        "nodes": {"type": "array", "items": ref("RolloutNode"),
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
            "RolloutResponse": obj({"rollout": ref("Rollout")}),
            "RolloutList": obj({"rollouts": {"type": "array", "items": ref("Rollout")},
                                 "next_cursor": NEXT})}


def parameters() -> dict:
    """RolloutCursor (query) and RolloutId (path)."""
    return {
        "RolloutCursor": {"name": "cursor", "in": "query", "required": False,
                          "schema": {"type": "string", "pattern": "^$|" + rollouts.ID_CURSOR},
                          "description": "The next_cursor of the previous page, unchanged "
                                         "(empty: the first page)"},
        "RolloutId": {"name": "rollout_id", "in": "path", "required": True,
                      "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    }


def paths(op) -> dict:
    """The rollouts endpoints; `op` is openapi._op."""
    return {
        "/api/v1/rollouts": {
            "post": op("createRollout", "Start a rollout over the nodes of a selector that "
                        "have the agent (frozen now, by node_id); 404 when none. A policy "
                        "rollout: its pinned nodes; 404 unknown policy, 409 none pinned",
                        "RolloutResponse", "400 404 409 413",
                        body="RolloutRequest", status="202"),
            "get": op("listRollouts", "Rollouts, newest first, a page at a time",
                       "RolloutList", "400", ("Limit", "RolloutCursor"))},
        "/api/v1/rollouts/{rollout_id}": {"get": op(
            "getRollout", "One rollout and each node's result", "RolloutResponse", "404",
            ("RolloutId",))},
        "/api/v1/rollouts/{rollout_id}/cancel": {"post": op(
            "cancelRollout", "Cancel a rollout: pending nodes are skipped, a node in flight "
            "finishes", "RolloutResponse", "404 409", ("RolloutId",))},
    }
