"""Node metrics on the manager: validation of ReportNodeMetrics, storage, ranges, purge.

A daemon samples its machine (fleet/daemon/node.py) and sends batches of samples.
Three tables (migration 7):
- `node_metric`: the raw samples, kept RAW_SECONDS (an hour); a resent sample is
  known by (node_id, time) and stored once.
- `node_metric_minute`: one row per node and minute: the mean of each figure over
  the minute's raw samples, the peak cpu, and how many samples. It is recomputed
  from the raw rows of the minutes a batch touched, in the batch's transaction, so
  a resent or late sample (within the hour) never counts twice. Kept
  `[manager] node_metrics_retention` seconds.
- `node_resources`: each node's latest sample, whole (with its disks), as JSON: the
  Node JSON's `resources`, read for a page of nodes in one query.

A range is answered with at most MAX_POINTS points: raw samples when the range is
within the hour and they are few enough, else buckets of a whole number of
minutes aggregated from the minute rows (weighted by their sample counts).
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Callable, Iterable, Optional, Sequence

import peewee

from fleet import errors
from fleet.manager.store.backends import backend_of
from fleet.manager.store.db import now_ms, storage_faults
from fleet.values import valid_node_id

log = logging.getLogger(__name__)

RAW_SECONDS = 3600              # raw samples are kept this long
MINUTE_MS = 60_000
MAX_POINTS = 1000               # points in one answer, at most
MAX_SAMPLES = 1000              # samples in one ReportNodeMetrics
MAX_DISKS = 64                  # mounts in one sample
MAX_MOUNT = 1024                # characters of a mount point
MAX_INTERVAL = 86400.0          # seconds; a daemon's metrics_interval
LATEST_CHUNK = 500              # node ids per query of the latest samples
PURGE_STEP_MS = {"node_metric": 5 * MINUTE_MS, "node_metric_minute": 60 * MINUTE_MS}

FLOATS = ("cpu", "load1", "load5", "load15", "disk_read_rate", "disk_write_rate",
          "net_rx_rate", "net_tx_rate")
INTS = ("memory_used", "memory_total", "swap_used", "swap_total", "disk_used", "disk_total")
# The figures of a point, in the order of the tables' columns and the API's keys.
FIGURES = ("cpu", "load1", "load5", "load15", "memory_used", "memory_total", "swap_used",
           "swap_total", "disk_used", "disk_total", "disk_read_rate", "disk_write_rate",
           "net_rx_rate", "net_tx_rate")
RAW_COLUMNS = ("node_id", "time", "resolution") + FIGURES


def sample_fault(s) -> Optional[str]:
    """Why one NodeMetricsSample cannot be stored, or None when it can."""
    if s.time < 1:
        return f"time must be Unix milliseconds > 0, not {s.time}"
    for name in FLOATS:
        value = getattr(s, name)
        if not math.isfinite(value) or value < 0:
            return f"{name} must be a finite number >= 0, not {value}"
    if s.cpu > 100:
        return f"cpu is a percent of the whole machine: at most 100, not {s.cpu}"
    for name in INTS:
        if getattr(s, name) < 0:
            return f"negative {name} {getattr(s, name)}"
    if len(s.disks) > MAX_DISKS:
        return f"{len(s.disks)} disks; at most {MAX_DISKS}"
    for d in s.disks:
        if not d.mount or len(d.mount) > MAX_MOUNT or "\x00" in d.mount:
            return f"disk mount must be 1 to {MAX_MOUNT} characters without NUL"
        if d.used < 0 or d.total < 0:
            return f"disk {d.mount[:64]!r}: negative size"
    return None


def resources(s) -> dict:
    """The Node JSON's `resources` for one NodeMetricsSample."""
    found = {"time": s.time}
    found.update((name, getattr(s, name)) for name in FIGURES)
    found["disks"] = [{"mount": d.mount, "used": d.used, "total": d.total} for d in s.disks]
    return found


def bucket_seconds(duration: int) -> int:
    """The width of the buckets that answer `duration` seconds from the minutes: the
    fewest whole minutes that keep the answer within MAX_POINTS (a partial bucket
    at each end included)."""
    return 60 * max(1, math.ceil(duration / (60 * (MAX_POINTS - 1))))


class NodeMetricsStore:
    """Stores node samples; answers ranges and the latest sample; purges."""

    def __init__(self, db: peewee.Database, registry, retention: float = 604800.0,
                 clock: Callable[[], float] = time.time):
        self._db = db
        self._backend = backend_of(db)
        self._registry = registry         # fleet.manager.store.registry.Registry
        self.retention = retention        # seconds the minute rows are kept
        self._clock = clock
        self._insert_sql = self._backend.insert_ignoring("node_metric", RAW_COLUMNS,
                                                         ("node_id", "time"))
        self._rollup_sql = self._backend.sql(_rollup_sql())
        self._latest_sql = self._backend.upsert(
            "node_resources", ("node_id", "time", "sample"), ("node_id",),
            {"time": "excluded.time", "sample": "excluded.sample"},
            "node_resources.time <= excluded.time")

    # ---- writes ----

    def report(self, node_id: str, boot_id: int, samples: Sequence,
               interval: float = 0.0) -> int:
        """Store a ReportNodeMetrics; how many samples were stored (or were already).

        The whole request fails with nothing written: InvalidArgument (bad node_id,
        too many samples, a bad figure), NotFound (node not registered), Conflict
        (a boot older than the node's), Unavailable (the database). Samples older
        than the raw hour are skipped: their minute could no longer be recomputed.
        """
        self._check(node_id, boot_id, samples, interval)
        now = now_ms(self._clock)
        fresh = [s for s in samples if s.time >= now - RAW_SECONDS * 1000]
        if fresh:
            self._write(node_id, fresh, interval)
        return len(fresh)

    def _check(self, node_id: str, boot_id: int, samples: Sequence, interval: float) -> None:
        if not valid_node_id(node_id):
            raise errors.InvalidArgument(f"invalid node_id {node_id[:200]!r}")
        if len(samples) > MAX_SAMPLES:
            raise errors.InvalidArgument(
                f"{len(samples)} samples in one request; at most {MAX_SAMPLES}")
        if not (math.isfinite(interval) and 0 <= interval <= MAX_INTERVAL):
            raise errors.InvalidArgument(
                f"interval_seconds must be from 0 to {MAX_INTERVAL:g}, not {interval}")
        for i, sample in enumerate(samples):
            fault = sample_fault(sample)
            if fault:
                raise errors.InvalidArgument(f"sample {i}: {fault}")
        self._registry.require(node_id, boot_id)

    @storage_faults
    def _write(self, node_id: str, samples: Sequence, interval: float) -> None:
        """Raw rows, then the touched minutes recomputed, then the latest sample."""
        rows = [(node_id, s.time, interval) + tuple(getattr(s, n) for n in FIGURES)
                for s in samples]
        first = min(s.time for s in samples) // MINUTE_MS * MINUTE_MS
        end = (max(s.time for s in samples) // MINUTE_MS + 1) * MINUTE_MS
        latest = max(samples, key=lambda s: s.time)
        sample_json = json.dumps(resources(latest), separators=(",", ":"))
        with self._db.connection_context(), self._db.atomic():
            cursor = self._db.cursor()
            self._backend.upsert_many(cursor, self._insert_sql, rows, key=2)  # key order
            cursor.execute(self._rollup_sql, (node_id, first, end))
            cursor.execute(self._latest_sql, (node_id, latest.time, sample_json))

    @storage_faults
    def forget(self, node_id: str) -> None:
        """Delete a node's samples, minutes and latest sample (the node was deleted)."""
        with self._db.connection_context(), self._db.atomic():
            for table in ("node_metric", "node_metric_minute", "node_resources"):
                self._db.execute_sql(self._backend.sql(f"DELETE FROM {table} WHERE node_id = ?"),
                                     (node_id,))

    # ---- reads ----

    @storage_faults
    def latest(self, node_ids: Iterable[str]) -> dict[str, dict]:
        """{node_id: its latest sample as `resources`} for those that have one; one
        query per LATEST_CHUNK ids."""
        ids = list(node_ids)
        found: dict[str, dict] = {}
        with self._db.connection_context():
            for start in range(0, len(ids), LATEST_CHUNK):
                chunk = ids[start:start + LATEST_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = self._backend.sql(
                    f"SELECT node_id, sample FROM node_resources WHERE node_id IN ({marks})")
                for node_id, sample in self._db.execute_sql(sql, chunk).fetchall():
                    found[node_id] = json.loads(sample)
        return found

    @storage_faults
    def points(self, node_id: str, duration: int) -> list[dict]:
        """The node's points of the last `duration` seconds, oldest first, at most
        MAX_POINTS, each with its resolution_seconds."""
        now = now_ms(self._clock)
        cutoff = now - duration * 1000
        with self._db.connection_context():
            if duration <= RAW_SECONDS:
                raw = self._raw(node_id, cutoff)
                if len(raw) <= MAX_POINTS:
                    return raw
            return self._buckets(node_id, cutoff, bucket_seconds(duration))

    def _raw(self, node_id: str, cutoff: int) -> list[dict]:
        sql = self._backend.sql(
            f"SELECT time, resolution, {', '.join(FIGURES)} FROM node_metric "
            "WHERE node_id = ? AND time >= ? ORDER BY time LIMIT ?")
        rows = self._db.execute_sql(sql, (node_id, cutoff, MAX_POINTS + 1)).fetchall()
        return [_point(row[0], row[1], row[2], row[2:]) for row in rows]

    def _buckets(self, node_id: str, cutoff: int, seconds: int) -> list[dict]:
        bucket = f"(minute / {seconds * 1000}) * {seconds * 1000}"
        means = ", ".join(f"SUM({name} * samples) / SUM(samples)" for name in FIGURES)
        sql = self._backend.sql(
            f"SELECT {bucket}, MAX(cpu_max), {means} FROM node_metric_minute "
            f"WHERE node_id = ? AND minute > ? GROUP BY {bucket} ORDER BY {bucket}")
        rows = self._db.execute_sql(sql, (node_id, cutoff - MINUTE_MS)).fetchall()
        return [_point(row[0], seconds, row[1], row[2:]) for row in rows]

    # ---- retention ----

    def purge(self) -> int:
        """Delete raw samples older than an hour and minutes older than the
        retention, a few minutes' worth per transaction; how many rows."""
        now = now_ms(self._clock)
        total = self._purge_table("node_metric", "time", now - RAW_SECONDS * 1000)
        total += self._purge_table("node_metric_minute", "minute",
                                   now - int(self.retention * 1000))
        if total:
            log.info("node metrics: purged %d rows", total)
        return total

    @storage_faults
    def _purge_table(self, table: str, column: str, cutoff: int) -> int:
        """Delete the rows of `table` with `column` < cutoff, oldest first, one
        PURGE_STEP_MS slice per transaction so that writers never wait long."""
        step, total = PURGE_STEP_MS[table], 0
        delete = self._backend.sql(f"DELETE FROM {table} WHERE {column} < ?")
        with self._db.connection_context():
            oldest = self._db.execute_sql(f"SELECT MIN({column}) FROM {table}").fetchone()[0]
            while oldest is not None and oldest < cutoff:
                oldest = min(cutoff, oldest + step)
                with self._db.atomic():
                    total += self._db.execute_sql(delete, (oldest,)).rowcount
        return total


def _rollup_sql() -> str:
    """Recompute the minute rows of one node between two times from its raw rows, in
    minute order (PostgreSQL locks them in that order: two reports never deadlock)."""
    means = ", ".join(f"AVG({name})" for name in FIGURES)
    columns = ", ".join(FIGURES)
    updates = ", ".join(f"{c} = excluded.{c}" for c in FIGURES + ("cpu_max", "samples"))
    return (f"INSERT INTO node_metric_minute (node_id, minute, cpu_max, samples, {columns}) "
            f"SELECT node_id, (time / {MINUTE_MS}) * {MINUTE_MS}, MAX(cpu), COUNT(*), {means} "
            "FROM node_metric WHERE node_id = ? AND time >= ? AND time < ? "
            f"GROUP BY node_id, (time / {MINUTE_MS}) * {MINUTE_MS} ORDER BY 2 "
            f"ON CONFLICT (node_id, minute) DO UPDATE SET {updates}")


def _point(start: int, resolution: float, cpu_max: float, figures: Sequence) -> dict:
    """A point of the API: `figures` in FIGURES order (means of a bucket are rounded
    back to whole bytes), the peak cpu, and the seconds it stands for."""
    point: dict = {"time": int(start)}
    for name, value in zip(FIGURES, figures):
        point[name] = int(round(value)) if name in INTS else round(float(value), 2)
    point["cpu_max"] = round(float(cpu_max), 2)
    point["resolution_seconds"] = float(resolution)
    return point
