"""The state reports of a SQLite manager's workers, written by their parent.

SQLite has one writer at a time. When each of `[manager] workers = N` wrote its
own reports, its writer held the database's turn (backends.FileTurn) while that
worker's gRPC threads kept taking the GIL from it between statements: a batch
of 300 states held the turn 16-19 ms, of which its statements ran 5. The
parent serves nothing, so on SQLite it runs the one IngestWriter instead, in a
process where no gRPC thread competes with it, and the workers relay their
validated reports to it.

Each worker is started with one end of a socket pair (`--writer-fd`), nothing
anyone else can reach. Frames are a 4-byte big-endian length and a marshal'ed
value: a worker sends one per report, (id, node_id, boot_id, seq, full, rows,
keep, received, stopping, events); the parent answers after each batch with one
per worker, [(id, code, message), ...], code "" for committed. Admission stays in
the worker (its own Backlog, checked before a report is built), so the parent's
queue holds at most what the workers admitted. A worker whose parent is gone
fails its waiting reports Unavailable, which daemons retry, and stops
(fleet.manager.workers.watch_parent).
"""
from __future__ import annotations

import itertools
import logging
import marshal
import socket
import struct
import subprocess
import threading
from typing import Callable, Optional, Sequence

from fleet import errors
from fleet.manager.store.backends import backend_of
from fleet.manager.store.backlog import DEFAULT_MAX_ROWS, Backlog
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.writer import SUBMIT_TIMEOUT, IngestWriter, Pending, Report, Waiting

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20            # bytes; a report of 5,000 states is about 2 MB
SEND_TIMEOUT = 10.0             # seconds a parent waits on a worker not reading
# What an answer's code becomes in the worker; anything else is an internal error.
ANSWERS = {cls.code: cls for cls in (errors.NotFound, errors.Unavailable)}


def frame(value) -> bytes:
    """`value` as one frame."""
    body = marshal.dumps(value)
    return HEADER.pack(len(body)) + body


def frames(sock: socket.socket):
    """The value of each frame read from `sock`, until it ends (ValueError for a
    frame past MAX_FRAME)."""
    with sock.makefile("rb", buffering=1 << 16) as stream:
        while (value := read_frame(stream)) is not None:
            yield value


def read_frame(stream):
    """The next frame's value from a buffered binary `stream`; None at its end.
    ValueError for a frame past MAX_FRAME."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    body = stream.read(size)
    return marshal.loads(body) if len(body) == size else None


# ---- in the parent --------------------------------------------------------------

def host_for(url: str) -> Optional["RelayHost"]:
    """A started RelayHost writing to the database at `url` when it is a SQLite file;
    None for an engine that takes many writers (PostgreSQL: each worker writes)."""
    db = open_database(url)
    if backend_of(db).name != "sqlite" or db.database in ("", ":memory:"):
        close_database(db)
        return None
    writer = IngestWriter(db)
    writer.start()
    return RelayHost(writer, db)


class RelayHost:
    """The parent's side: every worker's reports into one IngestWriter."""

    def __init__(self, writer: IngestWriter, db=None):
        self._writer = writer
        self._db = db                          # closed by stop(), if given
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._waiting: set[_Link] = set()     # links with answers not sent yet
        writer.after_batch = self.flush

    def spawn(self, command: Sequence[str], env: Optional[dict] = None) -> subprocess.Popen:
        """Start a worker: `command --writer-fd N`, N its end of a new pair."""
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(list(command) + ["--writer-fd", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), env=env)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.attach(mine)
        return proc

    def stop(self) -> None:
        """After the workers stopped: close their links, write what is queued, and
        close the database."""
        self.close()
        self._writer.stop()
        if self._db is not None:
            close_database(self._db)

    def attach(self, sock: socket.socket) -> None:
        """Serve one worker's end of the pair from a thread of its own."""
        link = _Link(sock, self)
        with self._lock:
            self._links.add(link)
        threading.Thread(target=self._serve, args=(link,), name="fleet-relay",
                         daemon=True).start()

    def answered(self, link: "_Link") -> None:
        with self._lock:
            self._waiting.add(link)

    def flush(self) -> None:
        """Send every answer given since the last flush (the writer calls this after
        each batch)."""
        with self._lock:
            links, self._waiting = self._waiting, set()
        for link in links:
            link.flush()

    def close(self) -> None:
        """Close every worker's link (their threads then end)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def _serve(self, link: "_Link") -> None:
        try:
            for value in frames(link.sock):
                ident, node_id, boot_id, seq, full, rows, keep, received, stopping, \
                    events = value
                relayed = _Relayed(Report(node_id, boot_id, seq, full, rows, keep, received,
                                          stopping, events), link, ident)
                try:
                    self._writer.enqueue(relayed)
                except errors.Unavailable as exc:
                    relayed.finish(exc)
                    self.flush()
        except (OSError, ValueError, EOFError, TypeError) as exc:
            log.warning("relay: dropping a worker's link: %s", exc)
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)


class _Link:
    """One worker's end of a pair, seen from the parent: its answers to send."""

    def __init__(self, sock: socket.socket, host: RelayHost):
        self.sock = sock
        # A send that cannot go on for SEND_TIMEOUT fails (reads wait as long as needed).
        seconds, fraction = divmod(SEND_TIMEOUT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(seconds), int(fraction * 1e6)))
        self._host = host
        self._lock = threading.Lock()
        self._answers: list[tuple] = []
        self._closed = False

    def answer(self, ident: int, error: Optional[errors.FleetError]) -> None:
        with self._lock:
            self._answers.append((ident, "", "") if error is None
                                 else (ident, error.code, str(error)))
        self._host.answered(self)

    def flush(self) -> None:
        with self._lock:
            answers, self._answers = self._answers, []
            if not answers or self._closed:     # a worker gone: its daemons retry
                return
            try:
                self.sock.sendall(frame(answers))
            except OSError as exc:          # the worker is gone, or stuck: its reports retry
                log.warning("relay: cannot answer a worker: %s", exc)
                self.close()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Relayed(Pending):
    """A worker's report in the parent's writer queue; its outcome goes back."""

    __slots__ = ("link", "ident")

    def __init__(self, report: Report, link: _Link, ident: int):
        super().__init__(report)
        self.link = link
        self.ident = ident

    def finish(self, error: Optional[errors.FleetError]) -> None:
        self.link.answer(self.ident, error)


# ---- in a worker ----------------------------------------------------------------

class RelayedWriter:
    """IngestWriter's part that ReportService uses, in a worker: reports are written
    by the parent, over `sock`.

    `on_lost` is called when the link fails other than by stop(): a worker that can
    no longer store reports should stop, so that its parent starts another with a
    new pair (or, if the parent is gone, so that it ends).
    """

    def __init__(self, sock: socket.socket, backlog: Optional[Backlog] = None,
                 on_lost: Optional[Callable[[], None]] = None):
        self.backlog = backlog or Backlog(DEFAULT_MAX_ROWS)
        self._sock = sock
        self._on_lost = on_lost
        self._send = threading.Lock()
        self._lock = threading.Lock()        # guards _waiting and _state
        self._waiting: dict[int, Waiting] = {}
        self._ids = itertools.count(1)
        self._state = "new"                  # new | running | stopped
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start reading the parent's answers (a second call does nothing)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
        self._thread = threading.Thread(target=self._read, name="fleet-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the link; reports still waiting fail Unavailable."""
        with self._lock:
            self._state = "stopped"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
        self._fail_waiting("the manager is shutting down")

    def admit(self, rows: int) -> int:
        """As IngestWriter.admit: this worker's own bound."""
        return self.backlog.admit(rows)

    def submit(self, report: Report, timeout: float = SUBMIT_TIMEOUT, cost: int = 0) -> None:
        """Block until the parent committed `report`; as IngestWriter.submit."""
        awaited = Waiting(report, cost)
        ident = next(self._ids)
        message = frame((ident, report.node_id, report.boot_id, report.seq, report.full,
                         report.rows, list(report.keep), report.received, report.stopping,
                         list(report.events)))
        with self._lock:
            running = self._state == "running"
            if running:
                self._waiting[ident] = awaited
        if not running:
            self.backlog.release(cost, committed=False)
            raise errors.Unavailable("the manager is not accepting reports (shutting down)")
        try:
            with self._send:
                self._sock.sendall(message)
        except OSError:
            self._settle(ident, errors.Unavailable("the manager's writer is gone; retry"))
        if not awaited.wait(timeout):
            # Settled here unless the answer came meanwhile; a late write is harmless.
            self._settle(ident, errors.Unavailable("database write timed out; retry"))
            awaited.wait(timeout)
        if awaited.error is not None:
            raise awaited.error

    def _settle(self, ident: int, error: Optional[errors.FleetError]) -> None:
        """Give report `ident` its outcome, unless it already has one."""
        with self._lock:
            awaited = self._waiting.pop(ident, None)
        if awaited is not None:
            self.backlog.release(awaited.cost, committed=error is None)
            awaited.finish(error)

    def _read(self) -> None:
        try:
            for answers in frames(self._sock):
                for ident, code, message in answers:
                    self._settle(ident, None if not code else
                                 ANSWERS.get(code, errors.FleetError)(message))
        except (OSError, ValueError, EOFError) as exc:
            log.warning("relay: the link to the parent failed: %s", exc)
        with self._lock:
            stopping, self._state = self._state == "stopped", "stopped"
        self._fail_waiting("the manager's writer is gone; retry")
        if not stopping:
            log.error("relay: the link to the parent's writer is gone: stopping")
            if self._on_lost is not None:
                self._on_lost()

    def _fail_waiting(self, why: str) -> None:
        with self._lock:
            idents = list(self._waiting)
        for ident in idents:
            self._settle(ident, errors.Unavailable(why))
