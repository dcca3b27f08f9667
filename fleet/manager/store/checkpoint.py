"""SQLite's write-ahead log copied back into the database by a thread of its own.

Left to itself, SQLite checkpoints inside the commit that finds the WAL past
1,000 pages: inside the group-commit writer's transaction, so inside its turn
(backends.FileTurn), where every other writer waits. Under a steady load that was
one commit in ten taking 35-50 ms instead of 1.5 (copying the pages and two
fsyncs), a third of the time the turn was held.

`Checkpointer` (thread `fleet-checkpoint`) does that work beside the writers.
Every `interval` seconds it runs PASSIVE checkpoints, which copy pages while
writers go on, again while one took long (so that writers added many pages
meanwhile), and then one more inside the turn: with no writer between it and
the next transaction, that one finds the whole log copied, and the next writer
starts the log over from its beginning. Without that last step a log under
constant writes never restarts and grows without end. The writer's connection
checkpoints by itself only past SAFETY_PAGES (`relieve`), should this thread
stall.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import ContextManager, Optional

log = logging.getLogger(__name__)

INTERVAL = 0.5            # seconds between checkpoint rounds
SAFETY_PAGES = 50000      # the writer's own autocheckpoint (about 200 MB of log)
QUICK = 0.02              # a pass this short leaves little for the one in the turn
MAX_PASSES = 3            # passes outside the turn per round
BUSY_TIMEOUT = 5.0        # seconds the connection waits for a lock


def relieve(connection) -> None:
    """Make a writer's sqlite3 `connection` leave checkpoints to a Checkpointer."""
    connection.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_PAGES}")


class Checkpointer:
    """Checkpoints of the SQLite database at `path`, outside `turn` mostly."""

    def __init__(self, path: str, turn: ContextManager, interval: float = INTERVAL):
        self._path = path
        self._turn = turn
        self._interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.rounds = 0           # rounds that ended with the log wholly copied

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-checkpoint",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after the round under way, if any)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        connection = None
        while not self._stop.wait(self._interval):
            try:
                if connection is None:
                    connection = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT,
                                                 isolation_level=None)
                self.run_once(connection)
            except sqlite3.Error as exc:    # the next round tries again, reconnected
                log.warning("checkpoint of %s failed: %s", self._path, exc)
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def run_once(self, connection) -> bool:
        """One round on `connection`; True when it left the whole log copied."""
        for _ in range(MAX_PASSES):
            began = time.monotonic()
            busy, frames, _ = _passive(connection)
            if busy or frames == 0:         # another checkpointer, or an empty log
                return False
            if time.monotonic() - began < QUICK:
                break
        with self._turn:
            busy, frames, copied = _passive(connection)
        done = not busy and frames == copied
        self.rounds += done
        return done


def _passive(connection) -> tuple[int, int, int]:
    """(busy, frames in the log, frames copied) of one PASSIVE checkpoint."""
    return connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
