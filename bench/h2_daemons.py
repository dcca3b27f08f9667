"""Simulated daemons that speak gRPC as raw HTTP/2 frames: bench_scale.py's cheap generator.

    python bench/h2_daemons.py SPEC.json      (started by bench_scale.py --generator h2)

bench_scale.py's own simulator (`--generator grpc`) calls through grpcio, whose
Python layer costs about 400-600 µs of CPU a call on this machine, about as much
as the manager's gRPC server; on 2 cores it then takes a third of what the
managers could use. Node.js's HTTP/2 client measured the same (290-410 µs a
call). This one builds each request from bytes made once (an HPACK block of
literals, one DATA frame: the node's report serialized once, its seq and full
appended) and runs every connection of the process from one thread on a
selector, so a call costs a few syscalls shared by the calls in flight.

What the server sees is what grpcio's client sends: one HTTP/2 connection per
node with one call at a time on it, the same requests, the same
headers (content-type application/grpc, te trailers, grpc-timeout, the cluster
token). A call's outcome is its trailers' grpc-status; we ask the server for no
HPACK dynamic table (SETTINGS_HEADER_TABLE_SIZE 0), so each header block decodes
alone, and a block seen before is not decoded again.

Each simulated node holds its own connection, as a real daemon does, so the
managers hold as many connections as the fleet has nodes and the kernel spreads
them over SO_REUSEPORT workers as it would spread a real fleet's. (Before, the
32 senders' own connections split unevenly between two workers, 60 % against
43 % of a core in one run, and that split moved from run to run.)

SPEC.json (written by bench_scale.py): address, token_env, threads (senders),
full_every, deadline, first, total, register and sync (per node, base64 of its
RegisterNodeRequest and SyncAgentStatesRequest). Protocol with bench_scale.py as
its grpc client's: register every node, print "ready", then per stdin line
(`saturation SECONDS` or `steady SECONDS PERIOD`) run that load and print one
JSON line {latencies (s), errors, cpu (s), elapsed (s)}.
"""
from __future__ import annotations

import base64
import heapq
import json
import os
import pathlib
import selectors
import socket
import struct
import sys
import time

import hpack  # the HPACK decoder of the h2 project (Huffman, static table)

import loads  # bench/: the protocol with bench_scale.py

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from fleet.fdlimit import raise_soft_limit  # noqa: E402

SYNC = "/fleet.v1.ManagerService/SyncAgentStates"
REGISTER = "/fleet.v1.ManagerService/RegisterNode"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, INITIAL_WINDOW_SIZE = 0x1, 0x4
BIG_WINDOW = 2 ** 31 - 1
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
         "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
         "UNAUTHENTICATED")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + \
        struct.pack(">I", stream) + payload


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK's integer with a prefix_bits prefix, OR-ed into `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def literal(name: str | int, value: str) -> bytes:
    """A header field as a literal never added to a table: name by static index or text."""
    if isinstance(name, int):
        out = hpack_int(name, 4, 0x00)
    else:
        out = b"\x00" + hpack_int(len(name), 7, 0) + name.encode()
    return out + hpack_int(len(value), 7, 0) + value.encode()


def request_block(path: str, authority: str, token: str, deadline: float) -> bytes:
    """The HEADERS block of a call: the same on every call of a connection."""
    return (b"\x83\x86"                                  # :method POST, :scheme http
            + literal(4, path) + literal(1, authority)   # :path, :authority
            + literal(31, "application/grpc")            # content-type
            + literal("te", "trailers")
            + literal("grpc-timeout", f"{int(deadline * 1000)}m")
            + literal(23, f"Bearer {token}"))            # authorization


class Call:
    __slots__ = ("stream", "began", "done", "data")

    def __init__(self, stream: int, began: float, done):
        self.stream, self.began, self.done = stream, began, done
        self.data = False


class Connection:
    """One HTTP/2 connection to the manager, driven by the Loop's thread."""

    def __init__(self, loop: "Loop", address: str, token: str, deadline: float):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.loop = loop
        self.blocks = {path: request_block(path, address, token, deadline)
                       for path in (SYNC, REGISTER)}
        self.next_stream = 1
        self.calls: dict[int, Call] = {}
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.headers: dict[int, bytearray] = {}      # header blocks awaiting CONTINUATION
        self.ending: set[int] = set()                # ... whose HEADERS had END_STREAM
        self.send_window = 65535                     # the connection's, then each stream's
        self.stream_window = 65535                   # initial, from the server's SETTINGS
        self.windows: dict[int, int] = {}
        self.waiting: list[tuple[int, bytes]] = []   # DATA held back by flow control
        loop.add(self)
        self.write(PREFACE + frame(SETTINGS, 0, 0, struct.pack(
            ">HIHI", HEADER_TABLE_SIZE, 0, INITIAL_WINDOW_SIZE, BIG_WINDOW))
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", BIG_WINDOW - 65535)))

    def call(self, path: str, message: bytes, began: float, done) -> None:
        """Start a call; done(call, error or None) runs when it ends."""
        stream = self.next_stream
        self.next_stream += 2
        self.calls[stream] = Call(stream, began, done)
        body = b"\x00" + struct.pack(">I", len(message)) + message
        self.windows[stream] = self.stream_window
        self.write(frame(HEADERS, END_HEADERS, stream, self.blocks[path]))
        self.waiting.append((stream, body))
        self.send_waiting()

    def send_waiting(self) -> None:
        while self.waiting:
            stream, body = self.waiting[0]
            if stream not in self.calls:             # ended (deadline) before it was sent
                self.waiting.pop(0)
                continue
            if len(body) > min(self.send_window, self.windows.get(stream, 0)):
                return
            self.waiting.pop(0)
            self.send_window -= len(body)
            self.windows[stream] -= len(body)
            self.write(frame(DATA, END_STREAM, stream, body))

    def cancel(self, stream: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None:
            self.windows.pop(stream, None)
            self.write(frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))   # CANCEL
            call.done(call, "StatusCode.DEADLINE_EXCEEDED")

    def write(self, data: bytes) -> None:
        if not self.outbox:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            data = data[sent:]
            if not data:
                return
            self.loop.want_write(self, True)
        self.outbox += data

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return
        del self.outbox[:sent]
        if not self.outbox:
            self.loop.want_write(self, False)

    def readable(self) -> None:
        try:
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            raise ConnectionError("the manager closed the connection")
        self.inbox += chunk
        view, at = self.inbox, 0
        while len(view) - at >= 9:
            length = int.from_bytes(view[at:at + 3], "big")
            if len(view) - at < 9 + length:
                break
            kind, flags = view[at + 3], view[at + 4]
            stream = int.from_bytes(view[at + 5:at + 9], "big") & 0x7FFFFFFF
            self.on_frame(kind, flags, stream, bytes(view[at + 9:at + 9 + length]))
            at += 9 + length
        del self.inbox[:at]

    def on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            call = self.calls.get(stream)
            if call is not None:
                call.data = True
                if flags & END_STREAM:
                    self.end(stream, None)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self.headers[stream] = bytearray(payload)
                if flags & END_STREAM:
                    self.ending.add(stream)
            else:
                self.headers[stream] += payload
            if flags & END_HEADERS:
                block = bytes(self.headers.pop(stream))
                if stream in self.ending:               # trailers: the call's status
                    self.ending.discard(stream)
                    self.end(stream, self.loop.status(block))
        elif kind == SETTINGS and not flags & ACK:
            for at in range(0, len(payload), 6):
                key, value = struct.unpack_from(">HI", payload, at)
                if key == INITIAL_WINDOW_SIZE:
                    delta, self.stream_window = value - self.stream_window, value
                    for s in self.windows:
                        self.windows[s] += delta
            self.write(frame(SETTINGS, ACK, 0))
            self.send_waiting()
        elif kind == PING and not flags & ACK:
            self.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream == 0:
                self.send_window += increment
            elif stream in self.windows:
                self.windows[stream] += increment
            self.send_waiting()
        elif kind == RST_STREAM:
            self.end(stream, "StatusCode.CANCELLED")
        elif kind == GOAWAY:
            raise ConnectionError("the manager sent GOAWAY")

    def end(self, stream: int, status: int | str | None) -> None:
        call = self.calls.pop(stream, None)
        self.windows.pop(stream, None)
        if call is None:
            return
        if status is None or status == 0:
            error = None if call.data else "StatusCode.UNKNOWN"
        elif isinstance(status, int):
            error = f"StatusCode.{CODES[status] if status < len(CODES) else 'UNKNOWN'}"
        else:
            error = status
        call.done(call, error)


class Loop:
    """Every connection of the process, and timers, on one selector and one thread."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.decoder = hpack.Decoder()
        self.decoder.header_table_size = 0          # as SETTINGS asks of the server
        self.decoder.max_allowed_table_size = 0
        self.statuses: dict[bytes, int | None] = {}  # header block -> its grpc-status
        self.timers: list = []                       # (when, seq, callback)
        self.timer_seq = 0

    def add(self, connection: Connection) -> None:
        self.selector.register(connection.sock, selectors.EVENT_READ, connection)

    def want_write(self, connection: Connection, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.selector.modify(connection.sock, events, connection)

    def status(self, block: bytes) -> int | None:
        """The grpc-status of a trailers block (None: none in it)."""
        if block not in self.statuses:
            fields = dict(self.decoder.decode(block, raw=True))
            value = fields.get(b"grpc-status")
            self.statuses[block] = int(value) if value is not None else None
        return self.statuses[block]

    def at(self, when: float, callback) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, callback))

    def run(self, until) -> None:
        """Serve the connections and timers until until() is true."""
        while not until():
            now = time.perf_counter()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            timeout = max(0.0, self.timers[0][0] - now) if self.timers else 0.05
            for key, events in self.selector.select(min(timeout, 0.05)):
                if events & selectors.EVENT_WRITE:
                    key.data.writable()
                if events & selectors.EVENT_READ:
                    key.data.readable()


def tail(seq: int, full: bool) -> bytes:
    """SyncAgentStatesRequest's seq (3) and full (4) fields, appended to a body."""
    out, value = bytearray(b"\x18"), seq
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    if full:
        out += b"\x20\x01"
    return bytes(out)


class Daemons:
    """This process's simulated nodes, each with its own connection, and its senders."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.loop = Loop()
        token = os.environ[spec["token_env"]]
        self.registers = [base64.b64decode(b) for b in spec["register"]]
        self.bodies = [base64.b64decode(b) for b in spec["sync"]]
        self.connections = [Connection(self.loop, spec["address"], token, spec["deadline"])
                            for _ in self.bodies]         # connections[i]: node i's
        self.senders = min(spec["threads"], len(self.bodies))
        self.seqs = [0] * len(self.bodies)

    def report(self, i: int) -> bytes:
        self.seqs[i] += 1
        seq = self.seqs[i]
        return self.bodies[i] + tail(seq, seq % self.spec["full_every"] == 0)

    def register(self) -> None:
        """RegisterNode for every node, one call at a time per sender, each on its node's
        connection; failures tried again up to twice."""
        todo = [[(i, 0) for i in range(t, len(self.registers), self.senders)]
                for t in range(self.senders)]
        left = [len(part) for part in todo]
        failed = []

        def send(t: int) -> None:
            if todo[t]:
                i, attempt = todo[t].pop(0)
                self.connections[i].call(REGISTER, self.registers[i], 0.0,
                                         lambda call, error: done(t, i, attempt, error))

        def done(t: int, i: int, attempt: int, error) -> None:
            if error is not None and attempt < 2:
                todo[t].insert(0, (i, attempt + 1))
            else:
                left[t] -= 1
                if error is not None:
                    failed.append(error)
            send(t)

        for t in range(self.senders):
            send(t)
        self.loop.run(lambda: not any(left))
        if failed:
            raise SystemExit(f"RegisterNode failed: {failed[0]}")

    def saturation(self, seconds: float, out: dict) -> None:
        """Each sender: one call at a time over its share of the nodes, each call on
        its node's connection."""
        until = time.perf_counter() + seconds
        busy = [0]
        threads = self.senders

        def send(t: int, i: int) -> None:
            if time.perf_counter() >= until:
                return
            busy[0] += 1
            connection = self.connections[i]
            connection.call(SYNC, self.report(i), time.perf_counter(),
                            lambda call, error: done(t, i, call, error))
            self.loop.at(time.perf_counter() + self.spec["deadline"],
                         lambda c=connection, s=connection.next_stream - 2: c.cancel(s))

        def done(t: int, i: int, call: Call, error) -> None:
            busy[0] -= 1
            if error is None:
                out["latencies"].append(time.perf_counter() - call.began)
            else:
                out["errors"].append(error)
            following = i + threads
            send(t, following if following < len(self.bodies) else t)

        for t in range(threads):
            send(t, t)
        self.loop.run(lambda: time.perf_counter() >= until and busy[0] == 0)
        self.loop.timers.clear()        # the deadlines of calls that ended

    def steady(self, duration: float, period: float, out: dict) -> None:
        """Every node once per period at its offset; latency from the scheduled time."""
        first, total, count = self.spec["first"], self.spec["total"], len(self.bodies)
        start = time.perf_counter() + 0.05
        left = [0]
        schedule = [(k * period + (first + i) / total * period, i) for i in range(count)
                    for k in range(int(duration // period) + 1)
                    if k * period + (first + i) / total * period < duration]
        left[0] = len(schedule)

        def fire(due: float, i: int) -> None:
            connection = self.connections[i]
            connection.call(SYNC, self.report(i), due, done)
            stream = connection.next_stream - 2
            self.loop.at(due + self.spec["deadline"], lambda: connection.cancel(stream))

        def done(call: Call, error) -> None:
            left[0] -= 1
            if error is None:
                out["latencies"].append(time.perf_counter() - call.began)
            else:
                out["errors"].append(error)

        for at, i in schedule:
            self.loop.at(start + at, lambda due=start + at, i=i: fire(due, i))
        self.loop.run(lambda: left[0] == 0)
        self.loop.timers.clear()        # the deadlines of calls that ended


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    raise_soft_limit()      # a descriptor a node: a shell's soft limit is often 1,024
    daemons = Daemons(spec)
    daemons.register()
    loads.serve(daemons.saturation, daemons.steady)


if __name__ == "__main__":
    main()
