"""Applying a new set of agent definitions to the running supervisor: what a
reload (SIGHUP, DaemonService.Reload) and a policy change share.

Each agent falls in one case, decided by `plan()` alone (no process is touched):
  added     not supervised yet: started (if autostart)
  removed   no longer defined: stopped and forgotten (its state record removed)
  changed   its definition differs: a live process whose command, cwd or env
            (config_hash) changed restarts; other differences apply in place;
            a fatal agent with a changed command is started again
  flagged   as changed, but `restart_on_change = false`: the live process keeps
            running and reports `config_changed` until an operator restarts it
  (same)    untouched, same process.
Each change is an event of kind `reload` whose message says what and why
("added by reload", "changed by policy web v3: restarted").
"""
from __future__ import annotations

import dataclasses
import logging

from fleet.config import AgentConfig
from fleet.daemon.supervisor import Supervisor, warn_missing
from fleet.errors import FleetError
from fleet.states import State

log = logging.getLogger(__name__)

ALIVE = (State.STARTING, State.RUNNING)


@dataclasses.dataclass(frozen=True)
class Change:
    """What an apply did to one agent."""

    agent_id: str
    change: str          # added | removed | changed | flagged


def plan(current: tuple[AgentConfig, ...], wanted: tuple[AgentConfig, ...]
         ) -> tuple[list[str], list[AgentConfig], list[AgentConfig]]:
    """(removed ids, added definitions, changed definitions), each in order."""
    before = {config.id: config for config in current}
    after = {config.id for config in wanted}
    removed = [config.id for config in current if config.id not in after]
    added = [config for config in wanted if config.id not in before]
    changed = [config for config in wanted
               if config.id in before and before[config.id] != config]
    return removed, added, changed


def apply(supervisor: Supervisor, wanted: tuple[AgentConfig, ...], cause: str,
          restart_cause: str = "reload") -> list[Change]:
    """Make the supervisor run exactly `wanted`; the changes, removals first.

    cause: why, in the events ("reload", "policy web v3"); restart_cause: the
    cause a restart's event names ("reload", "policy").
    """
    removed, added, changed = plan(supervisor.configs(), wanted)
    warn_missing(tuple(added) + tuple(changed))
    changes = [Change(agent_id, "removed") for agent_id in removed]
    for agent_id in removed:
        _event(supervisor, agent_id, f"removed by {cause}")
    if removed:
        supervisor.remove(removed, f"removed by {cause}")
    for config in changed:
        changes.append(_change(supervisor, config, cause, restart_cause))
    for config in added:
        _event(supervisor, config.id, f"added by {cause}")
        try:
            supervisor.add(config)
        except FleetError as exc:   # the daemon began shutting down
            log.error("%s: not added: %s", config.id, exc.message)
            continue
        changes.append(Change(config.id, "added"))
    if changes:
        log.info("%s: %s", cause, ", ".join(f"{c.agent_id} {c.change}" for c in changes))
    return changes


def _change(supervisor: Supervisor, config: AgentConfig, cause: str,
            restart_cause: str) -> Change:
    """Give a supervised agent its new definition; restart it if its process must."""
    runner = supervisor.runner(config.id)
    old_hash = runner.program.config.config_hash()
    state = runner.snapshot().state
    alive = state in ALIVE
    runner.reconfigure(config)
    # Log limits are not the process's: they apply at once, whatever else happens.
    supervisor.logs.register(config.id, config.log_max_bytes, config.log_backups)
    if state in (State.FATAL, State.BACKOFF) and old_hash != config.config_hash() \
            and config.autostart:
        # A new command for an agent that gave up or waits to retry (a broken version
        # fixed): try it now, not after the backoff the old command earned.
        _event(supervisor, config.id,
               f"changed by {cause}: starting (was {state.name.lower()})")
        _operate(runner, "start", config.id, cause, restart_cause)
        return Change(config.id, "changed")
    if old_hash == config.config_hash() or not alive:
        how = "applied to its next start" if not alive else \
            "applied in place (command, cwd and env unchanged)"
        _event(supervisor, config.id, f"changed by {cause}: {how}")
        return Change(config.id, "changed")
    if not config.restart_on_change:
        _event(supervisor, config.id,
               f"changed by {cause}: not restarted (restart_on_change = false)")
        return Change(config.id, "flagged")
    _event(supervisor, config.id, f"changed by {cause}: restarting")
    _operate(runner, "restart", config.id, cause, restart_cause)
    return Change(config.id, "changed")


def _event(supervisor: Supervisor, agent_id: str, message: str) -> None:
    log.info("%s: %s", agent_id, message)
    supervisor.events.record(agent_id, "reload", message)


def _operate(runner, operation: str, agent_id: str, cause: str, restart_cause: str) -> None:
    """Start or restart an agent for a reload or policy; a failure is logged, not raised
    (the other agents' changes still apply)."""
    try:
        runner.operate(operation, cause=restart_cause, detail=cause)
    except FleetError as exc:
        log.error("%s: %s after %s failed: %s", agent_id, operation, cause, exc.message)
