"""The HTTP server's own limits (fleet.manager.api.server): connection cap, idle close, clean stop,
and the config keys that set them."""
import http.client
import json
import socket
import threading
import time

import bottle
import pytest

from fleet import config as configuration
from fleet.manager.api.server import KEEP_ALIVE_SECONDS, serve_http
from tests.helpers import wait_for


def small_app(entered=None, release=None):
    """/health, and /slow that sets `entered` and answers once `release` is set."""
    app = bottle.Bottle()
    app.route("/health", "GET", lambda: "ok")

    def slow():
        entered.set()
        return "done" if release.wait(10) else "timed out"

    app.route("/slow", "GET", slow)
    return app


def get(port, path, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_connections_over_the_cap_wait_in_the_backlog_not_refused():
    """With http_max_connections open, the next client waits and is served once one closes."""
    server = serve_http(small_app(), "127.0.0.1:0", request_timeout=30, max_connections=3)
    server.start_background()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        waiting.request("GET", "/health")        # connects: the kernel's backlog holds it
        waiting.sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            waiting.getresponse()                # not accepted while three are open
        waiting.close()
        answer = {}
        client = threading.Thread(target=lambda: answer.update(ok=get(server.port, "/health")))
        client.start()
        held.pop().close()                       # a slot frees: the waiting one is served
        client.join(10)
        assert answer["ok"] == (200, b"ok")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_an_idle_keep_alive_connection_is_closed_after_a_few_seconds():
    """After its response, a keep-alive connection left idle is closed by the server."""
    server = serve_http(small_app(), "127.0.0.1:0", request_timeout=60)
    server.start_background()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=KEEP_ALIVE_SECONDS + 5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = time.monotonic()
        received = read_to_end(sock)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert KEEP_ALIVE_SECONDS - 0.5 <= time.monotonic() - answered < KEEP_ALIVE_SECONDS + 4
        sock.close()
    finally:
        server.stop()


def test_stop_lets_a_request_in_progress_finish():
    """stop() closes the port at once but the request already running gets its answer."""
    entered, release = threading.Event(), threading.Event()
    server = serve_http(small_app(entered, release), "127.0.0.1:0")
    server.start_background()
    answer = {}
    client = threading.Thread(target=lambda: answer.update(slow=get(server.port, "/slow")))
    client.start()
    assert entered.wait(5)
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    wait_for(lambda: _refused(server.port), timeout=5)
    release.set()
    client.join(10)
    stopping.join(10)
    assert answer["slow"] == (200, b"done")
    assert not stopping.is_alive()


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("key, value, why", [
    ("http_request_timeout", 0, "must be between 0.1 and"),
    ("http_request_timeout", "soon", "not a number of seconds"),
    ("http_max_connections", 0, "must be between 1 and 100000"),
    ("http_max_connections", 1.5, "not an integer"),
])
def test_bad_http_limits_are_config_errors(key, value, why):
    """A bad http_request_timeout or http_max_connections is reported naming [manager] and the key."""
    problems = []
    configuration.parse("manager", {"manager": {key: value}}, problems)
    assert len(problems) == 1 and problems[0].startswith(f"[manager] {key}: "), problems
    assert why in problems[0], problems


def test_http_limits_are_read():
    """http_request_timeout and http_max_connections reach the manager's config."""
    parsed = configuration.parse("manager", {"manager": {
        "http_request_timeout": 2.5, "http_max_connections": 50}}, [])
    assert (parsed.manager.http_request_timeout, parsed.manager.http_max_connections) == (2.5, 50)


# ---- what reaches the app ----

def echo_app(seen):
    """/echo/<rest> answers what the app was given: its path, body and headers."""
    app = bottle.Bottle()

    def echo(rest):
        request = bottle.request
        seen.append(rest)
        return {"path": rest, "length": request.environ.get("CONTENT_LENGTH"),
                "body": request.body.read().decode(),
                "headers": sorted(k for k in request.environ if k.startswith("HTTP_"))}

    app.route("/echo/<rest>", ["GET", "POST"], echo)
    return app


def read_to_end(sock) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return received
        received += data


def raw(port, request: bytes) -> tuple[int, dict]:
    """Send raw bytes; the response's status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = read_to_end(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.fixture()
def echo():
    seen = []
    server = serve_http(echo_app(seen), "127.0.0.1:0")
    server.start_background()
    server.seen = seen
    yield server
    server.stop()


@pytest.mark.parametrize("request_bytes, what", [
    (b"GET /echo/loc%E9al HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "request path"),
    (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAccept: text/\xe9\r\nConnection: close\r\n\r\n",
     "header accept"),
    (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\xe9\r\n"
     b"Connection: close\r\n\r\n", "header authorization"),
])
def test_a_request_that_is_not_utf8_is_400_naming_what_before_the_app(echo, request_bytes, what):
    """A path or header value that is not UTF-8 is answered 400 naming it, and never
    reaches the app (bottle would drop such bytes from a path, routing `loc%E9al`
    as `local`, or fail with a 500 reading such a header)."""
    status, body = raw(echo.port, request_bytes)
    assert status == 400 and body["error"] == {"code": "invalid_argument",
                                               "message": f"{what} is not UTF-8"}
    assert echo.seen == []
    status, body = raw(echo.port, b"GET /echo/l%C3%A9 HTTP/1.1\r\nHost: x\r\n"
                                  b"Accept: caf\xc3\xa9\r\nConnection: close\r\n\r\n")
    assert status == 200 and body["path"] == "l\u00e9"        # UTF-8 itself passes


def test_the_app_gets_the_body_it_has_whatever_the_headers_claim(echo):
    """A chunked body with a Content-Length beside it reaches the app whole, with its
    own length (RFC 9112: chunked wins); a `Content_Length` header, which would pose
    as Content-Length in the WSGI environ, is dropped like every name with `_`."""
    chunked = (b"POST /echo/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Length: 3\r\nConnection: close\r\n\r\n"
               b"b\r\nhello world\r\n0\r\n\r\n")
    status, body = raw(echo.port, chunked)
    assert (status, body["body"], body["length"]) == (200, "hello world", "11")
    status, body = raw(echo.port, b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                  b"Content_Length: 2\r\nX_Secret: y\r\nConnection: close\r\n"
                                  b"\r\nhello")
    assert (status, body["body"], body["length"]) == (200, "hello", "5")
    assert body["headers"] == ["HTTP_CONNECTION", "HTTP_HOST"]


def test_a_body_cut_short_is_408_request_timeout_after_the_timeout():
    """A request whose body stops short of its Content-Length is answered 408 with the
    envelope's code request_timeout once http_request_timeout passes (it said
    deadline_exceeded, the code of a daemon too slow), and the connection closes."""
    seen = []
    server = serve_http(echo_app(seen), "127.0.0.1:0", request_timeout=0.5)
    server.start_background()
    try:
        began = time.monotonic()
        status, body = raw(server.port, b"POST /echo/a HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: 100\r\n\r\n{\"half\":")
        assert (status, body["error"]) == (408, {"code": "request_timeout",
                                                 "message": "request not received in time"})
        assert 0.4 <= time.monotonic() - began < 5 and seen == []
    finally:
        server.stop()
