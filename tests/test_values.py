"""The value converters the config reader uses, with the messages they give."""
import pytest

from fleet.config import parse
from fleet.values import to_command


@pytest.mark.parametrize("empty", ["", "   ", []])
def test_an_empty_command_in_either_form_gets_the_same_message(empty):
    """command = "" and command = [] both say it must not be empty, naming both forms."""
    problems = []
    parse("daemon", {"agents": [{"id": "a", "command": empty}]}, problems)
    assert problems == ["[agents.a] command: must not be empty: a list of strings or one "
                        "shell-like string"]


def test_a_duplicate_agent_id_is_reported_beside_the_duplicates_other_problems():
    """A second agent with a taken id and a broken command gets both problems at once."""
    problems = []
    parse("daemon", {"agents": [{"id": "twin", "command": "x"},
                                {"id": "twin", "command": []}]}, problems)
    assert problems == ["[agents.1] command: must not be empty: a list of strings or one "
                        "shell-like string", "[agents.1] id: duplicate agent id 'twin'"]


@pytest.mark.parametrize("value,message", [
    ("/bin/x 'open", "not a shell-like string (No closing quotation)"),
    ([""], "the program (the first item) is empty"),
    (["/bin/x", 3], "must be a list of strings or one shell-like string: ['/bin/x', 3]"),
    (7, "must be a list of strings or one shell-like string: 7"),
])
def test_a_bad_command_says_what_is_wrong(value, message):
    """Each malformed command is refused with a message naming what is wrong."""
    with pytest.raises(ValueError) as caught:
        to_command(value)
    assert str(caught.value) == message


def test_the_string_form_is_split_like_a_shell():
    """command = "prog --flag 'two words'" becomes three arguments."""
    assert to_command("/bin/prog --flag 'two words'") == ("/bin/prog", "--flag", "two words")


def test_stop_agents_on_exit_is_a_checked_boolean_defaulting_to_true():
    """[daemon] stop_agents_on_exit defaults to true, reads false, refuses a non-boolean."""
    problems = []
    assert parse("daemon", {}, problems).daemon.stop_agents_on_exit is True
    config = parse("daemon", {"daemon": {"stop_agents_on_exit": False}}, problems)
    assert config.daemon.stop_agents_on_exit is False and not problems
    parse("daemon", {"daemon": {"stop_agents_on_exit": "maybe"}}, problems)
    assert problems == ["[daemon] stop_agents_on_exit: not a boolean: 'maybe'"]
