"""gRPC plumbing both roles share: servers, channels, the cluster token, errors.

Servicers stay thin: they convert protos and call a service; `translate`
turns FleetError into a status once, here. Both directions carry the cluster
token as `authorization: Bearer <token>` metadata, compared in constant time.
TLS settings are read in two shapes: a server's (cert, key, client_ca) and a
client's (cert, key, ca, server_name); `as_client`/`as_server` turn one into
the other, and only create_server/open_channel build credentials from them.
"""
from __future__ import annotations

import functools
import hmac
import logging
import threading
import time
import urllib.parse
from concurrent import futures
from typing import Any, Callable, Iterable

import grpc

from fleet import errors
from fleet.config import TLSConfig
from fleet.values import join_address, split_address

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REFUSAL_LOG_SECONDS = 60.0     # at most one line per peer host about refused calls
MAX_DETAILS_BYTES = 1024        # of an error status's message (percent-encoded: up to 3x)
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# No bandwidth-delay probing, on either end: after data arrives, the probe PINGs
# the peer to size the flow-control window, and the peer answers; with a report
# every few seconds that is a PING and its answer per report, on the manager for
# every daemon's connection (10,000 nodes, a connection each: two SQLite workers
# stored 3-25 % more without the server's probe, median 10 %, in each of 8
# alternated rounds, docs/scale.md). The window it would open is opened at once
# instead: 4 MB, what the probe advertised, so a large report or log read over a
# slow link is not held to HTTP/2's 64 KB a round trip.
FLOW_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 << 20),
]
SERVER_OPTIONS = FLOW_OPTIONS + [
    # Allow the clients' 30 s keepalive pings (DESIGN.md): minimum interval <= 30 s.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
# Called without the cluster token: the standard health service tells only up or
# down, and load balancers and grpc_health_probe carry no credentials (fleet/serving.py).
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Trailing metadata of a RESOURCE_EXHAUSTED that is backpressure (errors.Overloaded): the
# milliseconds to wait before retrying. A non-OK status carries no response body, so
# SyncAgentStatesResponse.retry_after_ms cannot travel with it; the key mirrors its name.
RETRY_AFTER_KEY = "retry-after-ms"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks the cluster token, and logs who called;
    only OPEN_METHODS pass without it."""

    def __init__(self, token: str, refusals: "RefusalLog | None" = None):
        self._expected = _bearer(token).encode()
        self._refusals = refusals or RefusalLog()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in OPEN_METHODS:
            return continuation(handler_call_details)
        why = "missing cluster token"
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return continuation(handler_call_details)
                why = "wrong cluster token"
                break
        return self._deny(handler_call_details.method, why)

    def _deny(self, method: str, why: str) -> grpc.RpcMethodHandler:
        def deny(request: Any, context: grpc.ServicerContext) -> None:
            self._refusals.refused(context.peer(), method, why)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        return grpc.unary_unary_rpc_method_handler(deny)


class RefusalLog:
    """Warnings about refused calls, at most one per peer host per `every` seconds; the
    next line counts the ones left out. A client hammering with a wrong token is one
    line a minute, and many such clients cost at most MAX_PEERS entries."""

    MAX_PEERS = 1024

    def __init__(self, every: float = REFUSAL_LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        # peer host -> [when its last line was logged, refusals left out since]
        self._peers: dict[str, list] = {}

    def refused(self, peer: str, method: str, why: str) -> None:
        """Record one refused call from `peer` (gRPC's "ipv4:1.2.3.4:5678" form)."""
        host = peer_host(peer)
        now = self.clock()
        with self._lock:
            entry = self._peers.get(host)
            if entry is not None and now - entry[0] < self.every:
                entry[1] += 1
                return
            suppressed = entry[1] if entry is not None else 0
            self._peers.pop(host, None)
            if len(self._peers) >= self.MAX_PEERS:
                self._peers.pop(next(iter(self._peers)))   # the least recently logged
            self._peers[host] = [now, 0]
        more = f" ({suppressed} more from {host} not logged)" if suppressed else ""
        log.warning("refused call %r from %s: %s%s", method[:200], _peer_address(peer), why,
                    more)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: "ipv4:10.0.0.5:4242" -> "10.0.0.5"."""
    address = _peer_address(peer)
    host, sep, port = address.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else address


def _peer_address(peer: str) -> str:
    kind, sep, rest = urllib.parse.unquote(peer).partition(":")
    return rest if sep and kind in ("ipv4", "ipv6", "unix") else peer


class _TokenAttach(grpc.UnaryUnaryClientInterceptor):
    """Adds the cluster token to every outgoing call."""

    def __init__(self, token: str):
        self._pair = ("authorization", _bearer(token))

    def intercept_unary_unary(self, continuation, call_details, request):
        metadata = list(call_details.metadata or ()) + [self._pair]
        details = call_details._replace(metadata=metadata) if hasattr(call_details, "_replace") \
            else _Details(call_details, metadata)
        return continuation(details, request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def as_client(tls: TLSConfig | None) -> TLSConfig | None:
    """Server-side TLS ([manager.tls]) turned into the settings to dial a peer with.

    One cluster CA signs every certificate, so the CA that vouches for the
    peers' client certificates (client_ca) also vouches for their server
    certificates: the manager dials daemons, and a local daemon under
    --role all dials its manager, presenting cert/key and trusting client_ca.
    An empty client_ca leaves ca empty: gRPC's default roots verify the peer.
    """
    if tls is None:
        return None
    return TLSConfig(cert=tls.cert, key=tls.key, ca=tls.client_ca, server_name=tls.server_name)


def as_server(tls: TLSConfig | None) -> TLSConfig | None:
    """Client-side TLS ([daemon.tls]) turned into the settings to serve with.

    The daemon serves with its own cert/key and, when ca is set, requires
    client certificates signed by it: only the cluster's manager may call.
    """
    if tls is None:
        return None
    return TLSConfig(cert=tls.cert, key=tls.key, client_ca=tls.ca)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def create_server(address: str, register: Iterable[Callable[[grpc.Server], None]],
                  token: str = "", tls: TLSConfig | None = None,
                  max_workers: int = 16, reuse_port: bool = False) -> tuple[grpc.Server, int]:
    """A started-not-yet server bound to address; returns (server, bound port).

    `reuse_port`: share the port with other processes that set it too (workers).
    Raises OSError when the address cannot be bound (port in use).
    """
    interceptors = [TokenCheck(token)] if token else []
    options = [(key, 1 if key == "grpc.so_reuseport" and reuse_port else value)
               for key, value in SERVER_OPTIONS]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers, thread_name_prefix="fleet-grpc"),
                         interceptors=interceptors, options=options)
    for add in register:
        add(server)
    host, port = split_address(address)
    bind = join_address(host, port)
    try:
        if tls:
            creds = grpc.ssl_server_credentials(
                [(_read(tls.key), _read(tls.cert))],
                root_certificates=_read(tls.client_ca) if tls.client_ca else None,
                require_client_auth=bool(tls.client_ca))
            bound = server.add_secure_port(bind, creds)
        else:
            bound = server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot listen on {address}: address in use or unavailable")
    return server, bound


def open_channel(address: str, token: str = "", tls: TLSConfig | None = None) -> grpc.Channel:
    """A channel to address with keepalive, the cluster token, and TLS if given."""
    options = KEEPALIVE_OPTIONS + FLOW_OPTIONS + [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca) if tls.ca else None,
            private_key=_read(tls.key) if tls.key else None,
            certificate_chain=_read(tls.cert) if tls.cert else None)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _TokenAttach(token)) if token else channel


def translate(method: Callable) -> Callable:
    """Servicer method decorator: FleetError -> its status; a bug -> INTERNAL, logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except errors.FleetError as exc:
            code = getattr(grpc.StatusCode, errors.lookup(errors.GRPC_CODE_NAMES, exc))
            if isinstance(exc, errors.Overloaded):
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(exc.retry_after_ms)),))
            context.abort(code, short_details(exc.message))
        except Exception:  # noqa: BLE001 - the edge: log the bug, tell nothing
            if _is_abort(context):
                raise
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


def short_details(message: str, limit: int = MAX_DETAILS_BYTES) -> str:
    """`message` cut to `limit` UTF-8 bytes: a status carrying a client's megabyte id
    back would overflow the peer's metadata limit and arrive as RESOURCE_EXHAUSTED."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    return data[:limit].decode("utf-8", "ignore") + "..."


def _is_abort(context: grpc.ServicerContext) -> bool:
    """True once context.abort() ran (it raises a bare Exception to unwind)."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and code != grpc.StatusCode.OK


def from_rpc_error(exc: grpc.RpcError, what: str) -> errors.FleetError:
    """Our error for a failed call to a peer; `what` names the peer and call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name.lower()
    kind = errors.FROM_GRPC_CODE_NAME.get(code.name, errors.DaemonError)
    if kind is errors.Unavailable:
        return errors.Unavailable(f"{what}: unreachable ({details})")
    if kind is errors.DeadlineExceeded:
        return errors.DeadlineExceeded(f"{what}: no answer within the deadline")
    if kind is errors.DaemonError:
        return errors.DaemonError(f"{what}: {code.name}: {details}")
    if kind is errors.ResourceExhausted:
        retry_after = _retry_after_ms(exc)
        if retry_after is not None:
            return errors.Overloaded(f"{what}: busy ({details})", retry_after)
    return kind(details)


def _retry_after_ms(exc: grpc.RpcError) -> int | None:
    """The RETRY_AFTER_KEY hint of a failed call, or None (no hint: a message too large)."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0, int(value))
            except (TypeError, ValueError):
                return None
    return None
