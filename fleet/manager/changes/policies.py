"""PolicyService: the HTTP API's policies, without HTTP (DESIGN.md "Changing the fleet").

A policy is a name, a label selector and agent definitions (the `[[agents]]`
keys, checked by fleet.config.agents.read_agents, the config file's own reader).
A PUT that changes something stores a new version (version + 1); one that
changes nothing keeps the version. With `"hold": true` the nodes matching the
previous version are pinned at it in the same transaction (a rollout releases
them). Every change is audited with its diff: operation `policy_put` or
`policy_delete`, node_id "" (it is no one node's), the diff in the message.

A policy's JSON counts the nodes that match it now: `current` reported it
applied at the version they should run (their pin's, else the newest), `failed`
reported it not applied with a reason at that version, `pending` the rest.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Optional

from fleet import errors
from fleet.config.agents import read_agents
from fleet.manager import paging
from fleet.manager.audit import AuditLog
from fleet.manager.changes.policystore import NAME_RE, PolicyRow, PolicyStore, desired
from fleet.manager.store.db import now_ms
from fleet.values import valid_agent_id

log = logging.getLogger(__name__)

BODY_KEYS = ("selector", "agents", "hold")
USAGE = 'body must be {"selector": {"labels": {...}}, "agents": [...], "hold": false}'
MAX_LABELS = 64
MAX_LABEL_KEY, MAX_LABEL_VALUE = 256, 1024
MAX_LISTED = 1000            # failures (and conflicts) listed per policy
OPERATIONS = ("policy_put", "policy_delete")
# `[agents.NAME.SUB] key: why`, as fleet.config.agents reports a problem.
_PROBLEM = re.compile(r"^\[agents\.([A-Za-z0-9_-]+)((?:\.[a-z_]+)*)\](?: ([^:]*))?: (.*)$",
                      re.S)


class PolicyService:
    """Policies for the HTTP API: validated writes (audited) and reads with node counts."""

    def __init__(self, store: PolicyStore, audit: Optional[AuditLog] = None):
        self._store = store    # the tables and the desired-state snapshot
        self._audit = audit    # records every change; None: not recorded

    # ---- reads ----

    def list(self, limit: int = paging.DEFAULT_LIMIT,
             cursor: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
        """A page of policies by name and the next page's cursor (None on the last)."""
        limit = paging.check_limit(limit)
        after = paging.decode_policy(cursor)
        rows, more = paging.split_page(self._store.heads(after, limit + 1), limit)
        return self._views(rows), rows[-1].name if more else None

    def get(self, name: str) -> dict:
        """One policy with its nodes' counts; NotFound if it does not exist (now)."""
        row = self._store.head(_existing_name(name))
        if row is None or row.deleted:
            raise errors.NotFound(f"policy {name!r} not found")
        return self._views([row])[0]

    def _views(self, rows: list[PolicyRow]) -> list[dict]:
        tallies = self._tallies([row.name for row in rows])
        return [policy_json(row, tallies[row.name]) for row in rows]

    def _tallies(self, names: list[str]) -> dict[str, dict]:
        """name -> {current, pending, failed, failures, conflicts} over the nodes that
        match each policy now."""
        tallies = {name: {"current": 0, "pending": 0, "failed": 0, "failures": [],
                          "conflicts": []} for name in names}
        if not names:
            return tallies
        snapshot = self._store.snapshot(fresh=True)
        statuses = self._store.statuses(names)
        for node_id, labels in sorted(self._store.nodes()):
            for name, version in desired(snapshot, node_id, labels):
                if name in tallies:
                    _count(tallies[name], node_id, version, statuses.get((node_id, name)))
        return tallies

    # ---- writes ----

    def put(self, name: str, body: Any, actor: str = "") -> dict:
        """Create or change a policy from a PUT body; the policy afterwards.

        InvalidArgument naming every problem (the agents' named `agents[i] (id)
        key`); Conflict when another manager changed it at the same moment.
        """
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise errors.InvalidArgument(
                f"policy name must match {NAME_RE.pattern}, not {str(name)[:80]!r}")
        labels, agents, hold = read_body(body)
        agents_json = json.dumps(agents, sort_keys=True, separators=(",", ":"))
        before, row = self._write(actor, "policy_put", name, labels, agents_json, hold, False)
        if row is not before:
            log.info("policy %s: version %d by %s", name, row.version, actor or "-")
        return self._views([row])[0]

    def delete(self, name: str, actor: str = "") -> dict:
        """Delete a policy (nodes then drop its agents); NotFound if it does not exist."""
        name = _existing_name(name)
        _, row = self._write(actor, "policy_delete", name, {}, "[]", False, True)
        log.info("policy %s: deleted (version %d) by %s", name, row.version, actor or "-")
        return {"name": name, "deleted": True}

    def _write(self, actor: str, operation: str, name: str, labels: dict, agents_json: str,
               hold: bool, delete: bool) -> tuple[Optional[PolicyRow], PolicyRow]:
        """store.write, audited: the diff when it changed something, the error if it failed."""
        started, begun = now_ms(), time.monotonic()
        try:
            before, row = self._store.write(name, labels, agents_json, hold, delete)
        except errors.FleetError as exc:
            self._record(actor, operation, exc.code, f"policy {name}: {exc.message}",
                         started, begun)
            raise
        if row is not before:
            self._record(actor, operation, "ok", describe_change(before, row, hold),
                         started, begun)
        return before, row

    def _record(self, actor: str, operation: str, result: str, message: str,
                started: int, begun: float) -> None:
        if self._audit is not None:
            duration = int((time.monotonic() - begun) * 1000)
            self._audit.record(actor, "", None, operation, result, message, started, duration)

    def record_refused(self, actor: str, name: str, operation: str, message: str) -> None:
        """Audit a PUT or DELETE refused for the token's scope (nothing for a bad name)."""
        if self._audit is not None and operation in OPERATIONS and isinstance(name, str) \
                and NAME_RE.fullmatch(name):
            self._audit.record(actor, "", None, operation, errors.PermissionDenied.code,
                               f"policy {name}: {message}")


def _existing_name(name: str) -> str:
    # A name that breaks the rule cannot name a stored policy: NotFound, like node ids.
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise errors.NotFound(f"policy {str(name)[:66]!r} not found")
    return name


def _count(tally: dict, node_id: str, version: int, status: Optional[tuple]) -> None:
    """Count one matching node that should run `version` (status: its report or None)."""
    if status is None or status[0] != version:
        tally["pending"] += 1
        return
    _, applied, reason, conflicts = status
    if applied:
        tally["current"] += 1
        if conflicts and len(tally["conflicts"]) < MAX_LISTED:
            tally["conflicts"].append({"node_id": node_id, "agents": conflicts})
    elif reason:
        tally["failed"] += 1
        if len(tally["failures"]) < MAX_LISTED:
            tally["failures"].append({"node_id": node_id, "reason": reason})
    else:
        tally["pending"] += 1


def policy_json(row: PolicyRow, tally: dict) -> dict:
    """The HTTP API's Policy object."""
    return {"name": row.name, "version": row.version, "selector": {"labels": row.labels},
            "agents": json.loads(row.agents_json), "updated_at": row.updated_at,
            "nodes": {key: tally[key] for key in ("current", "pending", "failed")},
            "failures": tally["failures"], "conflicts": tally["conflicts"]}


# ---- the body ----

def read_body(body: Any) -> tuple[dict, list, bool]:
    """(selector labels, agent tables, hold) of a PUT body; InvalidArgument naming
    every problem."""
    if not isinstance(body, dict):
        raise errors.InvalidArgument(USAGE)
    problems = [f"{str(key)[:64]}: unknown key" for key in sorted(set(body) - set(BODY_KEYS))]
    labels = read_selector(body["selector"], problems) if "selector" in body else {}
    if "selector" not in body:
        problems.append("selector: required")
    agents = body.get("agents")
    if "agents" not in body:
        problems.append("agents: required")
    elif not isinstance(agents, list):
        problems.append("agents: must be an array of agent tables")
    else:
        found: list[str] = []
        read_agents(agents, found)
        problems += [agent_problem(problem, agents) for problem in found]
    hold = body.get("hold", False)
    if not isinstance(hold, bool):
        problems.append("hold: must be true or false")
    if problems:
        raise errors.InvalidArgument("; ".join(problems))
    return labels, agents, hold


def read_selector(selector: Any, problems: list[str]) -> dict:
    """The labels of `{"labels": {KEY: VALUE}}` ({} selects every node)."""
    if not isinstance(selector, dict) or set(selector) - {"labels"}:
        problems.append('selector: must be {"labels": {"KEY": "VALUE", ...}}')
        return {}
    if "labels" not in selector:
        problems.append("selector.labels: required ({} selects every node)")
        return {}
    labels = selector["labels"]
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        problems.append(f"selector.labels: must be an object of at most {MAX_LABELS} "
                        "string labels")
        return {}
    for key, value in labels.items():
        if not 1 <= len(key) <= MAX_LABEL_KEY or "\x00" in key:
            problems.append(f"selector.labels: key {key[:64]!r} must be 1 to "
                            f"{MAX_LABEL_KEY} characters, without NUL")
        elif not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or "\x00" in value:
            problems.append(f"selector.labels.{key[:64]}: must be a string of at most "
                            f"{MAX_LABEL_VALUE} characters, without NUL")
    return dict(labels)


def agent_problem(problem: str, items: list) -> str:
    """A read_agents problem named by position: `[agents.web] restart: why` becomes
    `agents[0] (web) restart: why`."""
    if problem.startswith("[[agents]]"):
        return "agents" + problem[len("[[agents]]"):]
    match = _PROBLEM.match(problem)
    if not match:
        return problem
    name, sub, key, why = match.groups()
    names = _names(items)
    index = names.index(name) if name in names else name
    where = f"agents[{index}]" + (f" ({name})" if name != str(index) else "")
    path = ".".join(part for part in sub.split(".") + [(key or "").strip()] if part)
    return f"{where} {path}: {why}" if path else f"{where}: {why}"


def _names(items: list) -> list[str]:
    """How read_agents names each table: its id when valid and unique, else its index."""
    ids = [table.get("id") if isinstance(table, dict) else None for table in items]
    return [agent_id if isinstance(agent_id, str) and valid_agent_id(agent_id)
            and ids.count(agent_id) == 1 else str(index) for index, agent_id in enumerate(ids)]


# ---- the audit's diff ----

def describe_change(before: Optional[PolicyRow], after: PolicyRow, hold: bool) -> str:
    """What a change did, in words: versions, agents added/removed/changed, selector."""
    old = _by_id(before.agents_json) if before and not before.deleted else {}
    new = _by_id(after.agents_json)
    if after.deleted:
        return (f"policy {after.name} v{before.version} deleted (v{after.version}): "
                f"agents removed [{', '.join(sorted(old))}]")
    if before is None or before.deleted:
        return (f"policy {after.name} created v{after.version}: selector "
                f"{_labels(after.labels)}; agents [{', '.join(sorted(new))}]")
    parts = []
    for word, ids in (("added", sorted(set(new) - set(old))),
                      ("removed", sorted(set(old) - set(new)))):
        if ids:
            parts.append(f"agents {word} [{', '.join(ids)}]")
    changed = [f"{i} ({', '.join(_changed_keys(old[i], new[i]))})"
               for i in sorted(set(old) & set(new)) if old[i] != new[i]]
    if changed:
        parts.append(f"agents changed [{'; '.join(changed)}]")
    if before.labels != after.labels:
        parts.append(f"selector {_labels(before.labels)} -> {_labels(after.labels)}")
    if hold:
        parts.append(f"held: matching nodes pinned at v{before.version}")
    return f"policy {after.name} v{before.version} -> v{after.version}: " + "; ".join(parts)


def _by_id(agents_json: str) -> dict[str, dict]:
    return {table["id"]: table for table in json.loads(agents_json)}


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _labels(labels: dict) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
    return "{" + shown + "}" + ("" if labels else " (every node)")
