"""The retention duty: one thread that purges every store whose rows expire.

`Purger` calls `purge()` of each store it was given (agent events:
fleet.manager.events; node metrics: fleet.manager.nodemetrics) once at start and
then every `interval` seconds. Each store deletes in small transactions and logs
what it removed; a failure is logged and the next store, and the next run, go on.

Given a `lease` (fleet.manager.store.lease), a run purges only while this
manager holds it: several managers or workers on one database purge once, not
once each. The lease outlives the interval, so its holder keeps it run after
run; when the holder dies another takes it after the lease's ttl.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Optional, Protocol, Sequence

from fleet.manager.store.lease import Lease

log = logging.getLogger(__name__)

# Seconds between purges (the purge lease lives 1.5 times this). FLEET_PURGE_INTERVAL
# overrides it for tests only (the failover test watches the lease move in seconds).
PURGE_INTERVAL = float(os.environ.get("FLEET_PURGE_INTERVAL") or 60.0)


class Purgeable(Protocol):
    def purge(self) -> int:
        """Delete what has expired; how many rows."""


class Purger:
    """Thread `fleet-purge`: every store's purge() every `interval` seconds."""

    def __init__(self, stores: Sequence[Purgeable], interval: float = PURGE_INTERVAL,
                 lease: Optional[Lease] = None):
        self._stores = tuple(stores)
        self._interval = interval
        self._lease = lease
        self.holding = lease is None      # whether the last run purged
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-purge", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a purge under way, at most 5 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._lease is not None and self.holding:
            try:
                self._lease.release()
            except Exception:  # noqa: BLE001 - the lease then expires after its ttl
                log.exception("purge: could not release the lease")

    def purge_once(self) -> None:
        """One run over every store."""
        for store in self._stores:
            try:
                store.purge()
            except Exception:  # noqa: BLE001 - log and purge again next time
                log.exception("purge of %s failed", type(store).__name__)

    def run_once(self) -> None:
        """purge_once() if this manager holds (or needs no) lease."""
        if self._lease is not None:
            try:
                held = self._lease.acquire()
            except Exception:  # noqa: BLE001 - try the lease again next run
                log.exception("purge: could not take the lease")
                held = False
            if held != self.holding:
                log.info("purge: %s the %r lease (%s)", "took" if held else "lost",
                         self._lease.name, self._lease.holder)
            self.holding = held
        if self.holding:
            self.purge_once()

    def _run(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self._interval):
                return
