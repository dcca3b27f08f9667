"""The daemon's side of policies: agents defined centrally on the manager.

With `[daemon] accept_policies = true`, every heartbeat carries the policy
version this daemon runs; when the manager answers with another one, the
reload worker (fleet/daemon/reload.py) calls `refresh()`: GetDesiredAgents,
each policy's agents checked by the config file's own reader, merged with the
local agents, applied like a reload, kept in state_dir, and reported with
ReportPolicyStatus (one PolicyResult per policy).

Rules of the merge: a local agent wins over a policy's agent of the same id
(listed in that policy's `conflicts`); between policies, the first by name wins.
An invalid policy is not applied (its reason reported); the version of it last
applied, if any, keeps running. The applied policies are kept in
`state_dir/policies.json` (atomic write), so a restarted daemon runs them at
once, with or without a manager.

The version echoed in heartbeats is the one last processed (as the manager
computed it), even when one of its policies was refused: the refusal is in
the report, and the manager is not asked again until the version changes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from fleet.config import AgentConfig, read_agents
from fleet.daemon.manager_client import ManagerClient, Unimplemented
from fleet.daemon.statedir import write_atomic
from fleet.errors import FleetError
from fleet.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)

STATE_FILE = "policies.json"


@dataclasses.dataclass(frozen=True)
class Policy:
    """One policy's agents, as applied."""

    name: str
    version: int
    tables: list          # the [[agents]] tables, as received (kept in the state file)
    agents: tuple[AgentConfig, ...]


@dataclasses.dataclass
class Result:
    """What became of one policy (the wire's PolicyResult)."""

    name: str
    version: int
    applied: bool = True
    reason: str = ""
    conflicts: list[str] = dataclasses.field(default_factory=list)


def parse_policy(name: str, version: int, agents_json: str) -> tuple[Policy | None, str]:
    """(the policy, "") or (None, why it is invalid): every problem of its agents."""
    try:
        tables = json.loads(agents_json or "[]")
    except ValueError as exc:
        return None, f"agents_json is not JSON: {exc}"
    problems: list[str] = []
    agents = read_agents(tables, problems)
    if problems:
        return None, "invalid definition: " + "; ".join(problems)
    return Policy(name, version, tables, agents), ""


def merge(local: tuple[AgentConfig, ...], policies: list[Policy]
          ) -> tuple[tuple[AgentConfig, ...], dict[str, list[str]]]:
    """(every agent to run, {policy name: agent ids it lost to a local agent or
    an earlier policy}); local agents first, then policies by name."""
    agents, taken, conflicts = list(local), {a.id for a in local}, {}
    for policy in sorted(policies, key=lambda p: p.name):
        lost = conflicts.setdefault(policy.name, [])
        for agent in policy.agents:
            if agent.id in taken:
                lost.append(agent.id)
                continue
            taken.add(agent.id)
            agents.append(agent)
    return tuple(agents), conflicts


class PolicyKeeper:
    """The policies this daemon runs, what the manager wants, and the state file."""

    def __init__(self, client: ManagerClient | None, node_id: str, boot_id: int,
                 state_dir: str):
        self.client = client                  # set once the syncer's client exists
        self.node_id = node_id
        self.boot_id = boot_id
        self.path = os.path.join(state_dir, STATE_FILE)
        self.policies: list[Policy] = []      # applied, by name
        self.running = ""                     # the version last processed (heartbeats)
        self.wanted: str | None = None        # the manager's, when it differs; None: none
        self.unreported: pb.ReportPolicyStatusRequest | None = None   # to send again
        self._told_unimplemented = False

    # ---- the state file ----

    def load(self) -> None:
        """Read the policies a previous daemon applied (a bad file is logged, ignored)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            kept = [(p["name"], int(p["version"]), json.dumps(p["agents"]))
                    for p in data["policies"]]
            running = str(data.get("policy_version", ""))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s); running no policy agents until the manager "
                        "sends them", self.path, exc)
            return
        for name, version, agents_json in kept:
            policy, reason = parse_policy(name, version, agents_json)
            if policy is None:
                log.warning("kept policy %s v%s: %s; not run", name, version, reason)
                continue
            self.policies.append(policy)
        self.running = running
        log.info("policies from state_dir: %s", describe(self.policies) or "none")

    def save(self) -> None:
        """Keep the applied policies for the next daemon (atomic)."""
        data = {"policy_version": self.running, "policies": [
            {"name": p.name, "version": p.version, "agents": p.tables} for p in self.policies]}
        try:
            write_atomic(self.path, json.dumps(data).encode())
        except OSError as exc:
            log.error("cannot write %s: %s", self.path, exc)

    # ---- from the syncer's thread ----

    def heard(self, version: str) -> bool:
        """The manager's version in a heartbeat answer; True when there is work
        (a new version to fetch, or a report to send again)."""
        self.wanted = version if version != self.running else None
        return self.wanted is not None or self.unreported is not None

    # ---- from the reload worker ----

    def fetch(self) -> tuple[str, list[Policy], list[Result]] | None:
        """GetDesiredAgents: (its version, the policies to run, a result per policy);
        None when it failed (asked again at the next heartbeat) or is unimplemented."""
        try:
            answer = self.client.get_desired_agents(
                pb.GetDesiredAgentsRequest(node_id=self.node_id))
        except Unimplemented as exc:
            if not self._told_unimplemented:
                self._told_unimplemented = True
                log.info("%s: keeping the policies this daemon runs", exc)
            self.running, self.wanted = self.wanted or "", None
            return None
        except FleetError as exc:
            log.warning("policies not fetched (%s); asking again at the next heartbeat", exc)
            return None
        previous = {p.name: p for p in self.policies}
        policies, results = [], []
        for item in answer.policies:
            policy, reason = parse_policy(item.name, item.version, item.agents_json)
            results.append(Result(item.name, item.version, policy is not None, reason))
            if policy is None:
                log.error("policy %s v%s not applied: %s", item.name, item.version, reason)
                policy = previous.get(item.name)   # its last applied version runs on
            if policy is not None:
                policies.append(policy)
        return answer.policy_version, policies, results

    def changed(self, policies: list[Policy]) -> str:
        """How `policies` differ from those applied: "web v3, db removed"."""
        before = {p.name: p.version for p in self.policies}
        after = {p.name: p.version for p in policies}
        words = [f"{name} v{version}" for name, version in sorted(after.items())
                 if before.get(name) != version]
        words += [f"{name} removed" for name in sorted(before) if name not in after]
        return ", ".join(words)

    def applied(self, version: str, policies: list[Policy], results: list[Result],
                conflicts: dict[str, list[str]]) -> None:
        """Keep what was applied, then report it (again later if that fails)."""
        self.policies = sorted(policies, key=lambda p: p.name)
        self.running, self.wanted = version, None
        self.save()
        for result in results:
            result.conflicts = conflicts.get(result.name, []) if result.applied else []
            if result.conflicts:
                log.warning("policy %s v%s: local agent(s) kept: %s", result.name,
                            result.version, ", ".join(result.conflicts))
        self.unreported = pb.ReportPolicyStatusRequest(
            node_id=self.node_id, boot_id=self.boot_id, policy_version=version,
            results=[pb.PolicyResult(**dataclasses.asdict(r)) for r in results])
        self.report()

    def report(self) -> None:
        """Send the last ReportPolicyStatus not yet acknowledged, if any."""
        request = self.unreported
        if request is None:
            return
        try:
            self.client.report_policy_status(request)
        except Unimplemented as exc:
            log.info("%s; policy status not reported", exc)
        except FleetError as exc:
            log.warning("policy status not reported (%s); again at the next heartbeat", exc)
            return
        if self.unreported is request:
            self.unreported = None


def describe(policies: list[Policy]) -> str:
    """`web v3, db v1`."""
    return ", ".join(f"{p.name} v{p.version}" for p in policies)

