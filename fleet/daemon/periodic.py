"""A named daemon thread that runs one action on a fixed grid of deadlines."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls `action()` every `interval` seconds in thread `name` until stop().

    Deadlines, not sleeps: runs stay on a fixed grid however long each takes, and
    a run that falls behind (suspend, a huge pass) skips ahead rather than bursting.
    `first_delay` is the wait before the first run. An exception is logged and the
    thread goes on. start()/stop() are safe to call twice; stop() wakes it at once.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object],
                 first_delay: float | None = None):
        self.name = name
        self.interval = interval
        self.action = action
        self.first_delay = interval if first_delay is None else first_delay
        self._stop = threading.Event()        # set by stop(); wakes the thread
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        deadline = time.monotonic() + self.first_delay
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                self.action()
            except Exception:  # noqa: BLE001 - log and keep the thread alive
                log.exception("%s: periodic run failed", self.name)
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:
                deadline = now + self.interval
