"""The HTTP server: cheroot's threaded WSGI server (keep-alive, TLS) around an app.

cheroot rather than bottle's reference server or waitress: it is threaded,
keeps connections alive, and speaks TLS with the standard ssl module.
`serve_http` binds at once (port 0 picks a free port, reported in `.port`),
so the caller can log `listening http=HOST:PORT` before serving.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Callable, Optional

from cheroot import errors as cheroot_errors
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from fleet.config import TLSConfig
from fleet.values import join_address, split_address

log = logging.getLogger(__name__)

DEFAULT_THREADS = 16
SHUTDOWN_SECONDS = 5.0   # how long stop() lets requests in progress finish
MAX_HEADER_BYTES = 64 * 1024   # request line + headers; bodies are limited by the app


class HttpServer:
    """A bound cheroot server; `start_background()` serves, `stop()` ends it."""

    def __init__(self, app: Callable, address: str, tls: Optional[TLSConfig] = None,
                 threads: int = DEFAULT_THREADS):
        host, port = split_address(address)
        self._server = wsgi.Server((host, port), app, numthreads=threads,
                                   server_name="fleet", request_queue_size=128,
                                   shutdown_timeout=SHUTDOWN_SECONDS)
        self._server.error_log = _error_log   # cheroot's own messages into our logging
        # The selector loop checks for stop() this often (default 0.5 s: slow shutdowns).
        self._server.expiration_interval = 0.1
        self._server.max_request_header_size = MAX_HEADER_BYTES
        if tls:
            self._server.ssl_adapter = _TLSAdapter(tls.cert, tls.key)
        self._server.prepare()                # binds now: OSError if the port is taken
        self.host = host
        self.port: int = self._server.bind_addr[1]   # the real port, also for port 0
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    @property
    def address(self) -> str:
        """HOST:PORT actually bound ([h]:p for IPv6)."""
        return join_address(self.host, self.port)

    def start_background(self) -> None:
        """Serve requests on a daemon thread (`fleet-http`); safe to call twice."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name="fleet-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except Exception:  # noqa: BLE001 - a server thread must say why it died
            log.exception("http server stopped unexpectedly")

    def stop(self) -> None:
        """Stop taking connections and let requests in progress finish; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        if self._thread is not None:
            self._thread.join(SHUTDOWN_SECONDS + 1)


PLAIN_HTTP_ANSWER = (b"The client sent a plain HTTP request, "
                     b"but this server only speaks HTTPS on this port.")   # cheroot's words
_TLS_HANDSHAKE = b"\x16"   # the first byte of every TLS ClientHello record


class _TLSAdapter(BuiltinSSLAdapter):
    """cheroot's stdlib-ssl adapter, answering plain HTTP with a readable 400.

    When a handshake fails the ssl module closes the socket itself, so the
    400 cheroot means to send never leaves and the client sees a bare
    connection reset (cheroot's own tests expect that). Peeking at the first
    byte lets us answer before any TLS is attempted.
    """

    def wrap(self, sock):
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            raise cheroot_errors.FatalSSLAlert(*exc.args) from exc
        if first and first != _TLS_HANDSHAKE:
            _answer_plain_http(sock)
            raise cheroot_errors.FatalSSLAlert("plain HTTP on the HTTPS port: answered 400")
        return super().wrap(sock)


def _answer_plain_http(sock: socket.socket) -> None:
    """Send a plain 400 and close, reading first what arrived (a close with unread
    bytes sends a reset, which makes the client drop our answer unread)."""
    head = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PLAIN_HTTP_ANSWER))
    try:
        sock.sendall(head + PLAIN_HTTP_ANSWER)
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:
        pass   # gone, or nothing more to read now: either way we are done
    finally:
        sock.close()


def serve_http(app: Callable, address: str, tls: Optional[TLSConfig] = None,
               threads: int = DEFAULT_THREADS) -> HttpServer:
    """A bound HttpServer for `app` on `address` ("127.0.0.1:0" picks a port); not serving yet."""
    return HttpServer(app, address, tls, threads)


def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    log.log(level, "cheroot: %s", msg, exc_info=traceback)
