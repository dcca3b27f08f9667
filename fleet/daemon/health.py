"""Probes and guardrails: whether an agent works, not only whether it lives.

One thread, ``fleet-health``, keeps every probed agent's next deadline in one
heap and hands the probes that are due to a small bounded pool
(``fleet-probe-N``). Each probe carries its own deadline: an http or tcp probe a
socket timeout, an exec probe a kill of its process group at ``timeout``, then a
reap. A probe still running at its agent's next deadline skips that round, so a
hung probe holds one pool worker for at most its timeout and never delays
another agent's schedule. No thread sleeps per probe.

``LimitGuard`` is the sampler's hook: it sees each whole-tree sample and acts
when a limit has been held for ``for`` seconds. Both restart through
``Runner.restart_for(cause, why)``, the state machine's own restart.

Verdicts (DESIGN.md "Health, limits and events"): unknown from each start until
the first result after ``grace``; healthy after a pass; unhealthy after
``failures`` consecutive failures.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import heapq
import itertools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from typing import Callable, NamedTuple, Optional

from fleet.config import HealthConfig, LimitsConfig
from fleet.daemon.facts import Snapshot
from fleet.daemon.program import agent_environment
from fleet.daemon.runner import Runner
from fleet.states import State
from fleet.values import split_address

log = logging.getLogger(__name__)

PROBE_WORKERS = 4          # probes running at once, across all agents
MAX_OUTPUT = 4096          # bytes of an exec probe's output kept
MAX_MESSAGE = 300          # characters of a probe's message
MIB = 1024 * 1024


class NullEvents:
    """Stands in for the daemon's event log (fleet.daemon.events.EventLog)."""

    def record(self, agent_id: str, kind: str, message: str, pid: int = 0,
               exit_code: int = -1, exit_signal: int = 0) -> None:
        """Record nothing."""


class Result(NamedTuple):
    ok: bool
    message: str     # why it failed, in words; "" on a pass


# ---- probes (each returns within about its timeout, whatever the target does) ----

def probe_http(url: str, timeout: float) -> Result:
    """GET url: passes on 2xx/3xx within timeout."""
    # Imported here: http.client brings ssl and email (0.7 MiB of RSS) that a daemon
    # without http probes would carry for nothing.
    import http.client  # pylint: disable=import-outside-toplevel
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    start = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "fleet-probe"})
        status = conn.getresponse().status
    except (socket.timeout, TimeoutError):
        return Result(False, f"GET {url}: timed out after {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return Result(False, f"GET {url}: {_why(exc)}")
    finally:
        conn.close()
    if time.monotonic() - start > timeout:
        return Result(False, f"GET {url}: timed out after {timeout:g} s")
    if 200 <= status < 400:
        return Result(True, "")
    return Result(False, f"GET {url} -> {status}")


def probe_tcp(address: str, timeout: float) -> Result:
    """Connect to HOST:PORT: passes once connected."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Result(True, "")
    except (socket.timeout, TimeoutError):
        return Result(False, f"connect {address}: timed out after {timeout:g} s")
    except OSError as exc:
        return Result(False, f"connect {address}: {_why(exc)}")


def probe_exec(command: tuple[str, ...], timeout: float, cwd: str = "",
               env: Optional[dict[str, str]] = None) -> Result:
    """Run command in its own process group: passes on exit 0. At timeout the
    group is SIGKILLed and the process reaped; the output's first line is kept."""
    try:
        proc = subprocess.Popen(list(command), cwd=cwd or None, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    except OSError as exc:
        return Result(False, f"exec {command[0]}: {_why(exc)}")
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return Result(False, f"exec timed out after {timeout:g} s; killed")
    if proc.returncode == 0:
        return Result(True, "")
    line = output[:MAX_OUTPUT].decode("utf-8", "replace").strip().split("\n")[0].strip()
    how = f"exited {proc.returncode}" if proc.returncode > 0 \
        else f"killed by signal {-proc.returncode}"
    return Result(False, f"exec {how}" + (f": {line}" if line else ""))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the probe's group and reap it, without waiting on its pipe (a
    process that left the group may hold it open)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.lower() if isinstance(exc, OSError) and exc.strerror else text


def run_probe(config: HealthConfig, agent_cwd: str, env: dict[str, str]) -> Result:
    """Run the probe `config` describes; never raises."""
    try:
        if config.kind == "http":
            result = probe_http(str(config.target), config.timeout)
        elif config.kind == "tcp":
            result = probe_tcp(str(config.target), config.timeout)
        else:
            result = probe_exec(tuple(config.target), config.timeout, agent_cwd, env)
    except Exception as exc:  # noqa: BLE001 - a probe's bug is a failed probe, logged
        log.exception("probe %s failed unexpectedly", config.kind)
        result = Result(False, f"{config.kind} probe error: {exc}")
    return Result(result.ok, result.message[:MAX_MESSAGE])


# ---- the scheduler ----

@dataclasses.dataclass
class _Probed:
    """What the scheduler knows of one probed agent."""

    config: HealthConfig
    pid: int = 0              # the process being probed; 0: none (no probes)
    failures: int = 0         # consecutive failures of this process
    verdict: str = "unknown"  # the last verdict recorded
    busy: bool = False        # a probe of it is running


class HealthChecker:
    """Runs every agent's probe on one heap of deadlines and records the verdicts."""

    def __init__(self, runners: Callable[[str], Optional[Runner]], events=None,
                 workers: int = PROBE_WORKERS, clock: Callable[[], float] = time.monotonic):
        self._runners = runners            # agent id -> its Runner (None if unknown)
        self.events = events or NullEvents()
        self._clock = clock
        self._cond = threading.Condition()  # guards all below; notified on new deadlines
        self._heap: list[tuple[float, int, str, int]] = []   # (due, seq, agent id, pid)
        self._seq = itertools.count()      # ties in the heap break by insertion
        self._probed: dict[str, _Probed] = {}
        self._stopped = False
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "fleet-probe")
        self._thread = threading.Thread(target=self._run, name="fleet-health", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stopped:
            self._thread.start()

    def stop(self) -> None:
        """No more probes or restarts; a running probe ends at its own timeout."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def notify(self, snapshot: Snapshot) -> None:
        """A supervisor listener: a new process of a probed agent starts its grace."""
        runner = self._runners(snapshot.agent_id)
        config = runner.program.config.health if runner is not None else None
        if config is None:
            with self._cond:   # a reload removed the probe: its heap entries go stale
                self._probed.pop(snapshot.agent_id, None)
            return
        alive = snapshot.state in (State.STARTING, State.RUNNING) and snapshot.pid
        with self._cond:
            probed = self._probed.get(snapshot.agent_id)
            if probed is None or probed.config != config:   # new, or reloaded
                probed = self._probed[snapshot.agent_id] = _Probed(
                    config, probed.pid if probed else 0)
            if not alive:
                probed.pid = 0   # its heap entry goes stale
                return
            if probed.pid == snapshot.pid:
                return
            probed.pid, probed.failures, probed.verdict = snapshot.pid, 0, "unknown"
            self._push(self._clock() + config.grace, snapshot.agent_id, snapshot.pid)

    def _push(self, due: float, agent_id: str, pid: int) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), agent_id, pid))
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            try:
                due = self._next_due()
            except Exception:  # noqa: BLE001 - log and keep scheduling
                log.exception("health scheduler error")
                continue
            if due is None:
                return
            self._submit(*due)

    def _next_due(self) -> Optional[tuple[str, int, HealthConfig]]:
        """Wait for the next due probe; None once stopped."""
        with self._cond:
            while not self._stopped:
                now = self._clock()
                if not self._heap or self._heap[0][0] > now:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                    continue
                due, _, agent_id, pid = heapq.heappop(self._heap)
                probed = self._probed.get(agent_id)
                if probed is None or probed.pid != pid:
                    continue   # that process is gone: its probes end
                interval = probed.config.interval
                self._push(max(due + interval, now), agent_id, pid)   # the grid goes on
                if probed.busy:
                    log.info("%s: probe still running after %.1f s; skipping a round",
                                agent_id, interval)
                    continue
                probed.busy = True
                return agent_id, pid, probed.config
            return None

    def _submit(self, agent_id: str, pid: int, config: HealthConfig) -> None:
        runner = self._runners(agent_id)
        if runner is None:
            return
        cfg = runner.program.config
        try:
            self._pool.submit(self._probe, runner, pid, config, cfg.cwd, agent_environment(cfg))
        except RuntimeError:
            pass  # stopped meanwhile

    def _probe(self, runner: Runner, pid: int, config: HealthConfig, cwd: str,
               env: dict[str, str]) -> None:
        result = run_probe(config, cwd, env)
        try:
            self._record(runner, pid, config, result)
        except Exception:  # noqa: BLE001 - log and keep the worker
            log.exception("%s: recording a probe result failed", runner.program.config.id)

    def _record(self, runner: Runner, pid: int, config: HealthConfig, result: Result) -> None:
        """Turn one result into a verdict, record it, and restart if told to."""
        agent_id = runner.program.config.id
        with self._cond:
            probed = self._probed.get(agent_id)
            if probed is None or probed.pid != pid:
                if probed is not None:
                    probed.busy = False
                return
            probed.busy = False
            probed.failures = failures = 0 if result.ok else probed.failures + 1
            verdict = "healthy" if result.ok else \
                "unhealthy" if probed.failures >= config.failures else None
            changed = verdict is not None and verdict != probed.verdict
            if verdict is not None:
                probed.verdict = verdict
            stopped = self._stopped
        if verdict is None:
            log.info("%s: probe failed (%d of %d) pid=%s: %s", agent_id, failures,
                     config.failures, pid, result.message)
            return
        runner.record_health(lambda p: p.set_probe(pid, verdict, result.message))
        if changed:
            log.log(logging.WARNING if verdict == "unhealthy" else logging.INFO,
                    "%s: %s pid=%s%s", agent_id, verdict, pid,
                    f": {result.message}" if result.message else "")
            self.events.record(agent_id, verdict, result.message, pid=pid)
        if verdict == "unhealthy" and config.on_unhealthy == "restart" and not stopped:
            restart(runner, "health", result.message, pid)


def restart(runner: Runner, cause: str, why: str, pid: int) -> bool:
    """Restart through the state machine for `cause` (which records the restart event)."""
    if not runner.restart_for(cause, why):
        return False
    log.warning("%s: restarting pid=%s (cause %s): %s", runner.program.config.id, pid, cause, why)
    return True


# ---- resource guardrails ----

@dataclasses.dataclass
class _Held:
    pid: int
    since: dict[str, float] = dataclasses.field(default_factory=dict)  # limit -> over since
    message: str = ""        # the limit held too long, as recorded
    acted: bool = False      # its action was taken for this process


class LimitGuard:
    """The sampler's hook: acts on limits held for `for` seconds (one thread calls it)."""

    def __init__(self, runners: Callable[[str], Optional[Runner]], events=None,
                 clock: Callable[[], float] = time.monotonic):
        self._runners = runners
        self.events = events or NullEvents()
        self._clock = clock
        self._held: dict[str, _Held] = {}   # agent id -> its current process's excesses
        self.enabled = True                 # cleared at shutdown: no more restarts

    def check(self, agent_id: str, pid: int, rss: int, cpu: float) -> None:
        """One whole-tree sample of `agent_id`'s process `pid`."""
        runner = self._runners(agent_id)
        limits = runner.program.config.limits if runner is not None else None
        if limits is None:
            return
        held = self._held.get(agent_id)
        if held is None or held.pid != pid:
            held = self._held[agent_id] = _Held(pid)
        message = self._over(held, limits, rss, cpu, self._clock())
        if message != held.message:
            held.message = message
            runner.record_health(lambda p: p.set_limit(pid, message))
            if message:
                log.warning("%s: over its limit pid=%s: %s", agent_id, pid, message)
                self.events.record(agent_id, "limit", message, pid=pid)
            else:
                log.info("%s: back within its limits pid=%s", agent_id, pid)
        if message and limits.action == "restart" and not held.acted and self.enabled:
            held.acted = restart(runner, "limit", message, pid)

    @staticmethod
    def _over(held: _Held, limits: LimitsConfig, rss: int, cpu: float, now: float) -> str:
        """The limits held for `for` seconds, in words ("" when none)."""
        figures = {"memory": (limits.memory, rss), "cpu": (limits.cpu, cpu)}
        words = []
        for name, (limit, value) in figures.items():
            if not limit or value <= limit:
                held.since.pop(name, None)
                continue
            since = held.since.setdefault(name, now)
            if now - since >= limits.for_seconds:
                words.append(f"rss {value / MIB:.0f} MiB > {limit / MIB:.0f} MiB"
                             if name == "memory" else f"cpu {value:.0f}% > {limit:g}%")
        return "; ".join(words) + (f" for {limits.for_seconds:g} s" if words else "")
