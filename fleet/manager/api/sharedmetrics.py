"""One `/metrics` for all the workers of `[manager] workers = N`.

A scrape reaches whichever worker the kernel hands the connection to. Had each
worker counted on its own, every scrape would show one worker's counters:
`fleet_reports_received_total` would jump between workers' figures, and
Prometheus would take each fall for a restart (rate() and increase() wrong).
So the workers count in prometheus_client's multiprocess mode: each process
writes its values to small files in one directory (mmap), and the worker that
answers a scrape adds up the files of all of them (MultiProcessCollector).

- The parent makes the directory (private, 0700, named after its pid; a new
  parent removes those of parents that are gone) and starts each worker with
  `PROMETHEUS_MULTIPROC_DIR` set to it: prometheus_client chooses its mode when
  it is first imported, so it must be in the worker's environment from the start.
  When a worker exits, the parent removes its live gauges (mark_process_dead);
  its counters stay, so the totals never fall when a worker is replaced. The
  parent removes the directory when it stops.
- A worker's ingest queue is its own (fleet.manager.store.backlog). Its figures
  are copied into shared gauges every SHARE_SECONDS by the thread
  `fleet-metrics-share`: the queue across workers is the sum of the live ones,
  the high-water mark and the refusals count every worker since the parent
  started.
- The process_* series are left out with workers: they would describe a
  different process from one scrape to the next.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from typing import Callable, Optional

from prometheus_client import Gauge, values
from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"     # prometheus_client reads it at its first import
PREFIX = "fleet-metrics-"            # + the parent's pid + "-" + random
ORPHAN = re.compile(re.escape(PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+")
SHARE_SECONDS = 1.0
# Backlog.stats key -> (name, help, how the workers' values are combined)
INGEST_GAUGES = (
    ("rows", "fleet_ingest_queued_states", "States admitted, not yet committed", "livesum"),
    ("high_water_rows", "fleet_ingest_queued_states_high_water",
     "The most states ever queued at once (in one worker)", "max"),
    ("max_rows", "fleet_ingest_queue_bound_states", "The queue's bound in states", "livesum"),
    ("reports", "fleet_ingest_queued_reports", "Reports admitted, not yet committed", "livesum"),
    ("rate", "fleet_ingest_write_rate", "States/s written while the queue was busy", "livesum"),
    ("refused", "fleet_reports_refused",
     "Reports refused with RESOURCE_EXHAUSTED (queue full) since start", "sum"),
)


class SharedDir:
    """The parent's side: the directory, the workers' environment, their exits.

    The directory is named after the parent's pid. A parent that was killed could
    not remove its own, so each new parent removes those of parents no longer
    running (this user's, in the same temporary directory)."""

    def __init__(self, parent: Optional[str] = None) -> None:
        parent = parent or tempfile.gettempdir()
        _remove_orphans(parent)
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)

    def env(self) -> dict:
        """The environment a worker starts with."""
        return dict(os.environ, **{ENV: self.path})

    def process_dead(self, pid: int) -> None:
        """Worker `pid` exited: its live gauges no longer count."""
        mark_process_dead(pid, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_orphans(parent: str) -> None:
    """Remove the directories of parents that are gone."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        found = ORPHAN.fullmatch(name)
        path = os.path.join(parent, name)
        if found is None or _alive(int(found.group(1))):
            continue
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("metrics: removed %s, left by a manager that is gone", path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # another user's process
    return True


def shared_dir() -> Optional[str]:
    """In a worker started by SharedDir, the directory every worker counts in; None
    when prometheus_client counts in this process's memory."""
    path = os.environ.get(ENV)
    if not path or values.ValueClass is values.MutexValue:
        return None
    return path


class IngestGauges:
    """Thread `fleet-metrics-share`: a worker's queue figures into the shared gauges."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats
        self._gauges = [(key, Gauge(name, text, registry=None, multiprocess_mode=mode))
                        for key, name, text, mode in INGEST_GAUGES]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-metrics-share",
                                        daemon=True)

    def start(self) -> None:
        self.share()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def share(self) -> None:
        """Write this worker's figures now."""
        stats = self._stats()
        for key, gauge in self._gauges:
            gauge.set(stats[key])

    def _run(self) -> None:
        while not self._stop.wait(SHARE_SECONDS):
            try:
                self.share()
            except Exception:  # noqa: BLE001 - a full disk must not end the sharing
                log.exception("metrics: cannot share the ingest queue's figures")
