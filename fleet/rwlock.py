"""A reader-writer lock: many readers at once, or one writer, writers first.

Writer preference: once a writer waits, new readers queue behind it, so a
steady stream of readers cannot starve a writer (the daemon client pool's
replace path). The lock is not reentrant: a thread holding `read()` must not
ask for `read()` again while a writer may be waiting, nor upgrade to `write()`.
This module imports nothing of fleet.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class RWLock:
    """Many readers or one writer; a waiting writer goes before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0            # threads inside read()
        self._writer = False         # a thread is inside write()
        self._writers_waiting = 0    # threads queued for write(); blocks new readers
        self._readers_waiting = 0    # threads queued for read() (for tests and stats)

    def acquire_read(self) -> None:
        """Block until no writer holds or waits for the lock, then enter as a reader."""
        with self._cond:
            self._readers_waiting += 1
            try:
                while self._writer or self._writers_waiting:
                    self._cond.wait()
            finally:
                self._readers_waiting -= 1
            self._readers += 1

    def release_read(self) -> None:
        """Leave as a reader; the last one out wakes a waiting writer."""
        with self._cond:
            if self._readers <= 0:
                raise RuntimeError("release_read without acquire_read")
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        """Block until no reader or writer is inside, then enter alone."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        """Leave as the writer and wake everyone waiting (writers win the race)."""
        with self._cond:
            if not self._writer:
                raise RuntimeError("release_write without acquire_write")
            self._writer = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """`with lock.read():` shared access."""
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """`with lock.write():` exclusive access."""
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

    def stats(self) -> dict[str, int]:
        """Readers inside and waiting, writers inside and waiting (a snapshot)."""
        with self._cond:
            return {"readers": self._readers, "writer": int(self._writer),
                    "readers_waiting": self._readers_waiting,
                    "writers_waiting": self._writers_waiting}
