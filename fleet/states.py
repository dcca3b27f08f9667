"""Agent process states and the only table of legal transitions.

Values match the wire enum (AGENT_STATUS_<NAME> = value). This module imports
nothing of fleet: the supervisor owns the one method that changes a state.
"""
import enum


class State(enum.IntEnum):
    UNSPECIFIED = 0  # never stored
    STOPPED = 1      # stopped by request, or autostart = false
    STARTING = 2     # spawned, inside the start_seconds window
    RUNNING = 3      # up past start_seconds
    BACKOFF = 4      # a start failed; waiting before the next try
    STOPPING = 5     # stop signal sent, waiting for the group to exit
    EXITED = 6       # exited by itself and not restarted
    FATAL = 7        # start_retries used up
    UNKNOWN = 8      # state file found but process facts unreadable

    @property
    def wire_name(self) -> str:
        """The proto enum name (AGENT_STATUS_RUNNING)."""
        return f"AGENT_STATUS_{self.name}"

    @property
    def api_name(self) -> str:
        """The HTTP API's spelling ("running")."""
        return self.name.lower()


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    S.UNSPECIFIED: frozenset({S.STOPPED, S.STARTING, S.RUNNING, S.UNKNOWN}),
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.FATAL, S.EXITED}),
    S.RUNNING: frozenset({S.STARTING, S.STOPPING, S.EXITED, S.BACKOFF}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.EXITED: frozenset({S.STARTING}),
    S.FATAL: frozenset({S.STARTING}),
    S.UNKNOWN: frozenset({S.STARTING, S.STOPPED, S.RUNNING}),
}

# Groups the supervisor and the reports reason with.
RUNNING_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
STOPPED_STATES = frozenset({S.STOPPED, S.EXITED, S.FATAL})
UNHEALTHY_STATES = frozenset({S.BACKOFF, S.EXITED, S.FATAL})


class IllegalTransition(Exception):
    """A state change the table does not allow: a bug, never user input."""


def check_transition(old: State, new: State) -> None:
    """Raise IllegalTransition unless TRANSITIONS allows old -> new."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.name} -> {new.name}")


def health(state: State) -> str:
    """healthy when RUNNING, unhealthy in BACKOFF/EXITED/FATAL, else unknown."""
    if state is S.RUNNING:
        return "healthy"
    if state in UNHEALTHY_STATES:
        return "unhealthy"
    return "unknown"


def from_api_name(name: str) -> State:
    """The State spelled `name` in the HTTP API; KeyError if none."""
    state = State[name.upper()]
    if state is S.UNSPECIFIED:
        raise KeyError(name)
    return state
