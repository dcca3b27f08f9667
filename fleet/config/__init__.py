"""Configuration: TOML file, environment and flags, parsed once into frozen dataclasses.

Precedence: flags beat environment (FLEET_<FLAG>) beat the config file beat
defaults. Every value is converted and checked where it is read; every problem
is collected with its section and key, and load() raises one ConfigError
holding them all. Only the entry point turns that into an exit status.

The sections live beside this module: reader.py (one table, tokens, TLS),
manager.py, daemon.py and agents.py (the [[agents]] reader that reloads and
policies share).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 carries tomli in the pyz
    import tomli as tomllib

from fleet.config.agents import (HEALTH_ACTIONS, PROBE_KINDS, RESTART_POLICIES,  # noqa: F401
                                 AgentConfig, HealthConfig, LimitsConfig, read_agents)
from fleet.config.daemon import DaemonConfig, check_daemon_security, read_daemon
from fleet.config.manager import (API_SCOPES, ApiToken, ManagerConfig,  # noqa: F401
                                  check_manager_database, check_manager_workers,
                                  read_manager)
from fleet.config.reader import Reader, TLSConfig  # noqa: F401 - re-exported
from fleet.errors import ConfigError
from fleet.values import to_choice


@dataclasses.dataclass(frozen=True)
class Config:
    role: str
    manager: ManagerConfig
    daemon: DaemonConfig
    agents: tuple[AgentConfig, ...]
    log_level: str = "info"
    log_format: str = "text"


FLAG_KEYS: dict[str, list[tuple[str | None, str]]] = {
    "http": [("manager", "http")], "grpc": [("manager", "grpc")], "db": [("manager", "db")],
    "manager": [("daemon", "manager")], "listen": [("daemon", "listen")],
    "advertise": [("daemon", "advertise")],
    "state_dir": [("daemon", "state_dir")], "node_id": [("daemon", "node_id")],
    "insecure": [("daemon", "insecure")],
    "api_token": [("manager", "api_token")],
    "cluster_token": [("manager", "cluster_token"), ("daemon", "cluster_token")],
    "log_level": [(None, "log_level")], "log_format": [(None, "log_format")],
    "workers": [("manager", "workers")],
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
    top = Reader("", data, problems)
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
    check_manager_workers(config, problems)
    return config
