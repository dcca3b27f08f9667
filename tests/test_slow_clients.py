"""Slow and stalled HTTP clients hold no worker: a real manager process keeps answering.

300 connections stall in four ways (nothing sent, half a request line, headers
trickled a byte a second, a body shorter than its Content-Length) while /health
and an authenticated GET /api/v1/nodes are timed against a baseline taken in the
same test; then the server closes every stalled connection once
http_request_timeout has passed. Over plain HTTP and over HTTPS.
"""
import http.client
import resource
import selectors
import socket
import ssl
import statistics
import time

import pytest

from tests.realfleet import API_TOKEN, Cluster
from tests.tls_certs import issue, make_ca

# http_request_timeout of the manager under test: long enough to open every stalled
# connection (300 TLS handshakes take seconds on a busy machine) and measure before
# the first is cut off.
REQUEST_TIMEOUT = {"http": 4.0, "https": 10.0}
PER_KIND = 75            # stalled connections of each of the four kinds
ROUNDS = 10              # /health and /api/v1/nodes requests per measurement
TRICKLE = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64


@pytest.fixture(autouse=True)
def enough_descriptors():
    """Room for the stalled sockets (some hosts default to a soft limit of 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Stalled:
    """One stalled client socket: what it sends, when it opened, when the server closed it."""

    def __init__(self, sock, kind):
        self.sock, self.kind = sock, kind
        self.opened = time.monotonic()
        self.closed_at = None
        self.sent = 0             # bytes of TRICKLE sent so far (trickle kind)
        self.answer = b""

    def read(self):
        """Read what arrived; note the close once the server's EOF (or reset) shows."""
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                self.answer += data
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except (ssl.SSLError, ConnectionError):
            pass                  # a TLS close without close_notify, or a reset: closed all the same
        self.closed_at = time.monotonic()

    def trickle(self):
        """Send the next byte of an endless header."""
        try:
            self.sock.send(TRICKLE[self.sent % len(TRICKLE):][:1])
            self.sent += 1
        except (ssl.SSLError, OSError):
            self.read()


def open_stalled(port, context):
    """PER_KIND connections of each stalled kind; over TLS all but 'nothing' finish the handshake."""
    def connect(handshake=True):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        return context.wrap_socket(sock, server_hostname="127.0.0.1") if context and handshake \
            else sock

    stalled = []
    for _ in range(PER_KIND):
        stalled.append(Stalled(connect(handshake=False), "nothing"))
        half = Stalled(connect(), "half-line")
        half.sock.sendall(b"GET /hea")
        short = Stalled(connect(), "short-body")
        short.sock.sendall(b"POST /api/v1/nodes/n1/agents/sync HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 1000\r\n\r\n{\"operation\"")
        stalled += [half, short, Stalled(connect(), "trickle")]
    for client in stalled:
        client.sock.setblocking(False)
    return stalled


def timings(port, context):
    """(median, max) seconds of ROUNDS new-connection GET /health and GET /api/v1/nodes each."""
    seconds = []
    for _ in range(ROUNDS):
        for path, headers in (("/health", {}),
                              ("/api/v1/nodes", {"Authorization": f"Bearer {API_TOKEN}"})):
            start = time.perf_counter()
            conn = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
                    if context else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            assert response.status == 200, body
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), max(seconds)


def wait_until_closed(stalled, limit):
    """Trickle a byte a second to the trickle kind and read every socket until all are
    closed or `limit` (monotonic) passes; returns those still open."""
    selector = selectors.DefaultSelector()
    for client in stalled:
        selector.register(client.sock, selectors.EVENT_READ, client)
    next_tick = time.monotonic()
    while time.monotonic() < limit:
        if time.monotonic() >= next_tick:
            for client in stalled:
                if client.kind == "trickle" and client.closed_at is None:
                    client.trickle()
            next_tick += 1.0
        for key, _ in selector.select(timeout=max(0.0, min(next_tick, limit) - time.monotonic())):
            key.data.read()
            if key.data.closed_at is not None:
                selector.unregister(key.fileobj)
        if all(client.closed_at is not None for client in stalled):
            break
    selector.close()
    return [client for client in stalled if client.closed_at is None]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and the manager's certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    return ca, issue(directory, ca, "manager")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_stalled_clients_do_not_starve_the_api(tmp_path, pki, scheme):
    """With 300 stalled connections the API answers about as fast as without; each is closed after the timeout."""
    ca, cert = pki
    timeout = REQUEST_TIMEOUT[scheme]
    extra = f"http_request_timeout = {timeout}\n"
    context = None
    if scheme == "https":
        extra += f'[manager.tls]\ncert = "{cert.cert}"\nkey = "{cert.key}"\n'
        context = ssl.create_default_context(cafile=ca.cert)
    cluster = Cluster(tmp_path)
    stalled = []
    try:
        port = cluster.run("manager", cluster.manager_config(extra=extra)).port("http")
        base_median, base_max = timings(port, context)
        stalled = open_stalled(port, context)
        for client in stalled:
            if client.kind == "trickle":
                client.trickle()
        median, slowest = timings(port, context)
        # Every stalled connection was still open (held by the server) while we measured.
        assert time.monotonic() < stalled[0].opened + timeout, "too slow to measure in time"
        assert [c.kind for c in stalled if (c.read() or c.closed_at)] == []
        assert median <= 5 * base_median + 0.25, (median, base_median)
        assert slowest <= 5 * base_max + 2.0, (slowest, base_max)

        still_open = wait_until_closed(stalled, time.monotonic() + timeout + 10)
        assert [c.kind for c in still_open] == []
        early = [(c.kind, round(c.closed_at - c.opened, 2)) for c in stalled
                 if c.closed_at - c.opened < timeout - 0.2]
        assert early == []
        trickled = [c for c in stalled if c.kind == "trickle"]
        assert all(c.sent >= 2 for c in trickled)    # bytes kept coming, and did not help
        assert all(c.answer.startswith(b"HTTP/1.1 408 ") for c in trickled if c.answer)
    finally:
        for client in stalled:
            client.sock.close()
        cluster.close()
