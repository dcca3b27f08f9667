"""Configuration: TOML file, environment and flags, parsed once into frozen dataclasses.

Precedence: flags beat environment (FLEET_<FLAG>) beat the config file beat
defaults. Every value is converted and checked where it is read; every problem
is collected with its section and key, and load() raises one ConfigError
holding them all. Only the entry point turns that into an exit status.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import signal
import ssl
import sys
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 carries tomli in the pyz
    import tomli as tomllib

from fleet.errors import ConfigError
from fleet.values import (AGENT_ID_RE, is_loopback, to_address, to_address_list, to_bool,
                          to_bytes, to_choice, to_command, to_db_url, to_http_url, to_int,
                          to_node_id, to_nonempty_str, to_seconds, to_signal, to_str, to_str_map,
                          valid_agent_id)

RESTART_POLICIES = ("always", "on-failure", "never")
PROBE_KINDS = ("http", "tcp", "exec")
HEALTH_ACTIONS = ("restart", "none")


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    """`[agents.health]`: one probe of the agent (DESIGN.md "Health, limits and events")."""

    kind: str                          # http | tcp | exec
    target: str | tuple[str, ...]      # the URL, HOST:PORT, or the command
    interval: float = 10.0
    timeout: float = 2.0
    grace: float = 10.0                # after each start, no result counts
    failures: int = 3                  # consecutive failures -> unhealthy
    on_unhealthy: str = "restart"      # restart | none


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """`[agents.limits]`: resource guardrails over the agent's whole process tree."""

    memory: int = 0                    # bytes of RSS; 0: no limit
    cpu: float = 0.0                   # percent of one core; 0: no limit
    for_seconds: float = 60.0          # over a limit this long, then act
    action: str = "restart"            # restart | none


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    cert: str = ""
    key: str = ""
    ca: str = ""            # daemon: the CA that signed the manager's certificate
    client_ca: str = ""     # manager: the CA that signs daemons' certificates (client
                            # and server: the manager dials daemons trusting it too)
    server_name: str = ""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    id: str
    command: tuple[str, ...]
    type: str = ""
    version: str = ""
    cwd: str = ""
    env: tuple[tuple[str, str], ...] = ()
    autostart: bool = True
    restart: str = "always"
    start_seconds: float = 1.0
    start_retries: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    health: HealthConfig | None = None
    limits: LimitsConfig | None = None

    def config_hash(self) -> str:
        """A digest of what changes the running process (not log settings)."""
        facts = [list(self.command), self.cwd, list(self.env)]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    managers: tuple[str, ...] = ("127.0.0.1:9090",)
    listen: str = "127.0.0.1:9091"
    advertise: str = ""
    state_dir: str = "./fleet-state"
    node_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    cluster_token: str = ""
    sync_interval: float = 10.0
    heartbeat_interval: float = 30.0
    metrics_interval: float = 10.0
    stop_agents_on_exit: bool = True   # False: SIGTERM leaves agents for the next daemon
    insecure: bool = False
    tls: TLSConfig | None = None


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    http: str = "127.0.0.1:8080"
    grpc: str = "0.0.0.0:9090"
    db: str = "sqlite:///fleet.db"
    offline_after: float = 90.0
    daemon_timeout: float = 10.0       # deadline of each call to a daemon but operate
    operate_timeout: float = 30.0      # deadline of an operate (a stop may take stop_timeout)
    http_request_timeout: float = 10.0  # a request must arrive whole within this
    http_max_connections: int = 1000   # open HTTP connections at most; more wait
    events_retention: float = 604800.0  # seconds agent events are kept
    api_tokens: tuple[tuple[str, str], ...] = ()   # (name, token)
    cluster_token: str = ""
    tls: TLSConfig | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    role: str
    manager: ManagerConfig
    daemon: DaemonConfig
    agents: tuple[AgentConfig, ...]
    log_level: str = "info"
    log_format: str = "text"


class _Reader:
    """Reads one TOML table, collecting problems named `section key: why`."""

    def __init__(self, section: str, table: Any, problems: list[str]):
        self.section = section
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(table, dict):
            self.fail("", "not a table")
            table = {}
        self.table = table

    def fail(self, key: str, why: str) -> None:
        # A top-level key is named alone: `log_level: ...`, not `[] log_level: ...`.
        where = f"[{self.section}] {key}".rstrip() if self.section else key
        self.problems.append(f"{where}: {why}")

    def get(self, key: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        """The converted value of key, or default when absent or invalid."""
        self.seen.add(key)
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (ValueError, TypeError, OverflowError) as exc:   # inf, 10**400 in TOML
            self.fail(key, str(exc))
            return default

    def check_unknown(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.fail(key, "unknown key")


def read_token(reader: _Reader, key: str) -> str:
    """`key` inline or `key_file` = path holding it (whitespace stripped)."""
    token = reader.get(key, "", to_str)
    path = reader.get(f"{key}_file", "", to_str)
    if token and path:
        reader.fail(key, f"set {key} or {key}_file, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            reader.fail(f"{key}_file", f"cannot read {path}: {exc.strerror}")
        except UnicodeError:
            reader.fail(f"{key}_file", f"{path} is not UTF-8 text")
        else:
            if not token:
                reader.fail(f"{key}_file", f"{path} is empty")
    return token


# ---- sections ----

def read_tls(parent: _Reader, keys: tuple[str, ...]) -> TLSConfig | None:
    """The `[<section>.tls]` table: cert and key required, every PEM file usable.

    Files are checked here so that a missing, unreadable or mismatched one is a
    config error naming its key (exit 2), not a traceback or a vague "cannot
    listen" from the TLS library later.
    """
    parent.seen.add("tls")
    if "tls" not in parent.table:
        return None
    reader = _Reader(f"{parent.section}.tls", parent.table["tls"], parent.problems)
    values = {key: reader.get(key, "", to_str) for key in keys}
    reader.check_unknown()
    for key in ("cert", "key"):
        if not values.get(key):
            reader.fail(key, "required when TLS is configured")
    _check_tls_files(reader, values)
    return TLSConfig(**values)


def _check_tls_files(reader: _Reader, values: dict[str, str]) -> None:
    """Fail the key of each PEM file that cannot be read or does not hold what it should."""
    usable = {}
    for key in ("cert", "key", "ca", "client_ca"):
        path = values.get(key, "")
        if not path:
            continue
        try:
            with open(path, "rb"):
                usable[key] = path
        except OSError as exc:
            reader.fail(key, f"cannot read {path}: {exc.strerror}")
    for key in ("cert", "ca", "client_ca"):
        if key in usable:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=usable[key])
            except ssl.SSLError:
                reader.fail(key, f"{usable[key]} holds no PEM certificate")
                usable.pop(key)
    if "cert" in usable and "key" in usable:
        _check_key(reader, usable["cert"], usable["key"])


def _check_key(reader: _Reader, cert: str, key: str) -> None:
    """Fail `key` unless it is the unencrypted PEM private key of cert."""
    try:
        # The password callback stops OpenSSL prompting on the terminal for an
        # encrypted key (gRPC could not use one either).
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        why = "does not match cert" if exc.reason == "KEY_VALUES_MISMATCH" \
            else "is not an unencrypted PEM private key"
        reader.fail("key", f"{key} {why}")


def read_manager(table: Any, problems: list[str]) -> ManagerConfig:
    r = _Reader("manager", table, problems)
    tokens = []
    api_token = read_token(r, "api_token")
    if api_token:
        tokens.append(("default", api_token))
    named = r.get("api_tokens", (), to_str_map)
    for name, spec in named:
        tokens.append((name, _named_token(r, name, spec)))
    config = ManagerConfig(
        http=r.get("http", ManagerConfig.http, to_address),
        grpc=r.get("grpc", ManagerConfig.grpc, to_address),
        db=r.get("db", ManagerConfig.db, to_db_url),
        offline_after=r.get("offline_after", 90.0, lambda v: to_seconds(v, 0.1)),
        daemon_timeout=r.get("daemon_timeout", ManagerConfig.daemon_timeout,
                             lambda v: to_seconds(v, 0.1)),
        operate_timeout=r.get("operate_timeout", ManagerConfig.operate_timeout,
                              lambda v: to_seconds(v, 0.1)),
        http_request_timeout=r.get("http_request_timeout", ManagerConfig.http_request_timeout,
                                   lambda v: to_seconds(v, 0.1)),
        http_max_connections=r.get("http_max_connections", ManagerConfig.http_max_connections,
                                   lambda v: to_int(v, 1, 100_000)),
        events_retention=r.get("events_retention", ManagerConfig.events_retention,
                               lambda v: to_seconds(v, 60)),
        api_tokens=tuple(tokens),
        cluster_token=read_token(r, "cluster_token"),
        tls=read_tls(r, ("cert", "key", "client_ca")),
    )
    r.check_unknown()
    if config.cluster_token and any(t == config.cluster_token for _, t in tokens):
        r.fail("api_token", "must differ from cluster_token")
    return config


def _named_token(r: _Reader, name: str, spec: str) -> str:
    """`file:/path` reads the token from a file; anything else is the token."""
    if not spec.startswith("file:"):
        return spec
    try:
        with open(spec[5:], encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        r.fail(f"api_tokens.{name}", f"cannot read {spec[5:]}: {exc.strerror}")
        return ""
    except UnicodeError:
        r.fail(f"api_tokens.{name}", f"{spec[5:]} is not UTF-8 text")
        return ""
    if not token:
        r.fail(f"api_tokens.{name}", f"{spec[5:]} is empty")
    return token


def read_daemon(table: Any, problems: list[str]) -> DaemonConfig:
    r = _Reader("daemon", table, problems)
    config = DaemonConfig(
        managers=r.get("manager", DaemonConfig.managers, to_address_list),
        listen=r.get("listen", DaemonConfig.listen, to_address),
        advertise=r.get("advertise", "", lambda v: to_address(v) if v else ""),
        state_dir=r.get("state_dir", DaemonConfig.state_dir, to_nonempty_str),
        node_id=r.get("node_id", "", to_node_id),
        labels=r.get("labels", (), to_str_map),
        cluster_token=read_token(r, "cluster_token"),
        sync_interval=r.get("sync_interval", 10.0, lambda v: to_seconds(v, 0.05)),
        heartbeat_interval=r.get("heartbeat_interval", 30.0, lambda v: to_seconds(v, 0.05)),
        metrics_interval=r.get("metrics_interval", 10.0, lambda v: to_seconds(v, 1.0)),
        stop_agents_on_exit=r.get("stop_agents_on_exit", True, to_bool),
        insecure=r.get("insecure", False, to_bool),
        tls=read_tls(r, ("cert", "key", "ca", "server_name")),
    )
    r.check_unknown()
    return config


def read_agent(name: str, table: Any, problems: list[str]) -> AgentConfig | None:
    """One [[agents]] table; problems are named `[agents.NAME] key`."""
    r = _Reader(f"agents.{name}", table, problems)
    agent_id = r.get("id", "", to_str)
    if not valid_agent_id(agent_id):
        r.fail("id", f"{agent_id!r} does not match {AGENT_ID_RE.pattern}")
    command = r.get("command", (), to_command)
    if not command and "command" not in r.table:
        r.fail("command", "required")
    d = AgentConfig
    values = dict(
        type=r.get("type", "", to_str), version=r.get("version", "", to_str),
        cwd=r.get("cwd", "", to_str), env=r.get("env", (), to_str_map),
        autostart=r.get("autostart", True, to_bool),
        restart=r.get("restart", d.restart, to_choice(RESTART_POLICIES)),
        start_seconds=r.get("start_seconds", d.start_seconds, to_seconds),
        start_retries=r.get("start_retries", d.start_retries, lambda v: to_int(v, -1, 1_000_000)),
        backoff_initial=r.get("backoff_initial", d.backoff_initial, to_seconds),
        backoff_max=r.get("backoff_max", d.backoff_max, to_seconds),
        stop_signal=r.get("stop_signal", d.stop_signal, to_signal),
        stop_timeout=r.get("stop_timeout", d.stop_timeout, lambda v: to_seconds(v, 0.0)),
        log_max_bytes=r.get("log_max_bytes", d.log_max_bytes, lambda v: to_int(v, 1024, 2**50)),
        log_backups=r.get("log_backups", d.log_backups, lambda v: to_int(v, 0, 100)),
    )
    values["health"] = read_health(r)
    values["limits"] = read_limits(r)
    r.check_unknown()
    if values["backoff_max"] < values["backoff_initial"]:
        r.fail("backoff_max", "must be >= backoff_initial")
    return AgentConfig(id=agent_id, command=command, **values) if command else None


def read_health(parent: _Reader) -> HealthConfig | None:
    """`[agents.<id>.health]`: exactly one of http, tcp, exec, and its timing."""
    parent.seen.add("health")
    if "health" not in parent.table:
        return None
    r = _Reader(f"{parent.section}.health", parent.table["health"], parent.problems)
    given = [kind for kind in PROBE_KINDS if kind in r.table]
    converters = {"http": to_http_url, "tcp": to_address, "exec": to_command}
    targets = {kind: r.get(kind, None, converters[kind]) for kind in PROBE_KINDS}
    d = HealthConfig
    values = dict(
        interval=r.get("interval", d.interval, lambda v: to_seconds(v, 0.1)),
        timeout=r.get("timeout", d.timeout, lambda v: to_seconds(v, 0.01)),
        grace=r.get("grace", d.grace, to_seconds),
        failures=r.get("failures", d.failures, lambda v: to_int(v, 1, 1000)),
        on_unhealthy=r.get("on_unhealthy", d.on_unhealthy, to_choice(HEALTH_ACTIONS)),
    )
    r.check_unknown()
    if len(given) != 1:
        r.fail(given[1] if given else "", "set exactly one of http, tcp, exec"
               + (f" (got {', '.join(given)})" if given else ""))
        return None
    target = targets[given[0]]
    return HealthConfig(given[0], target, **values) if target is not None else None


def read_limits(parent: _Reader) -> LimitsConfig | None:
    """`[agents.<id>.limits]`: memory and/or cpu over the process tree, `for`, `action`."""
    parent.seen.add("limits")
    if "limits" not in parent.table:
        return None
    r = _Reader(f"{parent.section}.limits", parent.table["limits"], parent.problems)
    d = LimitsConfig
    config = LimitsConfig(
        memory=r.get("memory", 0, to_bytes),
        cpu=r.get("cpu", 0.0, _to_percent),
        for_seconds=r.get("for", d.for_seconds, to_seconds),
        action=r.get("action", d.action, to_choice(HEALTH_ACTIONS)),
    )
    r.check_unknown()
    if not config.memory and not config.cpu and "memory" not in r.table \
            and "cpu" not in r.table:
        r.fail("memory", "set memory or cpu (or both)")
    return config


def _to_percent(value: Any) -> float:
    """A percent of one core: a number above 0 (it may exceed 100: several cores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= 100_000:
        raise ValueError(f"must be a percent of one core, above 0 and at most 100000: {value!r}")
    return float(value)


FLAG_KEYS: dict[str, list[tuple[str | None, str]]] = {
    "http": [("manager", "http")], "grpc": [("manager", "grpc")], "db": [("manager", "db")],
    "manager": [("daemon", "manager")], "listen": [("daemon", "listen")],
    "advertise": [("daemon", "advertise")],
    "state_dir": [("daemon", "state_dir")], "node_id": [("daemon", "node_id")],
    "insecure": [("daemon", "insecure")],
    "api_token": [("manager", "api_token")],
    "cluster_token": [("manager", "cluster_token"), ("daemon", "cluster_token")],
    "log_level": [(None, "log_level")], "log_format": [(None, "log_format")],
}


def env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """FLEET_<FLAG> values, by flag name."""
    found = {}
    for flag in FLAG_KEYS:
        value = environ.get("FLEET_" + flag.upper())
        if value is not None and value != "":
            found[flag] = value
    return found


def apply_overrides(data: dict, overrides: dict[str, Any]) -> None:
    """Write flag/env values into the file's tables (a token drops its _file twin)."""
    for flag, value in overrides.items():
        for section, key in FLAG_KEYS[flag]:
            table = data if section is None else data.setdefault(section, {})
            if not isinstance(table, dict):
                continue
            table[key] = value
            table.pop(key + "_file", None)


def read_file(path: str, problems: list[str]) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        problems.append(f"config file {path}: {exc.strerror}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"config file {path}: {exc}")
    except RecursionError:
        problems.append(f"config file {path}: nested too deeply")
    return {}


def load(role: str, path: str | None = None, flags: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> Config:
    """Build the Config for `role`; raise ConfigError listing every problem."""
    problems: list[str] = []
    environ = os.environ if environ is None else environ
    data = read_file(path, problems) if path else {}
    apply_overrides(data, env_overrides(environ))
    apply_overrides(data, {k: v for k, v in (flags or {}).items() if v is not None})
    config = parse(role, data, problems)
    if problems:
        raise ConfigError(problems)
    return config


def parse(role: str, data: dict, problems: list[str]) -> Config:
    top = _Reader("", data, problems)
    top.seen.update({"manager", "daemon", "agents"})
    level = top.get("log_level", "info", to_choice(("debug", "info", "warning", "error")))
    fmt = top.get("log_format", "text", to_choice(("text", "json")))
    top.check_unknown()
    manager = read_manager(data.get("manager", {}), problems)
    daemon = read_daemon(data.get("daemon", {}), problems)
    agents = read_agents(data.get("agents", []), problems)
    config = Config(role, manager, daemon, agents, level, fmt)
    check_daemon_security(config, problems)
    check_manager_database(config, problems)
    return config


def read_agents(items: Any, problems: list[str]) -> tuple[AgentConfig, ...]:
    if not isinstance(items, list):
        problems.append("[[agents]]: must be an array of tables")
        return ()
    names = _agent_names(items)
    agents, ids = [], set()
    for index, table in enumerate(items):
        agent = read_agent(names[index], table, problems)
        if agent is None:
            continue
        if agent.id in ids:
            problems.append(f"[agents.{index}] id: duplicate agent id {agent.id!r}")
        ids.add(agent.id)
        agents.append(agent)
    return tuple(agents)


def _agent_names(items: list) -> list[str]:
    """How problems name each agent: its id, or its index when the id is missing,
    invalid or shared with another agent (and so names neither)."""
    ids = [table.get("id") if isinstance(table, dict) else None for table in items]
    return [agent_id if isinstance(agent_id, str) and valid_agent_id(agent_id)
            and ids.count(agent_id) == 1 else str(index)
            for index, agent_id in enumerate(ids)]


def check_manager_database(config: Config, problems: list[str]) -> None:
    """PostgreSQL needs its driver, and both tokens configured: the managers sharing
    the database must share them, so none may make its own beside a database file."""
    manager = config.manager
    if config.role not in ("manager", "all") or not manager.db.startswith("postgres"):
        return
    try:
        importlib.import_module("psycopg2")
    except ImportError:
        problems.append("[manager] db: PostgreSQL needs the psycopg2 driver, which is not "
                        "installed (pip install psycopg2-binary; a fleet.pyz carries it "
                        "when built with --with-postgres)")
    if not manager.api_tokens:
        problems.append("[manager] api_token: required with a PostgreSQL database")
    if not manager.cluster_token:
        problems.append("[manager] cluster_token: required with a PostgreSQL database")


def check_daemon_security(config: Config, problems: list[str]) -> None:
    """A daemon on a non-loopback address needs a cluster token or --insecure."""
    daemon = config.daemon
    if config.role not in ("daemon", "all") or daemon.cluster_token or daemon.insecure:
        return
    try:
        loopback = is_loopback(daemon.listen)
    except ValueError:
        return  # already reported
    if not loopback:
        problems.append("[daemon] listen: a non-loopback address needs cluster_token "
                        "(or --insecure)")
