"""The [[agents]] definitions, with their [agents.health] probe and [agents.limits]
guardrails: one reader shared by the config file and anything else that defines
agents (a reload, a policy), so each is checked by the same code."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
from typing import Any

from fleet.config.reader import Reader
from fleet.values import (AGENT_ID_RE, to_address, to_bool, to_bytes, to_choice, to_command,
                          to_http_url, to_int, to_seconds, to_signal, to_str, to_str_map,
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
    restart_on_change: bool = True     # False: a reload that changes it only flags it

    def config_hash(self) -> str:
        """A digest of what changes the running process (not log settings)."""
        facts = [list(self.command), self.cwd, list(self.env)]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def read_agents(items: Any, problems: list[str]) -> tuple[AgentConfig, ...]:
    if not isinstance(items, list):
        problems.append("[[agents]]: must be an array of tables")
        return ()
    names = _agent_names(items)
    agents, ids = [], set()
    for index, table in enumerate(items):
        agent = read_agent(names[index], table, problems)
        # An agent too broken to build still claims its id: a duplicate is reported
        # with its other problems, not only once they are fixed.
        agent_id = agent.id if agent is not None else _raw_id(table)
        if agent_id is not None:
            if agent_id in ids:
                problems.append(f"[agents.{index}] id: duplicate agent id {agent_id!r}")
            ids.add(agent_id)
        if agent is not None:
            agents.append(agent)
    return tuple(agents)


def _raw_id(table: Any) -> str | None:
    """The id a table gives, unchecked; None when it gives no string."""
    agent_id = table.get("id") if isinstance(table, dict) else None
    return agent_id if isinstance(agent_id, str) else None


def _agent_names(items: list) -> list[str]:
    """How problems name each agent: its id, or its index when the id is missing,
    invalid or shared with another agent (and so names neither)."""
    ids = [table.get("id") if isinstance(table, dict) else None for table in items]
    return [agent_id if isinstance(agent_id, str) and valid_agent_id(agent_id)
            and ids.count(agent_id) == 1 else str(index)
            for index, agent_id in enumerate(ids)]


def read_agent(name: str, table: Any, problems: list[str]) -> AgentConfig | None:
    """One [[agents]] table; problems are named `[agents.NAME] key`."""
    r = Reader(f"agents.{name}", table, problems)
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
        restart_on_change=r.get("restart_on_change", True, to_bool),
    )
    values["health"] = read_health(r)
    values["limits"] = read_limits(r)
    r.check_unknown()
    if values["backoff_max"] < values["backoff_initial"]:
        r.fail("backoff_max", "must be >= backoff_initial")
    return AgentConfig(id=agent_id, command=command, **values) if command else None


def read_health(parent: Reader) -> HealthConfig | None:
    """`[agents.<id>.health]`: exactly one of http, tcp, exec, and its timing."""
    parent.seen.add("health")
    if "health" not in parent.table:
        return None
    r = Reader(f"{parent.section}.health", parent.table["health"], parent.problems)
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


def read_limits(parent: Reader) -> LimitsConfig | None:
    """`[agents.<id>.limits]`: memory and/or cpu over the process tree, `for`, `action`."""
    parent.seen.add("limits")
    if "limits" not in parent.table:
        return None
    r = Reader(f"{parent.section}.limits", parent.table["limits"], parent.problems)
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
