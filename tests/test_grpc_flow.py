"""What fleet's gRPC ends say on the wire about flow control, read over real sockets
by a raw HTTP/2 peer: the server (fleet.rpc.create_server) and a channel
(fleet.rpc.open_channel, the daemons' and the manager's pool's) open 4 MB windows
at once and never probe the bandwidth with PINGs, which a peer must answer: with
the probe, a report every few seconds cost a PING and its answer each."""
import socket
import struct
import threading

from fleet.rpc import create_server, open_channel
from helpers import wait_for

DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE = 0, 1, 4, 6, 8
INITIAL_WINDOW_SIZE = 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + \
        struct.pack(">I", stream) + payload


def literal(name, value):
    """An HPACK literal header field, not indexed, names and values under 128 bytes."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class RawClient:
    """An HTTP/2 connection whose every frame from the server is kept."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
        self.data = b""
        self.next_stream = 1

    def call(self, path):
        """A unary call's HEADERS and DATA (an empty message)."""
        block = b"\x83\x86" + b"\x04" + bytes([len(path)]) + path.encode() + \
            literal("content-type", "application/grpc") + literal("te", "trailers")
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.sock.sendall(frame(HEADERS, 0x4, stream, block) +
                          frame(DATA, 0x1, stream, b"\x00\x00\x00\x00\x00"))

    def frames(self):
        """[(kind, flags, payload)] of everything received so far."""
        self.sock.setblocking(False)
        try:
            while chunk := self.sock.recv(1 << 16):
                self.data += chunk
        except BlockingIOError:
            pass
        found, at = [], 0
        while at + 9 <= len(self.data):
            length = int.from_bytes(self.data[at:at + 3], "big")
            found.append((self.data[at + 3], self.data[at + 4],
                          self.data[at + 9:at + 9 + length]))
            at += 9 + length
        return found


def test_the_server_opens_4_mb_windows_and_never_probes_with_pings():
    server, port = create_server("127.0.0.1:0", [])
    server.start()
    client = RawClient(port)
    try:
        for _ in range(10):
            client.call("/fleet.v1.ManagerService/Heartbeat")
        # Every call answered (a RST_STREAM or trailers each: no method is registered).
        wait_for(lambda: sum(1 for kind, flags, _ in client.frames()
                             if kind == 3 or (kind == HEADERS and flags & 0x1)) >= 10)
        received = client.frames()
        assert (INITIAL_WINDOW_SIZE, 4 << 20) in settings_of(received)
        assert not [1 for kind, flags, _ in received if kind == PING and not flags & 1]
    finally:
        client.sock.close()
        server.stop(0)


def settings_of(received):
    """[(id, value)] of every SETTINGS frame (not an ACK) among `received` frames."""
    return [struct.unpack_from(">HI", payload, at)
            for kind, flags, payload in received if kind == SETTINGS and not flags & 1
            for at in range(0, len(payload), 6)]


class RawServer:
    """Accepts one HTTP/2 connection, answers every call with an empty message and
    grpc-status 0, answers PINGs, and keeps every frame the client sent."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.listener.accept()
        data = b""
        with conn:
            while len(data) < 24:           # the client's connection preface
                data += conn.recv(1 << 16)
            data = data[24:]
            conn.sendall(frame(SETTINGS, 0, 0))
            while chunk := conn.recv(1 << 16):
                data += chunk
                while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                    length = int.from_bytes(data[:3], "big")
                    kind, flags = data[3], data[4]
                    stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                    payload, data = data[9:9 + length], data[9 + length:]
                    self.received.append((kind, flags, payload))
                    self._answer(conn, kind, flags, stream, payload)

    @staticmethod
    def _answer(conn, kind, flags, stream, payload):
        if kind == SETTINGS and not flags & 1:
            conn.sendall(frame(SETTINGS, 0x1, 0))
        elif kind == PING and not flags & 1:
            conn.sendall(frame(PING, 0x1, 0, payload))
        elif kind == DATA and flags & 0x1:  # the request's end: status 200, a message, trailers
            conn.sendall(frame(HEADERS, 0x4, stream,
                               b"\x88" + literal("content-type", "application/grpc"))
                         + frame(DATA, 0, stream, b"\x00\x00\x00\x00\x00")
                         + frame(HEADERS, 0x5, stream, literal("grpc-status", "0")))


def test_a_channel_opens_4_mb_windows_and_never_probes_with_pings():
    server = RawServer()
    channel = open_channel(f"127.0.0.1:{server.port}")
    call = channel.unary_unary("/fleet.v1.ManagerService/Heartbeat",
                               request_serializer=bytes, response_deserializer=bytes)
    try:
        for _ in range(3):
            assert call(b"", timeout=5) == b""
            threading.Event().wait(0.2)     # spaced, as reports are: each one was probed
        received = list(server.received)
        assert (INITIAL_WINDOW_SIZE, 4 << 20) in settings_of(received)
        assert not [1 for kind, flags, _ in received if kind == PING and not flags & 1]
    finally:
        channel.close()
        server.listener.close()
