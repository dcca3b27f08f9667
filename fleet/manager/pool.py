"""The daemon client pool: one gRPC channel per node, shared by every request.

Lookups take the reader side of an RWLock (the fast path, shared by all request
threads); only building, replacing, evicting or closing a client takes the
writer side, and a writer checks again what it came for (double-checked), so
racing threads never build two channels for one node. A client is rebuilt when
the node's address changed, when its channel is shut down or in
TRANSIENT_FAILURE, or when a call on it came back UNAVAILABLE.

A client is leased for the length of a call (`with pool.client(...)`): each
one counts its calls in flight, and a replaced, evicted or closed client shuts
its channel only when its last call has ended, never under a caller's feet.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from typing import Callable, Iterator, Optional

import grpc
from grpc import _common as grpc_common  # private: core connectivity -> public enum

from fleet import errors
from fleet.config import TLSConfig
from fleet.rpc import from_rpc_error, open_channel
from fleet.rwlock import RWLock
from fleet.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1024
DEFAULT_TIMEOUT = 10.0          # seconds, every call but operate (DESIGN.md)
DEFAULT_OPERATE_TIMEOUT = 30.0  # a stop may take the agent's stop_timeout

ChannelFactory = Callable[[str, str, "TLSConfig | None"], grpc.Channel]

# Daemon answers passed on as themselves; any other failure is the daemon's (502).
_PASSED_ON = (errors.NotFound, errors.InvalidArgument, errors.Conflict,
              errors.Unavailable, errors.DeadlineExceeded)

_BROKEN = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class DaemonClient:
    """Calls one node's DaemonService with a deadline; failures become FleetError kinds.

    Every request carries the expected node_id, so an address now used by
    another node is refused by that daemon (FAILED_PRECONDITION -> Conflict)
    instead of operated by mistake.
    """

    def __init__(self, node_id: str, address: str, channel: grpc.Channel,
                 timeout: float = DEFAULT_TIMEOUT,
                 operate_timeout: float = DEFAULT_OPERATE_TIMEOUT):
        self.node_id = node_id
        self.address = address
        self._channel = channel         # owned by the pool, which closes it
        self._stub = fleet_pb2_grpc.DaemonServiceStub(channel)
        self._timeout = timeout
        self._operate_timeout = operate_timeout
        # Set when a call came back UNAVAILABLE: the pool rebuilds the channel
        # at the next lookup instead of waiting out gRPC's reconnect backoff.
        self.failed = False

    def list_agents(self) -> list[fleet_pb2.AgentInfo]:
        """Every agent the daemon supervises."""
        request = fleet_pb2.ListAgentsRequest(node_id=self.node_id)
        return list(self._call("ListAgents", request, self._timeout).agents)

    def operate(self, agent_id: str, operation: str, cause: str = "",
                detail: str = "") -> fleet_pb2.AgentInfo:
        """start|stop|restart one agent; the agent's state after it. `cause` ("": the
        operator, "rollout", "policy") and `detail` are named in a restart's event."""
        request = fleet_pb2.OperateAgentRequest(
            node_id=self.node_id, agent_id=agent_id, operation=operation, cause=cause,
            detail=detail)
        return self._call("OperateAgent", request, self._operate_timeout).agent

    def reload(self) -> fleet_pb2.ReloadResponse:
        """Make the daemon reread its config: its agents afterwards and the changes.
        Given the operate deadline: restarting changed agents waits for their stops."""
        request = fleet_pb2.ReloadRequest(node_id=self.node_id)
        return self._call("Reload", request, self._operate_timeout)

    def metrics(self, agent_id: str, duration: int) -> list[fleet_pb2.ResourceDataPoint]:
        """The agent's resource samples of the last `duration` seconds."""
        request = fleet_pb2.GetAgentMetricsRequest(
            node_id=self.node_id, agent_id=agent_id, duration_seconds=duration)
        return list(self._call("GetAgentMetrics", request, self._timeout).data_points)

    def logs(self, agent_id: str, lines: int, grep: str = "",
             offset: Optional[int] = None) -> tuple[list[str], bool, int]:
        """(lines, truncated, next_offset): the last `lines` log lines (containing
        `grep`), or with `offset` the whole lines from that byte on."""
        request = fleet_pb2.GetAgentLogsRequest(
            node_id=self.node_id, agent_id=agent_id, lines=lines, grep=grep, offset=offset)
        response = self._call("GetAgentLogs", request, self._timeout)
        return list(response.lines), response.truncated, response.next_offset

    def _call(self, method: str, request, timeout: float):
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            what = f"daemon {self.node_id} at {self.address}: {method}"
            error = from_rpc_error(exc, what)
            if isinstance(error, errors.Unavailable):
                self.failed = True
            if not isinstance(error, _PASSED_ON):
                error = errors.DaemonError(f"{what}: {exc.code().name}: {exc.details()}")
            log.info("daemon call failed: node=%s method=%s code=%s",
                     self.node_id, method, exc.code().name)
            raise error from exc


def connectivity(channel: grpc.Channel) -> grpc.ChannelConnectivity | None:
    """The channel's state now, without subscribing; None if it cannot be read.

    grpc's public way (subscribe) starts a polling thread per channel, too
    dear for a thousand channels; the core channel answers in about a
    microsecond. A closed channel reads as SHUTDOWN.
    """
    inner = channel
    for _ in range(4):  # an intercepted channel wraps the real one
        if hasattr(inner, "check_connectivity_state"):
            try:
                state = inner.check_connectivity_state(False)
            except ValueError:
                return grpc.ChannelConnectivity.SHUTDOWN
            return grpc_common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY.get(state)
        inner = getattr(inner, "_channel", None)
    return None


class _Entry:
    """A pooled client, its channel, and its calls in flight."""

    def __init__(self, client: DaemonClient, channel: grpc.Channel):
        self.client = client
        self.channel = channel
        self.last_used = 0           # pool clock tick of the last lease (LRU order)
        self._lock = threading.Lock()
        self._refs = 0               # leases not yet released
        self._retired = False        # out of the pool: close once refs reach 0
        self._closed = False

    def usable(self, address: str) -> bool:
        """True while this entry may serve a call to `address`."""
        return (self.client.address == address and not self._retired
                and not self.client.failed and connectivity(self.channel) not in _BROKEN)

    def lease(self, tick: int) -> None:
        with self._lock:
            self._refs += 1
            self.last_used = tick

    def release(self) -> bool:
        """Drop one lease; True when the caller must now close the channel."""
        with self._lock:
            self._refs -= 1
            return self._take_close()

    def retire(self) -> bool:
        """Take out of service; True when the caller must now close the channel."""
        with self._lock:
            self._retired = True
            return self._take_close()

    def _take_close(self) -> bool:
        if self._retired and self._refs == 0 and not self._closed:
            self._closed = True
            return True
        return False


class DaemonClientPool:
    """One DaemonClient per node, keyed by node_id, with LRU eviction at `capacity`."""

    def __init__(self, token: str = "", tls: TLSConfig | None = None, *,
                 capacity: int = DEFAULT_CAPACITY, timeout: float = DEFAULT_TIMEOUT,
                 operate_timeout: float = DEFAULT_OPERATE_TIMEOUT,
                 channel_factory: ChannelFactory = open_channel):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._token = token
        self._tls = tls
        self._capacity = capacity
        self._timeout = timeout
        self._operate_timeout = operate_timeout
        self._factory = channel_factory     # (address, token, tls) -> channel
        self._lock = RWLock()               # guards _entries
        self._entries: dict[str, _Entry] = {}
        self._clock = itertools.count(1)    # next() is atomic under the GIL: safe for readers

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._entries)

    @contextlib.contextmanager
    def client(self, node_id: str, address: str) -> Iterator[DaemonClient]:
        """`with pool.client(node_id, address) as daemon:` a client leased for the block."""
        entry = self._lease(node_id, address)
        try:
            yield entry.client
        finally:
            if entry.release():
                self._close(entry)

    def close(self, node_id: str) -> None:
        """Drop the node's client; its channel closes once its calls have ended."""
        with self._lock.write():
            entry = self._entries.pop(node_id, None)
            retired = [entry] if entry is not None and entry.retire() else []
        self._close_all(retired)

    def close_all(self) -> None:
        """Drop every client (shutdown); channels close as their calls end."""
        with self._lock.write():
            entries, self._entries = list(self._entries.values()), {}
            retired = [entry for entry in entries if entry.retire()]
        self._close_all(retired)

    def _lease(self, node_id: str, address: str) -> _Entry:
        with self._lock.read():
            entry = self._entries.get(node_id)
            if entry is not None and entry.usable(address):
                # Leased under the read lock: no writer can retire it meanwhile.
                entry.lease(next(self._clock))
                return entry
        return self._lease_slow(node_id, address)

    def _lease_slow(self, node_id: str, address: str) -> _Entry:
        retired: list[_Entry] = []
        with self._lock.write():
            entry = self._entries.get(node_id)
            if entry is None or not entry.usable(address):  # checked again: another writer may have built it
                if entry is not None:
                    del self._entries[node_id]
                    retired.append(entry)
                retired.extend(self._evict())
                entry = self._build(node_id, address)
                self._entries[node_id] = entry
            entry.lease(next(self._clock))
            closing = [old for old in retired if old.retire()]
        self._close_all(closing)
        return entry

    def _evict(self) -> list[_Entry]:
        """Under the write lock: take out least recently used entries to make room for one."""
        evicted = []
        while len(self._entries) >= self._capacity:
            node_id = min(self._entries, key=lambda key: self._entries[key].last_used)
            evicted.append(self._entries.pop(node_id))
            log.debug("daemon client evicted: node=%s", node_id)
        return evicted

    def _build(self, node_id: str, address: str) -> _Entry:
        # Under the write lock on purpose: building a channel does no network
        # I/O (gRPC connects lazily), and building it here is what guarantees
        # one channel per node.
        channel = self._factory(address, self._token, self._tls)
        client = DaemonClient(node_id, address, channel, self._timeout, self._operate_timeout)
        log.debug("daemon client built: node=%s address=%s", node_id, address)
        return _Entry(client, channel)

    def _close(self, entry: _Entry) -> None:
        try:
            entry.channel.close()
        except Exception:  # noqa: BLE001 - closing must never fail a request
            log.exception("closing the channel of node %s failed", entry.client.node_id)

    def _close_all(self, entries: list[_Entry]) -> None:
        for entry in entries:
            self._close(entry)
