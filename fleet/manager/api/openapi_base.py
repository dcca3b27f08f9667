"""What every part of the OpenAPI document shares: id patterns, small schemas and the
helpers that build objects and references (fleet.manager.api.openapi and its parts)."""
from __future__ import annotations

NODE_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"   # values.valid_node_id
AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"                          # values.valid_agent_id

INT = {"type": "integer", "format": "int64"}
TIME = {"type": "integer", "format": "int64", "nullable": True,
        "description": "Unix milliseconds; null when unset"}
STR = {"type": "string"}
NEXT = {"type": "string", "nullable": True,
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


def obj(properties: dict, description: str = "") -> dict:
    """An object schema whose every property is required and no other allowed."""
    schema = {"type": "object", "required": list(properties), "properties": properties,
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def ref(name: str, kind: str = "schemas") -> dict:
    """A reference to components/KIND/NAME."""
    return {"$ref": f"#/components/{kind}/{name}"}
