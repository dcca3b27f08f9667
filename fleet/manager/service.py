"""FleetService: what the HTTP API does with nodes, agents and the audit log, without HTTP.

It validates ids and parameters, checks in the database that the node (and
agent) exists before calling a daemon, dials the node's advertise_address
through the DaemonClientPool, and stores what an operate or sync brings back
at once. Operate, sync, reload and node deletion are written to the AuditLog, if given.
It imports neither bottle nor servicer code: the HTTP layer is a thin
translator around it, and every failure is a FleetError kind.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Optional

from fleet import errors
from fleet.values import valid_agent_id, valid_node_id
from fleet.manager import paging
from fleet.manager.audit import AuditLog
from fleet.manager.nodemetrics import NodeMetricsStore
from fleet.manager.nodes import NodeStore
from fleet.manager.pool import DaemonClientPool
from fleet.manager.views import FleetViews

log = logging.getLogger(__name__)

OPERATIONS = ("start", "stop", "restart")
LINES_RANGE = (1, 1000)         # GetAgentLogs lines (DESIGN.md, "The wire")
DURATION_RANGE = (1, 86400)     # GetAgentMetrics seconds
OFFSET_RANGE = (0, 10**18 - 1)  # GetAgentLogs byte offset: 18 digits, as the query parser reads
DEFAULT_LINES = 100
DEFAULT_DURATION = 3600
MAX_GREP = 1024                 # characters; a filter, not a payload

POINT_FIELDS = ("timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes",
                "disk_write_bytes", "open_files", "threads", "process_count",
                "disk_read_rate", "disk_write_rate", "cpu_max", "memory_rss_max",
                "resolution_seconds")


class FleetService:
    """Nodes and agents for the HTTP API: stored reads, and calls to the daemons."""

    def __init__(self, nodes: NodeStore, pool: DaemonClientPool,
                 audit: Optional[AuditLog] = None, views: Optional[FleetViews] = None,
                 node_metrics: Optional[NodeMetricsStore] = None):
        self._nodes = nodes   # the database side (fleet.manager.nodes)
        self._pool = pool     # one channel per node, shared with every request
        self._audit = audit   # records operate, sync and delete; None: not recorded
        self._views = views   # fleet-wide agents and the overview; None: not served
        self._node_metrics = node_metrics   # machines' samples; None: resources stay null

    # ---- nodes ----

    def list_nodes(self, status: Optional[str] = None,
                   label: Optional[str | Iterable[str]] = None,
                   limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None
                   ) -> tuple[list[dict], Optional[str]]:
        """A page of nodes by node_id, optionally only "online"/"offline" ones carrying
        every label "k=v", and the next page's cursor (None on the last)."""
        limit = paging.check_limit(limit)
        after = paging.decode_node(cursor)
        nodes, more = paging.split_page(
            self._nodes.list_nodes(status or None, label or None, limit + 1, after), limit)
        return self._with_resources(nodes), nodes[-1]["node_id"] if more else None

    def get_node(self, node_id: str) -> dict:
        """One node; NotFound if it is unknown."""
        return self._with_resources([self._nodes.get_node(_node_id(node_id))])[0]

    def node_metrics(self, node_id: str, duration: int = DEFAULT_DURATION) -> list[dict]:
        """The node's machine samples of the last `duration` seconds (1 to the
        retention), oldest first, at most ~1,000 points; NotFound for an unknown node."""
        node_id = _node_id(node_id)
        retention = int(self._node_metrics.retention) if self._node_metrics else DEFAULT_DURATION
        duration = _in_range("duration", duration, (1, retention))
        self._nodes.get_node(node_id)
        return self._node_metrics.points(node_id, duration) if self._node_metrics else []

    def _with_resources(self, nodes: list[dict]) -> list[dict]:
        """Each node with its latest sample as `resources` (None before the first),
        read in one query for the whole list."""
        latest = self._node_metrics.latest(n["node_id"] for n in nodes) \
            if self._node_metrics is not None and nodes else {}
        for node in nodes:
            node["resources"] = latest.get(node["node_id"])
        return nodes

    def delete_node(self, node_id: str, actor: str = "") -> None:
        """Remove an offline node and its agents; Conflict while it is online. Audited."""
        with self._audited(actor, _node_id(node_id), None, "delete"):
            self._nodes.delete_node(node_id)
        self._pool.close(node_id)
        if self._node_metrics is not None:
            self._node_metrics.forget(node_id)
        log.info("node deleted: node=%s by=%s", node_id, actor or "-")

    # ---- audit ----

    def audit(self, node: Optional[str] = None, limit: int = paging.DEFAULT_LIMIT,
              cursor: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
        """A page of audit entries newest first and the next page's cursor; `node`
        filters (malformed: InvalidArgument, as the agents' and events' filters)."""
        if node and not valid_node_id(node):
            raise errors.InvalidArgument(f"node {node[:130]!r} is not a valid node id")
        if self._audit is None:
            paging.check_limit(limit)
            paging.decode_time_id(cursor)
            return [], None
        return self._audit.list(node, limit, cursor)

    # ---- fleet-wide views ----

    def fleet_agents(self, status: Optional[str] = None, health: Optional[str] = None,
                     type: Optional[str] = None, node: Optional[str] = None,
                     label: Optional[str | Iterable[str]] = None,
                     limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None
                     ) -> tuple[list[dict], Optional[str]]:
        """A page of the agents of every node by (node_id, agent_id), filtered
        (fleet.manager.views.FleetViews.agents), and the next page's cursor."""
        return self._fleet_views().agents(status or None, health or None, type or None,
                                          node or None, label or None, limit, cursor)

    def overview(self) -> dict:
        """Nodes by status, agents by status and health, the agents restarting most."""
        return self._fleet_views().overview()

    def _fleet_views(self) -> FleetViews:
        if self._views is None:
            raise errors.NotFound("fleet-wide views are not served here")
        return self._views

    def record_refused(self, actor: str, node_id: Optional[str], agent_id: Optional[str],
                       operation: str, message: str) -> None:
        """Audit an operation refused before it ran (the token's scope is too low);
        nothing when the ids or the operation are malformed: it names no operation."""
        wanted = OPERATIONS if agent_id is not None else ("sync", "delete", "reload")
        if self._audit is None or operation not in wanted or not valid_node_id(node_id or "") \
                or (agent_id is not None and not valid_agent_id(agent_id)):
            return
        self._audit.record(actor, node_id, agent_id, operation,
                           errors.PermissionDenied.code, message)

    # ---- agents ----

    def list_agents(self, node_id: str, health: Optional[str] = None,
                    limit: int = paging.DEFAULT_LIMIT, cursor: Optional[str] = None, *,
                    status: Optional[str] = None, type: Optional[str] = None
                    ) -> tuple[list[dict], Optional[str]]:
        """A page of the node's agents as last stored, optionally only those of
        `health`, `status` and `type`, and the next page's cursor; NotFound for an
        unknown node, InvalidArgument for a bad filter, limit or cursor."""
        limit = paging.check_limit(limit)
        after = paging.decode_agent(cursor)
        agents, more = paging.split_page(
            self._nodes.list_agents(_node_id(node_id), health or None, limit + 1, after,
                                    status=status or None, type=type or None), limit)
        return agents, agents[-1]["agent_id"] if more else None

    def sync(self, node_id: str, actor: str = "") -> list[dict]:
        """Pull the daemon's ListAgents, store them as the node's agents, return them (audited)."""
        with self._audited(actor, _node_id(node_id), None, "sync"):
            node = self._nodes.get_node(node_id)
            with self._daemon(node) as daemon:
                infos = daemon.list_agents()
            agents = self._nodes.store_agent_infos(node_id, infos, full=True)
        log.info("agents synced: node=%s agents=%d by=%s", node_id, len(agents), actor or "-")
        return agents

    def operate(self, node_id: str, agent_id: str, operation: str, actor: str = "") -> dict:
        """start|stop|restart one agent on its daemon; the stored agent afterwards.

        Audited, failures too, once the ids and the operation are well-formed.
        """
        node_id, agent_id = _node_id(node_id), _agent_id(agent_id)
        if not isinstance(operation, str) or operation not in OPERATIONS:
            shown = operation[:64] if isinstance(operation, str) else operation
            raise errors.InvalidArgument(
                f"operation must be one of {', '.join(OPERATIONS)}, not {shown!r}")
        log.info("operate: node=%s agent=%s op=%s by=%s", node_id, agent_id, operation,
                 actor or "-")
        with self._audited(actor, node_id, agent_id, operation):
            node = self._node_with_agent(node_id, agent_id)
            with self._daemon(node) as daemon:
                info = daemon.operate(agent_id, operation)
            agent = self._nodes.update_agent(node_id, info)
        log.info("operated: node=%s agent=%s op=%s status=%s pid=%s", node_id, agent_id,
                 operation, agent["status"], agent["pid"])
        return agent

    def reload(self, node_id: str, actor: str = "") -> dict:
        """Make the node's daemon reread its config and apply it (audited as "reload"):
        {"agents": [every agent afterwards, stored], "changes": [{agent_id, change}]}.
        An invalid config changes nothing: InvalidArgument naming every problem."""
        node_id = _node_id(node_id)
        log.info("reload: node=%s by=%s", node_id, actor or "-")
        with self._audited(actor, node_id, None, "reload"):
            node = self._nodes.get_node(node_id)
            with self._daemon(node) as daemon:
                answer = daemon.reload()
            agents = self._nodes.store_agent_infos(node_id, answer.agents, full=True)
        changes = [{"agent_id": c.agent_id, "change": c.change} for c in answer.changes]
        log.info("reloaded: node=%s changes=%s by=%s", node_id,
                 ", ".join(f"{c['agent_id']} {c['change']}" for c in changes) or "none",
                 actor or "-")
        return {"agents": agents, "changes": changes}

    def logs(self, node_id: str, agent_id: str, lines: int = DEFAULT_LINES,
             grep: str = "", offset: Optional[int] = None) -> dict:
        """{"lines": [...], "truncated": bool, "next_offset": int}: the agent's last
        `lines` log lines or, with `offset`, the whole lines from that byte on (at
        most `lines`); a follower passes next_offset as the next call's offset."""
        node_id, agent_id = _node_id(node_id), _agent_id(agent_id)
        lines = _in_range("lines", lines, LINES_RANGE)
        if not isinstance(grep, str) or len(grep) > MAX_GREP or "\x00" in grep:
            raise errors.InvalidArgument(
                f"grep must be text of at most {MAX_GREP} characters, without NUL")
        if offset is not None:
            offset = _in_range("offset", offset, OFFSET_RANGE)
        node = self._node_with_agent(node_id, agent_id)
        with self._daemon(node) as daemon:
            found, truncated, next_offset = daemon.logs(agent_id, lines, grep, offset)
        return {"lines": found, "truncated": truncated, "next_offset": next_offset}

    def metrics(self, node_id: str, agent_id: str, duration: int = DEFAULT_DURATION) -> list[dict]:
        """The agent's resource points of the last `duration` seconds: samples of the
        last hour, oldest first, then one-minute points before them, oldest first."""
        node_id, agent_id = _node_id(node_id), _agent_id(agent_id)
        duration = _in_range("duration", duration, DURATION_RANGE)
        node = self._node_with_agent(node_id, agent_id)
        with self._daemon(node) as daemon:
            points = daemon.metrics(agent_id, duration)
        return [{name: getattr(point, name) for name in POINT_FIELDS} for point in points]

    # ---- helpers ----

    def _audited(self, actor: str, node_id: str, agent_id: Optional[str], operation: str):
        """A context that records the operation it wraps (nothing without an AuditLog)."""
        if self._audit is None:
            return contextlib.nullcontext()
        return self._audit.timed(actor, node_id, agent_id, operation)

    def _node_with_agent(self, node_id: str, agent_id: str) -> dict:
        """The node, once the database knows both it and the agent (else NotFound)."""
        self._nodes.get_agent(node_id, agent_id)
        return self._nodes.get_node(node_id)

    def _daemon(self, node: dict):
        """A pool lease on the node's daemon client (a context manager)."""
        address = node.get("advertise_address") or ""
        if not address:
            raise errors.Unavailable(f"node {node['node_id']!r} has no address to dial")
        return self._pool.client(node["node_id"], address)


def _node_id(node_id: str) -> str:
    # An id that breaks the rule cannot name a stored node: NotFound, shown cut short.
    if not isinstance(node_id, str) or not valid_node_id(node_id):
        raise errors.NotFound(f"node {str(node_id)[:130]!r} not found")
    return node_id


def _agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not valid_agent_id(agent_id):
        raise errors.NotFound(f"agent {str(agent_id)[:66]!r} not found")
    return agent_id


def _in_range(name: str, value: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidArgument(f"{name} must be an integer from {low} to {high}")
    return value

