"""The bound of the ingest writer's queue, and the retry hint of a refused report.

`Backlog` counts what was admitted to the writer and is not yet committed:
states and events ("rows"), and reports. A report that would take the rows
past the bound is refused at once with errors.Overloaded (RESOURCE_EXHAUSTED with a
`retry-after-ms` hint on the wire) and nothing of it is written; the daemon
retries it whole, which the (boot_id, seq) rules make safe. An empty queue
admits any one report, so a report larger than the bound still gets through.
Reports are not bounded by count: each holds a gRPC worker until committed,
so the server's worker pool (fleet.manager.app.GRPC_WORKERS) caps them.

The hint is the time the manager needs before it can take the report: the
queue's rows, then the rows of the reports refused before it (each promised a
later turn: a crowd of refused daemons is spread over the time it takes to
drain, not sent back at once), at the write rate measured while the queue
was at least half full, between HINT_FLOOR and HINT_CAP.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from fleet import errors

DEFAULT_MAX_ROWS = 20_000       # one group commit's worth: ~0.6 s at the measured 35k states/s
HINT_FLOOR, HINT_CAP = 0.25, 30.0   # seconds
INITIAL_RATE = 20_000.0         # rows/s assumed until measured (below the measured 35k)
MIN_RATE = 100.0                # rows/s: a stalled database does not make hints infinite
RATE_WINDOW = 0.5               # seconds of saturated time per rate sample


class Backlog:
    """Admission to the writer's queue: admit() before a report is built, release() once
    its batch ended (or it never reached the writer)."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS,
                 clock: Callable[[], float] = time.monotonic):
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()       # guards everything below
        self.rows = 0                       # admitted, not yet committed or failed
        self.reports = 0
        self.high_water_rows = 0            # the most rows ever admitted at once
        self.high_water_reports = 0
        self.refused = 0                    # reports refused since start
        self.rate = INITIAL_RATE            # rows/s written while the queue was half full
        self._last = clock()                # when the counts last changed
        self._busy = 0.0                    # saturated seconds in the current rate sample
        self._done = 0                      # rows committed in them
        self._owed_until = 0.0              # when the refused reports' promised turns end

    def admit(self, rows: int) -> int:
        """Reserve room for a report of `rows` states and events; its cost, for release().

        Raises errors.Overloaded with the retry hint when the queue is past its bound.
        """
        cost = max(1, rows)
        with self._lock:
            now = self._clock()
            self._tick(now)
            if self.reports and self.rows + cost > self.max_rows:
                self.refused += 1
                hint = self._hint(now, cost)
            else:
                self.rows += cost
                self.reports += 1
                self.high_water_rows = max(self.high_water_rows, self.rows)
                self.high_water_reports = max(self.high_water_reports, self.reports)
                return cost
        raise errors.Overloaded(f"the manager's write queue is full ({self.max_rows} states); "
                                f"retry after {hint} ms", hint)

    def release(self, cost: int, committed: bool) -> None:
        """The admitted report of `cost` left the queue: committed, or failed."""
        if not cost:
            return
        with self._lock:
            now = self._clock()
            saturated = self._saturated()
            self._tick(now)
            self.rows -= cost
            self.reports -= 1
            if committed and saturated:
                self._done += cost
                if self._busy >= RATE_WINDOW:
                    self.rate = max(MIN_RATE, (self.rate + self._done / self._busy) / 2)
                    self._busy, self._done = 0.0, 0

    def stats(self) -> dict:
        """The counts now, the high-water marks and the measured rate (for /metrics, tests)."""
        with self._lock:
            return {"rows": self.rows, "reports": self.reports, "max_rows": self.max_rows,
                    "high_water_rows": self.high_water_rows,
                    "high_water_reports": self.high_water_reports, "refused": self.refused,
                    "rate": self.rate}

    def _saturated(self) -> bool:
        return self.rows * 2 >= self.max_rows

    def _tick(self, now: float) -> None:
        """Count the time since the last change as busy if the queue was half full."""
        if self._saturated():
            self._busy += now - self._last
        self._last = now

    def _hint(self, now: float, cost: int) -> int:
        """Milliseconds until the report's turn: after the queue and the earlier refused."""
        start = max(now + self.rows / self.rate, self._owed_until)
        self._owed_until = min(start + cost / self.rate, now + HINT_CAP)
        return round(min(HINT_CAP, max(HINT_FLOOR, self._owed_until - now)) * 1000)
