"""Property-based tests: the config parser and the report validator against random input.

The config parser must turn anything into a Config or a ConfigError listing
problems, never another exception. A report's states, however absurd (ids with
'/', '..', NUL, unicode or megabytes, unknown statuses, negative pids), are
either stored exactly or named in the reply's errors, and nothing raises.
"""
import datetime
import itertools
import re

import pytest

from tests.pg import ENGINES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import config as configuration
from fleet import errors
from fleet import values as fleet_values
from fleet.errors import ConfigError
from fleet.manager.store import db as dbmod
from fleet.manager.store import migrations
from fleet.manager.ingest import IngestWriter, ReportService
from fleet.manager.store.models import Agent
from fleet.manager.nodes import NodeFacts, NodeStore
from fleet.manager.store.registry import Registry
from fleet.v1 import fleet_pb2 as pb

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROLES = ("manager", "daemon", "all")

# ---- config ----

MANAGER_KEYS = ["http", "grpc", "db", "offline_after", "api_token", "api_token_file",
                "api_tokens", "cluster_token", "tls", "daemon_timeout", "operate_timeout"]
DAEMON_KEYS = ["manager", "listen", "advertise", "state_dir", "node_id", "labels",
               "cluster_token", "sync_interval", "heartbeat_interval", "metrics_interval",
               "insecure", "tls"]
AGENT_KEYS = ["id", "type", "version", "command", "cwd", "env", "autostart", "restart",
              "start_seconds", "start_retries", "backoff_initial", "backoff_max",
              "stop_signal", "stop_timeout", "log_max_bytes", "log_backups"]
TLS_KEYS = ["cert", "key", "ca", "client_ca", "server_name"]

# Everything TOML can hold, and more: huge integers, nan and inf, dates and times.
scalars = st.one_of(
    st.text(max_size=40), st.integers(), st.integers(-2**70, 2**70).map(lambda n: n * 2**300),
    st.floats(), st.booleans(), st.datetimes(), st.dates(), st.times(),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**63, -2**63 - 1, 10**400]),
    st.sampled_from(["127.0.0.1:0", "[::1]:9", "sqlite:///x.db", "TERM", "SIGKILL", "1e999",
                     "nan", "-1", "always", "file:", "postgresql://h/db", "a..b", "n1\n"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


def table(keys):
    """A table of known keys (and maybe unknown ones) with random values."""
    value = st.one_of(scalars, scalars, scalars, values,  # mostly scalars: they reach converters
                      st.dictionaries(st.sampled_from(TLS_KEYS), values))
    known = st.dictionaries(st.sampled_from(keys), value, max_size=8)
    unknown = st.dictionaries(st.text(max_size=8), values, max_size=2)
    return st.builds(lambda first, second: {**second, **first}, known, unknown)


documents = st.fixed_dictionaries({}, optional={
    "manager": table(MANAGER_KEYS) | values, "daemon": table(DAEMON_KEYS) | values,
    "agents": st.lists(table(AGENT_KEYS) | values, max_size=3) | values,
    "log_level": values, "log_format": values, "extra": values})


def _parsed(role, data):
    """parse() must return a Config and report problems only as one-line strings."""
    problems = []
    config = configuration.parse(role, data, problems)
    assert isinstance(config, configuration.Config)
    assert all(isinstance(p, str) and p for p in problems)
    return problems


@PROPERTY
@given(role=st.sampled_from(ROLES), data=documents)
def test_parse_never_raises_on_random_documents(role, data):
    """Random TOML-like documents give a Config and problems, never an exception."""
    _parsed(role, data)


@PROPERTY
@given(role=st.sampled_from(ROLES), data=st.dictionaries(st.text(max_size=10), values))
def test_parse_never_raises_on_random_top_level_tables(role, data):
    """Any top-level table at all gives a Config and problems, never an exception."""
    _parsed(role, data)


def _load(tmp_path, role, content, **kwargs):
    """load() must return a Config or raise ConfigError, nothing else."""
    path = tmp_path / "fleet.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        return configuration.load(role, str(path), environ={}, **kwargs)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return None


LITERALS = ["inf", "-inf", "nan", "99999999999999999999999", "1" + "0" * 400, "-1", "0", "1.5",
            "true", '"x"', '""', '"/"', '"TERM"', '"127.0.0.1:0"', '"[::1]:99999"', '".."', "[]",
            '["x", 1]', "{}", "{a = 1}", '{ops = "file:/"}', "1979-05-27", "07:32:00",
            '"""multi\nline"""', "[[1], [2]]"]
HEADERS = {"[manager]": MANAGER_KEYS, "[daemon]": DAEMON_KEYS, "[[agents]]": AGENT_KEYS,
           "[manager.tls]": TLS_KEYS, "[daemon.tls]": TLS_KEYS, "[manager.api_tokens]": ["ops"],
           "[daemon.labels]": ["role"], "": ["log_level", "log_format", "x"], "[": ["x"]}


@st.composite
def toml_documents(draw):
    """Mostly well-formed TOML: each header once, its known keys once, with absurd values."""
    lines = []
    for header in draw(st.lists(st.sampled_from(sorted(HEADERS)), unique=True, max_size=4)):
        keys = draw(st.lists(st.sampled_from(HEADERS[header]), unique=True, max_size=6))
        lines += [header] + [f"{key} = {draw(st.sampled_from(LITERALS))}" for key in keys]
    return "\n".join(lines)


toml_texts = st.one_of(st.text(max_size=300), toml_documents(), toml_documents(),
                       st.builds("{}\n{}".format, toml_documents(), st.text(max_size=20)))


@settings(PROPERTY, max_examples=300)   # absurd values must meet the keys that convert them
@given(role=st.sampled_from(ROLES), content=toml_texts)
def test_load_never_raises_on_random_text(tmp_path_factory, role, content):
    """Random text as the config file: a Config or a ConfigError, never a traceback."""
    _load(tmp_path_factory.mktemp("cfg"), role, content)


@PROPERTY
@given(role=st.sampled_from(ROLES), content=st.binary(max_size=200))
def test_load_never_raises_on_random_bytes(tmp_path_factory, role, content):
    """Random bytes (bad UTF-8 included) as the config file: ConfigError at worst."""
    _load(tmp_path_factory.mktemp("cfg"), role, content)


@PROPERTY
@given(role=st.sampled_from(ROLES),
       flags=st.dictionaries(st.sampled_from(sorted(configuration.FLAG_KEYS)),
                             st.text(max_size=30)),
       content=st.sampled_from(["", "manager = 5\ndaemon = []", "[daemon]\nlisten = 1"]))
def test_load_never_raises_on_random_flags(tmp_path_factory, role, flags, content):
    """Random flag values over any file: a Config or a ConfigError."""
    _load(tmp_path_factory.mktemp("cfg"), role, content, flags=flags)


@pytest.mark.parametrize("content, problem", [
    ('[[agents]]\nid = "a"\ncommand = "x"\nstart_retries = inf', "[agents.a] start_retries: "),
    ("[manager]\noffline_after = 99999999999999999999999999999999", "[manager] offline_after: "),
    ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_found_by_the_properties(tmp_path, content, problem):
    """Cases the properties found: an infinite or huge number, nesting past the recursion limit."""
    with pytest.raises(ConfigError) as caught:
        _load_strict(tmp_path, content)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def _load_strict(tmp_path, content):
    path = tmp_path / "fleet.toml"
    path.write_text(content)
    return configuration.load("manager", str(path), environ={})


def test_a_token_file_that_is_not_utf8_is_a_config_error(tmp_path):
    """A binary token file is a problem naming its key, not a UnicodeDecodeError."""
    (tmp_path / "token").write_bytes(b"\xff\xfe\x00binary")
    for line in (f'api_token_file = "{tmp_path}/token"',
                 f'api_tokens = {{ops = "file:{tmp_path}/token"}}'):
        with pytest.raises(ConfigError) as caught:
            _load_strict(tmp_path, "[manager]\n" + line)
        assert "not UTF-8" in str(caught.value)


@pytest.mark.parametrize("good, bad", [("n1", "n1\n"), ("a1", "a1\n")])
def test_ids_with_a_trailing_newline_are_invalid(good, bad):
    """`$` in the id patterns does not let a trailing newline through."""
    check = fleet_values.valid_node_id if good == "n1" else fleet_values.valid_agent_id
    assert check(good) and not check(bad)


# ---- the report validator (SyncAgentStates without the wire) ----

AGENT_ID_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}")
HEALTHS = ("", "healthy", "unhealthy", "unknown")


def huge(alphabet):
    return st.builds(lambda char, count: char * count, alphabet, st.integers(1025, 100_000))


agent_ids = st.one_of(
    st.from_regex(AGENT_ID_RULE, fullmatch=True), st.sampled_from(["a", "b", "a1", "x-y_z"]),
    st.sampled_from(["", "/", "..", "../../etc/passwd", "a/b", "a\x00", "\x00", "a1\n", "é",
                     "a" * 65, "☃", " a", "a "]),
    st.text(max_size=80), huge(st.sampled_from("a/\x00é")))
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "node_exporter", "x\x00y"]),
                  huge(st.sampled_from("tv\x00")))
int64 = st.integers(-2**63, 2**63 - 1)
states = st.builds(
    pb.AgentState, agent_id=agent_ids, type=texts, version=texts,
    status=st.integers(-2**31, 2**31 - 1) | st.integers(0, 9), pid=int64 | st.integers(0, 5),
    start_time=int64, restart_count=int64, last_exit_code=int64, last_exit_signal=int64,
    health=st.sampled_from(HEALTHS) | st.text(max_size=10), last_heartbeat=int64)


def expected_fault(state, ids):
    """The test's own statement of which states a report must reject."""
    return (ids.count(state.agent_id) > 1 or not AGENT_ID_RULE.fullmatch(state.agent_id)
            or not 1 <= state.status <= 8 or state.pid < 0 or state.health not in HEALTHS
            or any(len(t) > 1024 or "\x00" in t for t in (state.type, state.version)))


def stored_form(node_id, state):
    """The row a valid state must become."""
    return (node_id, state.agent_id, state.type, state.version, state.status, state.pid,
            state.start_time or None, state.restart_count, state.last_exit_code,
            state.last_exit_signal, state.health or "unknown", state.last_heartbeat or None)


class Reports:
    """A ReportService over a file database, with a fresh registered node per report."""

    def __init__(self, url):
        self.db = dbmod.open_database(url)
        migrations.migrate(self.db)
        self.registry = Registry.load(self.db)
        self.writer = IngestWriter(self.db)
        self.nodes = NodeStore(self.db, self.registry)
        self.service = ReportService(self.registry, self.writer)
        self.writer.start()
        self._count = itertools.count()

    def new_node(self):
        node_id = f"n{next(self._count)}"
        self.nodes.register(NodeFacts(node_id, boot_id=1))
        return node_id

    def rows(self, node_id):
        query = Agent.select().where(Agent.node_id == node_id)
        with self.db.connection_context():
            return {a.agent_id: (a.node_id, a.agent_id, a.type, a.version, a.status, a.pid,
                                 a.start_time, a.restart_count, a.last_exit_code,
                                 a.last_exit_signal, a.health, a.last_heartbeat)
                    for a in query.execute(self.db)}


@pytest.fixture(scope="module", params=ENGINES)
def reports(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('reports')}/fleet.db"
    else:
        server = request.getfixturevalue("pg_server")
        name = server.create_database()
        request.addfinalizer(lambda: server.drop_database(name))
        url = server.url(name)
    made = Reports(url)
    yield made
    made.writer.stop()


@PROPERTY
@given(report=st.lists(states, max_size=12), full=st.booleans())
def test_a_report_stores_valid_states_exactly_and_names_the_rest(reports, report, full):
    """Valid states are stored field for field; each invalid one is named in errors."""
    node_id = reports.new_node()
    ids = [s.agent_id for s in report]
    result = reports.service.sync(node_id, 1, 1, full, report)
    valid = [s for s in report if not expected_fault(s, ids)]
    invalid = [s.agent_id[:128] for s in report if expected_fault(s, ids)]
    assert [agent_id for agent_id, _ in result.errors] == invalid
    assert all(reason for _, reason in result.errors)
    assert (result.accepted, result.rejected, result.success) == \
        (len(valid), len(invalid), not invalid)
    assert reports.rows(node_id) == {s.agent_id: stored_form(node_id, s) for s in valid}


valid_states = st.builds(
    pb.AgentState, agent_id=st.from_regex(AGENT_ID_RULE, fullmatch=True),
    type=st.text(max_size=10).filter(lambda t: "\x00" not in t), version=st.just("1.0"),
    status=st.integers(1, 8), pid=st.integers(0, 2**62), start_time=int64,
    health=st.sampled_from(HEALTHS), next_retry_time=st.integers(0, 2**62),
    changed_at=st.integers(0, 2**62), last_error=texts, health_message=texts,
    config_changed=st.booleans())


def broken(field, values):
    """A valid state with `field` set to one of `values` (most of them break a rule)."""
    def build(state, value):
        copy = pb.AgentState()
        copy.CopyFrom(state)
        setattr(copy, field, value)
        return copy
    return st.builds(build, valid_states, values)


full_states = st.one_of(
    valid_states, broken("agent_id", agent_ids), broken("type", texts),
    broken("version", texts), broken("status", st.integers(-9, 99)),
    broken("pid", int64), broken("next_retry_time", int64), broken("changed_at", int64),
    broken("health", st.text(max_size=10)))


@PROPERTY
@given(report=st.lists(full_states, max_size=8))
def test_the_inline_checks_of_build_rows_agree_with_state_fault(report):
    """build_rows checks a state inline (the hot path) and asks state_fault only for
    the reason: a state is stored as agent_row makes it exactly when state_fault
    finds nothing (and its agent_id is not repeated), and rejected with its reason
    otherwise."""
    from fleet.manager.ingest import agent_row, build_rows, state_fault
    ids = [s.agent_id for s in report]
    rows, rejected = build_rows("n1", 2, 3, 4, report)
    repeated = [s for s in report if ids.count(s.agent_id) > 1]
    assert rows == [agent_row("n1", s, 2, 3, 4) for s in report
                    if s not in repeated and state_fault(s) is None]
    assert rejected == [(s.agent_id[:128], "agent_id appears more than once in the report"
                         if s in repeated else state_fault(s)) for s in report
                        if s in repeated or state_fault(s) is not None]


@PROPERTY
@given(node_id=st.text(max_size=200) | st.sampled_from(["", "/", "..", "a/b", "n1\n", "n\x00"]),
       report=st.lists(states, max_size=3))
def test_a_malformed_or_unknown_node_fails_the_whole_report(reports, node_id, report):
    """A report from a malformed or unregistered node raises InvalidArgument or NotFound."""
    expected = errors.NotFound if fleet_values.valid_node_id(node_id) else \
        errors.InvalidArgument
    if reports.registry.get(node_id) is not None:
        return
    with pytest.raises(expected):
        reports.service.sync(node_id, 1, 1, False, report)
    if "\x00" not in node_id:      # PostgreSQL cannot even be asked about one with NUL
        assert reports.rows(node_id) == {}


def test_dates_and_times_in_the_config_are_problems():
    """TOML dates where a duration or string belongs are named problems."""
    problems = _parsed("daemon", {"daemon": {"sync_interval": datetime.date(2020, 1, 1),
                                             "state_dir": datetime.time(1, 2)}})
    assert any("sync_interval" in p for p in problems) and any("state_dir" in p for p in problems)


def test_pulled_agents_meet_the_same_rules(reports):
    """Agents pulled from a daemon (sync, operate) are checked like reported states."""
    node_id = reports.new_node()
    infos = [pb.AgentInfo(agent_id="ok", status=pb.AGENT_STATUS_RUNNING, pid=1,
                          last_error="e\x00" + "x" * 10_000),
             pb.AgentInfo(agent_id="sick", status=pb.AGENT_STATUS_RUNNING, health="bogus"),
             pb.AgentInfo(agent_id="nul", status=pb.AGENT_STATUS_RUNNING, version="1\x00"),
             pb.AgentInfo(agent_id="a/b", status=pb.AGENT_STATUS_RUNNING)]
    (stored,) = reports.nodes.store_agent_infos(node_id, infos)
    assert (stored["agent_id"], stored["health"]) == ("ok", "unknown")
    assert "\x00" not in stored["last_error"] and len(stored["last_error"]) == 4096


def test_a_stored_health_outside_the_api_values_is_served_as_unknown(reports):
    """A row written before health was checked still matches the API's health enum."""
    node_id = reports.new_node()
    reports.service.sync(node_id, 1, 1, False, [pb.AgentState(agent_id="a", status=3)])
    with reports.db.connection_context():
        Agent.update(health="bogus").where(Agent.node_id == node_id).execute(reports.db)
    assert reports.nodes.list_agents(node_id)[0]["health"] == "unknown"
