"""What fleet's gRPC server (fleet.rpc.create_server) says on the wire about flow
control, read with a raw HTTP/2 client over a real socket: the 4 MB windows at once,
and no bandwidth-delay probe (a PING to each new connection's peer)."""
import socket
import struct

from fleet.rpc import create_server
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
        settings = [struct.unpack_from(">HI", payload, at)
                    for kind, flags, payload in received if kind == SETTINGS and not flags & 1
                    for at in range(0, len(payload), 6)]
        assert (INITIAL_WINDOW_SIZE, 4 << 20) in settings
        assert not [1 for kind, flags, _ in received if kind == PING and not flags & 1]
    finally:
        client.sock.close()
        server.stop(0)
