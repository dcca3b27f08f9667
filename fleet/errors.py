"""One error hierarchy for fleet, translated once at each edge.

Library code raises these; the gRPC servicers and the HTTP app translate them
through GRPC_CODE_NAMES and HTTP_STATUS. This module imports nothing of fleet
and nothing of grpc: codes are named, and the edges look the names up.
"""


class FleetError(Exception):
    """Base of every error fleet raises on purpose.

    `code` is the public, lower-case name used in the HTTP error envelope.
    """

    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(FleetError):
    code = "invalid_argument"


class NotFound(FleetError):
    code = "not_found"


class Conflict(FleetError):
    """An operation refused in the current state (gRPC FAILED_PRECONDITION)."""

    code = "conflict"


class Unavailable(FleetError):
    code = "unavailable"


class DeadlineExceeded(FleetError):
    code = "deadline_exceeded"


class Unauthenticated(FleetError):
    code = "unauthenticated"


class PermissionDenied(FleetError):
    """A valid token whose scope is below what the request needs."""

    code = "permission_denied"


class ResourceExhausted(FleetError):
    code = "resource_exhausted"


class Overloaded(ResourceExhausted):
    """The peer is too busy to take this now: retry, whole, after `retry_after_ms`.

    On the wire: RESOURCE_EXHAUSTED with trailing metadata RETRY_AFTER_KEY (fleet.rpc).
    """

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class PayloadTooLarge(FleetError):
    code = "payload_too_large"


class DaemonError(FleetError):
    """The daemon answered with an error the manager did not expect."""

    code = "daemon_error"


class ConfigError(FleetError):
    """A bad flag or config file; `problems` holds one line per problem."""

    code = "invalid_argument"

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# gRPC status code names (grpc.StatusCode members) for each kind.
GRPC_CODE_NAMES: dict[type, str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    Conflict: "FAILED_PRECONDITION",
    Unavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    PayloadTooLarge: "RESOURCE_EXHAUSTED",
    DaemonError: "UNKNOWN",
    ConfigError: "INVALID_ARGUMENT",
    FleetError: "INTERNAL",
}

# And the other way: what a gRPC status from a peer becomes on our side.
FROM_GRPC_CODE_NAME: dict[str, type] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "NOT_FOUND": NotFound,
    "FAILED_PRECONDITION": Conflict,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
}

HTTP_STATUS: dict[type, int] = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    ResourceExhausted: 429,
    DaemonError: 502,
    Unavailable: 503,
    DeadlineExceeded: 504,
    ConfigError: 400,
    FleetError: 500,
}


def lookup(table: dict[type, object], exc: FleetError):
    """The entry of `table` for the most specific class of `exc`."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return table[FleetError]
