"""One HTTP/1.1 connection on the server's asyncio loop, and the bridge to the WSGI app.

`Connection` is uvicorn's h11 protocol with one addition: a deadline. A request
must arrive whole (request line, headers and body) within `request_timeout` of
the connection opening or of the previous response; otherwise the connection is
closed (with a 408 if part of a request had come). uvicorn's own timeouts cover
idle keep-alive only, so a client trickling a header byte a second would hold
its connection forever without it.

`WsgiBridge` is the ASGI app the connections call: it reads the whole body on
the loop (413 over the limit), and only then runs the bottle app on a worker
thread, so a slow or stalled client never holds a worker.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional
from urllib.parse import unquote_to_bytes

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# A request that never came whole; the connection closes after it.
# Its own code: deadline_exceeded (504) is a daemon too slow, not a client.
_TIMEOUT_BODY = b'{"error":{"code":"request_timeout","message":"request not received in time"}}\n'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
_BAD_REQUEST = b'{"error":{"code":"invalid_argument","message":"malformed HTTP request"}}\n'
_WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)   # client states once a request is all in


class Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a whole-request deadline."""

    def __init__(self, config, server_state, *, request_timeout: float,
                 on_closed: Callable[[], None], loop: asyncio.AbstractEventLoop):
        super().__init__(config, server_state, app_state={}, _loop=loop)
        self.access_log = False            # uvicorn would log every request at INFO
        self._request_timeout = request_timeout
        self._on_closed = on_closed        # tells the server a connection slot is free
        self._deadline: Optional[asyncio.TimerHandle] = None   # the next request's

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()                    # the next request has its own deadline

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)
        self._on_closed()

    def shutdown(self) -> None:
        """Close when idle, or after the response in progress (server stop)."""
        try:
            super().shutdown()
        except h11.LocalProtocolError:
            self.transport.close()         # half a request in: nothing to finish

    def send_400_response(self, msg: str) -> None:
        """A malformed or oversized request head: the JSON envelope, then close."""
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (len(_BAD_REQUEST), _BAD_REQUEST))
        self.transport.close()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self._request_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state in _WHOLE:
            return                         # the app has the whole request: its own time
        started = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        if started and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_TIMEOUT_RESPONSE)
        log.debug("http: closed %s: no whole request in %gs", self.client, self._request_timeout)
        self.transport.close()


class WsgiBridge:
    """An ASGI app that runs a WSGI app once its request body is all in."""

    def __init__(self, app: Callable, threads: int, max_body: int):
        self._app = app
        self._max_body = max_body
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="fleet-http-worker")

    def close(self) -> None:
        """Let the workers finish what they run, take nothing new."""
        self._executor.shutdown(wait=False)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        undecodable = _not_utf8(scope)
        if undecodable:
            await _send_error(send, 400, "invalid_argument", f"{undecodable} is not UTF-8")
            return
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        try:
            status, headers, chunks = await loop.run_in_executor(
                self._executor, _call_wsgi, self._app, environ)
        except Exception:  # noqa: BLE001 - the edge: log the bug, show nothing of it
            log.exception("internal error: %s %s", scope["method"], scope["path"][:200])
            await _send_error(send, 500, "internal", "internal error")
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    async def _read_body(self, scope: dict, receive: Callable, send: Callable) -> Optional[bytes]:
        """The whole body, or None once answered (413) or gone."""
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self._max_body:
            await _too_large(send, self._max_body)
            return None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self._max_body:
                await _too_large(send, self._max_body)
                return None
            if not message.get("more_body"):
                return bytes(body)


def _call_wsgi(app: Callable, environ: dict) -> tuple[int, list, list]:
    """Run the WSGI app on a worker thread: (status, headers, body chunks)."""
    response: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list, exc_info=None):
        if exc_info and response:
            raise exc_info[1].with_traceback(exc_info[2])
        response["status"], response["headers"] = status, headers
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in response["headers"]]
    return int(response["status"].split(" ", 1)[0]), headers, chunks


def _not_utf8(scope: dict) -> str:
    """What of the request is not UTF-8 ("request path", "header Accept"), or "".

    Checked once here: bottle would drop such bytes from the path (`loc%E9al`
    routing as node `local`) and fail on such a header value when a handler reads
    it."""
    try:
        unquote_to_bytes(scope["raw_path"]).decode("utf-8")
    except UnicodeDecodeError:
        return "request path"
    for name, value in scope["headers"]:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "header " + name.decode("latin-1")[:64]
    return ""


def _environ(scope: dict, body: bytes) -> dict:
    """PEP 3333's environ for an ASGI http scope with its whole body.

    CONTENT_LENGTH is the body's own length (the body is in, de-chunked), never a
    header's claim. Header names with `_` are dropped, as nginx and gunicorn do:
    in the environ `Content_Length` would be `Content-Length`."""
    server = scope.get("server") or ("", 0)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(scope["raw_path"]).decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "REMOTE_ADDR": str(client[0]), "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope["scheme"],
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for raw_name, raw_value in scope["headers"]:
        if b"_" in raw_name or raw_name in (b"content-length", b"transfer-encoding"):
            continue
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name != "CONTENT_TYPE":
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        environ[name] = environ[name] + "," + value if name in environ else value
    return environ


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return ""


async def _too_large(send: Callable, max_body: int) -> None:
    await _send_error(send, 413, "payload_too_large", f"request body over {max_body} bytes")


async def _send_error(send: Callable, status: int, code: str, message: str) -> None:
    """The error envelope, closing the connection (the rest of the body stays unread)."""
    body = json.dumps({"error": {"code": code, "message": message}},
                      separators=(",", ":")).encode() + b"\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
