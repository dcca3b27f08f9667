"""The HTTP server: whole requests read on an asyncio loop, the WSGI app on worker threads.

A thread per connection lets slow clients starve the API (cheroot reads
headers on its worker threads: 64 stalled clients held /health past 10 s). Here
one `fleet-http` thread runs an asyncio loop that accepts connections and
parses HTTP/1.1 with uvicorn's h11 protocol (fleet.manager.api.conn); only a
request that arrived whole within `request_timeout` goes to the bottle app on
one of `threads` workers. At most `max_connections` are open: more wait in the
listen backlog. With TLS the first byte of each connection is peeked before the
handshake, so plain HTTP on the HTTPS port gets a readable 400.

`serve_http` binds at once (port 0 picks a free port, reported in `.port`), so
the caller can log `listening http=HOST:PORT` before serving.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import threading
from typing import Callable, Optional

import uvicorn
from uvicorn.server import ServerState

from fleet.config import TLSConfig
from fleet.fdlimit import raise_soft_limit
from fleet.manager.api.conn import Connection, WsgiBridge
from fleet.values import join_address, split_address

log = logging.getLogger(__name__)

DEFAULT_THREADS = 16
REQUEST_TIMEOUT = 10.0        # seconds for a request to arrive whole
MAX_CONNECTIONS = 1000
KEEP_ALIVE_SECONDS = 5.0      # an idle keep-alive connection closes after this
SHUTDOWN_SECONDS = 5.0        # how long stop() lets requests in progress finish
MAX_HEADER_BYTES = 64 * 1024  # request line + headers
MAX_BODY_BYTES = 64 * 1024    # a larger body is answered 413 before it is read
BACKLOG = 1024
PLAIN_HTTP_ANSWER = (b"The client sent a plain HTTP request, "
                     b"but this server only speaks HTTPS on this port.")
_TLS_HANDSHAKE = b"\x16"      # the first byte of every TLS ClientHello record


class HttpServer:
    """A bound server; `start_background()` serves, `stop()` ends it."""

    def __init__(self, app: Callable, address: str, tls: Optional[TLSConfig] = None, *,
                 threads: int = DEFAULT_THREADS, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, reuse_port: bool = False):
        host, port = split_address(address)
        self._ssl = _server_context(tls) if tls else None
        _make_room_for(max_connections)
        self._sock = socket.create_server((host, port), backlog=BACKLOG, reuse_port=reuse_port,
                                          family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setblocking(False)
        self.host = host
        self.port: int = self._sock.getsockname()[1]   # the real port, also for port 0
        self._bridge = WsgiBridge(app, threads, MAX_BODY_BYTES)
        self._config = uvicorn.Config(
            app=self._bridge, interface="asgi3", http="h11", ws="none", lifespan="off",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            date_header=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        self._config.load()
        self._state = ServerState()          # uvicorn's: open connections, running requests
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._open = 0                       # accepted and not yet closed (loop thread only)
        self._slot_freed: Optional[asyncio.Event] = None
        self._stopping: Optional[asyncio.Event] = None
        self._admitting: set[asyncio.Task] = set()   # connections before their protocol runs
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()        # guards _stopped against two stop() calls
        self._stopped = False

    @property
    def address(self) -> str:
        """HOST:PORT actually bound ([h]:p for IPv6)."""
        return join_address(self.host, self.port)

    def start_background(self) -> None:
        """Serve requests on a daemon thread (`fleet-http`); safe to call twice."""
        if self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fleet-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking connections and let requests in progress finish; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._thread is None:
            self._sock.close()
            self._bridge.close()
            return
        self._loop.call_soon_threadsafe(self._begin_stop)
        self._thread.join(SHUTDOWN_SECONDS + 2)

    def _begin_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except Exception:  # noqa: BLE001 - a server thread must say why it died
            log.exception("http server stopped unexpectedly")
        finally:
            self._sock.close()
            self._bridge.close()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping, self._slot_freed = asyncio.Event(), asyncio.Event()
        if self._stopped:                    # stop() came before the loop ran
            return
        accepting = asyncio.create_task(self._accept_loop())
        await self._stopping.wait()
        accepting.cancel()
        self._sock.close()                   # new clients are refused from here on
        await self._drain()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_until = 0.0
        while True:
            while self._open >= self._max_connections:
                self._slot_freed.clear()     # the rest wait in the listen backlog
                await self._slot_freed.wait()
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as exc:           # out of descriptors, or aborted: try again soon
                if loop.time() >= quiet_until:
                    log.warning("http: accept failed: %s", exc)
                    quiet_until = loop.time() + 10.0   # one line per 10 s, not per retry
                await asyncio.sleep(0.1)
                continue
            # asyncio sets TCP_NODELAY only when the socket says IPPROTO_TCP, which an
            # accepted one does not: without it each response waits out a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._open += 1
            task = asyncio.create_task(self._admit(sock))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, sock: socket.socket) -> None:
        """Hand `sock` to a Connection (after TLS); close it if it never gets there."""
        loop = asyncio.get_running_loop()
        made: list[Connection] = []

        def factory() -> Connection:
            made.append(Connection(self._config, self._state, loop=loop,
                                   request_timeout=self._request_timeout,
                                   on_closed=self._closed))
            return made[0]

        try:
            if self._ssl is None:
                await loop.connect_accepted_socket(factory, sock)
            elif await _starts_tls(sock, self._request_timeout):
                await loop.connect_accepted_socket(
                    factory, sock, ssl=self._ssl, ssl_handshake_timeout=self._request_timeout)
            else:
                await _answer_plain_http(sock)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            log.debug("http: connection dropped before a request: %s", exc)
        except asyncio.CancelledError:
            pass                             # server stopping
        if not made or made[0].transport is None:
            sock.close()
            self._closed()

    def _closed(self) -> None:
        self._open -= 1
        self._slot_freed.set()

    async def _drain(self) -> None:
        """Close idle connections, let requests in progress finish, then close the rest."""
        for task in list(self._admitting):
            task.cancel()
        for connection in list(self._state.connections):
            connection.shutdown()
        if self._state.tasks:
            await asyncio.wait(set(self._state.tasks), timeout=SHUTDOWN_SECONDS)
        for connection in list(self._state.connections):
            connection.transport.close()
        await asyncio.sleep(0)               # let connection_lost callbacks run


async def _starts_tls(sock: socket.socket, timeout: float) -> bool:
    """Whether the client's first byte opens a TLS handshake; TimeoutError if none comes."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await asyncio.wait_for(readable, timeout)
    finally:
        loop.remove_reader(sock.fileno())
    first = sock.recv(1, socket.MSG_PEEK)
    if not first:
        raise ConnectionResetError("closed before sending anything")
    return first == _TLS_HANDSHAKE


async def _answer_plain_http(sock: socket.socket) -> None:
    """A plain 400 on the HTTPS port, then close after the client's own close (a close
    with unread bytes sends a reset, which makes the client drop our answer unread)."""
    loop = asyncio.get_running_loop()
    head = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PLAIN_HTTP_ANSWER))
    await loop.sock_sendall(sock, head + PLAIN_HTTP_ANSWER)
    sock.shutdown(socket.SHUT_WR)
    unread = 64 * 1024                       # read at most this much of what it sent
    while unread > 0:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 1.0)
        if not data:
            break
        unread -= len(data)


def _server_context(tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context


def _make_room_for(connections: int) -> None:
    """Raise the soft descriptor limit so `connections` sockets fit beside the rest."""
    wanted = connections + 256               # the database, gRPC, logs, agents' pipes
    limit = raise_soft_limit(wanted)
    if limit != resource.RLIM_INFINITY and limit < wanted:
        log.warning("http: descriptor limit %d leaves room for fewer than %d connections",
                    limit, connections)


def serve_http(app: Callable, address: str, tls: Optional[TLSConfig] = None, *,
               threads: int = DEFAULT_THREADS, request_timeout: float = REQUEST_TIMEOUT,
               max_connections: int = MAX_CONNECTIONS, reuse_port: bool = False) -> HttpServer:
    """A bound HttpServer for `app` on `address` ("127.0.0.1:0" picks a port); not serving yet.

    `reuse_port`: share the port with other processes that set it too (workers)."""
    return HttpServer(app, address, tls, threads=threads, request_timeout=request_timeout,
                      max_connections=max_connections, reuse_port=reuse_port)
