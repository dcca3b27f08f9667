"""`[manager] workers = N`: N manager processes sharing the HTTP and gRPC ports.

The parent serves no request. It holds both ports (fleet.listen.reserve: bound
with SO_REUSEPORT, never listening, so port 0 becomes a real port that stays
reserved across worker restarts), writes the token files and migrates the
database once, then starts N workers: the command that started it, with
`--http`/`--grpc` set to the held ports and the hidden `--worker-of PID`. On a
SQLite file it also writes the workers' state reports, which they relay to it
over a private socket pair (`--writer-fd`, fleet.manager.store.relay): SQLite
has one writer at a time, and in the parent no gRPC thread competes with that
writer for the GIL. Each worker is a whole manager (fleet.manager.app,
worker=True) binding both ports with SO_REUSEPORT; the kernel spreads new
connections over the listening ones.

Workers are new processes, not forks: forking a process that runs gRPC threads
is unsafe. A worker that exits is started again after a backoff (1 s, doubling
to 30 s; back to 1 s after one ran a minute), logged. On SIGTERM/SIGINT every
worker gets SIGTERM, those still running after STOP_SECONDS get SIGKILL, and the
parent exits 0. A worker whose parent died stops by itself (watch_parent).
Workers count their /metrics in one directory the parent keeps
(fleet.manager.api.sharedmetrics), so any of them answers a scrape alike.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from fleet.config import ManagerConfig
from fleet.listen import reserve
from fleet.manager.api.sharedmetrics import SharedDir
from fleet.manager.app import prepare_storage
from fleet.manager.store import relay
from fleet.values import join_address, split_address

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.5          # how often the parent looks at its workers
BACKOFF_MIN = 1.0            # seconds before a dead worker's replacement starts
BACKOFF_MAX = 30.0
STEADY_SECONDS = 60.0        # a worker that ran this long resets the backoff
STOP_SECONDS = 20.0          # SIGTERM to SIGKILL


def worker_command(argv: Sequence[str]) -> list[str]:
    """The interpreter and script (or `-m fleet`, or the pyz) that started this
    process, followed by `argv`."""
    original = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
    prefix = original[:len(original) - len(sys.argv) + 1]
    return [sys.executable] + prefix[1:] + list(argv)


@dataclasses.dataclass
class _Slot:
    """One worker place: its process, or when the next one starts."""

    index: int
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0
    restart_at: float = 0.0
    backoff: float = BACKOFF_MIN


class WorkerSet:
    """N worker processes of one command, kept running until stop()."""

    def __init__(self, command: Sequence[str], count: int,
                 spawn: Callable[[list[str]], subprocess.Popen] = subprocess.Popen,
                 on_exit: Callable[[int], None] = lambda pid: None):
        self._command = list(command)
        self._spawn = spawn
        self._on_exit = on_exit         # called with the pid of each worker that exited
        self._slots = [_Slot(i) for i in range(count)]

    def pids(self) -> list[int]:
        """Pids of the workers running now."""
        return [s.proc.pid for s in self._slots if s.proc is not None]

    def check(self, now: float) -> None:
        """Note workers that exited; start those whose restart time has come."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                self._exited(slot, now)
            if slot.proc is None and now >= slot.restart_at:
                self._start(slot, now)

    def _exited(self, slot: _Slot, now: float) -> None:
        if now - slot.started >= STEADY_SECONDS:
            slot.backoff = BACKOFF_MIN
        log.warning("worker %d (pid %d) exited with status %s; starting another in %.0f s",
                    slot.index, slot.proc.pid, slot.proc.returncode, slot.backoff)
        self._on_exit(slot.proc.pid)
        slot.proc = None
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def _start(self, slot: _Slot, now: float) -> None:
        try:
            slot.proc = self._spawn(self._command)
        except OSError as exc:
            log.error("worker %d: cannot start: %s", slot.index, exc)
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
            return
        slot.started = now
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM every worker, wait up to `timeout`, SIGKILL the rest; reap all."""
        running = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d still running after %.0f s: SIGKILL",
                            proc.pid, timeout)
                _signal(proc, signal.SIGKILL)
                proc.wait()
        for slot in self._slots:
            slot.proc = None


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass                                 # exited in between


def run_workers(config: ManagerConfig, command: Sequence[str],
                stop: threading.Event) -> int:
    """Hold the ports, prepare the database, run config.workers workers until
    `stop` is set; 0 after stopping them. OSError if a port cannot be had."""
    held = [reserve("grpc", config.grpc)]
    try:
        held.append(reserve("http", config.http))
        prepare_storage(config)
        grpc, http = (join_address(split_address(address)[0], sock.getsockname()[1])
                      for address, sock in zip((config.grpc, config.http), held))
        host = relay.host_for(config.db)        # SQLite: this process writes the reports
        metrics = SharedDir()                   # where every worker counts /metrics
        spawn = host.spawn if host else subprocess.Popen
        try:
            workers = WorkerSet(list(command) + ["--grpc", grpc, "--http", http,
                                                 "--worker-of", str(os.getpid())],
                                config.workers, spawn=lambda c: spawn(c, env=metrics.env()),
                                on_exit=metrics.process_dead)
            log.info("manager: %d workers on http=%s grpc=%s%s", config.workers, http, grpc,
                     ", their state reports written here" if host else "")
            while not stop.is_set():
                workers.check(time.monotonic())
                stop.wait(CHECK_SECONDS)
            log.info("stopping %d workers", config.workers)
            workers.stop()
        finally:
            if host is not None:
                host.stop()
            metrics.remove()
        log.info("stopped")
        return 0
    finally:
        for sock in held:
            sock.close()


def watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set `stop` once this worker's parent is gone (thread `fleet-parent-watch`)."""
    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("parent pid %d is gone: stopping", parent_pid)
                stop.set()
    threading.Thread(target=watch, name="fleet-parent-watch", daemon=True).start()
