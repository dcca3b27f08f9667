"""A pipe that wakes a thread blocked in poll(): the supervisor's runners and the
reload worker each wait on one, beside whatever else they watch."""
from __future__ import annotations

import os


class WakePipe:
    """`wake()` from any thread, or from a signal handler (one write, nothing that can
    block); the waiting thread polls `fd` for POLLIN and calls `drain()`. A full pipe
    means a wake is pending already, so a lost write loses nothing."""

    def __init__(self):
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Make the next (or current) poll of `fd` return."""
        try:
            os.write(self._write_fd, b"x")
        except OSError:
            pass    # a wake is pending already (the pipe is full), or closed

    def drain(self) -> None:
        """Take every pending wake: `fd` polls quiet until the next wake()."""
        try:
            while os.read(self.fd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Close both ends (once the waiting thread has ended); safe to call twice."""
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._write_fd)
            self.fd = self._write_fd = -1
