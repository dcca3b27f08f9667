"""The state table, its wire mapping and the config-free state helpers."""
from fleet.states import TRANSITIONS, State, health
from fleet.v1 import fleet_pb2 as pb


def test_every_state_has_a_table_entry_and_a_wire_mapping():
    """Each State has a TRANSITIONS entry and an AGENT_STATUS_<NAME> of the same value."""
    for state in State:
        assert state in TRANSITIONS
        assert pb.AgentStatus.Value(state.wire_name) == int(state)
    assert len(pb.AgentStatus.keys()) == len(State)


def test_nothing_goes_back_to_unspecified():
    """UNSPECIFIED is never stored: no transition leads to it."""
    assert all(State.UNSPECIFIED not in targets for targets in TRANSITIONS.values())


def test_health_follows_the_state():
    """healthy when RUNNING, unhealthy in BACKOFF/EXITED/FATAL, else unknown."""
    assert health(State.RUNNING) == "healthy"
    assert {health(s) for s in (State.BACKOFF, State.EXITED, State.FATAL)} == {"unhealthy"}
    assert health(State.STARTING) == "unknown"


def test_the_daemon_fills_every_field_of_the_wire_agent_messages():
    """convert.py names every field of AgentState and AgentInfo (none left at its default)."""
    from fleet.daemon.convert import INFO_FIELDS, STATE_FIELDS
    assert set(STATE_FIELDS) | {"status"} == set(pb.AgentState.DESCRIPTOR.fields_by_name)
    assert set(INFO_FIELDS) | {"status"} == set(pb.AgentInfo.DESCRIPTOR.fields_by_name)
